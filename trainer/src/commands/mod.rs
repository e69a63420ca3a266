//! Subcommands of `osp-train`.

/// Runs `$body` with the type `$B` bound to the Burn backend of a [`DeviceKind`] (`NdArray<f32>`
/// on the CPU, `Cuda<f32>` with the `cuda` feature) and, in the `|B, replicas|` form, `replicas`
/// bound to a closure giving that backend's first `n` devices (data-parallel replicas).
macro_rules! with_backend {
    ($device:expr, |$B:ident, $replicas:ident| $body:expr) => {
        match $device {
            $crate::commands::DeviceKind::Cpu => {
                type $B = burn::backend::NdArray<f32>;
                let $replicas = |n: usize| vec![burn::tensor::Device::<$B>::default(); n];
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::commands::DeviceKind::Cuda => {
                type $B = burn::backend::Cuda<f32>;
                let $replicas = |n: usize| (0..n).map(burn::backend::cuda::CudaDevice::new).collect::<Vec<_>>();
                $body
            }
            #[cfg(not(feature = "cuda"))]
            $crate::commands::DeviceKind::Cuda => {
                anyhow::bail!("--device cuda needs osp-train built with `--features cuda`")
            }
        }
    };
    ($device:expr, |$B:ident| $body:expr) => {
        with_backend!($device, |$B, _replicas| $body)
    };
}

mod dit;
mod embed;
mod forward;
mod forward_dit;
mod forward_mt5;
mod init;
mod latent_stats;
mod progress;
mod shapes;
mod tokenizer;
mod vae;

use std::io::IsTerminal;

use clap::{Args, Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

/// Run and train the osp Burn models (official PyTorch weights, exact forward passes).
#[derive(Debug, Parser)]
#[command(name = "osp-train", version)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log more on stderr: `-v` info, `-vv` debug, `-vvv` trace (default: warnings and errors only).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Log filter in tracing EnvFilter syntax (overrides `RUST_LOG` and `-v`).
    #[arg(long, env = "OSP_LOG", global = true)]
    pub log: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one model forward pass on named tensors from a safetensors file.
    Forward(forward::ForwardArgs),
    /// Train the OpenSoraT2V v1.3 DiT (upstream train_t2v_diffusers.py flags).
    Dit(Box<dit::DitArgs>),
    /// Encode every caption of an annotation JSON with the trainer's mT5 into the text cache.
    Embed(embed::EmbedArgs),
    /// Train the WFVAE (upstream train_causalvae.py flags).
    Vae(Box<vae::VaeArgs>),
    /// Train a T5-convention Unigram tokenizer.json on captions.
    Tokenizer(tokenizer::TokenizerArgs),
    /// Write a seeded initialisation of a model in its official names (+ its config).
    Init(init::InitArgs),
    /// Write the procedural coloured-shapes text-to-video data set.
    Shapes(shapes::ShapesArgs),
    /// Measure a WFVAE's per-channel latent shift/scale on a data set; write a copy with them.
    LatentStats(latent_stats::LatentStatsArgs),
}

/// Compute device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
pub enum DeviceKind {
    /// CPU (Burn ndarray backend, f32).
    Cpu,
    /// First CUDA GPU (needs the `cuda` feature).
    Cuda,
}

/// The checkpoint flags shared by `osp-train dit` and `vae` (upstream names).
#[derive(Debug, Args, serde::Serialize)]
pub struct CheckpointArgs {
    /// Keep at most this many checkpoints.
    #[arg(long = "checkpoints_total_limit")]
    pub checkpoints_total_limit: Option<usize>,
    /// `latest` or a checkpoint folder to continue from.
    #[arg(long = "resume_from_checkpoint")]
    pub resume_from_checkpoint: Option<String>,
}

impl CheckpointArgs {
    /// The checkpoint folder to resume from: `None` without `--resume_from_checkpoint`, or with
    /// `latest` when `output_dir` holds no complete checkpoint yet.
    pub fn resume_dir(
        &self,
        output_dir: &std::path::Path,
        files: &osp_trainer::train::checkpoint::CheckpointFiles,
    ) -> anyhow::Result<Option<std::path::PathBuf>> {
        let Some(spec) = &self.resume_from_checkpoint else { return Ok(None) };
        let dir = osp_trainer::train::resolve_resume(output_dir, spec, files)?;
        if dir.is_none() {
            tracing::info!("--resume_from_checkpoint latest: no checkpoint yet, starting fresh");
        }
        Ok(dir)
    }
}

/// The device and progress flags shared by the training commands.
#[derive(Debug, Args, serde::Serialize)]
pub struct RunArgs {
    /// Compute device.
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    pub device: DeviceKind,
    /// Progress display on stderr.
    #[arg(long, value_enum, default_value_t = progress::ProgressKind::Bar)]
    pub progress: progress::ProgressKind,
}

/// The log filter: `--log`, else `RUST_LOG`, else warnings and errors, more with each `-v`.
fn log_filter(cli: &Cli) -> anyhow::Result<EnvFilter> {
    Ok(osp_trainer::cli::log_filter(cli.log.as_deref(), cli.verbose, &["warn", "info", "debug", "trace"])?)
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(log_filter(&cli)?)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match cli.command {
        Command::Forward(args) => forward::run(args),
        Command::Dit(args) => dit::run(*args),
        Command::Shapes(args) => shapes::run(args),
        Command::Embed(args) => embed::run(args),
        Command::Vae(args) => vae::run(*args),
        Command::Tokenizer(args) => tokenizer::run(args),
        Command::Init(args) => init::run(args),
        Command::LatentStats(args) => latent_stats::run(args),
    }
}
