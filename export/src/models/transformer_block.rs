//! Lowering of the proof model: one pre-norm transformer block, named like a diffusers
//! `BasicTransformerBlock` (https://github.com/huggingface/diffusers/blob/v0.30.0/src/diffusers/models/attention.py).
//!
//! Graph `block`: `hidden_states` f32 `[b, n, hidden_size]`, `attention_mask` f32 `[b, n]`
//! (1 = keep key, 0 = masked key) -> `output` f32 `[b, n, hidden_size]`:
//! `h = x + attn1(norm1(x), bias)`, `output = h + ff(norm2(h))`, with the additive attention bias
//! `(1 - mask) * -10000` broadcast as `[b, 1, 1, n]` (the Open-Sora-Plan DiT convention). With
//! `attention_mask: false` in the config the graph has no mask input and a bias-free attention call.
//!
//! `osp-export transformer-block --config block.json --seed 0 --out /tmp/block.bundle`

use std::collections::BTreeMap;
use std::path::Path;

use osp_graphs::config::TransformerBlockConfig;
use osp_graphs::{AttentionKind, BundleManifest, DType, Dim, ModelSpec, TensorSpec};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::Normal;
use tracing::info;

use crate::builder::{AttentionSpec, GraphBuilder, Value};
use crate::bundle::{provenance, BundleWriter};
use crate::error::{Error, Result};
use crate::graph::OnnxGraph;
use crate::options::ExportOptions;
use crate::passes;
use crate::tensor::{HostTensor, Weights};

/// The additive bias given to masked keys.
pub const MASKED_BIAS: f64 = -10000.0;

fn check_config(cfg: &TransformerBlockConfig) -> Result<()> {
    let fields = [
        ("hidden_size", cfg.hidden_size),
        ("num_attention_heads", cfg.num_attention_heads),
        ("attention_head_dim", cfg.attention_head_dim),
        ("ff_inner_dim", cfg.ff_inner_dim),
    ];
    if let Some((name, _)) = fields.iter().find(|(_, v)| *v == 0) {
        return Err(Error::Config(format!("transformer block: {name} must be positive")));
    }
    if !(cfg.norm_eps > 0.0 && cfg.norm_eps.is_finite()) {
        return Err(Error::Config(format!("transformer block: norm_eps must be positive, got {}", cfg.norm_eps)));
    }
    Ok(())
}

/// The block's validated weights, keyed by PyTorch parameter name.
#[derive(Debug, Clone, PartialEq)]
pub struct TransformerBlockWeights {
    weights: Weights,
}

impl TransformerBlockWeights {
    /// Every parameter key with its PyTorch shape, in module order.
    pub fn expected_shapes(cfg: &TransformerBlockConfig) -> Vec<(&'static str, Vec<usize>)> {
        let (h, inner, ff) = (cfg.hidden_size, cfg.num_attention_heads * cfg.attention_head_dim, cfg.ff_inner_dim);
        vec![
            ("norm1.weight", vec![h]),
            ("norm1.bias", vec![h]),
            ("attn1.to_q.weight", vec![inner, h]),
            ("attn1.to_q.bias", vec![inner]),
            ("attn1.to_k.weight", vec![inner, h]),
            ("attn1.to_k.bias", vec![inner]),
            ("attn1.to_v.weight", vec![inner, h]),
            ("attn1.to_v.bias", vec![inner]),
            ("attn1.to_out.0.weight", vec![h, inner]),
            ("attn1.to_out.0.bias", vec![h]),
            ("norm2.weight", vec![h]),
            ("norm2.bias", vec![h]),
            ("ff.net.0.proj.weight", vec![ff, h]),
            ("ff.net.0.proj.bias", vec![ff]),
            ("ff.net.2.weight", vec![h, ff]),
            ("ff.net.2.bias", vec![h]),
        ]
    }

