//! `AttnBlock3DFix`: single-head spatial self-attention inside every frame.
//!
//! Upstream: <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/causalvideovae/model/modules/attention.py>

use burn::module::Module;
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::{CausalConv3d, LayerNorm};

/// `x + proj_out(attn(q(norm(x)), k(..), v(..)))`, attention over the `h*w` tokens of each frame
/// with scale `1/sqrt(c)`. No temporal mixing, so it needs no chunk cache.
#[derive(Module, Debug)]
pub struct AttnBlock3DFix<B: Backend> {
    pub norm: LayerNorm<B>,
    pub q: CausalConv3d<B>,
    pub k: CausalConv3d<B>,
    pub v: CausalConv3d<B>,
    pub proj_out: CausalConv3d<B>,
}

impl<B: Backend> AttnBlock3DFix<B> {
    pub fn new(in_channels: usize, device: &B::Device) -> Self {
        let conv = || CausalConv3d::new([in_channels, in_channels], 1, 1, 0, true, device);
        AttnBlock3DFix { norm: LayerNorm::new(in_channels, device), q: conv(), k: conv(), v: conv(), proj_out: conv() }
    }

    /// `[b, c, t, h, w]` -> `[b, c, t, h, w]`.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let h = self.norm.forward(x.clone());
        let [b, c, t, hh, ww] = h.dims();
        // [b, c, t, h, w] -> tokens [b*t, h*w, c]
        let tokens = |z: Tensor<B, 5>| z.permute([0, 2, 3, 4, 1]).reshape([b * t, hh * ww, c]);
        let q = tokens(self.q.forward(h.clone()));
        let k = tokens(self.k.forward(h.clone()));
        let v = tokens(self.v.forward(h));
        let scores = q.matmul(k.swap_dims(1, 2)).div_scalar((c as f64).sqrt());
        let a = softmax(scores, 2).matmul(v);
        let a = a.reshape([b, t, hh, ww, c]).permute([0, 4, 1, 2, 3]);
        x + self.proj_out.forward(a)
    }
}
