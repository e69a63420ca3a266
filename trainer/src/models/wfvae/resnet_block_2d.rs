//! `ResnetBlock2D`: the per-frame residual block of the encoder's first stage.
//!
//! Upstream: <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/causalvideovae/model/modules/resnet_block.py>

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::ops::nonlinearity;
use super::{Conv2d, LayerNorm};

/// Like [`super::ResnetBlock3D`] with per-frame 3x3 `Conv2d`s and a 1x1 `nin_shortcut`.
#[derive(Module, Debug)]
pub struct ResnetBlock2D<B: Backend> {
    pub norm1: LayerNorm<B>,
    pub conv1: Conv2d<B>,
    pub norm2: LayerNorm<B>,
    pub conv2: Conv2d<B>,
    pub nin_shortcut: Option<Conv2d<B>>,
}

impl<B: Backend> ResnetBlock2D<B> {
    pub fn new(in_channels: usize, out_channels: usize, device: &B::Device) -> Self {
        ResnetBlock2D {
            norm1: LayerNorm::new(in_channels, device),
            conv1: Conv2d::new([in_channels, out_channels], 3, 1, 1, device),
            norm2: LayerNorm::new(out_channels, device),
            conv2: Conv2d::new([out_channels, out_channels], 3, 1, 1, device),
            nin_shortcut: (in_channels != out_channels)
                .then(|| Conv2d::new([in_channels, out_channels], 1, 1, 0, device)),
        }
    }

    /// `[b, c, t, h, w]` -> `[b, c', t, h, w]`, every frame independently.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let h = self.conv1.forward(nonlinearity(self.norm1.forward(x.clone())));
        let h = self.conv2.forward(nonlinearity(self.norm2.forward(h)));
        let x = match &self.nin_shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        x + h
    }
}
