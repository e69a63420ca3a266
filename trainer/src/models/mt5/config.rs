//! `MT5Config` (encoder part), mirroring the Hugging Face `config.json` keys.

use std::path::Path;

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::{MT5EncoderModel, T5Stack};
use crate::error::{Error, Result};

/// The keys of transformers' `MT5Config` that the encoder uses. Defaults are the
/// `MT5Config.__init__` defaults (transformers 4.44.2); unknown keys (`architectures`,
/// `num_decoder_layers`, `tokenizer_class`, ...) are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MT5Config {
    pub vocab_size: usize,
    pub d_model: usize,
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub relative_attention_num_buckets: usize,
    pub relative_attention_max_distance: usize,
    pub layer_norm_epsilon: f64,
    /// `"gated-gelu"` (mT5, T5 v1.1) is the only feed-forward this port implements.
    pub feed_forward_proj: String,
    pub pad_token_id: usize,
    pub eos_token_id: usize,
}

impl Default for MT5Config {
    // https://github.com/huggingface/transformers/blob/v4.44.2/src/transformers/models/mt5/configuration_mt5.py#L71-L96
    fn default() -> Self {
        MT5Config {
            vocab_size: 250112,
            d_model: 512,
            d_kv: 64,
            d_ff: 1024,
            num_layers: 8,
            num_heads: 6,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            layer_norm_epsilon: 1e-6,
            feed_forward_proj: "gated-gelu".into(),
            pad_token_id: 0,
            eos_token_id: 1,
        }
    }
}

impl MT5Config {
    /// google/mt5-xxl, the text encoder of Open-Sora-Plan v1.3 (5,655,173,120 parameters).
    // https://huggingface.co/google/mt5-xxl/blob/e07c395916dfbc315d4e5e48b4a54a1e8821b5c0/config.json
    pub fn mt5_xxl() -> Self {
        MT5Config { d_model: 4096, d_ff: 10240, num_layers: 24, num_heads: 64, ..Self::default() }
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let config: Self =
            serde_json::from_str(&text).map_err(|e| Error::Json { path: path.to_path_buf(), source: e })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks the rules the encoder relies on.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("d_model", self.d_model),
            ("d_kv", self.d_kv),
            ("d_ff", self.d_ff),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("relative_attention_num_buckets", self.relative_attention_num_buckets),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(Error::Config(format!("`{key}` must be positive")));
        }
        // HF splits the key at '-': "gated-gelu" -> gated, act "gelu" -> `gelu_new` (tanh GELU).
        if self.feed_forward_proj != "gated-gelu" {
            return Err(Error::Config(format!(
                "feed_forward_proj `{}` is not supported: mT5 uses \"gated-gelu\"",
                self.feed_forward_proj
            )));
        }
        // Bidirectional bucketing halves the buckets, then splits them into exact and log ranges.
        if self.relative_attention_num_buckets < 4 || !self.relative_attention_num_buckets.is_multiple_of(2) {
            return Err(Error::Config(format!(
                "relative_attention_num_buckets must be even and at least 4, got {}",
                self.relative_attention_num_buckets
            )));
        }
        if self.relative_attention_max_distance <= self.relative_attention_num_buckets / 4 {
            return Err(Error::Config(format!(
                "relative_attention_max_distance ({}) must exceed num_buckets / 4 ({})",
                self.relative_attention_max_distance,
                self.relative_attention_num_buckets / 4
            )));
        }
        if self.layer_norm_epsilon.is_nan() || self.layer_norm_epsilon <= 0.0 {
            return Err(Error::Config("layer_norm_epsilon must be positive".into()));
        }
        Ok(())
    }

    /// Builds the encoder. Parameters are lazy: nothing is allocated until a parameter is read
    /// or loaded.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<MT5EncoderModel<B>> {
        self.validate()?;
        Ok(MT5EncoderModel {
            shared: burn::nn::EmbeddingConfig::new(self.vocab_size, self.d_model).init(device),
            encoder: T5Stack::new(self, device),
            vocab_size: self.vocab_size,
        })
    }
}
