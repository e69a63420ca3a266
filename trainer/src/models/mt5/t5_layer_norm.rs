//! `T5LayerNorm`: RMS normalisation with a scale and no bias or mean subtraction.
//!
//! Upstream: <https://github.com/huggingface/transformers/blob/v4.44.2/src/transformers/models/t5/modeling_t5.py#L243-L270>

use burn::module::{Module, Param};
use burn::nn::Initializer;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// `weight * x / sqrt(mean(x^2) + eps)` over the last dimension.
#[derive(Module, Debug)]
pub struct T5LayerNorm<B: Backend> {
    /// `[d_model]`, initialised to ones.
    pub weight: Param<Tensor<B, 1>>,
    pub variance_epsilon: f64,
}

impl<B: Backend> T5LayerNorm<B> {
    pub fn new(d_model: usize, eps: f64, device: &B::Device) -> Self {
        T5LayerNorm { weight: Initializer::Ones.init([d_model], device), variance_epsilon: eps }
    }

    /// `[b, n, d] -> [b, n, d]`.
    pub fn forward(&self, hidden_states: Tensor<B, 3>) -> Tensor<B, 3> {
        let variance = hidden_states.clone().powi_scalar(2).mean_dim(2); // [b, n, 1]
        let normed = hidden_states * (variance + self.variance_epsilon).sqrt().recip();
        normed * self.weight.val().unsqueeze::<3>()
    }
}
