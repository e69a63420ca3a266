//! Entries of the heterogeneous `nn.Sequential`s (`down1`, `down2`, `mid`, `up2`, `up1`, `layer`,
//! `connect_l*`). A Burn enum whose variant names are skipped in paths, so `down1.3.conv.weight`
//! stays the official key (see [`crate::remap::SKIP_ENUM_VARIANTS`]).

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::cache::TemporalCache;
use super::{
    AttnBlock3DFix, Conv2d, Downsample, ResnetBlock2D, ResnetBlock3D, Spatial2xTime2x3DDownsample,
    Spatial2xTime2x3DUpsample, Upsample,
};

/// One entry of an upstream `nn.Sequential`.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Layer<B: Backend> {
    Conv2d(Conv2d<B>),
    ResnetBlock2D(ResnetBlock2D<B>),
    ResnetBlock3D(ResnetBlock3D<B>),
    AttnBlock3DFix(AttnBlock3DFix<B>),
    Downsample(Downsample<B>),
    Upsample(Upsample<B>),
    Spatial2xTime2x3DDownsample(Spatial2xTime2x3DDownsample<B>),
    Spatial2xTime2x3DUpsample(Spatial2xTime2x3DUpsample<B>),
}

impl<B: Backend> Layer<B> {
    /// Whole clip, `[b, c, t, h, w]`.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        match self {
            Layer::Conv2d(m) => m.forward(x),
            Layer::ResnetBlock2D(m) => m.forward(x),
            Layer::ResnetBlock3D(m) => m.forward(x),
            Layer::AttnBlock3DFix(m) => m.forward(x),
            Layer::Downsample(m) => m.forward(x),
            Layer::Upsample(m) => m.forward(x),
            Layer::Spatial2xTime2x3DDownsample(m) => m.forward(x),
            Layer::Spatial2xTime2x3DUpsample(m) => m.forward(x),
        }
    }

    /// One temporal chunk; `path` is the official path of this entry (e.g. `decoder.mid.0`).
    pub fn forward_cached(&self, x: Tensor<B, 5>, path: &str, cache: &mut TemporalCache<B>) -> Tensor<B, 5> {
        match self {
            Layer::ResnetBlock3D(m) => m.forward_cached(x, path, cache),
            Layer::Spatial2xTime2x3DDownsample(m) => m.forward_cached(x, path, cache),
            Layer::Spatial2xTime2x3DUpsample(m) => m.forward_cached(x, path, cache),
            // per-frame layers have no temporal state
            other => other.forward(x),
        }
    }
}

/// Runs a sequential over a whole clip.
pub(crate) fn sequential<B: Backend>(layers: &[Layer<B>], x: Tensor<B, 5>) -> Tensor<B, 5> {
    layers.iter().fold(x, |h, l| l.forward(h))
}

/// Runs a sequential over one chunk; entry `i` caches under `<path>.<i>`.
pub(crate) fn sequential_cached<B: Backend>(
    layers: &[Layer<B>],
    x: Tensor<B, 5>,
    path: &str,
    cache: &mut TemporalCache<B>,
) -> Tensor<B, 5> {
    layers.iter().enumerate().fold(x, |h, (i, l)| l.forward_cached(h, &format!("{path}.{i}"), cache))
}
