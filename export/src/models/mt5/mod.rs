//! Lowering of the mT5 text encoder (`MT5EncoderModel`, the text encoder of Open-Sora-Plan v1.3,
//! google/mt5-xxl) to one ONNX graph, `text_encoder`.
//!
//! Upstream: transformers 4.44.2 `models/t5/modeling_t5.py` (`T5Stack`, `T5Attention`,
//! `T5DenseGatedActDense`, `T5LayerNorm`), mirrored by `osp_trainer::models::mt5`; initializers
//! carry the PyTorch keys (`encoder.block.3.layer.1.DenseReluDense.wo.weight`), the token embedding
//! once as `shared.weight` (`encoder.embed_tokens.weight` is tied to it).
//!
//! Graph `text_encoder`: `input_ids` i64 `[b, l]`, `attention_mask` i64 `[b, l]` (1 = token, 0 = pad)
//! -> `last_hidden_state` f32 `[b, l, d_model]`. T5 facts the graph keeps:
//! - attention has no `1/sqrt(d_kv)` scaling (scale 1.0);
//! - the bucketed relative-position bias is computed in-graph from the symbolic `l`
//!   (`Range`, `Abs`, `Log`, `Min`, `Where`; the log branch in f32 and truncated to i64 as upstream),
//!   looked up in block 0's `relative_attention_bias` table and shared by every block;
//! - the padding mask is folded into that bias as `(1 - mask) * finfo.min`, and the sum is the
//!   attention's additive bias `[b, heads, l, l]`.
//!
//! Precision (`f16`/`bf16`): the bucket arithmetic, the RMS norms, the residual stream and
//! `DenseReluDense.wo` stay f32, as transformers keeps `wo` in f32 (`_keep_in_fp32_modules`) and
//! then adds the f32 `wo` output to the residual; everything else runs in the target dtype. The
//! mask bias uses the target dtype's `finfo.min` so it stays finite after casting.
//!
//! `osp-export mt5 --config config.json --weights model.safetensors --tokenizer tokenizer.json --out /tmp/mt5.bundle`

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use osp_graphs::config::{manifest_view, Mt5EncoderConfig};
use osp_graphs::{AttentionKind, BundleManifest, DType, Dim, ModelSpec, Precision, TensorSpec};
use osp_trainer::checkpoint::Checkpoint;
pub use osp_trainer::models::mt5::MT5Config;
use sha2::{Digest, Sha256};
use tracing::info;

use crate::builder::{AttentionSpec, GraphBuilder, Value};
use crate::bundle::{provenance, BundleWriter};
use crate::error::{Error, Result};
use crate::graph::{Generator, OnnxGraph};
use crate::options::ExportOptions;
use crate::passes;
use crate::tensor::{HostTensor, Weights};

/// The graph's name in the bundle.
pub const GRAPH: &str = "text_encoder";
/// Graph metadata key naming the tokenizer file copied into the bundle.
pub const TOKENIZER_KEY: &str = "tokenizer";
/// Graph metadata key holding the tokenizer file's SHA-256.
pub const TOKENIZER_SHA256_KEY: &str = "tokenizer_sha256";
/// Graph metadata key holding the seed of random weights (absent for real weights).
pub const WEIGHT_SEED_KEY: &str = "weight_seed";
/// The official key of the token embedding.
pub const SHARED: &str = "shared.weight";
/// The official key tied to [`SHARED`].
pub const TIED_EMBED_TOKENS: &str = "encoder.embed_tokens.weight";
/// Elements per chunk of a streamed random initializer.
const CHUNK_ELEMENTS: usize = 1 << 20;

/// The manifest form of `cfg`: its keys, verbatim.
pub fn manifest_config(cfg: &MT5Config) -> Result<Mt5EncoderConfig> {
    manifest_view(cfg).map_err(|e| Error::Config(format!("mT5 config: {e}")))
}

