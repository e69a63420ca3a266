//! Model configs carried in a bundle manifest. Field names follow the upstream `config.json` keys.
//!
//! Each model issue adds its variant (`wfvae`, `opensora_t2v_v1_3`, `mt5_encoder`, `pipeline`).

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::llama::LlamaCausalLmConfig;

/// The model a bundle holds, with its full config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "config", rename_all = "snake_case")]
// One value per manifest: the size of the largest config does not matter.
#[allow(clippy::large_enum_variant)]
pub enum ModelSpec {
    /// One pre-norm transformer block (self-attention + GELU MLP), the smallest model that exercises
    /// every piece of the export -> bundle -> runtime chain.
    TransformerBlock(TransformerBlockConfig),
    /// One bias-free `nn.Linear`, `y = x @ weight^T`: the large-weight (external data over 2 GiB) check.
    Linear(LinearConfig),
    /// The WFVAE video autoencoder (`WFVAEModel`, Open-Sora-Plan v1.3).
    Wfvae(WfvaeConfig),
    /// The Open-Sora-Plan v1.3 diffusion transformer (`OpenSoraT2V_v1_3`), with its upstream `config.json`.
    #[serde(rename = "opensora_t2v_v1_3")]
    OpenSoraT2V(OpenSoraT2VConfig),
    /// The mT5 text encoder (`MT5EncoderModel`, google/mt5-xxl upstream).
    Mt5Encoder(Mt5EncoderConfig),
    /// A Llama causal LM (`LlamaForCausalLM`; the prompt refiner), with its Hugging Face
    /// `config.json` and `generation_config.json` (see [`crate::llama`]).
    LlamaCausalLm(LlamaCausalLmConfig),
}

impl ModelSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            ModelSpec::TransformerBlock(_) => "transformer_block",
            ModelSpec::Linear(_) => "linear",
            ModelSpec::Wfvae(_) => "wfvae",
            ModelSpec::OpenSoraT2V(_) => "opensora_t2v_v1_3",
            ModelSpec::Mt5Encoder(_) => "mt5_encoder",
            ModelSpec::LlamaCausalLm(_) => "llama_causal_lm",
        }
    }
}

/// `x = x + attn1(norm1(x)); x = x + ff(norm2(x))` with affine LayerNorms, biased q/k/v/out
/// projections, and a tanh-GELU feed-forward, named like a diffusers `BasicTransformerBlock`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransformerBlockConfig {
    pub hidden_size: usize,
    pub num_attention_heads: usize,
    pub attention_head_dim: usize,
    pub ff_inner_dim: usize,
    #[serde(default = "default_norm_eps")]
    pub norm_eps: f64,
    /// `true`: the graph takes `attention_mask` `[b, n]` and its attention a key bias; `false`: no
    /// mask input and a bias-free attention call (every key attends).
    #[serde(default = "default_attention_mask")]
    pub attention_mask: bool,
}

fn default_norm_eps() -> f64 {
    1e-6
}

fn default_attention_mask() -> bool {
    true
}

/// A bias-free `nn.Linear(in_features, out_features)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinearConfig {
    pub in_features: usize,
    pub out_features: usize,
}

/// The upstream WFVAE `config.json`, verbatim. The keys the runtime needs (latent size and the
/// diffusion wrapper's per-channel latent normalisation `z = (mean - shift) * scale`) are typed;
/// every other upstream key is kept as written in `upstream`, so the block structure is defined
/// in one place only (the trainer's `WFVAEModelConfig`, converted through JSON by the exporter).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WfvaeConfig {
    pub latent_dim: usize,
    pub scale: Vec<f64>,
    pub shift: Vec<f64>,
    #[serde(flatten)]
    pub upstream: BTreeMap<String, serde_json::Value>,
}

/// The manifest view `M` ([`WfvaeConfig`], [`OpenSoraT2VConfig`], [`Mt5EncoderConfig`]) of a model
/// config that serializes to its upstream `config.json` keys (the exporter's trainer configs).
pub fn manifest_view<M: DeserializeOwned>(upstream: &impl Serialize) -> serde_json::Result<M> {
    serde_json::to_value(upstream).and_then(serde_json::from_value)
}

/// Metadata key under which each streaming-decoder graph stores its [`StreamProtocol`].
pub const STREAM_METADATA_KEY: &str = "stream";

/// Which call of a streaming decode a graph serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StreamRole {
    /// The first chunk (exactly `first_chunk_latents` latents); outputs the initial state.
    First,
    /// A middle chunk: state in, state out.
    Step,
    /// The final chunk: state in, flushes, no state out.
    Last,
}

/// One state tensor carried from a call's output to the next call's input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatePair {
    pub input: String,
    pub output: String,
}

