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
            AttentionKind::None => Err(Error::builder("attention", "AttentionKind::None has no attention form")),
        }
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