/// Every parameter of the encoder with its PyTorch shape, in module order (the tied
/// `encoder.embed_tokens.weight` is not listed: it is `shared.weight`).
pub fn parameter_shapes(cfg: &MT5Config) -> Vec<(String, Vec<usize>)> {
    let (d, inner, ff) = (cfg.d_model, cfg.num_heads * cfg.d_kv, cfg.d_ff);
    let mut out = vec![(SHARED.to_string(), vec![cfg.vocab_size, d])];
    for i in 0..cfg.num_layers {
        let attn = format!("encoder.block.{i}.layer.0");
        for (name, shape) in [
            ("SelfAttention.q.weight", vec![inner, d]),
            ("SelfAttention.k.weight", vec![inner, d]),
            ("SelfAttention.v.weight", vec![inner, d]),
            ("SelfAttention.o.weight", vec![d, inner]),
        ] {
            out.push((format!("{attn}.{name}"), shape));
        }
        if i == 0 {
            out.push((
                format!("{attn}.SelfAttention.relative_attention_bias.weight"),
                vec![cfg.relative_attention_num_buckets, cfg.num_heads],
            ));
        }
        out.push((format!("{attn}.layer_norm.weight"), vec![d]));
        let ffn = format!("encoder.block.{i}.layer.1");
        for (name, shape) in [
            ("DenseReluDense.wi_0.weight", vec![ff, d]),
            ("DenseReluDense.wi_1.weight", vec![ff, d]),
            ("DenseReluDense.wo.weight", vec![d, ff]),
            ("layer_norm.weight", vec![d]),
        ] {
            out.push((format!("{ffn}.{name}"), shape));
        }
    }
    out.push(("encoder.final_layer_norm.weight".to_string(), vec![d]));
    out
}

/// The encoder's weights: real tensors (strictly checked) or seeded random ones streamed while
/// the bundle is written (a real-size export never holds them in memory).
#[derive(Debug, Clone)]
pub enum Mt5Weights {
    Host(Weights),
    Random { seed: u64 },
}

impl Mt5Weights {
    /// Strict: every parameter present once with its exact shape (`encoder.embed_tokens.weight` is
    /// accepted for `shared.weight`; both present must be equal), float, and nothing else except
    /// the decoder half of a full seq2seq checkpoint (`decoder.*`, `lm_head.weight`), which
    /// `MT5EncoderModel` ignores upstream. Tensors are converted to f32.
    pub fn from_weights(cfg: &MT5Config, mut weights: Weights) -> Result<Self> {
        cfg.validate()?;
        match (weights.get(SHARED).is_some(), weights.remove(TIED_EMBED_TOKENS)) {
            (true, Some(tied)) => {
                let shared = weights.get(SHARED).expect("presence was just checked");
                if shared.shape() != tied.shape() || shared.to_f32()? != tied.to_f32()? {
                    return Err(Error::Config(format!(
                        "weights: `{TIED_EMBED_TOKENS}` must equal the tied `{SHARED}`"
                    )));
                }
            }
            (false, Some(tied)) => {
                weights.insert(SHARED, tied);
            }
            (_, None) => {}
        }
        let expected = parameter_shapes(cfg);
        let mut out = Weights::new();
        for (key, shape) in &expected {
            let t = weights
                .remove(key)
                .ok_or_else(|| Error::MissingTensor { key: key.clone(), expected: shape.clone() })?;
            if t.shape() != shape.as_slice() {
                return Err(Error::Shape { key: key.clone(), expected: shape.clone(), got: t.shape().to_vec() });
            }
            if !t.dtype().is_float() {
                return Err(Error::TensorDType { key: key.clone(), expected: DType::F32, got: t.dtype() });
            }
            let t = if t.dtype() == DType::F32 { t } else { t.cast_float(DType::F32)? };
            out.insert(key.clone(), t);
        }
        let unexpected: Vec<String> = weights
            .keys()
            .filter(|k| !k.starts_with("decoder.") && *k != "lm_head.weight")
            .map(str::to_string)
            .collect();
        if !unexpected.is_empty() {
            return Err(Error::UnexpectedTensors { keys: unexpected });
        }
        Ok(Mt5Weights::Host(out))
    }

    /// Reads a checkpoint (`.safetensors`, sharded `*.safetensors.index.json`, or a PyTorch
    /// `.bin`/`.pt`) through `osp_trainer::checkpoint` and checks it strictly.
    pub fn load(cfg: &MT5Config, path: &Path) -> Result<Self> {
        let ckpt = Checkpoint::open(path)?;
        let mut weights = Weights::new();
        for name in ckpt.names() {
            let snapshot = ckpt.get(name).expect("listed names should resolve");
            let data = snapshot.to_data().map_err(|e| Error::Safetensors {
                path: path.to_path_buf(),
                message: format!("reading `{name}`: {e:?}"),
            })?;
            let shape = data.shape.to_vec();
            let values = data.convert::<f32>().to_vec::<f32>().map_err(|e| Error::Safetensors {
                path: path.to_path_buf(),
                message: format!("tensor `{name}` is not a float tensor: {e:?}"),
            })?;
            weights.insert(name, HostTensor::from_f32(shape, &values)?);
        }
        Self::from_weights(cfg, weights)
    }

