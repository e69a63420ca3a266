//! `osp-export big-linear`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use osp_export::export_big_linear;

#[derive(Debug, Args)]
pub struct BigLinearArgs {
    /// Input features (columns of the weight).
    #[arg(long, default_value_t = 16384)]
    in_features: usize,
    /// Output features (rows of the weight); 16384 x 36864 f32 is 2.4 GB of external data.
    #[arg(long, default_value_t = 36864)]
    out_features: usize,
    /// Seed of the streamed weight generator.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output bundle directory.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: BigLinearArgs) -> anyhow::Result<PathBuf> {
    export_big_linear(&args.out, args.in_features, args.out_features, args.seed)
        .with_context(|| format!("exporting to {}", args.out.display()))?;
    Ok(args.out)
}
