//! `osp-export llama`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use osp_export::bundle::DEFAULT_EXTERNAL_DATA_THRESHOLD;
use osp_export::models::llama::{export_llama, LlamaExportOptions, LlamaSource};
use osp_graphs::llama::WeightQuantization;

use super::{AttentionArg, PrecisionArg};

/// Weight-only quantization of the linear layers.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum QuantArg {
    /// 8-bit blocks (`MatMulNBits` bits = 8).
    Int8,
    /// 4-bit blocks (`MatMulNBits` bits = 4).
    Int4,
}

#[derive(Debug, Args)]
pub struct LlamaArgs {
    /// The Hugging Face folder as released: `config.json`, `generation_config.json`,
    /// `model.safetensors` or `model.safetensors.index.json` with its shards, `tokenizer.json`,
    /// `tokenizer_config.json` (and `special_tokens_map.json` if present).
    #[arg(long)]
    model_dir: PathBuf,
    /// Output bundle directory (replaced atomically if it already holds a bundle).
    #[arg(long)]
    out: PathBuf,
    /// Attention form: `decomposed` (grouped matmuls, every backend) or `onnx` (ONNX `Attention`
    /// opset 23 with grouped-query heads); `ms` is refused for these graphs.
    #[arg(long, value_enum, default_value = "decomposed")]
    attention: AttentionArg,
    /// Weight storage and compute precision: f32; f16 (f16 compute and cache); bf16 (bf16
    /// weights, f32 compute and cache: ONNX Runtime's CPU provider has no bf16 MatMul).
    #[arg(long, value_enum, default_value = "f32")]
    precision: PrecisionArg,
    /// Quantize every linear layer and lm_head to ONNX Runtime's `com.microsoft` `MatMulNBits`.
    #[arg(long, value_enum)]
    quant: Option<QuantArg>,
    /// Input features per quantization block (a power of two >= 16).
    #[arg(long, default_value_t = 32, requires = "quant")]
    quant_block_size: usize,
    /// Initializers larger than this many bytes go to the external-data file.
    #[arg(long, default_value_t = DEFAULT_EXTERNAL_DATA_THRESHOLD)]
    external_data_threshold: usize,
}

pub fn run(args: LlamaArgs) -> anyhow::Result<PathBuf> {
    let src = LlamaSource::open(&args.model_dir).with_context(|| format!("reading {}", args.model_dir.display()))?;
    let quant = args.quant.map(|q| WeightQuantization {
        bits: match q {
            QuantArg::Int8 => 8,
            QuantArg::Int4 => 4,
        },
        block_size: args.quant_block_size,
        symmetric: false,
        lm_head: true,
    });
    let opts = LlamaExportOptions {
        attention: args.attention.into(),
        precision: args.precision.into(),
        quant,
        external_data_threshold_bytes: args.external_data_threshold,
    };
    export_llama(&src, &opts, &args.out).with_context(|| format!("exporting to {}", args.out.display()))?;
    Ok(args.out)
}
