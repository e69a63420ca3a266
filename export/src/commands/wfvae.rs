//! `osp-export wfvae`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use osp_export::models::wfvae::{export_wfvae, load_weights};
use osp_trainer::models::wfvae::WFVAEModelConfig;

use super::GraphOpts;

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
    #[command(flatten)]
    graph: GraphOpts,
}

pub fn run(args: WfvaeArgs) -> anyhow::Result<()> {
    let cfg =
        WFVAEModelConfig::from_json_file(&args.config).with_context(|| format!("reading {}", args.config.display()))?;
    let weights = load_weights(&args.weights).with_context(|| format!("loading {}", args.weights.display()))?;
    let opts = args.graph.export_options(Some(args.weights.clone()));
    export_wfvae(&cfg, &weights, &opts, &args.out).with_context(|| format!("exporting to {}", args.out.display()))?;
    Ok(())
}
