//! Lowering of a Llama causal LM (`LlamaForCausalLM`, transformers 4.44.2
//! `models/llama/modeling_llama.py`) straight from its Hugging Face folder to two ONNX graphs,
//! `prefill` and `decode` (the contract is [`osp_graphs::llama`]). This is the Open-Sora-Plan v1.3
//! prompt refiner (`opensora/sample/caption_refiner.py`), a merged Llama-3.1-8B-Instruct fine-tune.
//!
//! There is no Burn model: the graphs read the safetensors tensors under their PyTorch keys
//! (`model.layers.3.self_attn.q_proj.weight`), streamed tensor by tensor into the bundle's one
//! external-data file (`prefill.onnx.data`; `decode.onnx` points into it), so an 8B export never
//! holds the model in memory.
//!
//! What the graphs compute, as transformers does (`attn_implementation="sdpa"`, CPU):
//! - RoPE: `inv_freq` from `rope_theta` and head_dim, rescaled for `rope_type: "llama3"`
//!   (`_compute_llama3_parameters`), computed at export in f32 with torch's operations (equal to
//!   transformers' table bit for bit); in-graph
//!   `freqs = position_ids (f32) * inv_freq`, `cos/sin(cat(freqs, freqs))` in f32, then the
//!   compute dtype; `q * cos + rotate_half(q) * sin` on `[b, heads, s, d]`.
//! - The additive mask `[b, 1, s, past + s]`: key `j` is visible to query `i` when `j <= past + i`
//!   (the cache position, not `position_ids`) and `attention_mask[:, j] != 0`; invisible keys get
//!   `finfo(f32).min`, so a query row with no visible key (a left-pad row) averages every value
//!   uniformly, exactly as transformers' CPU path does.
//! - Grouped-query attention without repeating the cache: `Decomposed` reshapes queries to `[b,
//!   kv_heads, groups, s, d]` against keys `[b, kv_heads, 1, total, d]` (scores, mask and softmax
//!   in f32); `OnnxAttention` is ONNX `Attention` (opset 23, 4-D, fewer kv heads than q heads) with
//!   the mask in the compute dtype.
//! - RMSNorm in f32 (`osp_export`'s `rms_norm`), SiLU-gated MLP, untied or tied `lm_head`.
//!
//! Precision: `f32`; `f16` (weights and compute in f16, norms/softmax/RoPE tables in f32, the
//! cache in f16); `bf16` (weights stored bf16 and `Cast` to f32 in-graph, compute and cache in
//! f32: ONNX Runtime's CPU provider has no bf16 MatMul). `logits` are f32 in every form. With
//! `--quant int8|int4` every linear layer (and `lm_head`) is a `com.microsoft` `MatMulNBits` on
//! block-quantized weights ([`quant`]); the embedding and norms keep the bundle precision.
//!
//! `osp-export llama --model-dir Llama-3.1-8B-refiner/ --precision f16 --out refiner.bundle`

pub mod quant;
pub mod random;
pub mod source;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use osp_graphs::llama::{
    decode_io, past_key, past_value, prefill_io, present_key, present_value, LlamaCausalLmConfig, LlamaConfig,
    WeightQuantization, DECODE_GRAPH, PREFILL_GRAPH,
};
use osp_graphs::{AttentionKind, BundleManifest, DType, ModelSpec, Precision, Provenance, TensorSpec};
use sha2::{Digest, Sha256};
use tracing::info;

use crate::builder::{Attr, GraphBuilder, Value};
use crate::bundle::BundleWriter;
use crate::error::{Error, Result};
use crate::graph::{Generator, OnnxGraph};
use crate::passes;
pub use quant::BlockQuant;
pub use source::{parameter_shapes, LlamaSource, SourceTensor};

/// Rows quantized per read while streaming a `MatMulNBits` weight.
const QUANT_ROWS: usize = 256;

