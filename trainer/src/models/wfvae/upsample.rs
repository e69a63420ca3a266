//! `Upsample`: per-frame nearest 2x spatial upsampling followed by a 3x3 conv.
//!
//! Upstream: <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/causalvideovae/model/modules/updownsample.py>

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::ops::upsample_nearest_hw_2x;
use super::Conv2d;

/// Key `<name>.conv.{weight,bias}`.
#[derive(Module, Debug)]
pub struct Upsample<B: Backend> {
    pub conv: Conv2d<B>,
}

impl<B: Backend> Upsample<B> {
    pub fn new(in_channels: usize, out_channels: usize, device: &B::Device) -> Self {
        Upsample { conv: Conv2d::new([in_channels, out_channels], 3, 1, 1, device) }
    }

    /// `[b, c, t, h, w]` -> `[b, c', t, 2h, 2w]`.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        self.conv.forward(upsample_nearest_hw_2x(x))
    }
}
