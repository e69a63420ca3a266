//! `T5Stack` (encoder): the blocks, the shared relative-position bias with the padding mask folded
//! in, and `final_layer_norm`. Its `embed_tokens` is the model's `shared` embedding (tied), so it
//! is held once, by [`super::MT5EncoderModel`].
//!
//! Upstream: <https://github.com/huggingface/transformers/blob/v4.44.2/src/transformers/models/t5/modeling_t5.py#L883-L1130>

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor};

use super::{MT5Config, T5Block, T5LayerNorm};

#[derive(Module, Debug)]
pub struct T5Stack<B: Backend> {
    pub block: Vec<T5Block<B>>,
    pub final_layer_norm: T5LayerNorm<B>,
}

impl<B: Backend> T5Stack<B> {
    pub fn new(config: &MT5Config, device: &B::Device) -> Self {
        T5Stack {
            block: (0..config.num_layers).map(|i| T5Block::new(config, i == 0, device)).collect(),
            final_layer_norm: T5LayerNorm::new(config.d_model, config.layer_norm_epsilon, device),
        }
    }

    /// `inputs_embeds` `[b, n, d]`, `attention_mask` `[b, n]` of 0/1 (`None`: all ones, as
    /// upstream) -> `last_hidden_state` `[b, n, d]`.
    pub fn forward(&self, inputs_embeds: Tensor<B, 3>, attention_mask: Option<Tensor<B, 2, Int>>) -> Tensor<B, 3> {
        let [_, n, _] = inputs_embeds.dims();
        let position_bias = self
            .block
            .first()
            .and_then(T5Block::self_attention)
            .and_then(|a| a.SelfAttention.compute_bias(n, n))
            .expect("config validation should guarantee a first block with the relative-position table"); // [1, h, n, n]
        let position_bias = match attention_mask {
            // get_extended_attention_mask: (1 - mask) * finfo(float32).min, [b, 1, 1, n].
            Some(mask) => {
                let extended = (mask.float().neg() + 1.0) * f32::MIN;
                position_bias + extended.unsqueeze_dim::<3>(1).unsqueeze_dim::<4>(1)
            }
            None => position_bias,
        };
        let hidden = self.block.iter().fold(inputs_embeds, |x, block| block.forward(x, position_bias.clone()));
        self.final_layer_norm.forward(hidden)
    }
}
