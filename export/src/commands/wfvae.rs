//! `osp-export wfvae`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use osp_export::bundle::DEFAULT_EXTERNAL_DATA_THRESHOLD;
use osp_export::models::transformer_block::ExportOptions;
use osp_export::models::wfvae::{export_wfvae, load_weights};
use osp_trainer::models::wfvae::WFVAEModelConfig;

use super::{AttentionArg, PrecisionArg};

#[derive(Debug, Args)]
pub struct WfvaeArgs {
    /// Upstream WFVAE `config.json` (e.g. the release `vae/config.json`).
    #[arg(long)]
    config: PathBuf,
    /// Weights by official name: `.safetensors`, `*.safetensors.index.json`, or a PyTorch `.ckpt`/`.pt` (strict).
    #[arg(long)]
    weights: PathBuf,
    /// Output bundle directory (replaced atomically if it already holds a bundle).
    #[arg(long)]
    out: PathBuf,
    /// Attention form of the mid blocks' per-frame attention.
    #[arg(long, value_enum, default_value = "onnx")]
    attention: AttentionArg,
    /// Precision of weights and interior arithmetic (graph I/O stay f32).
    #[arg(long, value_enum, default_value = "f32")]
    precision: PrecisionArg,
    /// Initializers larger than this many bytes go to the external-data file.
    #[arg(long, default_value_t = DEFAULT_EXTERNAL_DATA_THRESHOLD)]
    external_data_threshold: usize,
}

pub fn run(args: WfvaeArgs) -> anyhow::Result<()> {
    let cfg =
        WFVAEModelConfig::from_json_file(&args.config).with_context(|| format!("reading {}", args.config.display()))?;
    let weights = load_weights(&args.weights).with_context(|| format!("loading {}", args.weights.display()))?;
    let opts = ExportOptions {
        attention: args.attention.into(),
        precision: args.precision.into(),
        external_data_threshold_bytes: args.external_data_threshold,
        source: Some(args.weights.clone()),
    };
    export_wfvae(&cfg, &weights, &opts, &args.out).with_context(|| format!("exporting to {}", args.out.display()))?;
    Ok(())
}
