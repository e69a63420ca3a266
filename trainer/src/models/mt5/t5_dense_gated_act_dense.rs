//! `T5DenseGatedActDense`: `wo(gelu_new(wi_0(x)) * wi_1(x))`, the gated-GELU feed-forward of
//! mT5 and T5 v1.1.
//!
//! Upstream: <https://github.com/huggingface/transformers/blob/v4.44.2/src/transformers/models/t5/modeling_t5.py#L297-L324>

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::MT5Config;

#[derive(Module, Debug)]
pub struct T5DenseGatedActDense<B: Backend> {
    pub wi_0: Linear<B>,
    pub wi_1: Linear<B>,
    pub wo: Linear<B>,
}

impl<B: Backend> T5DenseGatedActDense<B> {
    pub fn new(config: &MT5Config, device: &B::Device) -> Self {
        let linear = |i, o| LinearConfig::new(i, o).with_bias(false).init(device);
        T5DenseGatedActDense {
            wi_0: linear(config.d_model, config.d_ff),
            wi_1: linear(config.d_model, config.d_ff),
            wo: linear(config.d_ff, config.d_model),
        }
    }

    /// `[b, n, d] -> [b, n, d]`.
    pub fn forward(&self, hidden_states: Tensor<B, 3>) -> Tensor<B, 3> {
        let gate = gelu_new(self.wi_0.forward(hidden_states.clone())); // [b, n, d_ff]
        self.wo.forward(gate * self.wi_1.forward(hidden_states))
    }
}

/// transformers' `NewGELUActivation` (tanh approximation):
/// `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`.
pub fn gelu_new<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let inner = (x.clone() + x.clone().powi_scalar(3) * 0.044715) * (2.0 / std::f64::consts::PI).sqrt();
    x * (inner.tanh() + 1.0) * 0.5
}
