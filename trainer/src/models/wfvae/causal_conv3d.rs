//! `CausalConv3d`: a 3-D convolution whose time padding replicates the first frame.
//!
//! Upstream: <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/causalvideovae/model/modules/conv.py>

use burn::module::Module;
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::PaddingConfig3d;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::cache::TemporalCache;
use super::ops::replicate_first;

/// Causal 3-D convolution; key `<name>.conv.{weight,bias}`.
#[derive(Module, Debug)]
pub struct CausalConv3d<B: Backend> {
    pub conv: Conv3d<B>,
    #[module(skip)]
    time_kernel_size: usize,
    #[module(skip)]
    time_stride: usize,
}

impl<B: Backend> CausalConv3d<B> {
    /// Cubic kernel `k`, the same `stride` on every axis, spatial zero padding `padding`.
    pub fn new(channels: [usize; 2], k: usize, stride: usize, padding: usize, bias: bool, device: &B::Device) -> Self {
        let conv = Conv3dConfig::new(channels, [k, k, k])
            .with_stride([stride; 3])
            .with_padding(PaddingConfig3d::Explicit(0, padding, padding))
            .with_bias(bias)
            .init(device);
        CausalConv3d { conv, time_kernel_size: k, time_stride: stride }
    }

    /// `[b, c, t, h, w]` -> `[b, c', (t - 1) / s + 1, h', w']` (whole clip).
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        crate::models::conv3d::forward(&self.conv, replicate_first(x, self.time_kernel_size - 1))
    }

    /// One temporal chunk; `path` (official module path) keys the cached tail frames.
    pub fn forward_cached(&self, x: Tensor<B, 5>, path: &str, cache: &mut TemporalCache<B>) -> Tensor<B, 5> {
        let k = self.time_kernel_size;
        let padded = cache.causal_window(path, x, k - 1, k, self.time_stride);
        crate::models::conv3d::forward(&self.conv, padded)
    }
}
