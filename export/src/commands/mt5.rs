//! `osp-export mt5`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use osp_export::models::mt5::{export_mt5, Mt5ExportOptions, Mt5Weights};
use osp_trainer::models::mt5::MT5Config;

use super::GraphOpts;

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["weights", "seed"])))]
#[command(group(clap::ArgGroup::new("cfg").required(true).args(["config", "xxl"])))]
pub struct Mt5Args {
    /// Hugging Face `config.json` of the encoder (mT5 keys).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Use the google/mt5-xxl config instead of --config.
    #[arg(long)]
    xxl: bool,
    /// Checkpoint: `.safetensors`, sharded `*.safetensors.index.json`, or a PyTorch `.bin`/`.pt`
    /// (strict; the decoder half of a full mT5 checkpoint is ignored).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Seed for deterministic random weights streamed into the bundle (instead of --weights).
    #[arg(long)]
    seed: Option<u64>,
    /// `tokenizer.json` or `spiece.model` to copy into the bundle (makes it self-contained).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// Output bundle directory (replaced atomically if it already holds a bundle).
    #[arg(long)]
    out: PathBuf,
    /// f16/bf16 keep `DenseReluDense.wo`, the norms and the residual stream in f32.
    #[command(flatten)]
    graph: GraphOpts,
}

pub fn run(args: Mt5Args) -> anyhow::Result<PathBuf> {
    let cfg = match &args.config {
        Some(path) => MT5Config::from_json_file(path).with_context(|| format!("reading {}", path.display()))?,
        None => MT5Config::mt5_xxl(),
    };
    let weights = match (&args.weights, args.seed) {
        (Some(path), _) => Mt5Weights::load(&cfg, path).with_context(|| format!("loading {}", path.display()))?,
        (None, Some(seed)) => Mt5Weights::Random { seed },
        (None, None) => anyhow::bail!("one of --weights or --seed is required"),
    };
    let opts =
        Mt5ExportOptions { graph: args.graph.export_options(args.weights.clone()), tokenizer: args.tokenizer.clone() };
    export_mt5(&cfg, &weights, &opts, &args.out).with_context(|| format!("exporting to {}", args.out.display()))?;
    Ok(args.out)
}
