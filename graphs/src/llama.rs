//! The Llama causal LM in a bundle: the Open-Sora-Plan v1.3 prompt refiner (a merged
//! Llama-3.1-8B-Instruct fine-tune, `opensora/sample/caption_refiner.py`), exported by
//! `osp-export llama` from its Hugging Face folder.
//!
//! ```text
//! refiner.bundle/
//!   manifest.json            model.kind = "llama_causal_lm", model.config = LlamaCausalLmConfig
//!   prefill.onnx             graph `prefill`
//!   decode.onnx              graph `decode`
//!   prefill.onnx.data        the weights, once (decode.onnx points into it)
//!   config.json              the source folder's files, byte for byte (see `files` in the manifest)
//!   generation_config.json
//!   tokenizer.json
//!   tokenizer_config.json    (with its `chat_template`)
//!   special_tokens_map.json  (when the source folder has one)
//! ```
//!
//! Graph `prefill`: `input_ids`, `attention_mask`, `position_ids` (i64 `[b, s]`, as transformers and
//! ONNX Runtime GenAI name them; `attention_mask` 1 = token, 0 = left padding) -> `logits` f32
//! `[b, s, vocab]` for every position and `present.{i}.key` / `present.{i}.value` `[b, kv_heads, s,
//! head_dim]` for each layer `i` (keys after RoPE, transformers' legacy cache layout).
//!
//! Graph `decode`: the same inputs with `input_ids`/`position_ids` `[b, s]` (usually `s = 1`),
//! `attention_mask` `[b, total]` covering the past and the new tokens (`total = past + s`), plus
//! `past_key_values.{i}.key` / `.value` `[b, kv_heads, past, head_dim]` -> `logits` `[b, s, vocab]` and
//! `present.{i}.key` / `.value` `[b, kv_heads, total, head_dim]` (the past with the new tokens appended).
//!
//! The cache dtype is the one the manifest's I/O specs name ([`LlamaGraphs::kv_dtype`]): f32 in f32
//! and bf16 bundles, f16 in f16 bundles. `logits` are always f32.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::ModelSpec;
use crate::error::{Error, Result};
use crate::manifest::{BundleManifest, DType, Dim, GraphSpec, TensorSpec};

/// The prompt graph: no cache in, the cache out.
pub const PREFILL_GRAPH: &str = "prefill";
/// The step graph: the cache in, the extended cache out.
pub const DECODE_GRAPH: &str = "decode";

pub const INPUT_IDS: &str = "input_ids";
pub const ATTENTION_MASK: &str = "attention_mask";
pub const POSITION_IDS: &str = "position_ids";
pub const LOGITS: &str = "logits";

/// The Hugging Face files copied into the bundle root, byte for byte, when the source folder has
/// them. `config.json`, `generation_config.json` and `tokenizer.json` are required by the exporter.
pub const CONFIG_FILE: &str = "config.json";
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
pub const SPECIAL_TOKENS_MAP_FILE: &str = "special_tokens_map.json";
/// Every file of [`LlamaCausalLmConfig::files`] may be one of these, and no other name.
pub const COPIED_FILES: [&str; 5] =
    [CONFIG_FILE, GENERATION_CONFIG_FILE, TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_MAP_FILE];

/// Symbolic dims of the graphs' I/O.
pub const BATCH: &str = "b";
pub const SEQ: &str = "s";
pub const PAST: &str = "past";
/// `past + s`: the decode graph's mask and present length.
pub const TOTAL: &str = "total";

/// `present.{layer}.key`
pub fn present_key(layer: usize) -> String {
    format!("present.{layer}.key")
}

/// `present.{layer}.value`
pub fn present_value(layer: usize) -> String {
    format!("present.{layer}.value")
}

/// `past_key_values.{layer}.key`
pub fn past_key(layer: usize) -> String {
    format!("past_key_values.{layer}.key")
}

/// `past_key_values.{layer}.value`
pub fn past_value(layer: usize) -> String {
    format!("past_key_values.{layer}.value")
}

/// One token id or several, as Hugging Face configs write `eos_token_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            TokenIds::One(id) => vec![*id],
            TokenIds::Many(ids) => ids.clone(),
        }
    }
}

/// A Llama `config.json` (`LlamaConfig`, transformers 4.44.2), verbatim: the keys the exporter and
/// runtime read are typed, every other key is kept as written in `upstream`.
// https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct/blob/0e9e39f249a16976918f6564b8830bc894c89659/config.json
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// `None` means `num_attention_heads` (no grouped-query attention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_key_value_heads: Option<usize>,
    /// `None` means `hidden_size / num_attention_heads`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dim: Option<usize>,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    /// transformers' default is 10000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_theta: Option<f64>,
    /// `{"rope_type": "llama3", "factor", "low_freq_factor", "high_freq_factor",
    /// "original_max_position_embeddings"}` for Llama 3.1; `None` for plain RoPE.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<TokenIds>,
    /// transformers' `LlamaConfig` default is `false`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tie_word_embeddings: Option<bool>,
    #[serde(flatten)]
    pub upstream: BTreeMap<String, serde_json::Value>,
}