    fn seed(&self) -> Option<u64> {
        match self {
            Mt5Weights::Random { seed } => Some(*seed),
            Mt5Weights::Host(_) => None,
        }
    }

    /// The initializer for `key` of `shape`.
    fn initializer(&self, b: &mut GraphBuilder, key: &str, shape: &[usize]) -> Result<Value> {
        match self {
            Mt5Weights::Host(w) => {
                let t = w.get(key).expect("validated weights should hold every parameter");
                b.initializer(key, t)
            }
            Mt5Weights::Random { seed } => {
                let generator = random_generator(*seed, key, shape);
                b.generated_initializer(key, DType::F32, shape.to_vec(), generator)
            }
        }
    }
}

pub(crate) fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Deterministic values for `key`: norm weights `1 + U(-0.1, 0.1)`, projections
/// `U(-1/sqrt(in), 1/sqrt(in))` (PyTorch's `nn.Linear` bound, so activations stay O(1)), the
/// embedding and the bias table `U(-1, 1)`. Generated chunk by chunk.
fn random_generator(seed: u64, key: &str, shape: &[usize]) -> Generator {
    let key_hash = key.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, c| (h ^ c as u64).wrapping_mul(0x0100_0000_01B3));
    let numel: usize = shape.iter().product();
    let (offset, bound) = if key.ends_with("layer_norm.weight") {
        (1.0f32, 0.1f32)
    } else if key == SHARED || key.contains("relative_attention_bias") {
        (0.0, 1.0)
    } else {
        (0.0, 1.0 / (shape[1] as f32).sqrt())
    };
    Arc::new(move |sink| {
        let mut state = seed ^ key_hash;
        let mut buf: Vec<u8> = Vec::with_capacity(CHUNK_ELEMENTS.min(numel) * 4);
        let mut left = numel;
        while left > 0 {
            let n = left.min(CHUNK_ELEMENTS);
            buf.clear();
            for _ in 0..n {
                let u = (splitmix64(&mut state) >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
                buf.extend_from_slice(&(offset + (2.0 * u - 1.0) * bound).to_le_bytes());
            }
            sink(&buf)?;
            left -= n;
        }
        Ok(())
    })
}

/// `finfo(dtype).min` of the dtype the mask bias computes in (upstream
/// `get_extended_attention_mask`), as f64.
fn mask_min(precision: Precision) -> f64 {
    match precision {
        Precision::F32 | Precision::Int8 => f32::MIN as f64,
        Precision::F16 => half::f16::MIN.to_f64(),
        Precision::Bf16 => half::bf16::MIN.to_f64(),
    }
}

/// The relative-position bucket of every (query, key) pair, `[l, l]` i64, from the symbolic
/// length of `input_ids` (T5's bidirectional `_relative_position_bucket`).
fn relative_position_buckets(b: &mut GraphBuilder, cfg: &MT5Config, input_ids: &Value) -> Result<Value> {
    let half = (cfg.relative_attention_num_buckets / 2) as i64;
    let max_exact = half / 2;
    let l = b.shape(input_ids, Some(1), Some(2)); // [1]
    let l = b.squeeze(&l, &[0]); // []
    let (zero, one) = (b.scalar_i64(0), b.scalar_i64(1));
    let pos = b.range(&zero, &l, &one)?; // [l]
    let memory = b.unsqueeze(&pos, &[0]); // [1, l]
    let context = b.unsqueeze(&pos, &[1]); // [l, 1]
    let rel = b.sub(&memory, &context)?; // [l, l] = key - query
    let positive = b.greater(&rel, &zero)?;
    let half_v = b.scalar_i64(half);
    let base = b.where_(&positive, &half_v, &zero)?;
    let dist = b.abs(&rel)?;
    let max_exact_v = b.scalar_i64(max_exact);
    let is_small = b.less(&dist, &max_exact_v)?;
    // Clamping below at max_exact keeps Log finite; the clamped entries take the exact branch.
    let clamped = b.max(&dist, &max_exact_v)?;
    let f = b.cast(&clamped, DType::F32);
    let max_exact_f = b.scalar(max_exact as f64, DType::F32)?;
    let ratio = b.div(&f, &max_exact_f)?;
    let log = b.log(&ratio)?;
    let scale = (cfg.relative_attention_max_distance as f64 / max_exact as f64).ln();
    let scale = b.scalar(scale, DType::F32)?;
    let log = b.div(&log, &scale)?;
    let span = b.scalar((half - max_exact) as f64, DType::F32)?;
    let large = b.mul(&log, &span)?;
    let large = b.cast(&large, DType::I64); // truncation, as `.to(torch.long)`
    let large = b.add(&max_exact_v, &large)?;
    let last = b.scalar_i64(half - 1);
    let large = b.min(&large, &last)?;
    let within = b.where_(&is_small, &dist, &large)?;
    b.add(&base, &within)
}

