//! diffusers `PixArtAlphaTextProjection` (`caption_projection`): `linear_2(gelu_tanh(linear_1(x)))`,
//! projecting mT5 states to the DiT width.
//!
//! diffusers 0.30.2 `models/embeddings.py::PixArtAlphaTextProjection` (`act_fn="gelu_tanh"`);
//! used at <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/diffusion/opensora_v1_3/modeling_opensora.py#L74-L76>.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::gelu_approximate;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::models::autocast::{self, ComputeDType};

/// Caption projection `in_features -> hidden_size -> hidden_size`.
#[derive(Module, Debug)]
pub struct PixArtAlphaTextProjection<B: Backend> {
    pub linear_1: Linear<B>,
    pub linear_2: Linear<B>,
}

impl<B: Backend> PixArtAlphaTextProjection<B> {
    pub fn new(in_features: usize, hidden_size: usize, device: &B::Device) -> Self {
        PixArtAlphaTextProjection {
            linear_1: LinearConfig::new(in_features, hidden_size).init(device),
            linear_2: LinearConfig::new(hidden_size, hidden_size).init(device),
        }
    }

    /// `[.., in]` -> `[.., d]`, linear layers under autocast `compute`.
    pub fn forward<const D: usize>(&self, caption: Tensor<B, D>, compute: ComputeDType) -> Tensor<B, D> {
        autocast::linear(&self.linear_2, gelu_approximate(autocast::linear(&self.linear_1, caption, compute)), compute)
    }
}