    /// Strict: every expected key present with its exact shape and dtype f32, and no other key.
    pub fn from_weights(cfg: &TransformerBlockConfig, weights: Weights) -> Result<Self> {
        check_config(cfg)?;
        let expected = Self::expected_shapes(cfg);
        for (key, shape) in &expected {
            let t = weights
                .get(key)
                .ok_or_else(|| Error::MissingTensor { key: key.to_string(), expected: shape.clone() })?;
            if t.shape() != shape.as_slice() {
                return Err(Error::Shape { key: key.to_string(), expected: shape.clone(), got: t.shape().to_vec() });
            }
            if t.dtype() != DType::F32 {
                return Err(Error::TensorDType { key: key.to_string(), expected: DType::F32, got: t.dtype() });
            }
        }
        let unexpected: Vec<String> =
            weights.keys().filter(|k| !expected.iter().any(|(e, _)| e == k)).map(str::to_string).collect();
        if !unexpected.is_empty() {
            return Err(Error::UnexpectedTensors { keys: unexpected });
        }
        Ok(Self { weights })
    }

    /// Deterministic random weights: linear weights ~ N(0, 0.1), biases ~ N(0, 0.05), LayerNorm
    /// weights ~ 1 + N(0, 0.05), LayerNorm biases ~ N(0, 0.05).
    pub fn random(cfg: &TransformerBlockConfig, seed: u64) -> Result<Self> {
        check_config(cfg)?;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut weights = Weights::new();
        for (key, shape) in Self::expected_shapes(cfg) {
            let (mean, std) = match (key.starts_with("norm"), key.ends_with(".weight")) {
                (true, true) => (1.0, 0.05),
                (false, true) => (0.0, 0.1),
                _ => (0.0, 0.05),
            };
            let dist = Normal::new(mean, std).expect("a positive std should make a valid normal distribution");
            let values: Vec<f32> = (0..shape.iter().product::<usize>()).map(|_| rng.sample(dist)).collect();
            weights.insert(key, HostTensor::from_f32(shape, &values)?);
        }
        Ok(Self { weights })
    }

    /// Reads and strictly checks a safetensors file.
    pub fn load(cfg: &TransformerBlockConfig, path: &Path) -> Result<Self> {
        Self::from_weights(cfg, Weights::load_safetensors(path)?)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        self.weights.save_safetensors(path)
    }

    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    fn tensor(&self, key: &str) -> &HostTensor {
        self.weights.get(key).expect("validated weights should hold every expected key")
    }
}