/// How to export.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaExportOptions {
    /// `Decomposed` (grouped matmuls, runs everywhere) or `OnnxAttention` (ONNX `Attention`
    /// opset 23 with its native grouped-query heads).
    pub attention: AttentionKind,
    pub precision: Precision,
    /// Weight-only quantization of the linear layers.
    pub quant: Option<WeightQuantization>,
    /// Initializers larger than this many bytes go to the external-data file.
    pub external_data_threshold_bytes: usize,
}

impl Default for LlamaExportOptions {
    fn default() -> Self {
        Self {
            attention: AttentionKind::Decomposed,
            precision: Precision::F32,
            quant: None,
            external_data_threshold_bytes: crate::bundle::DEFAULT_EXTERNAL_DATA_THRESHOLD,
        }
    }
}

impl LlamaExportOptions {
    /// The dtype weights are stored in.
    pub fn storage_dtype(&self) -> DType {
        match self.precision {
            // Refused by `export_llama` (int8 weights are `--quant int8`).
            Precision::F32 | Precision::Int8 => DType::F32,
            Precision::F16 => DType::F16,
            Precision::Bf16 => DType::Bf16,
        }
    }

    /// The dtype of activations, matmuls and the cache.
    pub fn compute_dtype(&self) -> DType {
        match self.precision {
            Precision::F16 => DType::F16,
            Precision::F32 | Precision::Bf16 | Precision::Int8 => DType::F32,
        }
    }
}

/// `inv_freq` `[head_dim / 2]` of transformers' rotary embedding for `cfg` (default RoPE, or the
/// `llama3` rescale of `_compute_llama3_parameters`), in f32 with torch's operations in torch's
/// order, so the table equals transformers' bit for bit: `1 / base ** (arange(0, d, 2) / d)`, where
/// `s / t` on a tensor is `reciprocal(t) * s` (`Tensor.__rtruediv__`).
pub fn rope_inv_freq(cfg: &LlamaConfig) -> Vec<f32> {
    let dim = cfg.head_dim();
    let base = cfg.rope_theta() as f32;
    let default: Vec<f32> = (0..dim).step_by(2).map(|i| base.powf(i as f32 / dim as f32).recip()).collect();
    let Some(rs) = cfg.rope_scaling.as_ref().filter(|rs| rs.rope_type == "llama3") else {
        return default;
    };
    let factor = rs.factor.unwrap_or(8.0);
    let low = rs.low_freq_factor.unwrap_or(1.0);
    let high = rs.high_freq_factor.unwrap_or(4.0);
    let old_context = rs.original_max_position_embeddings.unwrap_or(8192) as f64;
    let (low_wavelen, high_wavelen) = ((old_context / low) as f32, (old_context / high) as f32);
    let (factor, low32) = (factor as f32, low as f32);
    default
        .into_iter()
        .map(|f| {
            let wavelen = f.recip() * (2.0 * std::f64::consts::PI) as f32;
            let scaled = if wavelen > low_wavelen { f / factor } else { f };
            let medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
            if medium {
                let smooth = (wavelen.recip() * old_context as f32 - low32) / (high - low) as f32;
                (1.0 - smooth) * scaled / factor + smooth * scaled
            } else {
                scaled
            }
        })
        .collect()
}

/// One initializer of the plan: name, dtype, dims and its (shared) generator.
#[derive(Clone)]
struct Planned {
    name: String,
    dtype: DType,
    dims: Vec<usize>,
    generator: Generator,
}

/// The initializers of both graphs, each generator created once so that the bundle writer sees
/// the same generator in `prefill` and `decode` and writes its bytes once.
struct WeightPlan {
    stored: BTreeMap<String, Planned>,
    /// key -> (packed, scales, zero points)
    quantized: BTreeMap<String, [Planned; 3]>,
    quant: Option<BlockQuant>,
}

fn is_linear(key: &str) -> bool {
    key.ends_with("_proj.weight") || key == "lm_head.weight"
}

