//! `osp-export mt5`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use osp_export::models::mt5::{export_mt5, Mt5ExportOptions, Mt5Weights};
use osp_trainer::models::mt5::MT5Config;

use super::{ModelArgs, WeightSource};

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("cfg").required(true).args(["config", "xxl"])))]
pub struct Mt5Args {
    /// Hugging Face `config.json` of the encoder (mT5 keys).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Use the google/mt5-xxl config instead of --config.
    #[arg(long)]
    xxl: bool,
    /// `tokenizer.json` or `spiece.model` to copy into the bundle (makes it self-contained).
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
}

pub fn run(args: Mt5Args) -> anyhow::Result<PathBuf> {
    let cfg = match &args.config {
        Some(path) => MT5Config::from_json_file(path).with_context(|| format!("reading {}", path.display()))?,
        None => MT5Config::mt5_xxl(),
    };
    let weights = match args.model.source()? {
        WeightSource::File(path) => {
            Mt5Weights::load(&cfg, path).with_context(|| format!("loading {}", path.display()))?
        }
        WeightSource::Seed(seed) => Mt5Weights::Random { seed },
    };
    let opts = Mt5ExportOptions { graph: args.model.export_options(), tokenizer: args.tokenizer.clone() };
    let out = &args.model.out;
    export_mt5(&cfg, &weights, &opts, out).with_context(|| format!("exporting to {}", out.display()))?;
    Ok(args.model.out)
}
