//! `osp-export wfvae`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use osp_export::models::wfvae::{export_wfvae, load_weights, WfvaeWeights};
use osp_trainer::models::wfvae::WFVAEModelConfig;

use super::GraphOpts;

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["weights", "seed"])))]
pub struct WfvaeArgs {
    /// Upstream WFVAE `config.json` (e.g. the release `vae/config.json`).
    #[arg(long)]
    config: PathBuf,
    /// Weights by official name: `.safetensors`, `*.safetensors.index.json`, or a PyTorch `.ckpt`/`.pt` (strict).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Seed for deterministic random weights (instead of --weights), for size, memory and speed checks.
    #[arg(long)]
    seed: Option<u64>,
    /// Output bundle directory (replaced atomically if it already holds a bundle).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    graph: GraphOpts,
}

pub fn run(args: WfvaeArgs) -> anyhow::Result<PathBuf> {
    let cfg =
        WFVAEModelConfig::from_json_file(&args.config).with_context(|| format!("reading {}", args.config.display()))?;
    let weights = match (&args.weights, args.seed) {
        (Some(path), _) => load_weights(path).with_context(|| format!("loading {}", path.display()))?,
        (None, Some(seed)) => WfvaeWeights::random(&cfg, seed)?,
        (None, None) => anyhow::bail!("one of --weights or --seed is required"),
    };
    let opts = args.graph.export_options(args.weights.clone());
    export_wfvae(&cfg, &weights, &opts, &args.out).with_context(|| format!("exporting to {}", args.out.display()))?;
    Ok(args.out)
}
