//! `osp-export dit`: the Open-Sora-Plan v1.3 DiT (`OpenSoraT2V_v1_3`) as a bundle with one graph,
//! `transformer`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use osp_export::models::opensora_v1_3::{export_opensora_t2v, DitWeights};
use osp_trainer::models::opensora_v1_3::OpenSoraT2V_v1_3Config;

use super::GraphOpts;

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["weights", "seed"])))]
pub struct DitArgs {
    /// Upstream `config.json` of the transformer (`OpenSoraT2V_v1_3` keys).
    #[arg(long)]
    config: PathBuf,
    /// Checkpoint with the official diffusers names: `*.safetensors`, `*.safetensors.index.json`
    /// (sharded) or a PyTorch pickle (strict: no missing, extra or mis-shaped tensor).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Seed for deterministic random weights (instead of --weights), for size and speed checks.
    #[arg(long)]
    seed: Option<u64>,
    /// Output bundle directory (replaced atomically if it already holds a bundle).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    graph: GraphOpts,
}

pub fn run(args: DitArgs) -> anyhow::Result<PathBuf> {
    let config = OpenSoraT2V_v1_3Config::from_json_file(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let weights = match (&args.weights, args.seed) {
        (Some(path), _) => DitWeights::load(&config, path).with_context(|| format!("loading {}", path.display()))?,
        (None, Some(seed)) => DitWeights::random(&config, seed)?,
        (None, None) => anyhow::bail!("one of --weights or --seed is required"),
    };
    let opts = args.graph.export_options(args.weights.clone());
    export_opensora_t2v(&config, &weights, &opts, &args.out)
        .with_context(|| format!("exporting to {}", args.out.display()))?;
    Ok(args.out)
}
