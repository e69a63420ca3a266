//! Model configs carried in a bundle manifest. Field names follow the upstream `config.json` keys.
//!
//! Each model issue adds its variant (`wfvae`, `opensora_t2v_v1_3`, `mt5_encoder`, `pipeline`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
}

impl ModelSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            ModelSpec::TransformerBlock(_) => "transformer_block",
            ModelSpec::Linear(_) => "linear",
            ModelSpec::Wfvae(_) => "wfvae",
            ModelSpec::OpenSoraT2V(_) => "opensora_t2v_v1_3",
            ModelSpec::Mt5Encoder(_) => "mt5_encoder",
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
}

fn default_norm_eps() -> f64 {
    1e-6
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

/// `sample_size_{t,h,w}`: the release `config.json` stores `[h, w]` lists, the upstream constructor
/// types them as ints. Neither affects the weights or the forward pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SampleSize {
    Scalar(usize),
    List(Vec<usize>),
}

/// The keys of the upstream `OpenSoraT2V_v1_3` `config.json` (`OpenSoraT2V_v1_3.__init__`), as the
/// bundle records them. Missing keys take the upstream constructor defaults.
// https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/diffusion/opensora_v1_3/modeling_opensora.py#L30-L57
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct OpenSoraT2VConfig {
    pub num_attention_heads: usize,
    pub attention_head_dim: usize,
    pub in_channels: Option<usize>,
    pub out_channels: Option<usize>,
    pub num_layers: usize,
    pub dropout: f64,
    pub cross_attention_dim: Option<usize>,
    pub attention_bias: bool,
    pub sample_size_h: Option<SampleSize>,
    pub sample_size_w: Option<SampleSize>,
    pub sample_size_t: Option<SampleSize>,
    pub patch_size: Option<usize>,
    pub patch_size_t: Option<usize>,
    pub activation_fn: String,
    pub only_cross_attention: bool,
    pub double_self_attention: bool,
    pub upcast_attention: bool,
    pub norm_elementwise_affine: bool,
    pub norm_eps: f64,
    pub caption_channels: Option<usize>,
    pub interpolation_scale_h: f64,
    pub interpolation_scale_w: f64,
    pub interpolation_scale_t: f64,
    pub sparse1d: bool,
    pub sparse_n: usize,
}

impl Default for OpenSoraT2VConfig {
    fn default() -> Self {
        Self {
            num_attention_heads: 16,
            attention_head_dim: 88,
            in_channels: None,
            out_channels: None,
            num_layers: 1,
            dropout: 0.0,
            cross_attention_dim: None,
            attention_bias: true,
            sample_size_h: None,
            sample_size_w: None,
            sample_size_t: None,
            patch_size: None,
            patch_size_t: None,
            activation_fn: "geglu".into(),
            only_cross_attention: false,
            double_self_attention: false,
            upcast_attention: false,
            norm_elementwise_affine: false,
            norm_eps: 1e-6,
            caption_channels: None,
            interpolation_scale_h: 1.0,
            interpolation_scale_w: 1.0,
            interpolation_scale_t: 1.0,
            sparse1d: false,
            sparse_n: 2,
        }
    }
}

/// The encoder keys of a Hugging Face mT5 `config.json` (`MT5Config`, transformers 4.44.2). Only
/// `feed_forward_proj = "gated-gelu"` exists in the exported graph.
// https://huggingface.co/google/mt5-xxl/blob/e07c395916dfbc315d4e5e48b4a54a1e8821b5c0/config.json
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Mt5EncoderConfig {
    /// Rows of the token embedding (`shared.weight`); mT5-xxl pads its 250100 pieces to 250112.
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub relative_attention_num_buckets: usize,
    pub relative_attention_max_distance: usize,
    pub layer_norm_epsilon: f64,
    pub feed_forward_proj: String,
    #[serde(default)]
    pub pad_token_id: usize,
    #[serde(default = "default_eos_token_id")]
    pub eos_token_id: usize,
}

fn default_eos_token_id() -> usize {
    1
}
