//! `T5Block` (encoder): `layer.0` self-attention, `layer.1` feed-forward.
//!
//! Upstream: <https://github.com/huggingface/transformers/blob/v4.44.2/src/transformers/models/t5/modeling_t5.py#L633-L760>

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::{MT5Config, T5LayerFF, T5LayerSelfAttention};

/// One entry of the heterogeneous `nn.ModuleList` `T5Block.layer`; the variant name is not part
/// of the checkpoint key (`remap::SKIP_ENUM_VARIANTS`).
// Two entries per block, built once: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum T5BlockLayer<B: Backend> {
    SelfAttention(T5LayerSelfAttention<B>),
    FF(T5LayerFF<B>),
}

#[derive(Module, Debug)]
pub struct T5Block<B: Backend> {
    /// `[T5LayerSelfAttention, T5LayerFF]`.
    pub layer: Vec<T5BlockLayer<B>>,
}

impl<B: Backend> T5Block<B> {
    pub fn new(config: &MT5Config, has_relative_attention_bias: bool, device: &B::Device) -> Self {
        T5Block {
            layer: vec![
                T5BlockLayer::SelfAttention(T5LayerSelfAttention::new(config, has_relative_attention_bias, device)),
                T5BlockLayer::FF(T5LayerFF::new(config, device)),
            ],
        }
    }

    /// `[b, n, d] -> [b, n, d]`. fp16 inf clamping upstream is a no-op in f32 and omitted.
    pub fn forward(&self, hidden_states: Tensor<B, 3>, position_bias: Tensor<B, 4>) -> Tensor<B, 3> {
        self.layer.iter().fold(hidden_states, |x, layer| match layer {
            T5BlockLayer::SelfAttention(attn) => attn.forward(x, position_bias.clone()),
            T5BlockLayer::FF(ff) => ff.forward(x),
        })
    }

    /// The first layer's attention (the one that may own the relative-position table).
    pub fn self_attention(&self) -> Option<&T5LayerSelfAttention<B>> {
        self.layer.iter().find_map(|l| match l {
            T5BlockLayer::SelfAttention(a) => Some(a),
            T5BlockLayer::FF(_) => None,
        })
    }
}