impl WeightPlan {
    fn new(src: &LlamaSource, opts: &LlamaExportOptions) -> Self {
        let storage = opts.storage_dtype();
        let quant = opts.quant.map(|q| BlockQuant { bits: q.bits, block_size: q.block_size });
        let mut stored = BTreeMap::new();
        let mut quantized = BTreeMap::new();
        for (key, t) in &src.tensors {
            match quant.filter(|_| is_linear(key)) {
                Some(q) => {
                    quantized.insert(key.clone(), quantized_inits(key, t, q, opts.compute_dtype()));
                }
                None => {
                    let p = Planned {
                        name: key.clone(),
                        dtype: storage,
                        dims: t.shape.clone(),
                        generator: t.generator(storage),
                    };
                    stored.insert(key.clone(), p);
                }
            }
        }
        // A tied lm_head reads the embedding; quantized, it needs its own MatMulNBits copy.
        if let Some(q) = quant.filter(|_| src.config.tie_word_embeddings()) {
            let t = src.tensor("model.embed_tokens.weight");
            quantized.insert("lm_head.weight".into(), quantized_inits("lm_head.weight", t, q, opts.compute_dtype()));
        }
        Self { stored, quantized, quant }
    }
}

/// The three `MatMulNBits` initializers of `key` (`{key}.q{bits}`, `{key}.scales`,
/// `{key}.zero_points`), streamed from the source rows. The packed pass keeps the (small) scale
/// and zero-point bytes it computed for the other two generators, which take them once; any
/// other call quantizes the source again, so every call yields the same bytes.
fn quantized_inits(key: &str, t: &Arc<SourceTensor>, q: BlockQuant, scale_dtype: DType) -> [Planned; 3] {
    let (n, k) = (t.shape[0], t.shape[1]);
    let nb = q.n_blocks(k);
    let kept: Arc<Mutex<[Option<Vec<u8>>; 2]>> = Arc::new(Mutex::new([None, None]));
    let part = |which: usize| -> Generator {
        let t = Arc::clone(t);
        let kept = Arc::clone(&kept);
        Arc::new(move |sink| {
            if which > 0 {
                let taken =
                    kept.lock().map_err(|_| std::io::Error::other("quantization cache poisoned"))?[which - 1].take();
                if let Some(bytes) = taken {
                    return sink(&bytes);
                }
            }
            let (mut packed, mut scales, mut zps) = (Vec::new(), Vec::new(), Vec::new());
            let (mut scale_bytes, mut zp_bytes) = (Vec::new(), Vec::new());
            t.for_each_rows_f32(QUANT_ROWS, &mut |_, rows| {
                packed.clear();
                scales.clear();
                zps.clear();
                q.quantize_rows(rows, k, &mut packed, &mut scales, &mut zps);
                let at = scale_bytes.len();
                match scale_dtype {
                    DType::F16 => scales
                        .iter()
                        .for_each(|&v| scale_bytes.extend_from_slice(&half::f16::from_f32(v).to_le_bytes())),
                    _ => scales.iter().for_each(|&v| scale_bytes.extend_from_slice(&v.to_le_bytes())),
                }
                zp_bytes.extend_from_slice(&zps);
                match which {
                    0 => sink(&packed),
                    1 => sink(&scale_bytes[at..]),
                    _ => sink(&zps),
                }
            })?;
            if which == 0 {
                *kept.lock().map_err(|_| std::io::Error::other("quantization cache poisoned"))? =
                    [Some(scale_bytes), Some(zp_bytes)];
            }
            Ok(())
        })
    };
    [
        Planned {
            name: format!("{key}.q{}", q.bits),
            dtype: DType::U8,
            dims: vec![n, nb, q.blob_bytes()],
            generator: part(0),
        },
        Planned { name: format!("{key}.scales"), dtype: scale_dtype, dims: vec![n, nb], generator: part(1) },
        Planned {
            name: format!("{key}.zero_points"),
            dtype: DType::U8,
            dims: vec![n, q.zero_point_bytes(k)],
            generator: part(2),
        },
    ]
}

/// Which graph to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Prefill,
    Decode,
}

