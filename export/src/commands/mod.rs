//! Subcommands of `osp-export`.

mod big_linear;
mod dit;
mod mt5;
mod transformer_block;
mod wfvae;

use clap::{Parser, Subcommand, ValueEnum};
use osp_graphs::{AttentionKind, Precision};
use tracing_subscriber::EnvFilter;

/// Lowers osp models into ONNX bundles (graphs, external-data weights, manifest.json).
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Export one transformer block (the proof model) from a config and weights.
    TransformerBlock(transformer_block::TransformerBlockArgs),
    /// Export the Open-Sora-Plan v1.3 diffusion transformer (OpenSoraT2V_v1_3) from its config.json and checkpoint.
    Dit(dit::DitArgs),
    /// Export a bias-free linear layer with streamed random weights (the >2 GiB external-data check).
    BigLinear(big_linear::BigLinearArgs),
    /// Export WFVAE: encoder, whole decoder and the streaming decoder graphs.
    Wfvae(wfvae::WfvaeArgs),
    /// Export the mT5 text encoder (graph `text_encoder`) from a config and a checkpoint or a seed.
    Mt5(mt5::Mt5Args),
}

/// How attention is expressed in the graph.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AttentionArg {
    /// Standard ONNX `Attention` (opset 23).
    Onnx,
    /// `com.microsoft.MultiHeadAttention` (ONNX Runtime contrib op).
    Ms,
    /// MatMul / Softmax / MatMul.
    Decomposed,
}

impl From<AttentionArg> for AttentionKind {
    fn from(a: AttentionArg) -> Self {
        match a {
            AttentionArg::Onnx => AttentionKind::OnnxAttention,
            AttentionArg::Ms => AttentionKind::MsMultiHeadAttention,
            AttentionArg::Decomposed => AttentionKind::Decomposed,
        }
    }
}

/// Precision of weights and interior arithmetic.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PrecisionArg {
    F32,
    F16,
    Bf16,
}

impl From<PrecisionArg> for Precision {
    fn from(p: PrecisionArg) -> Self {
        match p {
            PrecisionArg::F32 => Precision::F32,
            PrecisionArg::F16 => Precision::F16,
            PrecisionArg::Bf16 => Precision::Bf16,
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    match args.command {
        Command::TransformerBlock(a) => transformer_block::run(a),
        Command::BigLinear(a) => big_linear::run(a),
        Command::Wfvae(a) => wfvae::run(a),
        Command::Dit(a) => dit::run(a),
        Command::Mt5(a) => mt5::run(a),
    }
}
