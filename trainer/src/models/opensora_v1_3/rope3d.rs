//! `RoPE3D` and `PositionGetter3D`: rotary position embedding over (t, y, x) latent-patch
//! positions, applied to self-attention queries and keys.
//!
//! Upstream: <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/diffusion/common.py#L44-L112>
//!
//! Each head splits into three equal chunks `[t | y | x]` of size `D`; chunk `c` is rotated by
//! `pos_c / interpolation_scale_c * 10000^(-2j/D)` with the NeoX "rotate_half" pairing
//! (`x * cos + cat(-x2, x1) * sin`). Tables are computed in f32 as upstream does on f32 inputs.

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

/// The RoPE3D settings (no parameters).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoPE3D {
    /// Frequency base (`freq`, 10000).
    pub base: f32,
    /// `(interpolation_scale_t, interpolation_scale_h, interpolation_scale_w)`.
    pub interpolation_scale_thw: [f32; 3],
}

/// cos/sin rows for every token of a `t x h x w` grid (order t, h, w), `[n, d_head]`.
#[derive(Debug, Clone)]
pub struct RopeTables<B: Backend> {
    pub cos: Tensor<B, 2>,
    pub sin: Tensor<B, 2>,
}

impl RoPE3D {
    pub fn new(interpolation_scale_thw: [f32; 3]) -> Self {
        RoPE3D { base: 10000.0, interpolation_scale_thw }
    }

    /// `cos`, `sin` of one axis: `[seq_len, dim]` as `get_cos_sin` (row-major `Vec`s).
    fn axis_table(&self, dim: usize, seq_len: usize, scale: f32) -> (Vec<f32>, Vec<f32>) {
        let inv_freq: Vec<f32> = (0..dim).step_by(2).map(|j| 1.0 / self.base.powf(j as f32 / dim as f32)).collect();
        let mut cos = Vec::with_capacity(seq_len * dim);
        let mut sin = Vec::with_capacity(seq_len * dim);
        for p in 0..seq_len {
            let t = p as f32 / scale;
            // freqs = cat(freqs, freqs)
            for _ in 0..2 {
                for f in &inv_freq {
                    let angle = t * f;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        (cos, sin)
    }

    /// Tables for a `t x h x w` token grid and heads of `d_head` (a multiple of 6).
    pub fn tables<B: Backend>(&self, d_head: usize, t: usize, h: usize, w: usize, device: &B::Device) -> RopeTables<B> {
        let dim = d_head / 3;
        let [st, sh, sw] = self.interpolation_scale_thw;
        let axes = [self.axis_table(dim, t, st), self.axis_table(dim, h, sh), self.axis_table(dim, w, sw)];
        let n = t * h * w;
        let mut cos = Vec::with_capacity(n * d_head);
        let mut sin = Vec::with_capacity(n * d_head);
        for ti in 0..t {
            for yi in 0..h {
                for xi in 0..w {
                    for (axis, pos) in axes.iter().zip([ti, yi, xi]) {
                        cos.extend_from_slice(&axis.0[pos * dim..(pos + 1) * dim]);
                        sin.extend_from_slice(&axis.1[pos * dim..(pos + 1) * dim]);
                    }
                }
            }
        }
        RopeTables {
            cos: Tensor::from_data(TensorData::new(cos, [n, d_head]), device),
            sin: Tensor::from_data(TensorData::new(sin, [n, d_head]), device),
        }
    }
}

impl<B: Backend> RopeTables<B> {
    /// Rotates `[b, n, heads, d_head]`.
    pub fn apply(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, n, heads, d_head] = x.dims();
        let half = d_head / 6;
        // rotate_half inside each of the 3 chunks: [.., 3, 2, half] -> cat(-x2, x1)
        let parts = x.clone().reshape([b, n, heads, 3, 2, half]);
        let x1 = parts.clone().narrow(4, 0, 1);
        let x2 = parts.narrow(4, 1, 1);
        let rotated = Tensor::cat(vec![x2.neg(), x1], 4).reshape([b, n, heads, d_head]);
        let cos = self.cos.clone().reshape([1, n, 1, d_head]);
        let sin = self.sin.clone().reshape([1, n, 1, d_head]);
        x * cos + rotated * sin
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;

    type B = NdArray<f32>;

    #[test]
    fn rotates_each_chunk_by_its_axis_position() {
        // d_head 6: chunk size 2, one frequency (1.0) per axis; token (t=1, y=0, x=2) of a 2x1x3 grid.
        let device = Default::default();
        let rope = RoPE3D::new([1.0, 1.0, 1.0]);
        let tables = rope.tables::<B>(6, 2, 1, 3, &device);
        let x = Tensor::<B, 4>::from_data(TensorData::new(vec![1.0f32; 6 * 6], [1, 6, 1, 6]), &device);
        let y = tables.apply(x).into_data().to_vec::<f32>().expect("f32 data");
        let token = 3 + 2; // t=1 -> 3 tokens in, x=2
        let row = &y[token * 6..token * 6 + 6];
        // (1, 1) rotated by angle a: (cos a - sin a, cos a + sin a)
        for (chunk, angle) in [(0, 1.0f32), (1, 0.0), (2, 2.0)] {
            assert!((row[2 * chunk] - (angle.cos() - angle.sin())).abs() < 1e-6);
            assert!((row[2 * chunk + 1] - (angle.cos() + angle.sin())).abs() < 1e-6);
        }
    }
}