/// Builds one graph; the lowering state (weights already declared, compute dtype, RoPE tables).
struct Lowering<'a> {
    b: GraphBuilder,
    cfg: &'a LlamaConfig,
    plan: &'a WeightPlan,
    compute: DType,
    declared: BTreeMap<String, Value>,
}

impl Lowering<'_> {
    fn init(&mut self, p: &Planned) -> Result<Value> {
        if let Some(v) = self.declared.get(&p.name) {
            return Ok(v.clone());
        }
        let v = self.b.generated_initializer(&p.name, p.dtype, p.dims.clone(), Arc::clone(&p.generator))?;
        self.declared.insert(p.name.clone(), v.clone());
        Ok(v)
    }

    /// A stored weight in the compute dtype (a `Cast` when stored otherwise; ONNX Runtime folds it).
    fn weight(&mut self, key: &str) -> Result<Value> {
        let p = self.plan.stored.get(key).ok_or_else(|| Error::Config(format!("no weight `{key}` in the plan")))?;
        let v = self.init(&p.clone())?;
        Ok(if v.dtype() == self.compute { v } else { self.b.cast(&v, self.compute) })
    }

    /// `nn.Linear(bias=False)` of `key` on `x` `[b, s, in]`.
    fn linear(&mut self, x: &Value, key: &str) -> Result<Value> {
        if let Some([packed, scales, zps]) = self.plan.quantized.get(key).cloned() {
            let q = self.plan.quant.expect("quantized weights come with their parameters");
            let (n, k) = (packed.dims[0], x_features(self.cfg, key));
            let (packed, scales, zps) = (self.init(&packed)?, self.init(&scales)?, self.init(&zps)?);
            let attrs = vec![
                ("K", Attr::Int(k as i64)),
                ("N", Attr::Int(n as i64)),
                ("bits", Attr::Int(q.bits as i64)),
                ("block_size", Attr::Int(q.block_size as i64)),
            ];
            let inputs = [Some(x), Some(&packed), Some(&scales), Some(&zps)];
            return Ok(self
                .b
                .node("MatMulNBits", crate::MS_DOMAIN, &inputs, attrs, &[(x.dtype(), x.rank())])
                .remove(0));
        }
        let key =
            if key == "lm_head.weight" && self.cfg.tie_word_embeddings() { "model.embed_tokens.weight" } else { key };
        let w = self.weight(key)?;
        self.b.linear(x, &w, None)
    }

    fn rms_norm(&mut self, x: &Value, key: &str) -> Result<Value> {
        let w = self.weight(key)?;
        self.b.rms_norm(x, &w, self.cfg.rms_norm_eps)
    }

    /// `q * cos + rotate_half(q) * sin` on `[b, h, s, d]`, `cos`/`sin` `[b, 1, s, d]`.
    fn rope(&mut self, x: &Value, cos: &Value, sin: &Value) -> Result<Value> {
        let half = (self.cfg.head_dim() / 2) as i64;
        let parts = self.b.split(x, -1, &[half, half])?;
        let neg = self.b.neg(&parts[1])?;
        let rotated = self.b.concat(&[&neg, &parts[0]], -1)?;
        let a = self.b.mul(x, cos)?;
        let r = self.b.mul(&rotated, sin)?;
        self.b.add(&a, &r)
    }
}

/// Input features of the linear layer `key`.
fn x_features(cfg: &LlamaConfig, key: &str) -> usize {
    if key.ends_with("o_proj.weight") {
        cfg.num_attention_heads * cfg.head_dim()
    } else if key.ends_with("down_proj.weight") {
        cfg.intermediate_size
    } else {
        cfg.hidden_size
    }
}

