//! `OpenSoraAttnProcessor2_0`: self-attention with 3D RoPE and Skiparse regrouping, and dense
//! cross-attention with the text key-padding bias, around one standard attention call
//! ([`GraphBuilder::attention`], any [`osp_graphs::AttentionKind`]).
//!
//! Upstream: <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/diffusion/opensora_v1_3/modules.py#L128-L312>
//!
//! Skiparse is expressed with `Concat` (zero padding), `Reshape`, `Transpose` and `Slice` only:
//! - the flat tokens (order t, h, w) are padded with zeros to `Np = ceil(N / n²) * n²` (`N` is
//!   symbolic, so the padding is `Concat` of `n²` zeros then `Slice` to `Np`: no dynamic `Pad`,
//!   which tract cannot lower, and no zero-sized tensors);
//! - "single" takes every n-th token: `[b, S, n, D] -> [b, n, S, D]`; "group" takes runs of `n`
//!   tokens every `n²`: `[b, A, n, n, D] -> [b, n, A, n, D]`; both then merge to `[b * n, S, D]`
//!   with `S = Np / n`, the sub-sequence index inner (`bb * n + k`; upstream orders it `k * b + bb`,
//!   which only permutes independent attention problems);
//! - padded keys get [`PAD_BIAS`]. The pipeline never masks video tokens, so that is the only
//!   self-attention bias: it is computed in-graph (`Range(Np) < N`, regrouped like the tokens,
//!   tiled over the batch) because `N` is only known at run time. Full-attention layers have no
//!   bias at all, so fused kernels run them unmasked. A skiparse layer always carries the bias
//!   input; when `N` is a multiple of `n²` its values are all zero. With the `auto` and `ms`
//!   attention forms the `Fast` lowering passes that bias through one more query/key channel per
//!   head instead ([`GraphBuilder::attention_key_bias_channel`]), so every self-attention call is
//!   bias-free (ONNX Runtime's flash `MultiHeadAttention`); otherwise it is the bias input.
//!
//! Cross-attention queries are regrouped upstream too, but every group sees all text keys with the
//! same bias, so it is computed densely (identical result, ARCH.md §2.4).

use osp_graphs::{AttentionKind, DType};
use osp_trainer::models::opensora_v1_3::{Skiparse, PAD_BIAS};

use crate::builder::{AttentionSpec, GraphBuilder, Value};
use crate::error::{Error, Result};
use crate::options::Lowering;
use crate::tensor::HostTensor;

use super::patch_embed_2d::Grid;

/// The symbolic Skiparse sizes for one `n` (each 1-D i64 `[1]`), and the padded-key bias.
#[derive(Debug, Clone)]
pub(crate) struct SkiparseGrid {
    n: usize,
    /// Padded length `Np`.
    np: Value,
    /// Sub-sequence length `Np / n`.
    s: Value,
    /// `Np / n²`.
    a: Value,
    /// `[b * n, 1, 1, S]` per layout kind: 0 on real keys, [`PAD_BIAS`] on padded ones.
    single_bias: Option<Value>,
    group_bias: Option<Value>,
}

fn i64_scalar(g: &mut GraphBuilder, v: i64) -> Result<Value> {
    Ok(g.constant(&HostTensor::from_i64(vec![], &[v])?))
}

impl SkiparseGrid {
    pub(crate) fn new(g: &mut GraphBuilder, grid: &Grid, n: usize, kinds: &[Skiparse]) -> Result<Self> {
        if n < 2 {
            return Err(Error::Config(format!("skiparse needs n >= 2, got {n}")));
        }
        g.scoped("skiparse", |g| {
            let nn = (n * n) as i64;
            let round = g.const_i64(&[nn - 1]);
            let nn_v = g.const_i64(&[nn]);
            let n_v = g.const_i64(&[n as i64]);
            let up = g.add(&grid.n, &round)?;
            let blocks = g.div(&up, &nn_v)?; // ceil(N / n²) = A
            let np = g.mul(&blocks, &nn_v)?;
            let s = g.mul(&blocks, &n_v)?;
            let mut sg = SkiparseGrid { n, np, s, a: blocks, single_bias: None, group_bias: None };
            if kinds.contains(&Skiparse::Single(n)) {
                sg.single_bias = Some(sg.pad_bias(g, grid, Skiparse::Single(n))?);
            }
            if kinds.contains(&Skiparse::Group(n)) {
                sg.group_bias = Some(sg.pad_bias(g, grid, Skiparse::Group(n))?);
            }
            Ok(sg)
        })
    }

