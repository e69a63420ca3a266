//! `osp-export dit`: the Open-Sora-Plan v1.3 DiT (`OpenSoraT2V_v1_3`) as a bundle with one graph,
//! `transformer`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use osp_export::models::opensora_v1_3::{export_opensora_t2v, DitWeights};
use osp_trainer::models::opensora_v1_3::OpenSoraT2V_v1_3Config;

use super::{ModelArgs, WeightSource};

#[derive(Debug, Args)]
pub struct DitArgs {
    /// Upstream `config.json` of the transformer (`OpenSoraT2V_v1_3` keys).
    #[arg(long)]
    config: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
}

pub fn run(args: DitArgs) -> anyhow::Result<PathBuf> {
    let config = OpenSoraT2V_v1_3Config::from_json_file(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let weights = match args.model.source()? {
        WeightSource::File(path) => {
            DitWeights::load(&config, path).with_context(|| format!("loading {}", path.display()))?
        }
        WeightSource::Seed(seed) => DitWeights::random(&config, seed)?,
    };
    let out = &args.model.out;
    export_opensora_t2v(&config, &weights, &args.model.export_options(), out)
        .with_context(|| format!("exporting to {}", out.display()))?;
    Ok(args.model.out)
}
