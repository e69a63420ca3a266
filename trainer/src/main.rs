//! `osp-train`: run and (later) train the osp Burn models.

mod commands;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Run and train the osp Burn models (official PyTorch weights, exact forward passes).
#[derive(Debug, Parser)]
#[command(name = "osp-train", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "OSP_LOG", default_value = "info", global = true)]
    log: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// OpenSoraT2V_v1_3 forward pass: `hidden_states`, `timestep`, `encoder_hidden_states`
    /// (+ optional masks) -> `sample`.
    ForwardDit {
        /// Upstream `config.json` of the DiT.
        #[arg(long)]
        config: PathBuf,
        /// Official weights (.safetensors or .safetensors.index.json).
        #[arg(long)]
        weights: PathBuf,
        /// Safetensors file holding the named inputs.
        #[arg(long)]
        inputs: PathBuf,
        /// Safetensors file to write `sample` to.
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    run(Cli::parse())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log)?)
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::ForwardDit {
            config,
            weights,
            inputs,
            out,
        } => commands::forward_dit::run(&config, &weights, &inputs, &out),
    }
}