/// `config.json`'s `rope_scaling`, verbatim (`type` is the pre-4.43 spelling of `rope_type`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    #[serde(alias = "type")]
    pub rope_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_freq_factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_freq_factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_max_position_embeddings: Option<usize>,
    #[serde(flatten)]
    pub upstream: BTreeMap<String, serde_json::Value>,
}

impl LlamaConfig {
    pub fn num_key_value_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    pub fn rope_theta(&self) -> f64 {
        self.rope_theta.unwrap_or(10_000.0)
    }

    pub fn tie_word_embeddings(&self) -> bool {
        self.tie_word_embeddings.unwrap_or(false)
    }

    /// The structural rules every graph relies on (positive sizes, heads dividing evenly).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(format!("llama config.json: {m}")));
        for (k, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads()),
            ("head_dim", self.head_dim()),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return bad(format!("`{k}` must be positive"));
            }
        }
        if self.num_attention_heads % self.num_key_value_heads() != 0 {
            return bad(format!(
                "`num_attention_heads` ({}) must be a multiple of `num_key_value_heads` ({})",
                self.num_attention_heads,
                self.num_key_value_heads()
            ));
        }
        if self.head_dim() % 2 != 0 {
            return bad(format!("`head_dim` ({}) must be even (RoPE rotates pairs)", self.head_dim()));
        }
        if !(self.rms_norm_eps > 0.0) {
            return bad(format!("`rms_norm_eps` must be positive, got {}", self.rms_norm_eps));
        }
        Ok(())
    }
}

/// A `generation_config.json` (`GenerationConfig`), verbatim: the keys the refiner's decode loop
/// reads are typed (absent keys take transformers' defaults at the point of use: `do_sample`
/// false, `temperature` 1.0, `top_k` 50, `top_p` 1.0), every other key is kept in `upstream`.
/// `top_k` keeps an explicit `null` apart from an absent key (`Some(None)`): transformers reads
/// `null` as "no top-k warper", not as the default 50. For the other keys `null` and absent act
/// the same in transformers (no warper, greedy), so they read as absent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenerationConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bos_token_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_token_id: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub do_sample: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    #[serde(default, deserialize_with = "present", skip_serializing_if = "Option::is_none")]
    pub top_k: Option<Option<usize>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_new_tokens: Option<usize>,
    #[serde(flatten)]
    pub upstream: BTreeMap<String, serde_json::Value>,
}

/// A key that is present, `null` included: `Some(None)` for `null` (absent keys are `None` through
/// `#[serde(default)]`).
fn present<'de, D, T>(d: D) -> std::result::Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Weight-only quantization of the linear layers (`com.microsoft` `MatMulNBits`): `bits` 4 or 8,
/// one f32/f16 scale per `block_size` input features of each output row, with a zero point unless
/// `symmetric`. The token embedding and the norms stay in the bundle precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightQuantization {
    pub bits: u32,
    pub block_size: usize,
    pub symmetric: bool,
    /// Whether `lm_head` is quantized too.
    pub lm_head: bool,
}

/// The manifest's model config of a Llama causal-LM bundle (`kind` `llama_causal_lm`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaCausalLmConfig {
    /// The source folder's `config.json`.
    pub config: LlamaConfig,
    /// The source folder's `generation_config.json` (defaults when it has none).
    #[serde(default)]
    pub generation_config: GenerationConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<WeightQuantization>,
    /// Each Hugging Face file copied into the bundle root ([`COPIED_FILES`]) -> its SHA-256 (hex).
    #[serde(default)]
    pub files: BTreeMap<String, String>,
}

impl LlamaCausalLmConfig {
    /// The ids that end a generation: `generation_config.json`'s `eos_token_id`, else `config.json`'s.
    pub fn eos_token_ids(&self) -> Vec<u32> {
        self.generation_config
            .eos_token_id
            .as_ref()
            .or(self.config.eos_token_id.as_ref())
            .map(TokenIds::to_vec)
            .unwrap_or_default()
    }

    /// `generation_config.json`'s `bos_token_id`, else `config.json`'s.
    pub fn bos_token_id(&self) -> Option<u32> {
        self.generation_config.bos_token_id.or(self.config.bos_token_id)
    }

    /// The bundle-root file name of `name` ([`COPIED_FILES`]) when the bundle has it.
    pub fn file(&self, name: &str) -> Option<&str> {
        self.files.get_key_value(name).map(|(k, _)| k.as_str())
    }

