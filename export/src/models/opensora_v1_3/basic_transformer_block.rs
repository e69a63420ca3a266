//! `BasicTransformerBlock` of the v1.3 DiT: adaLN-single modulated self-attention (3D RoPE,
//! Skiparse), un-normalised and un-gated cross-attention, modulated feed-forward.
//!
//! Upstream: <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/diffusion/opensora_v1_3/modules.py#L315-L448>
//!
//! ```text
//! shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = scale_shift_table + t6
//! x = x + gate_msa * attn1(norm1(x) * (1 + scale_msa) + shift_msa)
//! x = x + attn2(x, caption)                  # no norm, no gate
//! x = x + gate_mlp * ff(norm2(x) * (1 + scale_mlp) + shift_mlp)
//! ```

use osp_trainer::models::opensora_v1_3::Skiparse;

use crate::builder::{AttentionSpec, GraphBuilder, Value};
use crate::error::Result;

use super::attn_processor::{self_attention, SkiparseGrid};
use super::patch_embed_2d::Grid;
use super::rope3d::{apply_rope, RopeTables};
use super::weights::DitWeights;

/// What every block of one forward pass shares.
pub(crate) struct BlockInputs {
    /// adaLN-single modulation `[b, 6, d]`.
    pub t6: Value,
    /// Projected caption `[b, l, d]`.
    pub caption: Value,
    /// Text key bias `[b, 1, 1, l]`.
    pub text_bias: Value,
    pub rope: RopeTables,
    pub grid: Grid,
    pub skiparse: Option<SkiparseGrid>,
}

/// Sizes and settings of every block.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockConfig {
    pub hidden_size: usize,
    pub heads: usize,
    pub d_head: usize,
    pub norm_eps: f64,
    /// `activation_fn == "gelu-approximate"`; otherwise exact (erf) GELU.
    pub gelu_tanh: bool,
    pub attention: osp_graphs::AttentionKind,
}

/// `nn.LayerNorm` over the last axis, affine only when the checkpoint has the parameters.
pub(crate) fn layer_norm(
    g: &mut GraphBuilder,
    w: &DitWeights,
    prefix: &str,
    x: &Value,
    dim: usize,
    eps: f64,
) -> Result<Value> {
    let (wk, bk) = (format!("{prefix}.weight"), format!("{prefix}.bias"));
    if w.has(&wk) {
        let weight = g.initializer(&wk, w.tensor(&wk)?)?;
        let bias = g.initializer(&bk, w.tensor(&bk)?)?;
        g.layer_norm(x, &weight, &bias, eps)
    } else {
        g.layer_norm_no_affine(x, dim, eps)
    }
}

/// `nn.Linear` under `prefix` (`.weight`, and `.bias` when the checkpoint has one).
pub(crate) fn linear(g: &mut GraphBuilder, w: &DitWeights, prefix: &str, x: &Value) -> Result<Value> {
    let (wk, bk) = (format!("{prefix}.weight"), format!("{prefix}.bias"));
    let weight = g.initializer(&wk, w.tensor(&wk)?)?;
    let bias = if w.has(&bk) { Some(g.initializer(&bk, w.tensor(&bk)?)?) } else { None };
    g.linear(x, &weight, bias.as_ref())
}

/// `x * (1 + scale) + shift`.
pub(crate) fn modulate(g: &mut GraphBuilder, x: &Value, shift: &Value, scale: &Value) -> Result<Value> {
    let one = g.scalar_like(1.0, scale)?;
    let s = g.add(scale, &one)?;
    let y = g.mul(x, &s)?;
    g.add(&y, shift)
}

pub(crate) fn gelu_erf(g: &mut GraphBuilder, x: &Value) -> Result<Value> {
    let inv_sqrt2 = g.scalar_like(std::f64::consts::FRAC_1_SQRT_2, x)?;
    let half = g.scalar_like(0.5, x)?;
    let one = g.scalar_like(1.0, x)?;
    let e = g.mul(x, &inv_sqrt2)?;
    let e = g.erf(&e)?;
    let e = g.add(&e, &one)?;
    let hx = g.mul(x, &half)?;
    g.mul(&hx, &e)
}

