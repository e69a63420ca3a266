//! `Spatial2xTime2x3DUpsample` (t_interpolation "trilinear"): frame 0 is upsampled spatially only,
//! frames 1.. linearly x2 in time then bilinearly x2 in space, then a causal 3x3x3 conv.
//!
//! Upstream: <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/causalvideovae/model/modules/updownsample.py>

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::cache::TemporalCache;
use super::ops::{frames, interleave, upsample_bilinear_hw_2x, upsample_linear_2x};
use super::CausalConv3d;

/// Key `<name>.conv.conv.{weight,bias}`.
#[derive(Module, Debug)]
pub struct Spatial2xTime2x3DUpsample<B: Backend> {
    pub conv: CausalConv3d<B>,
}

impl<B: Backend> Spatial2xTime2x3DUpsample<B> {
    pub fn new(in_channels: usize, out_channels: usize, device: &B::Device) -> Self {
        Spatial2xTime2x3DUpsample { conv: CausalConv3d::new([in_channels, out_channels], 3, 1, 1, true, device) }
    }

    /// `[b, c, t, h, w]` -> `[b, c', 2t - 1, 2h, 2w]`.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let t = frames(&x);
        let x = if t > 1 {
            let first = x.clone().narrow(2, 0, 1);
            let rest = upsample_linear_2x(x.narrow(2, 1, t - 1), 2);
            Tensor::cat(vec![first, rest], 2)
        } else {
            x
        };
        self.conv.forward(upsample_bilinear_hw_2x(x))
    }

    /// One temporal chunk, exact for any chunking.
    ///
    /// The odd output after frame `i` needs frame `i + 1`, so the time interpolation runs one
    /// output frame behind: it is emitted when the next frame arrives (its predecessor is cached
    /// under `<path>.interpolation`), and the last chunk flushes it with the edge clamp. Output
    /// frames per chunk of `n` input frames: first chunk `2n - 1` (`1` when `n == 1`), later chunks
    /// `2n`, plus `1` on the last chunk when it is not the first.
    pub fn forward_cached(&self, x: Tensor<B, 5>, path: &str, cache: &mut TemporalCache<B>) -> Tensor<B, 5> {
        let key = format!("{path}.interpolation");
        let mut parts = Vec::new();
        let mut rest = Some(x);
        if cache.is_first() {
            let x = rest.take().expect("set above");
            let t = frames(&x);
            parts.push(x.clone().narrow(2, 0, 1));
            if t > 1 {
                rest = Some(x.narrow(2, 1, t - 1));
            }
        }
        if let Some(x) = rest {
            let n = frames(&x);
            let (window, has_prev) = match cache.tails.remove(&key) {
                Some(prev) => (Tensor::cat(vec![prev, x.clone()], 2), true),
                None => (Tensor::cat(vec![x.clone().narrow(2, 0, 1), x.clone()], 2), false),
            };
            let before = window.clone().narrow(2, 0, n);
            let after = window.narrow(2, 1, n);
            // odd output of the previous frame, then even output of the current one
            let odd = before.clone().mul_scalar(0.75) + after.clone().mul_scalar(0.25);
            let even = after.mul_scalar(0.75) + before.mul_scalar(0.25);
            let mut seq = interleave(odd, even, 2);
            if !has_prev {
                seq = seq.narrow(2, 1, 2 * n - 1);
            }
            parts.push(seq);
            let last = x.narrow(2, n - 1, 1);
            if cache.is_last() {
                parts.push(last.clone().mul_scalar(0.75) + last.mul_scalar(0.25));
            } else {
                cache.tails.insert(key, last);
            }
        }
        let x = upsample_bilinear_hw_2x(Tensor::cat(parts, 2));
        self.conv.forward_cached(x, &format!("{path}.conv"), cache)
    }
}
