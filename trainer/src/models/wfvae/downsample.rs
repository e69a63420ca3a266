//! `Downsample`: per-frame 2x spatial downsampling (zero-pad right/bottom, 3x3 stride-2 conv).
//!
//! Upstream: <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/causalvideovae/model/modules/updownsample.py>

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::ops::PadMode;
use burn::tensor::Tensor;

use super::Conv2d;

/// Key `<name>.conv.{weight,bias}`.
#[derive(Module, Debug)]
pub struct Downsample<B: Backend> {
    pub conv: Conv2d<B>,
}

impl<B: Backend> Downsample<B> {
    pub fn new(in_channels: usize, out_channels: usize, device: &B::Device) -> Self {
        Downsample { conv: Conv2d::new([in_channels, out_channels], 3, 2, 0, device) }
    }

    /// `[b, c, t, h, w]` -> `[b, c', t, h/2, w/2]`.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        self.conv.forward(x.pad((0, 1, 0, 1), PadMode::Constant(0.0)))
    }
}
