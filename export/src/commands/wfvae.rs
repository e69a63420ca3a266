//! `osp-export wfvae`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use osp_export::models::wfvae::{export_wfvae, load_weights, WfvaeWeights};
use osp_trainer::models::wfvae::WFVAEModelConfig;

use super::{ModelArgs, WeightSource};

#[derive(Debug, Args)]
pub struct WfvaeArgs {
    /// Upstream WFVAE `config.json` (e.g. the release `vae/config.json`).
    #[arg(long)]
    config: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
}

pub fn run(args: WfvaeArgs) -> anyhow::Result<PathBuf> {
    let cfg =
        WFVAEModelConfig::from_json_file(&args.config).with_context(|| format!("reading {}", args.config.display()))?;
    let weights = match args.model.source()? {
        WeightSource::File(path) => load_weights(path).with_context(|| format!("loading {}", path.display()))?,
        WeightSource::Seed(seed) => WfvaeWeights::random(&cfg, seed)?,
    };
    let out = &args.model.out;
    export_wfvae(&cfg, &weights, &args.model.export_options(), out)
        .with_context(|| format!("exporting to {}", out.display()))?;
    Ok(args.model.out)
}