/// Builds graph `role` of the model `cfg` over the planned weights.
fn build_graph(cfg: &LlamaConfig, plan: &WeightPlan, role: Role, opts: &LlamaExportOptions) -> Result<OnnxGraph> {
    let compute = opts.compute_dtype();
    let name = match role {
        Role::Prefill => PREFILL_GRAPH,
        Role::Decode => DECODE_GRAPH,
    };
    let (inputs, outputs) = match role {
        Role::Prefill => prefill_io(cfg, compute),
        Role::Decode => decode_io(cfg, compute),
    };
    let mut l = Lowering { b: GraphBuilder::new(name), cfg, plan, compute, declared: BTreeMap::new() };
    let mut values: BTreeMap<String, Value> = BTreeMap::new();
    for spec in &inputs {
        values.insert(spec.name.clone(), l.b.input(spec.clone())?);
    }
    let ids = values["input_ids"].clone();
    let mask = values["attention_mask"].clone();
    let pos = values["position_ids"].clone();
    let (heads, kv, hd) = (cfg.num_attention_heads as i64, cfg.num_key_value_heads() as i64, cfg.head_dim() as i64);
    let groups = heads / kv;

    // Token embedding: gather in the stored dtype, then the compute dtype.
    let emb = l.plan.stored["model.embed_tokens.weight"].clone();
    let emb = l.init(&emb)?;
    let mut h = l.b.gather(&emb, &ids, 0)?; // [b, s, hidden]
    if h.dtype() != compute {
        h = l.b.cast(&h, compute);
    }

    // RoPE tables [b, 1, s, d] from position_ids, in f32 then the compute dtype.
    let (cos, sin) = {
        let b = &mut l.b;
        let inv = b.const_f32(&rope_inv_freq(cfg));
        let posf = b.cast(&pos, DType::F32);
        let posf = b.unsqueeze(&posf, &[-1]); // [b, s, 1]
        let freqs = b.mul(&posf, &inv)?; // [b, s, d/2]
        let emb = b.concat(&[&freqs, &freqs], -1)?;
        let cos = b.cos(&emb)?;
        let sin = b.sin(&emb)?;
        let mut cos = b.unsqueeze(&cos, &[1]);
        let mut sin = b.unsqueeze(&sin, &[1]);
        if compute != DType::F32 {
            cos = b.cast(&cos, compute);
            sin = b.cast(&sin, compute);
        }
        (cos, sin)
    };

    // Additive mask [b, 1, 1, s, total] in f32 (see the module docs).
    let bias = {
        let b = &mut l.b;
        let total = b.shape(&mask, Some(1), Some(2));
        let s = b.shape(&ids, Some(1), Some(2));
        let past = b.sub(&total, &s)?;
        let total0 = b.squeeze(&total, &[0]);
        let past0 = b.squeeze(&past, &[0]);
        let zero = b.scalar_i64(0);
        let one = b.scalar_i64(1);
        let kidx = b.range(&zero, &total0, &one)?; // [total]
        let qidx = b.range(&past0, &total0, &one)?; // [s]
        let kidx = b.unsqueeze(&kidx, &[0]); // [1, total]
        let qidx = b.unsqueeze(&qidx, &[1]); // [s, 1]
        let future = b.greater(&kidx, &qidx)?; // [s, total]
        let zero_i = b.const_i64(&[0]);
        let pad = b.equal(&mask, &zero_i)?; // [b, total]
        let pad = b.unsqueeze(&pad, &[1, 2]); // [b, 1, 1, total]
        let hidden = b.node("Or", "", &[Some(&future), Some(&pad)], vec![], &[(DType::Bool, Some(4))]).remove(0);
        // The decomposed form adds the mask to f32 scores; ONNX `Attention` takes it in the
        // compute dtype, so it gets that dtype's `finfo.min` (f32::MIN would become -inf in f16).
        let fused = opts.attention == AttentionKind::OnnxAttention;
        let min = if fused && compute == DType::F16 { half::f16::MIN.to_f64() } else { f32::MIN as f64 };
        let visible = b.scalar(0.0, DType::F32)?;
        let masked = b.scalar(min, DType::F32)?;
        let bias = b.where_(&hidden, &masked, &visible)?; // [b, 1, s, total]
        match fused {
            true if compute != DType::F32 => b.cast(&bias, compute),
            true => bias,
            false => b.unsqueeze(&bias, &[1]), // [b, 1, 1, s, total]
        }
    };
    let scale = l.b.scalar(1.0 / (hd as f64).sqrt(), DType::F32)?;

    let mut present: BTreeMap<String, Value> = BTreeMap::new();
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let h_in = h.clone();
        let x = l.rms_norm(&h_in, &format!("{p}.input_layernorm.weight"))?;
        let q = l.linear(&x, &format!("{p}.self_attn.q_proj.weight"))?;
        let k = l.linear(&x, &format!("{p}.self_attn.k_proj.weight"))?;
        let v = l.linear(&x, &format!("{p}.self_attn.v_proj.weight"))?;
        let b = &mut l.b;
        let q = b.reshape(&q, &[0, 0, heads, hd]);
        let q = b.transpose(&q, &[0, 2, 1, 3])?; // [b, heads, s, d]
        let k = b.reshape(&k, &[0, 0, kv, hd]);
        let k = b.transpose(&k, &[0, 2, 1, 3])?; // [b, kv, s, d]
        let v = b.reshape(&v, &[0, 0, kv, hd]);
        let mut v = b.transpose(&v, &[0, 2, 1, 3])?;
        let q = l.rope(&q, &cos, &sin)?;
        let mut k = l.rope(&k, &cos, &sin)?;
        let b = &mut l.b;
        if role == Role::Decode {
            k = b.concat(&[&values[&past_key(i)], &k], 2)?; // [b, kv, total, d]
            v = b.concat(&[&values[&past_value(i)], &v], 2)?;
        }
        present.insert(present_key(i), k.clone());
        present.insert(present_value(i), v.clone());
        let attn = if opts.attention == AttentionKind::OnnxAttention {
            // ONNX `Attention` (opset 23), 4-D form: q [b, heads, s, d], k/v [b, kv, total, d] (GQA
            // by the head counts), the additive mask [b, 1, s, total].
            let attrs = vec![("scale", Attr::Float((1.0 / (hd as f64).sqrt()) as f32))];
            let out =
                b.node("Attention", "", &[Some(&q), Some(&k), Some(&v), Some(&bias)], attrs, &[(compute, Some(4))]);
            b.transpose(&out[0], &[0, 2, 1, 3])? // [b, s, heads, d]
        } else {
            let q5 = b.reshape(&q, &[0, kv, groups, -1, hd]); // [b, kv, groups, s, d]
            let k5 = b.unsqueeze(&k, &[2]);
            let kt = b.transpose(&k5, &[0, 1, 2, 4, 3])?; // [b, kv, 1, d, total]
            let v5 = b.unsqueeze(&v, &[2]); // [b, kv, 1, total, d]
            let mut scores = b.matmul(&q5, &kt)?; // [b, kv, groups, s, total]
            if compute != DType::F32 {
                scores = b.cast(&scores, DType::F32);
            }
            let scores = b.mul(&scores, &scale)?;
            let scores = b.add(&scores, &bias)?;
            let mut probs = b.softmax(&scores, -1)?;
            if compute != DType::F32 {
                probs = b.cast(&probs, compute);
            }
            let attn = b.matmul(&probs, &v5)?; // [b, kv, groups, s, d]
            let attn = b.reshape(&attn, &[0, heads, -1, hd]);
            b.transpose(&attn, &[0, 2, 1, 3])? // [b, s, heads, d]
        };
        let attn = b.reshape(&attn, &[0, 0, heads * hd]);
        let o = l.linear(&attn, &format!("{p}.self_attn.o_proj.weight"))?;
        h = l.b.add(&h_in, &o)?;
        let x = l.rms_norm(&h, &format!("{p}.post_attention_layernorm.weight"))?;
        let gate = l.linear(&x, &format!("{p}.mlp.gate_proj.weight"))?;
        let up = l.linear(&x, &format!("{p}.mlp.up_proj.weight"))?;
        let act = l.b.silu(&gate)?;
        let prod = l.b.mul(&act, &up)?;
        let down = l.linear(&prod, &format!("{p}.mlp.down_proj.weight"))?;
        h = l.b.add(&h, &down)?;
    }
    let h = l.rms_norm(&h, "model.norm.weight")?;
    let mut logits = l.linear(&h, "lm_head.weight")?;
    if logits.dtype() != DType::F32 {
        logits = l.b.cast(&logits, DType::F32);
    }
    for spec in outputs {
        let value = if spec.name == "logits" { logits.clone() } else { present[&spec.name].clone() };
        l.b.output(&value, spec)?;
    }
    let mut graph = l.b.finish()?;
    graph.precision = opts.precision;
    let edit = passes::prune_unused(&graph);
    passes::apply(&mut graph, edit)?;
    let edit = passes::schedule_outputs(&graph);
    passes::apply(&mut graph, edit)?;
    Ok(graph)
}

