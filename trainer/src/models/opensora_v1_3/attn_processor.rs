//! `OpenSoraAttnProcessor2_0`: the attention computation of the v1.3 DiT, with 3D RoPE on
//! self-attention and the Skiparse ("sparse 1d") token regrouping.
//!
//! Upstream: <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/diffusion/opensora_v1_3/modules.py#L128-L312>
//! and `Attention.prepare_sparse_mask` (same file, L41-L86).
//!
//! Skiparse pads the flat token sequence (order t, h, w) with zeros to a multiple of `n²` and
//! splits it into `n` sub-sequences that attend independently; the extra batch index is
//! `k * b + batch`. "Single" takes every n-th token (`'(g k) b d -> g (k b) d'`), "group" takes
//! runs of `n` tokens every `n²` tokens (`'(n m k) b d -> (n k) (m b) d'`). Both are a reshape
//! and a permutation here. Cross-attention queries are regrouped upstream too, but every group
//! sees all text keys with the same bias, so it is computed densely (identical result).

use burn::tensor::backend::Backend;
use burn::tensor::module::attention;
use burn::tensor::ops::AttentionModuleOptions;
use burn::tensor::Tensor;

use super::rope3d::RopeTables;
use crate::models::autocast::{self, ComputeDType};

/// Additive bias of the zero tokens Skiparse appends (`F.pad(..., value=-9980.0)`).
pub const PAD_BIAS: f32 = -9980.0;
/// Additive bias of a masked video or text token (`(1 - mask) * -10000.0`).
pub const MASK_BIAS: f32 = -10000.0;

/// The attention layout of one transformer block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skiparse {
    /// Dense attention over all tokens (upstream `sparse_n` = 1).
    Full,
    /// Stride-`n` sub-sequences.
    Single(usize),
    /// Runs of `n` tokens every `n²` tokens.
    Group(usize),
}

impl Skiparse {
    /// Number of sub-sequences (1 for full attention).
    pub fn n(self) -> usize {
        match self {
            Skiparse::Full => 1,
            Skiparse::Single(n) | Skiparse::Group(n) => n,
        }
    }

    /// Padded length of a sequence of `len` tokens (a multiple of `n²`).
    pub fn padded_len(self, len: usize) -> usize {
        let nn = self.n() * self.n();
        len.div_ceil(nn) * nn
    }

    /// `[b, len, d]` -> `[n * b, padded_len / n, d]`, padding with `pad_value`.
    pub fn regroup<B: Backend>(self, x: Tensor<B, 3>, pad_value: f32) -> Tensor<B, 3> {
        let [b, len, d] = x.dims();
        let n = self.n();
        if n == 1 {
            return x;
        }
        let padded = self.padded_len(len);
        let x = if padded > len {
            let pad = Tensor::<B, 3>::full([b, padded - len, d], pad_value, &x.device());
            Tensor::cat(vec![x, pad], 1)
        } else {
            x
        };
        match self {
            Skiparse::Full => x,
            // token g*n + k -> sub-sequence k, position g
            Skiparse::Single(_) => {
                x.reshape([b, padded / n, n, d]).permute([2, 0, 1, 3]).reshape([n * b, padded / n, d])
            }
            // token a*n² + m*n + k -> sub-sequence m, position a*n + k
            Skiparse::Group(_) => {
                x.reshape([b, padded / (n * n), n, n, d]).permute([2, 0, 1, 3, 4]).reshape([n * b, padded / n, d])
            }
        }
    }

    /// Inverse of [`Skiparse::regroup`]: `[n * b, padded_len / n, d]` -> `[b, len, d]`.
    pub fn ungroup<B: Backend>(self, x: Tensor<B, 3>, len: usize) -> Tensor<B, 3> {
        let n = self.n();
        if n == 1 {
            return x;
        }
        let [nb, sub, d] = x.dims();
        let (b, padded) = (nb / n, sub * n);
        let x = match self {
            Skiparse::Full => x,
            Skiparse::Single(_) => x.reshape([n, b, sub, d]).permute([1, 2, 0, 3]).reshape([b, padded, d]),
            Skiparse::Group(_) => {
                x.reshape([n, b, padded / (n * n), n, d]).permute([1, 2, 0, 3, 4]).reshape([b, padded, d])
            }
        };
        x.narrow(1, 0, len)
    }

    /// Key bias `[b, len]` -> `[n * b, 1, 1, padded_len / n]`, padded keys at [`PAD_BIAS`].
    pub fn regroup_bias<B: Backend>(self, bias: Tensor<B, 2>) -> Tensor<B, 4> {
        let grouped = self.regroup(bias.unsqueeze_dim::<3>(2), PAD_BIAS);
        let [nb, sub, _] = grouped.dims();
        grouped.reshape([nb, 1, 1, sub])
    }
}

/// How one `Attention` module computes attention (the upstream processor's settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenSoraAttnProcessor2_0 {
    /// Sub-sequence layout of self-attention (`sparse1d`, `sparse_n`, `sparse_group`).
    pub skiparse: Skiparse,
    /// Cross-attention: no RoPE, keys and values from the caption.
    pub is_cross_attn: bool,
}