/// The f32 `text_encoder` graph with its keep-f32 marks, before precision casting. `precision`
/// only picks the mask bias constant (see the module docs).
pub fn build_graph(
    cfg: &MT5Config,
    weights: &Mt5Weights,
    attention: AttentionKind,
    precision: Precision,
) -> Result<OnnxGraph> {
    cfg.validate()?;
    if attention == AttentionKind::None {
        return Err(Error::Config("the mT5 encoder needs an attention form".into()));
    }
    let shapes: BTreeMap<String, Vec<usize>> = parameter_shapes(cfg).into_iter().collect();
    let p = |b: &mut GraphBuilder, key: &str| -> Result<Value> {
        let shape = shapes.get(key).expect("the lowering should only name listed parameters");
        weights.initializer(b, key, shape)
    };
    let mut b = GraphBuilder::new(GRAPH);
    let bl = [Dim::sym("b"), Dim::sym("l")];
    let input_ids = b.input(TensorSpec::new("input_ids", DType::I64, bl.clone()))?;
    let mask = b.input(TensorSpec::new("attention_mask", DType::I64, bl.clone()))?;
    let eps = cfg.layer_norm_epsilon;

    let table_key = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight";
    let bias = b.scoped("position_bias", |b| {
        let buckets = b.in_f32(|b| relative_position_buckets(b, cfg, &input_ids))?; // [l, l]
        let table = p(b, table_key)?; // [num_buckets, h]
        let values = b.gather(&table, &buckets, 0)?; // [l, l, h]
        let values = b.transpose(&values, &[2, 0, 1])?; // [h, l, l]
        let position_bias = b.unsqueeze(&values, &[0]); // [1, h, l, l]
        b.in_f32(|b| {
            let m = b.cast(&mask, DType::F32); // [b, l]
            let one = b.scalar(1.0, DType::F32)?;
            let inv = b.sub(&one, &m)?;
            let min = b.scalar(mask_min(precision), DType::F32)?;
            let extended = b.mul(&inv, &min)?;
            let extended = b.unsqueeze(&extended, &[1, 2]); // [b, 1, 1, l]
            b.add(&position_bias, &extended) // [b, h, l, l]
        })
    })?;

    let embed = p(&mut b, SHARED)?;
    let mut hidden = b.gather(&embed, &input_ids, 0)?; // [b, l, d]
    let spec = AttentionSpec { kind: attention, num_heads: cfg.num_heads, scale: 1.0 };
    for i in 0..cfg.num_layers {
        let attn = format!("encoder.block.{i}.layer.0");
        let attn_out = b.scoped(&attn, |b| {
            let w = p(b, &format!("{attn}.layer_norm.weight"))?;
            let normed = b.rms_norm(&hidden, &w, eps)?;
            let proj = |b: &mut GraphBuilder, name: &str, x: &Value| -> Result<Value> {
                let w = p(b, &format!("{attn}.SelfAttention.{name}.weight"))?;
                b.linear(x, &w, None)
            };
            let q = proj(b, "q", &normed)?; // [b, l, h*d_kv]
            let k = proj(b, "k", &normed)?;
            let v = proj(b, "v", &normed)?;
            let o = b.attention(&spec, &q, &k, &v, Some(&bias))?;
            proj(b, "o", &o) // [b, l, d]
        })?;
        hidden = b.in_f32(|b| b.add(&hidden, &attn_out))?;
        let ffn = format!("encoder.block.{i}.layer.1");
        let ff_out = b.scoped(&ffn, |b| {
            let w = p(b, &format!("{ffn}.layer_norm.weight"))?;
            let normed = b.rms_norm(&hidden, &w, eps)?;
            let wi_0 = p(b, &format!("{ffn}.DenseReluDense.wi_0.weight"))?;
            let wi_1 = p(b, &format!("{ffn}.DenseReluDense.wi_1.weight"))?;
            let gate = b.linear(&normed, &wi_0, None)?; // [b, l, d_ff]
            let gate = b.gelu_tanh(&gate)?;
            let up = b.linear(&normed, &wi_1, None)?;
            let act = b.mul(&gate, &up)?;
            let wo = p(b, &format!("{ffn}.DenseReluDense.wo.weight"))?;
            b.in_f32(|b| b.linear(&act, &wo, None)) // [b, l, d]
        })?;
        hidden = b.in_f32(|b| b.add(&hidden, &ff_out))?;
    }
    let w = p(&mut b, "encoder.final_layer_norm.weight")?;
    let out = b.rms_norm(&hidden, &w, eps)?;
    b.output(
        &out,
        TensorSpec::new("last_hidden_state", DType::F32, [Dim::sym("b"), Dim::sym("l"), Dim::Fixed(cfg.d_model)]),
    )?;
    b.finish()
}

