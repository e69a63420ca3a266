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
}

impl ModelSpec {
    pub fn kind(&self) -> &'static str {
        match self {
            ModelSpec::TransformerBlock(_) => "transformer_block",
            ModelSpec::Linear(_) => "linear",
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
