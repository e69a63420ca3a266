//! Subcommands of `osp-train`.

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

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
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

/// The log filter: `--log`, else `RUST_LOG`, else warnings and errors, more with each `-v`.
fn log_filter(cli: &Cli) -> anyhow::Result<EnvFilter> {
    let env = std::env::var(EnvFilter::DEFAULT_ENV).ok().filter(|s| !s.trim().is_empty());
    match (&cli.log, env) {
        (Some(spec), _) => {
            EnvFilter::try_new(spec).with_context(|| format!("--log `{spec}` is not a valid log filter"))
        }
        (None, Some(spec)) => {
            EnvFilter::try_new(&spec).with_context(|| format!("RUST_LOG=`{spec}` is not a valid log filter"))
        }
        (None, None) => Ok(EnvFilter::new(match cli.verbose {
            0 => "warn",
            1 => "info",
            2 => "debug",
            _ => "trace",
        })),
    }
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