    /// `[b*n, 1, 1, S]` key bias of the padded positions under `kind`.
    fn pad_bias(&self, g: &mut GraphBuilder, grid: &Grid, kind: Skiparse) -> Result<Value> {
        g.in_f32(|g| {
            let zero = i64_scalar(g, 0)?;
            let one = i64_scalar(g, 1)?;
            let limit = g.squeeze(&self.np, &[0]);
            let pos = g
                .node("Range", "", &[Some(&zero), Some(&limit), Some(&one)], vec![], &[(DType::I64, Some(1))])
                .remove(0); // [Np]
            let real = g.node("Less", "", &[Some(&pos), Some(&grid.n)], vec![], &[(DType::Bool, Some(1))]).remove(0);
            let keep = g.scalar(0.0, DType::F32)?;
            let pad = g.scalar(PAD_BIAS as f64, DType::F32)?;
            let bias = g.where_(&real, &keep, &pad)?; // [Np]
            let bias = g.reshape(&bias, &[1, -1, 1]);
            let grouped = self.permute(g, kind, &bias, 1)?; // [n, S, 1]
            let grouped = g.reshape(&grouped, &[self.n as i64, 1, 1, -1]); // [n, 1, 1, S]
            let reps = g.const_i64(&[1, 1, 1]);
            let reps = g.concat(&[&grid.b, &reps], 0)?;
            Ok(g.tile(&grouped, &reps)) // [b * n, 1, 1, S], index bb * n + k
        })
    }

    /// Padded tokens `[b, Np, dim]` -> `[b * n, S, dim]`.
    fn permute(&self, g: &mut GraphBuilder, kind: Skiparse, x: &Value, dim: usize) -> Result<Value> {
        let (n, d) = (self.n as i64, dim as i64);
        let x = match kind {
            // token s*n + k -> sub-sequence k, position s
            Skiparse::Single(_) => {
                let x = g.reshape(x, &[0, -1, n, d]); // [b, S, n, d]
                g.transpose(&x, &[0, 2, 1, 3])? // [b, n, S, d]
            }
            // token a*n² + m*n + j -> sub-sequence m, position a*n + j
            Skiparse::Group(_) => {
                let x = g.reshape(x, &[0, -1, n, n, d]); // [b, A, n, n, d]
                g.transpose(&x, &[0, 2, 1, 3, 4])? // [b, n, A, n, d]
            }
            Skiparse::Full => return Ok(x.clone()),
        };
        let head = g.const_i64(&[-1]);
        let tail = g.const_i64(&[d]);
        let shape = g.concat(&[&head, &self.s, &tail], 0)?;
        Ok(g.reshape_to(&x, &shape, Some(3)))
    }

    /// Tokens `[b, N, dim]` -> `[b * n, S, dim]`, zero-padded.
    pub(crate) fn regroup(
        &self,
        g: &mut GraphBuilder,
        grid: &Grid,
        kind: Skiparse,
        x: &Value,
        dim: usize,
    ) -> Result<Value> {
        let nn = (self.n * self.n) as i64;
        let shape_tail = g.const_i64(&[nn, dim as i64]);
        let shape = g.concat(&[&grid.b, &shape_tail], 0)?;
        let zero = g.scalar_like(0.0, x)?;
        let zeros = g.expand(&zero, &shape, Some(3)); // [b, n², dim]
        let padded = g.concat(&[x, &zeros], 1)?;
        let start = g.const_i64(&[0]);
        let axis = g.const_i64(&[1]);
        let padded = g.slice_with(&padded, &start, &self.np, &axis, None); // [b, Np, dim]
        self.permute(g, kind, &padded, dim)
    }

