//! `T5LayerSelfAttention`: pre-norm self-attention with a residual connection.
//!
//! Upstream: <https://github.com/huggingface/transformers/blob/v4.44.2/src/transformers/models/t5/modeling_t5.py#L570-L600>
// The PyTorch attribute name is the checkpoint key; the Module derive repeats it as a binding.
#![allow(non_snake_case)]

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::{MT5Config, T5Attention, T5LayerNorm};

#[derive(Module, Debug)]
pub struct T5LayerSelfAttention<B: Backend> {
    /// Named like the PyTorch attribute (`...layer.0.SelfAttention.q.weight`).
    pub SelfAttention: T5Attention<B>,
    pub layer_norm: T5LayerNorm<B>,
}

impl<B: Backend> T5LayerSelfAttention<B> {
    pub fn new(config: &MT5Config, has_relative_attention_bias: bool, device: &B::Device) -> Self {
        T5LayerSelfAttention {
            SelfAttention: T5Attention::new(config, has_relative_attention_bias, device),
            layer_norm: T5LayerNorm::new(config.d_model, config.layer_norm_epsilon, device),
        }
    }

    /// `[b, n, d] -> [b, n, d]`.
    pub fn forward(&self, hidden_states: Tensor<B, 3>, position_bias: Tensor<B, 4>) -> Tensor<B, 3> {
        let normed = self.layer_norm.forward(hidden_states.clone());
        hidden_states + self.SelfAttention.forward(normed, position_bias)
    }
}