impl OpenSoraAttnProcessor2_0 {
    /// Self-attention core on projected `q`, `k`, `v` `[b, n, heads * d_head]` with key bias
    /// `[b, n]`: RoPE, Skiparse regrouping, SDPA (matmuls under autocast `compute`), and back.
    /// Returns `[b, n, heads * d_head]`.
    #[allow(clippy::too_many_arguments)]
    pub fn self_attention<B: Backend>(
        &self,
        q: Tensor<B, 3>,
        k: Tensor<B, 3>,
        v: Tensor<B, 3>,
        bias: Tensor<B, 2>,
        heads: usize,
        rope: &RopeTables<B>,
        compute: ComputeDType,
    ) -> Tensor<B, 3> {
        let [b, len, inner] = q.dims();
        let d_head = inner / heads;
        // RoPE before the regrouping, on [b, n, heads, d_head]
        let q = rope.apply(q.reshape([b, len, heads, d_head])).reshape([b, len, inner]);
        let k = rope.apply(k.reshape([b, len, heads, d_head])).reshape([b, len, inner]);
        let s = self.skiparse;
        let (q, k, v) = (s.regroup(q, 0.0), s.regroup(k, 0.0), s.regroup(v, 0.0));
        let bias = s.regroup_bias(bias);
        let out = sdpa(q, k, v, bias, heads, compute);
        s.ungroup(out, len)
    }

    /// Cross-attention core: `q` `[b, n, inner]`, `k`, `v` `[b, l, inner]`, key bias `[b, l]`.
    pub fn cross_attention<B: Backend>(
        &self,
        q: Tensor<B, 3>,
        k: Tensor<B, 3>,
        v: Tensor<B, 3>,
        bias: Tensor<B, 2>,
        heads: usize,
        compute: ComputeDType,
    ) -> Tensor<B, 3> {
        let [b, l] = bias.dims();
        sdpa(q, k, v, bias.reshape([b, 1, 1, l]), heads, compute)
    }
}

/// Multi-head scaled dot-product attention (scale `1/sqrt(d_head)`) on `[b, n, heads * d_head]`
/// with an additive key bias `[b, 1, 1, n_k]`. Under autocast the matmuls run in `compute` and
/// the scores and softmax in float32 ([`autocast::attention`]); without, Burn's fused op.
fn sdpa<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    bias: Tensor<B, 4>,
    heads: usize,
    compute: ComputeDType,
) -> Tensor<B, 3> {
    let [b, n_q, inner] = q.dims();
    let n_k = k.dims()[1];
    let d_head = inner / heads;
    // [b, heads, n, d_head]
    let split = |x: Tensor<B, 3>, n: usize| x.reshape([b, n, heads, d_head]).swap_dims(1, 2);
    let (q, k, v) = (split(q, n_q), split(k, n_k), split(v, n_k));
    let out = match compute {
        Some(c) => autocast::attention(q, k, v, bias, 1.0 / (d_head as f64).sqrt(), c),
        None => attention(q, k, v, None, Some(bias.expand([b, heads, n_q, n_k])), AttentionModuleOptions::default()),
    };
    out.swap_dims(1, 2).reshape([b, n_q, inner])
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::TensorData;

    type B = NdArray<f32>;

    /// The index rule of ARCH.md §2.4: which padded token sits at each (sub-sequence, position).
    fn expected(kind: Skiparse, len: usize) -> Vec<Vec<usize>> {
        let n = kind.n();
        let padded = kind.padded_len(len);
        match kind {
            Skiparse::Full => vec![(0..len).collect()],
            Skiparse::Single(_) => (0..n).map(|k| (k..padded).step_by(n).collect()).collect(),
            Skiparse::Group(_) => (0..n)
                .map(|m| (0..padded / (n * n)).flat_map(|a| (0..n).map(move |j| a * n * n + m * n + j)).collect())
                .collect(),
        }
    }

    #[test]
    fn regroup_matches_the_index_rule_and_inverts() {
        let device = Default::default();
        for len in [16, 24, 72, 37] {
            for kind in [Skiparse::Single(4), Skiparse::Group(4)] {
                let b = 2;
                // value = 1000 * batch + token + 1, zero padding
                let values: Vec<f32> =
                    (0..b).flat_map(|bi| (0..len).map(move |i| (1000 * bi + i + 1) as f32)).collect();
                let x = Tensor::<B, 3>::from_data(TensorData::new(values.clone(), [b, len, 1]), &device);
                let grouped = kind.regroup(x.clone(), 0.0);
                let sub = kind.padded_len(len) / 4;
                assert_eq!(grouped.dims(), [4 * b, sub, 1]);
                let got = grouped.clone().into_data().to_vec::<f32>().expect("f32 data");
                for (k, idx) in expected(kind, len).iter().enumerate() {
                    for bi in 0..b {
                        for (pos, &tok) in idx.iter().enumerate() {
                            let want = if tok < len { (1000 * bi + tok + 1) as f32 } else { 0.0 };
                            assert_eq!(
                                got[(k * b + bi) * sub + pos],
                                want,
                                "{kind:?} len {len} k {k} b {bi} pos {pos}"
                            );
                        }
                    }
                }
                let back = kind.ungroup(grouped, len).into_data().to_vec::<f32>().expect("f32 data");
                assert_eq!(back, values);
            }
        }
    }

    #[test]
    fn padded_keys_get_the_pad_bias() {
        let device = Default::default();
        let bias = Tensor::<B, 2>::zeros([1, 24], &device);
        let grouped = Skiparse::Single(4).regroup_bias(bias);
        assert_eq!(grouped.dims(), [4, 1, 1, 8]);
        let v = grouped.into_data().to_vec::<f32>().expect("f32 data");
        // tokens 24..32 are padding: positions 6 and 7 of every sub-sequence
        for k in 0..4 {
            assert_eq!(&v[k * 8..k * 8 + 6], &[0.0; 6]);
            assert_eq!(&v[k * 8 + 6..k * 8 + 8], &[PAD_BIAS; 2]);
        }
    }
}