    /// Inverse of [`Self::regroup`]: `[b * n, S, dim]` -> `[b, N, dim]`.
    pub(crate) fn ungroup(
        &self,
        g: &mut GraphBuilder,
        grid: &Grid,
        kind: Skiparse,
        x: &Value,
        dim: usize,
    ) -> Result<Value> {
        let (n, d) = (self.n as i64, dim as i64);
        let head = g.const_i64(&[-1, n]);
        let x = match kind {
            Skiparse::Single(_) => {
                let tail = g.const_i64(&[d]);
                let shape = g.concat(&[&head, &self.s, &tail], 0)?;
                let x = g.reshape_to(x, &shape, Some(4)); // [b, n, S, d]
                g.transpose(&x, &[0, 2, 1, 3])? // [b, S, n, d]
            }
            Skiparse::Group(_) => {
                let tail = g.const_i64(&[n, d]);
                let shape = g.concat(&[&head, &self.a, &tail], 0)?;
                let x = g.reshape_to(x, &shape, Some(5)); // [b, n, A, n, d]
                g.transpose(&x, &[0, 2, 1, 3, 4])? // [b, A, n, n, d]
            }
            Skiparse::Full => return Ok(x.clone()),
        };
        let x = g.reshape(&x, &[0, -1, d]); // [b, Np, d]
        let start = g.const_i64(&[0]);
        let axis = g.const_i64(&[1]);
        Ok(g.slice_with(&x, &start, &grid.n, &axis, None))
    }

    fn bias(&self, kind: Skiparse) -> Result<&Value> {
        let b = match kind {
            Skiparse::Single(_) => self.single_bias.as_ref(),
            Skiparse::Group(_) => self.group_bias.as_ref(),
            Skiparse::Full => None,
        };
        b.ok_or_else(|| Error::Config(format!("no skiparse bias prepared for {kind:?}")))
    }
}

/// Self-attention core on RoPE'd `q`, `k` and `v` `[b, n, heads * d]` -> `[b, n, heads * d]`.
pub(crate) fn self_attention(
    g: &mut GraphBuilder,
    spec: &AttentionSpec,
    grid: &Grid,
    skiparse: Option<&SkiparseGrid>,
    kind: Skiparse,
    (q, k, v): (&Value, &Value, &Value),
    inner: usize,
) -> Result<Value> {
    match (kind, skiparse) {
        (Skiparse::Full, _) => g.attention(spec, q, k, v, None),
        (_, Some(sg)) if sg.n == kind.n() => {
            let q = sg.regroup(g, grid, kind, q, inner)?;
            let k = sg.regroup(g, grid, kind, k, inner)?;
            let v = sg.regroup(g, grid, kind, v, inner)?;
            let bias = sg.bias(kind)?.clone();
            // A sub-sequence whose keys are all padded holds only padded queries (dropped by
            // `ungroup`), which is the contract of the bias channel.
            // The channel only pays where a bias-free call reaches a flash kernel (`MultiHeadAttention`
            // in ONNX Runtime); ONNX `Attention` and the decomposed form take the bias input as
            // cheaply, and one more channel per head costs them GEMM efficiency.
            let channel = g.lowering() == Lowering::Fast
                && matches!(spec.kind, AttentionKind::Auto | AttentionKind::MsMultiHeadAttention);
            let out = if channel {
                g.attention_key_bias_channel(spec, &q, &k, &v, &bias)?
            } else {
                g.attention(spec, &q, &k, &v, Some(&bias))?
            }; // [b * n, S, inner]
            sg.ungroup(g, grid, kind, &out, inner)
        }
        _ => Err(Error::Config(format!("no skiparse grid prepared for {kind:?}"))),
    }
}