/// The f32 block graph, before precision casting.
pub fn build_graph(
    cfg: &TransformerBlockConfig,
    w: &TransformerBlockWeights,
    attention: AttentionKind,
) -> Result<OnnxGraph> {
    let mut b = GraphBuilder::new("block");
    let h = cfg.hidden_size;
    let dims = |last: Option<usize>| {
        let mut d = vec![Dim::sym("b"), Dim::sym("n")];
        d.extend(last.map(Dim::Fixed));
        d
    };
    let x = b.input(TensorSpec::new("hidden_states", DType::F32, dims(Some(h))))?; // [b, n, h]
    let p = |b: &mut GraphBuilder, key: &str| b.initializer(key, w.tensor(key));
    let bias = if cfg.attention_mask {
        let mask = b.input(TensorSpec::new("attention_mask", DType::F32, dims(None)))?; // [b, n]
        Some(b.scoped("attention_bias", |b| {
            let one = b.scalar(1.0, DType::F32)?;
            let big = b.scalar(MASKED_BIAS, DType::F32)?;
            let inv = b.sub(&one, &mask)?;
            let bias = b.mul(&inv, &big)?;
            Ok(b.unsqueeze(&bias, &[1, 2])) // [b, 1, 1, n]
        })?)
    } else {
        None
    };

    let attn = b.scoped("attn1", |b| {
        let (nw, nb) = (p(b, "norm1.weight")?, p(b, "norm1.bias")?);
        let normed = b.layer_norm(&x, &nw, &nb, cfg.norm_eps)?;
        let proj = |b: &mut GraphBuilder, name: &str, input: &Value| -> Result<Value> {
            let weight = p(b, &format!("attn1.{name}.weight"))?;
            let bias = p(b, &format!("attn1.{name}.bias"))?;
            b.linear(input, &weight, Some(&bias))
        };
        let q = proj(b, "to_q", &normed)?; // [b, n, heads*d]
        let k = proj(b, "to_k", &normed)?;
        let v = proj(b, "to_v", &normed)?;
        let scale = 1.0 / (cfg.attention_head_dim as f64).sqrt();
        let spec = AttentionSpec { kind: attention, num_heads: cfg.num_attention_heads, scale };
        let o = b.attention(&spec, &q, &k, &v, bias.as_ref())?;
        proj(b, "to_out.0", &o) // [b, n, h]
    })?;
    let hidden = b.add(&x, &attn)?;

    let ff = b.scoped("ff", |b| {
        let (nw, nb) = (p(b, "norm2.weight")?, p(b, "norm2.bias")?);
        let normed = b.layer_norm(&hidden, &nw, &nb, cfg.norm_eps)?;
        let (w0, b0) = (p(b, "ff.net.0.proj.weight")?, p(b, "ff.net.0.proj.bias")?);
        let up = b.linear(&normed, &w0, Some(&b0))?; // [b, n, ff_inner_dim]
        let act = b.gelu_tanh(&up)?;
        let (w2, b2) = (p(b, "ff.net.2.weight")?, p(b, "ff.net.2.bias")?);
        b.linear(&act, &w2, Some(&b2)) // [b, n, h]
    })?;
    let out = b.add(&hidden, &ff)?;
    b.output(&out, TensorSpec::new("output", DType::F32, dims(Some(h))))?;
    b.finish()
}

/// Exports the block as a bundle at `out` with one graph, `block`.
pub fn export_transformer_block(
    cfg: &TransformerBlockConfig,
    weights: &Weights,
    opts: &ExportOptions,
    out: &Path,
) -> Result<BundleManifest> {
    let w = TransformerBlockWeights::from_weights(cfg, weights.clone())?;
    let mut graph = build_graph(cfg, &w, opts.attention_form())?;
    passes::optimize(&mut graph, opts.precision)?;
    let prov = provenance(opts.source.as_deref())?;
    let mut writer =
        BundleWriter::create(out, ModelSpec::TransformerBlock(cfg.clone()), prov, opts.external_data_threshold_bytes)?;
    writer.add_graph("block", &graph, opts.attention_form(), BTreeMap::new())?;
    let manifest = writer.finish()?;
    info!(bundle = %out.display(), attention = %opts.attention_form(), precision = %opts.precision, "exported transformer block");
    Ok(manifest)
}

/// Example inputs for `osp run-graph`: `hidden_states` ~ N(0, 1) `[batch, tokens, hidden_size]` and,
/// when the block takes one, an all-ones `attention_mask` `[batch, tokens]`.
pub fn example_inputs(cfg: &TransformerBlockConfig, batch: usize, tokens: usize, seed: u64) -> Result<Weights> {
    if batch == 0 || tokens == 0 {
        return Err(Error::Config("example inputs need batch and tokens >= 1".into()));
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let dist = Normal::new(0.0f32, 1.0).expect("unit normal should be valid");
    let x: Vec<f32> = (0..batch * tokens * cfg.hidden_size).map(|_| rng.sample(dist)).collect();
    let mut inputs = Weights::new();
    inputs.insert("hidden_states", HostTensor::from_f32(vec![batch, tokens, cfg.hidden_size], &x)?);
    if cfg.attention_mask {
        inputs.insert("attention_mask", HostTensor::from_f32(vec![batch, tokens], &vec![1.0; batch * tokens])?);
    }
    Ok(inputs)
}

#[cfg(test)]
mod tests;
