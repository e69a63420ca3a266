//! Multi-head attention in three interchangeable forms ([`AttentionKind`]), all computing
//! `softmax(q k^T * scale + bias) v` per head on `q` `[b, n_q, heads*d]`, `k`/`v` `[b, n_kv, heads*d]`,
//! returning `[b, n_q, heads*d]`.
//!
//! `bias` is an optional additive float tensor of rank 4, shape `[b|1, heads|1, n_q|1, n_kv]`
//! (each of the first three axes either full or 1), same dtype as `q`:
//! - `OnnxAttention`: ONNX `Attention` (opset 23), 3-D form (`q_num_heads = kv_num_heads = heads`,
//!   `scale` attribute), the bias passed as `attn_mask`. The spec broadcasts the mask, but ONNX
//!   Runtime 1.32 requires its query axis to equal `n_q`, so the bias is first `Expand`ed to
//!   `[b|1, heads|1, n_q, n_kv]`.
//! - `MsMultiHeadAttention`: `com.microsoft.MultiHeadAttention` (`num_heads`, `scale`), the bias passed
//!   as `attention_bias`, which must be `[b|1, heads|1, n_q, n_kv]` (expanded the same way).
//!   tract 0.23.9 parses this op only without bias inputs, so with a bias this form is ORT-only.
//! - `Decomposed`: Reshape/Transpose to heads, MatMul, Mul by scale, Add bias, Softmax (kept in f32
//!   by `cast_precision`), MatMul, Transpose/Reshape back.
//! - `Auto`: `MsMultiHeadAttention` for a call without a bias (ONNX Runtime 1.32 runs it with its
//!   CPU flash kernel, `MlasFlashAttention`, when there is no bias, mask or past state: memory
//!   linear in the sequence; tract lowers it to its flash SDPA), `OnnxAttention` for a call with one.
//!
//! [`GraphBuilder::attention_key_bias_channel`] writes a call with a key-padding bias as a bias-free
//! call on one more channel per head, so that the fused kernels above run it.

use osp_graphs::AttentionKind;

use super::{Attr, GraphBuilder, Value};
use crate::error::{Error, Result};

/// Which attention form, with how many heads and which softmax scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionSpec {
    pub kind: AttentionKind,
    pub num_heads: usize,
    pub scale: f64,
}

impl GraphBuilder {
    /// Multi-head attention of the given form; see the module docs for the accepted shapes.
    pub fn attention(
        &mut self,
        spec: &AttentionSpec,
        q: &Value,
        k: &Value,
        v: &Value,
        bias: Option<&Value>,
    ) -> Result<Value> {
        let AttentionSpec { kind, num_heads, scale } = *spec;
        for x in [k, v] {
            Self::same_dtype("attention", q, x)?;
        }
        for x in [q, k, v] {
            if x.rank().is_some_and(|r| r != 3) {
                return Err(Error::builder("attention", format!("`{}` must be [b, n, heads*d]", x.name())));
            }
        }
        if let Some(b) = bias {
            Self::same_dtype("attention", q, b)?;
            if b.rank().is_some_and(|r| r != 4) {
                return Err(Error::builder(
                    "attention",
                    format!("bias `{}` must be 4-D [b|1, heads|1, n_q|1, n_kv]", b.name()),
                ));
            }
        }
        if num_heads == 0 {
            return Err(Error::builder("attention", "num_heads must be positive"));
        }
        let heads = num_heads as i64;
        let kind = match (kind, bias) {
            (AttentionKind::Auto, None) => AttentionKind::MsMultiHeadAttention,
            (AttentionKind::Auto, Some(_)) => AttentionKind::OnnxAttention,
            (kind, _) => kind,
        };
        match kind {
            AttentionKind::OnnxAttention => {
                let bias = bias.map(|b| self.expand_query_axis(b, q)).transpose()?;
                let bias = bias.as_ref();
                let attrs = vec![
                    ("q_num_heads", Attr::Int(heads)),
                    ("kv_num_heads", Attr::Int(heads)),
                    ("scale", Attr::Float(scale as f32)),
                ];
                Ok(self
                    .node("Attention", "", &[Some(q), Some(k), Some(v), bias], attrs, &[(q.dtype(), Some(3))])
                    .remove(0))
            }
            AttentionKind::MsMultiHeadAttention => {
                let bias = bias.map(|b| self.expand_query_axis(b, q)).transpose()?;
                let attrs = vec![("num_heads", Attr::Int(heads)), ("scale", Attr::Float(scale as f32))];
                let inputs = [Some(q), Some(k), Some(v), None, None, bias.as_ref()];
                Ok(self.node("MultiHeadAttention", crate::MS_DOMAIN, &inputs, attrs, &[(q.dtype(), Some(3))]).remove(0))
            }
            AttentionKind::Decomposed => {
                // [b, n, heads*d] -> [b, n, heads, d]
                let qh = self.reshape(q, &[0, 0, heads, -1]);
                let kh = self.reshape(k, &[0, 0, heads, -1]);
                let vh = self.reshape(v, &[0, 0, heads, -1]);
                let qh = self.transpose(&qh, &[0, 2, 1, 3])?; // [b, h, n_q, d]
                let kt = self.transpose(&kh, &[0, 2, 3, 1])?; // [b, h, d, n_kv]
                let vh = self.transpose(&vh, &[0, 2, 1, 3])?; // [b, h, n_kv, d]
                let scores = self.matmul(&qh, &kt)?; // [b, h, n_q, n_kv]
                let s = self.scalar_like(scale, q)?;
                let scores = self.mul(&scores, &s)?;
                let scores = match bias {
                    Some(b) => self.add(&scores, b)?,
                    None => scores,
                };
                let probs = self.in_f32(|b| b.softmax(&scores, -1))?;
                let out = self.matmul(&probs, &vh)?; // [b, h, n_q, d]
                let out = self.transpose(&out, &[0, 2, 1, 3])?; // [b, n_q, h, d]
                Ok(self.reshape(&out, &[0, 0, -1]))
            }
            AttentionKind::Auto => unreachable!("Auto is resolved above"),
            AttentionKind::None => Err(Error::builder("attention", "AttentionKind::None has no attention form")),
        }
    }