/// Block `i` on tokens `[b, n, d]` -> `[b, n, d]`.
pub(crate) fn transformer_block(
    g: &mut GraphBuilder,
    w: &DitWeights,
    cfg: &BlockConfig,
    i: usize,
    kind: Skiparse,
    inputs: &BlockInputs,
    x: &Value,
) -> Result<Value> {
    let p = format!("transformer_blocks.{i}");
    let d = cfg.hidden_size;
    let spec = AttentionSpec { kind: cfg.attention, num_heads: cfg.heads, scale: 1.0 / (cfg.d_head as f64).sqrt() };
    g.scoped(&p.clone(), |g| {
        let key = format!("{p}.scale_shift_table");
        let table = g.initializer(&key, w.tensor(&key)?)?; // [6, d]
        let table = g.unsqueeze(&table, &[0]);
        let modulation = g.add(&table, &inputs.t6)?; // [b, 6, d]
        let rows = g.split(&modulation, 1, &[1; 6])?; // 6 x [b, 1, d]
        let (shift_msa, scale_msa, gate_msa) = (&rows[0], &rows[1], &rows[2]);
        let (shift_mlp, scale_mlp, gate_mlp) = (&rows[3], &rows[4], &rows[5]);

        let attn = g.scoped("attn1", |g| {
            let normed = layer_norm(g, w, &format!("{p}.norm1"), x, d, cfg.norm_eps)?;
            let normed = modulate(g, &normed, shift_msa, scale_msa)?;
            let q = linear(g, w, &format!("{p}.attn1.to_q"), &normed)?; // [b, n, inner]
            let k = linear(g, w, &format!("{p}.attn1.to_k"), &normed)?;
            let v = linear(g, w, &format!("{p}.attn1.to_v"), &normed)?;
            let q = apply_rope(g, &inputs.rope, &q, cfg.heads, cfg.d_head)?;
            let k = apply_rope(g, &inputs.rope, &k, cfg.heads, cfg.d_head)?;
            let inner = cfg.heads * cfg.d_head;
            let o = self_attention(g, &spec, &inputs.grid, inputs.skiparse.as_ref(), kind, (&q, &k, &v), inner)?;
            linear(g, w, &format!("{p}.attn1.to_out.0"), &o)
        })?;
        let gated = g.mul(gate_msa, &attn)?;
        let x = g.add(x, &gated)?;

        let cross = g.scoped("attn2", |g| {
            let q = linear(g, w, &format!("{p}.attn2.to_q"), &x)?;
            let k = linear(g, w, &format!("{p}.attn2.to_k"), &inputs.caption)?; // [b, l, inner]
            let v = linear(g, w, &format!("{p}.attn2.to_v"), &inputs.caption)?;
            let o = g.attention(&spec, &q, &k, &v, Some(&inputs.text_bias))?;
            linear(g, w, &format!("{p}.attn2.to_out.0"), &o)
        })?;
        let x = g.add(&x, &cross)?;

        let ff = g.scoped("ff", |g| {
            let normed = layer_norm(g, w, &format!("{p}.norm2"), &x, d, cfg.norm_eps)?;
            let normed = modulate(g, &normed, shift_mlp, scale_mlp)?;
            let up = linear(g, w, &format!("{p}.ff.net.0.proj"), &normed)?; // [b, n, 4 d]
            let act = if cfg.gelu_tanh { g.gelu_tanh(&up)? } else { gelu_erf(g, &up)? };
            linear(g, w, &format!("{p}.ff.net.2"), &act)
        })?;
        let gated = g.mul(gate_mlp, &ff)?;
        g.add(&x, &gated)
    })
}