/// How to export the encoder: the graph options every model takes, plus the tokenizer to ship.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Mt5ExportOptions {
    pub graph: ExportOptions,
    /// A `tokenizer.json` or `spiece.model` copied into the bundle and named in the graph metadata.
    pub tokenizer: Option<PathBuf>,
}

/// The weights `--precision int8` quantizes (prefixes of PyTorch keys): each block's attention
/// projections and the gated-GELU input projections `wi_0`/`wi_1`. `wo` stays f32, as in the
/// half-precision exports: its input carries mT5's large activation outliers.
pub fn int8_layers(cfg: &MT5Config) -> Vec<String> {
    (0..cfg.num_layers)
        .flat_map(|i| {
            [
                format!("encoder.block.{i}.layer.0.SelfAttention."),
                format!("encoder.block.{i}.layer.1.DenseReluDense.wi"),
            ]
        })
        .collect()
}

/// Exports the encoder as a bundle at `out` with one graph, [`GRAPH`].
pub fn export_mt5(
    cfg: &MT5Config,
    weights: &Mt5Weights,
    opts: &Mt5ExportOptions,
    out: &Path,
) -> Result<BundleManifest> {
    let mut graph = build_graph(cfg, weights, opts.graph.attention_form(), opts.graph.precision)?;
    passes::optimize_int8(&mut graph, opts.graph.precision, &int8_layers(cfg))?;
    let prov = provenance(opts.graph.source.as_deref())?;
    let mut writer = BundleWriter::create(
        out,
        ModelSpec::Mt5Encoder(manifest_config(cfg)?),
        prov,
        opts.graph.external_data_threshold_bytes,
    )?;
    let mut meta = BTreeMap::new();
    if let Some(seed) = weights.seed() {
        meta.insert(WEIGHT_SEED_KEY.to_string(), serde_json::json!(seed));
    }
    if let Some(tok) = &opts.tokenizer {
        let name = tokenizer_file_name(tok)?;
        let bytes = std::fs::read(tok).map_err(|e| Error::io(tok, e))?;
        let dest = writer.staging_dir().join(&name);
        osp_fs::write_bytes(&dest, &bytes)?;
        meta.insert(TOKENIZER_KEY.to_string(), serde_json::json!(name));
        meta.insert(TOKENIZER_SHA256_KEY.to_string(), serde_json::json!(hex::encode(Sha256::digest(&bytes))));
    }
    writer.add_graph(GRAPH, &graph, opts.graph.attention_form(), meta)?;
    let manifest = writer.finish()?;
    info!(bundle = %out.display(), attention = %opts.graph.attention_form(), precision = %opts.graph.precision, "exported mT5 encoder");
    Ok(manifest)
}

/// The bundle-local name of a tokenizer file: `tokenizer.json` for JSON tokenizers, the SentencePiece
/// model's own plain name otherwise (the runtime picks the reader by the `.json` extension).
fn tokenizer_file_name(path: &Path) -> Result<String> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::Config(format!("tokenizer path {} names no file", path.display())))?;
    let is_json = path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("json"));
    if is_json {
        return Ok("tokenizer.json".to_string());
    }
    let reserved = name == osp_graphs::MANIFEST_FILE || name.starts_with(&format!("{GRAPH}.onnx"));
    if reserved || name.starts_with('.') {
        return Err(Error::Config(format!(
            "tokenizer file name `{name}` collides with a bundle file; rename it (e.g. spiece.model)"
        )));
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests;
