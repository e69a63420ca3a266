//! `PatchEmbed2D`: per-frame `Conv2d(in -> d, kernel = stride = patch_size)` turning a latent
//! video into tokens in (t, h, w) row-major order. No position embedding is added.
//!
//! Upstream: <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/diffusion/common.py#L20-L41>

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::models::autocast::{self, ComputeDType};

/// 2D patch embedding applied to every frame.
#[derive(Module, Debug)]
pub struct PatchEmbed2D<B: Backend> {
    pub proj: Conv2d<B>,
}

impl<B: Backend> PatchEmbed2D<B> {
    pub fn new(patch_size: usize, in_channels: usize, embed_dim: usize, device: &B::Device) -> Self {
        let proj = Conv2dConfig::new([in_channels, embed_dim], [patch_size, patch_size])
            .with_stride([patch_size, patch_size])
            .with_bias(true)
            .init(device);
        PatchEmbed2D { proj }
    }

    /// `[b, c, t, h, w]` -> `[b, t * h/p * w/p, d]`; `h`, `w` must be multiples of the patch size.
    /// The convolution runs under autocast `compute`.
    pub fn forward(&self, latent: Tensor<B, 5>, compute: ComputeDType) -> Tensor<B, 3> {
        let [b, c, t, h, w] = latent.dims();
        // [b * t, c, h, w]
        let frames = latent.permute([0, 2, 1, 3, 4]).reshape([b * t, c, h, w]);
        let y = autocast::conv2d(&self.proj, frames, compute);
        let [_, d, hp, wp] = y.dims();
        // [b, t, h', w', d] -> [b, n, d]
        y.reshape([b, t, d, hp, wp]).permute([0, 1, 3, 4, 2]).reshape([b, t * hp * wp, d])
    }
}
