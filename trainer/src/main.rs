//! `osp-train` (mT5 branch stand-in): `osp-train forward mt5 --config C --weights W --inputs I --out O`.
//! The full CLI lives on the main branch; this main only exposes the mT5 forward command.

mod commands {
    pub mod forward_mt5;
}

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Run the osp Burn models.
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
    /// Run one model forward pass on named tensors from a safetensors file.
    Forward {
        /// Which model.
        model: ForwardModel,
        /// Upstream `config.json` of the model.
        #[arg(long)]
        config: PathBuf,
        /// Official weights (.safetensors, .safetensors.index.json, .bin, .pt).
        #[arg(long)]
        weights: PathBuf,
        /// Safetensors file holding the named inputs.
        #[arg(long)]
        inputs: PathBuf,
        /// Safetensors file to write the named outputs to.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ForwardModel {
    /// mT5 encoder: `input_ids`, `attention_mask` [b,n] (int) -> `last_hidden_state` [b,n,d].
    Mt5,
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
        Command::Forward { model: ForwardModel::Mt5, config, weights, inputs, out } => {
            commands::forward_mt5::run(&config, &weights, &inputs, &out)
        }
    }
}