    /// [`Self::attention`] with a key bias `key_bias` `[b, 1, 1, n_kv]` (same `b` as `k`) carried by
    /// one more channel per head instead of a bias input: `q` gets a channel of ones, `k` the
    /// channel `key_bias / scale`, `v` a channel of zeros (dropped from the output), so
    /// `scale * (q'.k') = scale * (q.k) + bias` and the call itself is bias-free (the fused
    /// kernels' linear-memory paths; equal head sizes for tract's flash SDPA).
    ///
    /// Contract: keys with bias 0 score exactly as with a bias input (the extra term is `1 * 0`);
    /// a key with a large negative bias (a padded key) scores that bias up to one more rounding of
    /// the sum. So the output equals the bias-input call's (`Approx::Close`) on every query row
    /// with at least one key at bias 0; rows whose keys are all padded may differ and must be
    /// discarded by the caller (the DiT's skiparse padding: such rows are padded queries).
    pub fn attention_key_bias_channel(
        &mut self,
        spec: &AttentionSpec,
        q: &Value,
        k: &Value,
        v: &Value,
        key_bias: &Value,
    ) -> Result<Value> {
        if key_bias.rank().is_some_and(|r| r != 4) {
            return Err(Error::builder(
                "attention",
                format!("key bias `{}` must be 4-D [b, 1, 1, n_kv]", key_bias.name()),
            ));
        }
        Self::same_dtype("attention", q, key_bias)?;
        if !(spec.scale.is_finite() && spec.scale > 0.0) {
            return Err(Error::builder("attention", format!("scale must be positive, got {}", spec.scale)));
        }
        let heads = spec.num_heads as i64;
        // one more channel on the last axis of [b, n, heads, d]
        let extra = [0, 0, 0, 0, 0, 0, 0, 1];
        let qh = self.reshape(q, &[0, 0, heads, -1]);
        let qh = self.pad(&qh, &extra, "constant", Some(1.0))?;
        let vh = self.reshape(v, &[0, 0, heads, -1]);
        let vh = self.pad(&vh, &extra, "constant", Some(0.0))?;
        let kh = self.reshape(k, &[0, 0, heads, -1]);
        let inv_scale = self.scalar_like(1.0 / spec.scale, key_bias)?;
        let c = self.mul(key_bias, &inv_scale)?;
        let c = self.reshape(&c, &[0, -1, 1, 1]); // [b, n_kv, 1, 1]
        let per_head = self.const_i64(&[1, 1, heads, 1]);
        let c = self.expand(&c, &per_head, Some(4)); // [b, n_kv, heads, 1]
        let kh = self.concat(&[&kh, &c], 3)?;
        let [q1, k1, v1] = [&qh, &kh, &vh].map(|x| self.reshape(x, &[0, 0, -1]));
        let out = self.attention(spec, &q1, &k1, &v1, None)?; // [b, n_q, heads*(d+1)]
        let out = self.reshape(&out, &[0, 0, heads, -1]);
        let out = self.slice(&out, &[0], &[-1], &[3], None)?; // drop the zero channel
        Ok(self.reshape(&out, &[0, 0, -1]))
    }

    /// `bias` `[b|1, h|1, n_q|1, n_kv]` -> `[b|1, h|1, n_q, n_kv]`: `Expand`'s bidirectional broadcast
    /// with `[1, 1, n_q, 1]` sets the query axis and leaves the others as they are.
    fn expand_query_axis(&mut self, bias: &Value, q: &Value) -> Result<Value> {
        let n_q = self.shape(q, Some(1), Some(2));
        let one = self.const_i64(&[1]);
        let target = self.concat(&[&one, &one, &n_q, &one], 0)?;
        Ok(self.expand(bias, &target, Some(4)))
    }
}
