//! `osp-train shapes`: writes the procedural coloured-shapes data set (mp4 files, upstream
//! annotation JSON, a 2-item `--data` file).

use std::path::PathBuf;

use clap::Args;

use osp_trainer::data::shapes::{generate, ShapesConfig};

#[derive(Debug, Args)]
pub struct ShapesArgs {
    /// Output folder (videos/, annotation.json, data.txt).
    #[arg(long)]
    pub out: PathBuf,
    /// Number of clips.
    #[arg(long, default_value_t = 480)]
    pub count: usize,
    /// Frames per clip.
    #[arg(long = "num-frames", default_value_t = 17)]
    pub num_frames: usize,
    /// Frame height (even, >= 16).
    #[arg(long, default_value_t = 64)]
    pub height: usize,
    /// Frame width (even, >= 16).
    #[arg(long, default_value_t = 64)]
    pub width: usize,
    /// Seed: the same seed writes the same data set.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(args: ShapesArgs) -> anyhow::Result<()> {
    let config = ShapesConfig {
        count: args.count,
        num_frames: args.num_frames,
        height: args.height,
        width: args.width,
        seed: args.seed,
    };
    let items = generate(&args.out, &config)?;
    println!(
        "wrote {} clips to {} (data file: {})",
        items.len(),
        args.out.display(),
        args.out.join("data.txt").display()
    );
    Ok(())
}