    pub fn validate(&self) -> Result<()> {
        self.config.validate()?;
        for (name, digest) in &self.files {
            if !COPIED_FILES.contains(&name.as_str()) {
                return Err(Error::Invalid(format!(
                    "llama bundle: `files` lists `{name}`; only {} may be copied",
                    COPIED_FILES.join(", ")
                )));
            }
            if !crate::manifest::is_sha256_hex(digest) {
                return Err(Error::Invalid(format!("llama bundle: the SHA-256 of `{name}` must be 64 hex digits")));
            }
        }
        if let Some(q) = &self.quantization {
            if !matches!(q.bits, 4 | 8) || q.block_size < 16 || !q.block_size.is_power_of_two() {
                return Err(Error::Invalid(format!(
                    "llama bundle: quantization needs bits 4 or 8 and a power-of-two block_size >= 16, got {q:?}"
                )));
            }
        }
        Ok(())
    }
}

/// The I/O of graph `prefill` for `cfg`, with the cache in `kv_dtype`.
pub fn prefill_io(cfg: &LlamaConfig, kv_dtype: DType) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
    let tokens = || [Dim::sym(BATCH), Dim::sym(SEQ)];
    let inputs = vec![
        TensorSpec::new(INPUT_IDS, DType::I64, tokens()),
        TensorSpec::new(ATTENTION_MASK, DType::I64, tokens()),
        TensorSpec::new(POSITION_IDS, DType::I64, tokens()),
    ];
    (inputs, outputs(cfg, kv_dtype, SEQ))
}

/// The I/O of graph `decode` for `cfg`, with the cache in `kv_dtype`.
pub fn decode_io(cfg: &LlamaConfig, kv_dtype: DType) -> (Vec<TensorSpec>, Vec<TensorSpec>) {
    let mut inputs = vec![
        TensorSpec::new(INPUT_IDS, DType::I64, [Dim::sym(BATCH), Dim::sym(SEQ)]),
        TensorSpec::new(ATTENTION_MASK, DType::I64, [Dim::sym(BATCH), Dim::sym(TOTAL)]),
        TensorSpec::new(POSITION_IDS, DType::I64, [Dim::sym(BATCH), Dim::sym(SEQ)]),
    ];
    for i in 0..cfg.num_hidden_layers {
        for name in [past_key(i), past_value(i)] {
            inputs.push(TensorSpec::new(name, kv_dtype, cache_dims(cfg, PAST)));
        }
    }
    (inputs, outputs(cfg, kv_dtype, TOTAL))
}

fn cache_dims(cfg: &LlamaConfig, len: &str) -> [Dim; 4] {
    [Dim::sym(BATCH), Dim::Fixed(cfg.num_key_value_heads()), Dim::sym(len), Dim::Fixed(cfg.head_dim())]
}

fn outputs(cfg: &LlamaConfig, kv_dtype: DType, cache_len: &str) -> Vec<TensorSpec> {
    let mut out =
        vec![TensorSpec::new(LOGITS, DType::F32, [Dim::sym(BATCH), Dim::sym(SEQ), Dim::Fixed(cfg.vocab_size)])];
    for i in 0..cfg.num_hidden_layers {
        for name in [present_key(i), present_value(i)] {
            out.push(TensorSpec::new(name, kv_dtype, cache_dims(cfg, cache_len)));
        }
    }
    out
}

/// A Llama bundle's graphs, checked against the contract above.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaGraphs {
    pub config: LlamaCausalLmConfig,
    /// The dtype of `past_key_values.*` and `present.*`.
    pub kv_dtype: DType,
}