/// The manifest config of `src` exported with `opts` (the copied files' digests filled in).
fn manifest_config(src: &LlamaSource, opts: &LlamaExportOptions) -> Result<LlamaCausalLmConfig> {
    let mut files = BTreeMap::new();
    for (name, path) in src.copied_files() {
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        files.insert(name.to_string(), hex::encode(Sha256::digest(&bytes)));
    }
    let cfg = LlamaCausalLmConfig {
        config: src.config.clone(),
        generation_config: src.generation_config.clone(),
        quantization: opts.quant,
        files,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// Exports `src` as a bundle at `out` with graphs `prefill` and `decode` and the Hugging Face
/// tokenizer/config files copied byte for byte.
pub fn export_llama(src: &LlamaSource, opts: &LlamaExportOptions, out: &Path) -> Result<BundleManifest> {
    if opts.precision == Precision::Int8 {
        return Err(Error::Config(
            "llama bundles take --precision f32, f16 or bf16; for int8 weights use --quant int8 (weight-only MatMulNBits)"
                .into(),
        ));
    }
    if let Some(q) = &opts.quant {
        if !matches!(q.bits, 4 | 8) || q.block_size < 16 || !q.block_size.is_power_of_two() {
            return Err(Error::Config(format!(
                "--quant needs 4 or 8 bits and a power-of-two block size >= 16 (got {} bits, block {})",
                q.bits, q.block_size
            )));
        }
    }
    if !matches!(opts.attention, AttentionKind::Decomposed | AttentionKind::OnnxAttention) {
        return Err(Error::Config(format!("llama graphs take --attention decomposed or onnx, not {}", opts.attention)));
    }
    let plan = WeightPlan::new(src, opts);
    let prefill = build_graph(&src.config, &plan, Role::Prefill, opts)?;
    let decode = build_graph(&src.config, &plan, Role::Decode, opts)?;
    let spec = manifest_config(src, opts)?;
    let prov = Provenance {
        exporter: crate::exporter_id(),
        source: src.dir.file_name().map(|n| n.to_string_lossy().into_owned()),
        source_sha256: None,
    };
    let mut writer =
        BundleWriter::create(out, ModelSpec::LlamaCausalLm(spec.clone()), prov, opts.external_data_threshold_bytes)?;
    for name in spec.files.keys() {
        let from = src.dir.join(name);
        let bytes = std::fs::read(&from).map_err(|e| Error::io(&from, e))?;
        osp_fs::write_bytes(&writer.staging_dir().join(name), &bytes)?;
    }
    writer.add_graph(PREFILL_GRAPH, &prefill, opts.attention, BTreeMap::new())?;
    writer.add_graph(DECODE_GRAPH, &decode, opts.attention, BTreeMap::new())?;
    let manifest = writer.finish()?;
    info!(bundle = %out.display(), precision = %opts.precision, quant = ?opts.quant, "exported llama causal LM");
    Ok(manifest)
}

/// The graph specs of a bundle built with `opts` for `cfg` (what [`export_llama`] declares).
pub fn io_specs(cfg: &LlamaConfig, opts: &LlamaExportOptions, role: Role) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
    match role {
        Role::Prefill => prefill_io(cfg, opts.compute_dtype()),
        Role::Decode => decode_io(cfg, opts.compute_dtype()),
    }
}

#[cfg(test)]
mod tests;
