//! diffusers `Timesteps` (sinusoidal projection) and `TimestepEmbedding` (Linear -> SiLU ->
//! Linear), as `AdaLayerNormSingle` builds them: 256 channels, `flip_sin_to_cos=True`,
//! `downscale_freq_shift=0`, max period 10000.
//!
//! diffusers 0.30.2 `models/embeddings.py` (`get_timestep_embedding`, `Timesteps`,
//! `TimestepEmbedding`).

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::models::autocast::{self, ComputeDType};

/// Sinusoidal timestep features `[cos(t f_i), sin(t f_i)]`, `f_i = exp(-ln(10000) i / (half - shift))`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timesteps {
    pub num_channels: usize,
    pub flip_sin_to_cos: bool,
    pub downscale_freq_shift: f32,
}

impl Timesteps {
    /// `[b]` -> `[b, num_channels]`.
    pub fn forward<B: Backend>(&self, timesteps: Tensor<B, 1>) -> Tensor<B, 2> {
        let half = self.num_channels / 2;
        let ln_period = 10000f64.ln() as f32;
        let freqs: Vec<f32> =
            (0..half).map(|i| (-ln_period * i as f32 / (half as f32 - self.downscale_freq_shift)).exp()).collect();
        let freqs = Tensor::<B, 1>::from_data(TensorData::new(freqs, [half]), &timesteps.device());
        // [b, half]
        let angles = timesteps.unsqueeze_dim::<2>(1) * freqs.unsqueeze_dim::<2>(0);
        let (sin, cos) = (angles.clone().sin(), angles.cos());
        let emb = if self.flip_sin_to_cos { Tensor::cat(vec![cos, sin], 1) } else { Tensor::cat(vec![sin, cos], 1) };
        if self.num_channels % 2 == 1 {
            let [b, _] = emb.dims();
            let zero = Tensor::zeros([b, 1], &emb.device());
            Tensor::cat(vec![emb, zero], 1)
        } else {
            emb
        }
    }
}

/// `linear_2(silu(linear_1(x)))`.
#[derive(Module, Debug)]
pub struct TimestepEmbedding<B: Backend> {
    pub linear_1: Linear<B>,
    pub linear_2: Linear<B>,
}

impl<B: Backend> TimestepEmbedding<B> {
    pub fn new(in_channels: usize, time_embed_dim: usize, device: &B::Device) -> Self {
        TimestepEmbedding {
            linear_1: LinearConfig::new(in_channels, time_embed_dim).init(device),
            linear_2: LinearConfig::new(time_embed_dim, time_embed_dim).init(device),
        }
    }

    /// `[b, in]` -> `[b, d]`, linear layers under autocast `compute`.
    pub fn forward(&self, x: Tensor<B, 2>, compute: ComputeDType) -> Tensor<B, 2> {
        autocast::linear(&self.linear_2, silu(autocast::linear(&self.linear_1, x, compute)), compute)
    }
}
