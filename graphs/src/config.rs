//! Model configs carried in a bundle manifest. Field names follow the upstream `config.json` keys.
//!
//! Each model issue adds its variant (`wfvae`, `opensora_t2v_v1_3`, `mt5_encoder`, `pipeline`).

use serde::{Deserialize, Serialize};

/// The model a bundle holds, with its full config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "config", rename_all = "snake_case")]
pub enum ModelSpec {
    /// One pre-norm transformer block (self-attention + GELU MLP), the smallest model that exercises
    /// every piece of the export -> bundle -> runtime chain.
    TransformerBlock(TransformerBlockConfig),
    /// One bias-free `nn.Linear`, `y = x @ weight^T`: the large-weight (external data over 2 GiB) check.
    Linear(LinearConfig),
    /// The mT5 text encoder (`MT5EncoderModel`, google/mt5-xxl upstream).
    Mt5Encoder(Mt5EncoderConfig),
}

impl ModelSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            ModelSpec::TransformerBlock(_) => "transformer_block",
            ModelSpec::Linear(_) => "linear",
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