impl LlamaGraphs {
    /// Checks that `manifest` holds a Llama causal LM whose `prefill` and `decode` graphs have
    /// exactly the I/O of [`prefill_io`] and [`decode_io`].
    pub fn read(manifest: &BundleManifest) -> Result<Self> {
        let ModelSpec::LlamaCausalLm(config) = &manifest.model else {
            return Err(Error::Invalid(format!(
                "the bundle holds a `{}` model, not a `llama_causal_lm`",
                manifest.model.kind()
            )));
        };
        config.validate()?;
        let prefill = manifest.graph(PREFILL_GRAPH)?;
        let kv_dtype = prefill
            .output(&present_key(0))
            .map(|t| t.dtype)
            .ok_or_else(|| Error::Invalid(format!("graph `{PREFILL_GRAPH}` has no output `{}`", present_key(0))))?;
        let check = |name: &str, g: &GraphSpec, (inputs, outputs): (Vec<TensorSpec>, Vec<TensorSpec>)| {
            if g.inputs != inputs || g.outputs != outputs {
                return Err(Error::Invalid(format!(
                    "graph `{name}`: its inputs/outputs differ from the llama_causal_lm contract \
                     (osp_graphs::llama::{name}_io for this config.json); export the bundle again"
                )));
            }
            Ok(())
        };
        check(PREFILL_GRAPH, prefill, prefill_io(&config.config, kv_dtype))?;
        check(DECODE_GRAPH, manifest.graph(DECODE_GRAPH)?, decode_io(&config.config, kv_dtype))?;
        Ok(Self { config: config.clone(), kv_dtype })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Llama-3.1-8B(-Instruct)'s `config.json` as released (one copy, `graphs/testdata/`).
    fn llama31_8b() -> serde_json::Value {
        serde_json::from_str(include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/llama31_8b_config.json")))
            .expect("the test config should be JSON")
    }

    #[test]
    fn config_round_trips_verbatim_and_types_the_runtime_keys() {
        let raw = llama31_8b();
        let cfg: LlamaConfig = serde_json::from_value(raw.clone()).unwrap();
        assert_eq!(serde_json::to_value(&cfg).unwrap(), raw);
        assert_eq!((cfg.num_key_value_heads(), cfg.head_dim(), cfg.rope_theta()), (8, 128, 500000.0));
        assert_eq!(cfg.rope_scaling.as_ref().unwrap().original_max_position_embeddings, Some(8192));
        cfg.validate().unwrap();
        let gen: GenerationConfig =
            serde_json::from_value(json!({"bos_token_id": 1, "eos_token_id": 7, "temperature": 0.6})).unwrap();
        let spec =
            LlamaCausalLmConfig { config: cfg, generation_config: gen, quantization: None, files: BTreeMap::new() };
        assert_eq!(spec.eos_token_ids(), [7], "generation_config.json wins");
        assert_eq!(spec.bos_token_id(), Some(1));

        let mut bad = spec.config.clone();
        bad.num_key_value_heads = Some(5);
        assert!(bad.validate().unwrap_err().to_string().contains("multiple of `num_key_value_heads`"));
    }

    #[test]
    fn generation_config_keeps_a_null_top_k_apart_from_an_absent_one() {
        let read = |v: serde_json::Value| serde_json::from_value::<GenerationConfig>(v).unwrap();
        let absent = read(json!({"do_sample": true}));
        let null = read(json!({"do_sample": true, "top_k": null}));
        let set = read(json!({"do_sample": true, "top_k": 20}));
        assert_eq!((absent.top_k, null.top_k, set.top_k), (None, Some(None), Some(Some(20))));
        for (cfg, raw) in [
            (&absent, json!({"do_sample": true})),
            (&null, json!({"do_sample": true, "top_k": null})),
            (&set, json!({"do_sample": true, "top_k": 20})),
        ] {
            assert_eq!(serde_json::to_value(cfg).unwrap(), raw, "round-trips verbatim");
        }
        assert!(serde_json::from_value::<GenerationConfig>(json!({"top_k": "x"})).is_err());
    }

    #[test]
    fn graphs_are_checked_against_the_contract() {
        use crate::manifest::{AttentionKind, Precision, Provenance};
        let cfg: LlamaConfig = serde_json::from_value(llama31_8b()).unwrap();
        let spec = LlamaCausalLmConfig {
            config: cfg.clone(),
            generation_config: GenerationConfig::default(),
            quantization: None,
            files: BTreeMap::from([(TOKENIZER_FILE.to_string(), "0".repeat(64))]),
        };
        let graph = |(inputs, outputs): (Vec<TensorSpec>, Vec<TensorSpec>)| GraphSpec {
            file: "g.onnx".into(),
            external_data: vec![],
            inputs,
            outputs,
            attention: AttentionKind::Decomposed,
            precision: Precision::F16,
            opset: 23,
            metadata: BTreeMap::new(),
        };
        let mut m = BundleManifest::new(ModelSpec::LlamaCausalLm(spec), Provenance::default());
        m.graphs.insert(PREFILL_GRAPH.into(), graph(prefill_io(&cfg, DType::F16)));
        m.graphs.insert(DECODE_GRAPH.into(), graph(decode_io(&cfg, DType::F16)));
        let read = LlamaGraphs::read(&m).unwrap();
        assert_eq!(read.kv_dtype, DType::F16);
        let decode = &m.graphs[DECODE_GRAPH];
        assert_eq!(decode.inputs.len(), 3 + 64);
        assert_eq!(decode.inputs[3].name, "past_key_values.0.key");
        assert_eq!(decode.outputs[64].name, "present.31.value");
        assert_eq!(decode.outputs[1].dims_string(), "[b, 8, total, 128]");

        let back: BundleManifest = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.model.kind(), "llama_causal_lm");

        m.graphs.insert(DECODE_GRAPH.into(), graph(decode_io(&cfg, DType::F32)));
        assert!(LlamaGraphs::read(&m).unwrap_err().to_string().contains("graph `decode`"));
    }
}