/// How a runtime drives a streaming decoder chunk by chunk, so it never re-derives the protocol
/// from model code. A clip of `T` latents is split as `first_chunk_latents`, then chunks of any
/// size `1..=max_chunk_latents`; the first graph runs alone when `T == first_chunk_latents`,
/// otherwise every chunk but the final one runs the step graph and the final one the last graph.
/// Each call feeds `input` and the previous call's state outputs (`StatePair::output` ->
/// `StatePair::input`) and returns `frames_per_latent * t + frames_offset` frames of `output`
/// for a chunk of `t` latents; of the call right after the first one, the first
/// `drop_leading_frames_after_first` frames repeat frames already returned and are dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamProtocol {
    pub role: StreamRole,
    pub first_graph: String,
    pub step_graph: String,
    pub last_graph: String,
    /// The latent chunk input (`[b, c, t, h, w]`) and the frames output.
    pub input: String,
    pub output: String,
    pub first_chunk_latents: usize,
    pub max_chunk_latents: usize,
    /// A chunk size that keeps memory low at a modest per-call overhead (upstream `t_chunk_dec`).
    pub default_chunk_latents: usize,
    pub frames_per_latent: usize,
    pub frames_offset: i64,
    pub drop_leading_frames_after_first: usize,
    /// Every state tensor, in graph input order.
    pub state: Vec<StatePair>,
}

/// The upstream `OpenSoraT2V_v1_3` `config.json` (`OpenSoraT2V_v1_3.__init__` keys), verbatim. The
/// keys the runtime reads (channels, caption width, patch sizes, attention sizes) are typed; every
/// other upstream key is kept as written in `upstream`, so the keys and their constructor
/// defaults are defined in one place only (the trainer's `OpenSoraT2V_v1_3Config`, converted
/// through JSON by the exporter, which records every key).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OpenSoraT2VConfig {
    pub num_attention_heads: usize,
    pub attention_head_dim: usize,
    pub sparse1d: bool,
    pub sparse_n: usize,
    #[serde(default)]
    pub in_channels: Option<usize>,
    /// `None` means `in_channels`.
    #[serde(default)]
    pub out_channels: Option<usize>,
    #[serde(default)]
    pub caption_channels: Option<usize>,
    #[serde(default)]
    pub patch_size: Option<usize>,
    #[serde(default)]
    pub patch_size_t: Option<usize>,
    #[serde(flatten)]
    pub upstream: BTreeMap<String, serde_json::Value>,
}

/// The encoder keys of a Hugging Face mT5 `config.json` (`MT5Config`, transformers 4.44.2),
/// verbatim. The keys the runtime and the cross-component checks read are typed; every other key
/// is kept as written in `upstream`, so the keys and their defaults are defined in one place only
/// (the trainer's `MT5Config`, converted through JSON by the exporter).
// https://huggingface.co/google/mt5-xxl/blob/e07c395916dfbc315d4e5e48b4a54a1e8821b5c0/config.json
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mt5EncoderConfig {
    /// Rows of the token embedding (`shared.weight`); mT5-xxl pads its 250100 pieces to 250112.
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_ff: usize,
    pub num_heads: usize,
    #[serde(flatten)]
    pub upstream: BTreeMap<String, serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The manifest views type the keys the runtime reads and keep every other key as written.
    #[test]
    fn manifest_views_keep_every_upstream_key() {
        let dit = json!({
            "num_attention_heads": 24, "attention_head_dim": 96, "sparse1d": true, "sparse_n": 4,
            "in_channels": 8, "out_channels": null, "caption_channels": 4096, "patch_size": 2,
            "patch_size_t": 1, "num_layers": 32, "sample_size_h": [44, 80], "norm_eps": 1e-6
        });
        let view: OpenSoraT2VConfig = manifest_view(&dit).unwrap();
        assert_eq!(
            (view.num_attention_heads, view.attention_head_dim, view.sparse1d, view.sparse_n),
            (24, 96, true, 4)
        );
        assert_eq!((view.in_channels, view.out_channels, view.caption_channels), (Some(8), None, Some(4096)));
        assert_eq!((view.patch_size, view.patch_size_t), (Some(2), Some(1)));
        assert_eq!(view.upstream.keys().collect::<Vec<_>>(), ["norm_eps", "num_layers", "sample_size_h"]);
        assert_eq!(serde_json::to_value(&view).unwrap(), dit);

        let mt5 = json!({
            "vocab_size": 250112, "d_model": 4096, "d_ff": 10240, "num_heads": 64, "d_kv": 64,
            "feed_forward_proj": "gated-gelu"
        });
        let view: Mt5EncoderConfig = manifest_view(&mt5).unwrap();
        assert_eq!((view.vocab_size, view.d_model, view.d_ff, view.num_heads), (250112, 4096, 10240, 64));
        assert_eq!(serde_json::to_value(&view).unwrap(), mt5);
        assert!(manifest_view::<Mt5EncoderConfig>(&json!({"d_model": 8})).is_err(), "vocab_size is required");
    }
}
