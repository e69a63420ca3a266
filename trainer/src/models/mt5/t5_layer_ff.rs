//! `T5LayerFF`: pre-norm gated feed-forward with a residual connection.
//!
//! Upstream: <https://github.com/huggingface/transformers/blob/v4.44.2/src/transformers/models/t5/modeling_t5.py#L327-L342>
// The PyTorch attribute name is the checkpoint key; the Module derive repeats it as a binding.
#![allow(non_snake_case)]

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::{MT5Config, T5DenseGatedActDense, T5LayerNorm};

#[derive(Module, Debug)]
pub struct T5LayerFF<B: Backend> {
    /// Named like the PyTorch attribute (`...layer.1.DenseReluDense.wi_0.weight`).
    pub DenseReluDense: T5DenseGatedActDense<B>,
    pub layer_norm: T5LayerNorm<B>,
}

impl<B: Backend> T5LayerFF<B> {
    pub fn new(config: &MT5Config, device: &B::Device) -> Self {
        T5LayerFF {
            DenseReluDense: T5DenseGatedActDense::new(config, device),
            layer_norm: T5LayerNorm::new(config.d_model, config.layer_norm_epsilon, device),
        }
    }

    /// `[b, n, d] -> [b, n, d]`.
    pub fn forward(&self, hidden_states: Tensor<B, 3>) -> Tensor<B, 3> {
        let normed = self.layer_norm.forward(hidden_states.clone());
        hidden_states + self.DenseReluDense.forward(normed)
    }
}
