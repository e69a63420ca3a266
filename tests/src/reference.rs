//! A plain-Rust, f64-accumulating reference of `osp_graphs::config::TransformerBlockConfig`'s forward,
//! written independently of the exporter so the chain test compares two implementations:
//!
//! ```text
//! h   = x + to_out(attn(to_q(LN1(x)), to_k(LN1(x)), to_v(LN1(x)), bias = (1 - mask) * -10000))
//! out = h + ff.net.2(gelu_tanh(ff.net.0.proj(LN2(h))))
//! ```

use std::collections::BTreeMap;

use anyhow::{anyhow, ensure, Result};
use ndarray::{Array2, Array3, ArrayView1, ArrayView2, ArrayView3, Axis};
use osp_graphs::config::TransformerBlockConfig;

/// Weights by PyTorch key, PyTorch layout (`Linear.weight` is `[out, in]`).
pub type NamedWeights = BTreeMap<String, ndarray::ArrayD<f32>>;

fn w2<'a>(w: &'a NamedWeights, key: &str) -> Result<ArrayView2<'a, f32>> {
    let t = w.get(key).ok_or_else(|| anyhow!("reference: missing weight `{key}`"))?;
    Ok(t.view().into_dimensionality()?)
}

fn w1<'a>(w: &'a NamedWeights, key: &str) -> Result<ArrayView1<'a, f32>> {
    let t = w.get(key).ok_or_else(|| anyhow!("reference: missing weight `{key}`"))?;
    Ok(t.view().into_dimensionality()?)
}

fn layer_norm(x: ArrayView2<f64>, w: ArrayView1<f32>, b: ArrayView1<f32>, eps: f64) -> Array2<f64> {
    let mut out = x.to_owned();
    for mut row in out.rows_mut() {
        let n = row.len() as f64;
        let mean = row.sum() / n;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        let inv = 1.0 / (var + eps).sqrt();
        for (i, v) in row.iter_mut().enumerate() {
            *v = (*v - mean) * inv * w[i] as f64 + b[i] as f64;
        }
    }
    out
}

/// `x @ W^T + b` with `W` in PyTorch `[out, in]` layout.
fn linear(x: ArrayView2<f64>, w: ArrayView2<f32>, b: ArrayView1<f32>) -> Array2<f64> {
    let wt = w.t().mapv(|v| v as f64);
    let mut y = x.dot(&wt);
    for mut row in y.rows_mut() {
        for (i, v) in row.iter_mut().enumerate() {
            *v += b[i] as f64;
        }
    }
    y
}

fn gelu_tanh(v: f64) -> f64 {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    0.5 * v * (1.0 + (c * (v + 0.044715 * v * v * v)).tanh())
}

/// Runs the block on `hidden_states` `[b, n, d]` with key mask `[b, n]` (1 keep, 0 masked).
pub fn transformer_block(
    cfg: &TransformerBlockConfig,
    w: &NamedWeights,
    hidden_states: ArrayView3<f32>,
    attention_mask: ArrayView2<f32>,
) -> Result<Array3<f32>> {
    let (b, n, d) = hidden_states.dim();
    ensure!(d == cfg.hidden_size, "reference: hidden size {d} != config {}", cfg.hidden_size);
    ensure!(attention_mask.dim() == (b, n), "reference: mask shape {:?} != ({b}, {n})", attention_mask.dim());
    let (heads, dh) = (cfg.num_attention_heads, cfg.attention_head_dim);
    let scale = 1.0 / (dh as f64).sqrt();
    let mut out = Array3::<f32>::zeros((b, n, d));
    for bi in 0..b {
        let x = hidden_states.index_axis(Axis(0), bi).mapv(|v| v as f64);
        let h1 = layer_norm(x.view(), w1(w, "norm1.weight")?, w1(w, "norm1.bias")?, cfg.norm_eps);
        let q = linear(h1.view(), w2(w, "attn1.to_q.weight")?, w1(w, "attn1.to_q.bias")?);
        let k = linear(h1.view(), w2(w, "attn1.to_k.weight")?, w1(w, "attn1.to_k.bias")?);
        let v = linear(h1.view(), w2(w, "attn1.to_v.weight")?, w1(w, "attn1.to_v.bias")?);
        let mut attn = Array2::<f64>::zeros((n, heads * dh));
        for h in 0..heads {
            let cols = ndarray::s![.., h * dh..(h + 1) * dh];
            let (qh, kh, vh) = (q.slice(cols), k.slice(cols), v.slice(cols));
            let mut scores = qh.dot(&kh.t()) * scale;
            for j in 0..n {
                let bias = (1.0 - attention_mask[[bi, j]] as f64) * -10000.0;
                scores.column_mut(j).mapv_inplace(|s| s + bias);
            }
            for mut row in scores.rows_mut() {
                let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                row.mapv_inplace(|s| (s - m).exp());
                let z = row.sum();
                row.mapv_inplace(|s| s / z);
            }
            attn.slice_mut(cols).assign(&scores.dot(&vh));
        }
        let h = &x + &linear(attn.view(), w2(w, "attn1.to_out.0.weight")?, w1(w, "attn1.to_out.0.bias")?);
        let h2 = layer_norm(h.view(), w1(w, "norm2.weight")?, w1(w, "norm2.bias")?, cfg.norm_eps);
        let ff = linear(h2.view(), w2(w, "ff.net.0.proj.weight")?, w1(w, "ff.net.0.proj.bias")?).mapv(gelu_tanh);
        let y = &h + &linear(ff.view(), w2(w, "ff.net.2.weight")?, w1(w, "ff.net.2.bias")?);
        out.index_axis_mut(Axis(0), bi).assign(&y.mapv(|v| v as f32));
    }
    Ok(out)
}
