//! `Spatial2xTime2x3DDownsample`: zero-pad right/bottom, causal 3x3x3 conv with stride 2 on
//! every axis.
//!
//! Upstream: <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/causalvideovae/model/modules/updownsample.py>

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::ops::PadMode;
use burn::tensor::Tensor;

use super::cache::TemporalCache;
use super::CausalConv3d;

/// Key `<name>.conv.conv.{weight,bias}`.
#[derive(Module, Debug)]
pub struct Spatial2xTime2x3DDownsample<B: Backend> {
    pub conv: CausalConv3d<B>,
}

impl<B: Backend> Spatial2xTime2x3DDownsample<B> {
    pub fn new(in_channels: usize, out_channels: usize, device: &B::Device) -> Self {
        Spatial2xTime2x3DDownsample { conv: CausalConv3d::new([in_channels, out_channels], 3, 2, 0, true, device) }
    }

    /// `[b, c, t, h, w]` -> `[b, c', (t - 1)/2 + 1, h/2, w/2]`.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        self.conv.forward(x.pad((0, 1, 0, 1), PadMode::Constant(0.0)))
    }

    /// One temporal chunk; caches under `<path>.conv`.
    pub fn forward_cached(&self, x: Tensor<B, 5>, path: &str, cache: &mut TemporalCache<B>) -> Tensor<B, 5> {
        self.conv.forward_cached(x.pad((0, 1, 0, 1), PadMode::Constant(0.0)), &format!("{path}.conv"), cache)
    }
}
