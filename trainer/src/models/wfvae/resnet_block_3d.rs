//! `ResnetBlock3D`: pre-norm residual block of two causal 3x3x3 convolutions.
//!
//! Upstream: <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/causalvideovae/model/modules/resnet_block.py>

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::cache::TemporalCache;
use super::ops::nonlinearity;
use super::{CausalConv3d, LayerNorm};

/// `x' + conv2(silu(norm2(conv1(silu(norm1(x))))))`, `x' = nin_shortcut(x)` when channels change.
#[derive(Module, Debug)]
pub struct ResnetBlock3D<B: Backend> {
    pub norm1: LayerNorm<B>,
    pub conv1: CausalConv3d<B>,
    pub norm2: LayerNorm<B>,
    pub conv2: CausalConv3d<B>,
    pub nin_shortcut: Option<CausalConv3d<B>>,
}

impl<B: Backend> ResnetBlock3D<B> {
    pub fn new(in_channels: usize, out_channels: usize, device: &B::Device) -> Self {
        ResnetBlock3D {
            norm1: LayerNorm::new(in_channels, device),
            conv1: CausalConv3d::new([in_channels, out_channels], 3, 1, 1, true, device),
            norm2: LayerNorm::new(out_channels, device),
            conv2: CausalConv3d::new([out_channels, out_channels], 3, 1, 1, true, device),
            nin_shortcut: (in_channels != out_channels)
                .then(|| CausalConv3d::new([in_channels, out_channels], 1, 1, 0, true, device)),
        }
    }

    /// `[b, c, t, h, w]` -> `[b, c', t, h, w]`.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let h = self.conv1.forward(nonlinearity(self.norm1.forward(x.clone())));
        let h = self.conv2.forward(nonlinearity(self.norm2.forward(h)));
        let x = match &self.nin_shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        x + h
    }

    /// One temporal chunk; caches under `<path>.conv1` and `<path>.conv2`.
    pub fn forward_cached(&self, x: Tensor<B, 5>, path: &str, cache: &mut TemporalCache<B>) -> Tensor<B, 5> {
        let h = nonlinearity(self.norm1.forward(x.clone()));
        let h = self.conv1.forward_cached(h, &format!("{path}.conv1"), cache);
        let h = nonlinearity(self.norm2.forward(h));
        let h = self.conv2.forward_cached(h, &format!("{path}.conv2"), cache);
        let x = match &self.nin_shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        x + h
    }
}
