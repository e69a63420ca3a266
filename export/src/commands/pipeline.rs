//! `osp-export pipeline`: a complete text-to-video bundle (tokenizer, text encoder, transformer,
//! VAE with its streaming decoder, scheduler config, sampling defaults) from component files.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use osp_export::models::pipeline::{export_pipeline, PipelineExportOptions, PipelineSources};
use osp_graphs::PipelineDefaults;

use super::{GraphOpts, PrecisionArg};

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("layout").required(true).args(["from_dir", "transformer"])))]
pub struct PipelineArgs {
    /// Flat folder with `{text_encoder,transformer,vae}_config.json`, `{...}.safetensors`,
    /// `tokenizer.json` and `scheduler_config.json` (the layout of reference/e2e).
    #[arg(long, alias = "from_dir", conflicts_with_all = ["transformer", "vae", "text_encoder"])]
    from_dir: Option<PathBuf>,
    /// Released transformer folder: `config.json` + diffusers safetensors (sharded with an index, or single).
    #[arg(long, alias = "model_path", requires_all = ["vae", "text_encoder"])]
    transformer: Option<PathBuf>,
    /// Released VAE folder: `config.json` + one `.ckpt` or `.safetensors` checkpoint.
    #[arg(long, alias = "ae_path")]
    vae: Option<PathBuf>,
    /// Hugging Face mT5 folder: `config.json`, weights, `tokenizer.json` or `spiece.model`.
    #[arg(long, alias = "text_encoder_name_1", alias = "text-encoder-name-1")]
    text_encoder: Option<PathBuf>,
    /// A diffusers `scheduler_config.json` (default with released folders: upstream's release
    /// scheduler, EulerAncestralDiscrete with v-prediction, zero-SNR betas, trailing spacing).
    #[arg(long, alias = "scheduler_config")]
    scheduler_config: Option<PathBuf>,
    /// Precision of the text encoder only (default: --precision).
    #[arg(long, value_enum)]
    text_encoder_precision: Option<PrecisionArg>,
    /// Output pipeline bundle directory (replaced atomically if it already holds one).
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    graph: GraphOpts,
    #[command(flatten)]
    defaults: DefaultsArgs,
}

/// Sampling defaults recorded in `pipeline.json` (`osp generate` flags override them).
#[derive(Debug, Args)]
struct DefaultsArgs {
    /// Default frame count (4n + 1).
    #[arg(long = "default-num-frames")]
    num_frames: Option<usize>,
    /// Default height in pixels.
    #[arg(long = "default-height")]
    height: Option<usize>,
    /// Default width in pixels.
    #[arg(long = "default-width")]
    width: Option<usize>,
    /// Default number of sampling steps.
    #[arg(long = "default-num-sampling-steps")]
    num_sampling_steps: Option<usize>,
    /// Default text length in tokens.
    #[arg(long = "default-max-sequence-length")]
    max_sequence_length: Option<usize>,
    /// Height and width must be multiples of this (a multiple of 8 x the DiT patch size).
    #[arg(long, default_value_t = 32)]
    spatial_multiple: usize,
}

pub fn run(args: PipelineArgs) -> anyhow::Result<PathBuf> {
    let sources = match (&args.from_dir, &args.transformer, &args.vae, &args.text_encoder) {
        (Some(dir), ..) => {
            let mut s = PipelineSources::from_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
            if let Some(p) = &args.scheduler_config {
                s.scheduler_config = Some(p.clone());
            }
            s
        }
        (None, Some(t), Some(v), Some(te)) => {
            PipelineSources::from_released(t, v, te, args.scheduler_config.as_deref())
                .context("locating the released component files")?
        }
        _ => anyhow::bail!("give --from-dir DIR, or all of --transformer, --vae and --text-encoder"),
    };
    let d = &args.defaults;
    let base = PipelineDefaults::open_sora_plan_v13();
    let defaults = PipelineDefaults {
        num_frames: d.num_frames.unwrap_or(base.num_frames),
        height: d.height.unwrap_or(base.height),
        width: d.width.unwrap_or(base.width),
        num_sampling_steps: d.num_sampling_steps.unwrap_or(base.num_sampling_steps),
        max_sequence_length: d.max_sequence_length.unwrap_or(base.max_sequence_length),
        spatial_multiple: d.spatial_multiple,
        ..base
    };
    let opts = PipelineExportOptions {
        graph: args.graph.export_options(None),
        text_encoder_precision: args.text_encoder_precision.map(Into::into),
        defaults,
    };
    export_pipeline(&sources, &opts, &args.out).with_context(|| format!("exporting to {}", args.out.display()))?;
    Ok(args.out)
}
