//! Subcommands of `osp-export`.

mod big_linear;
mod dit;
mod mt5;
mod pipeline;
mod transformer_block;
mod wfvae;

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use osp_export::bundle::DEFAULT_EXTERNAL_DATA_THRESHOLD;
use osp_export::ExportOptions;
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
    /// Export a complete text-to-video pipeline bundle (text encoder + tokenizer, transformer, VAE,
    /// scheduler config, sampling defaults) from component files.
    Pipeline(pipeline::PipelineArgs),
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

/// Graph options every model export takes.
#[derive(Debug, Clone, clap::Args)]
pub struct GraphOpts {
    /// Attention form in the graphs (`ms` runs on ONNX Runtime only: tract rejects its bias input).
    #[arg(long, value_enum, default_value = "onnx")]
    pub attention: AttentionArg,
    /// Precision of weights and interior arithmetic (graph I/O keep their manifest dtypes).
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: PrecisionArg,
    /// Initializers larger than this many bytes go to the external-data file.
    #[arg(long, default_value_t = DEFAULT_EXTERNAL_DATA_THRESHOLD)]
    pub external_data_threshold: usize,
}

impl GraphOpts {
    /// The export options, recording `source` (the checkpoint read) in the provenance.
    pub fn export_options(&self, source: Option<PathBuf>) -> ExportOptions {
        ExportOptions {
            attention: self.attention.into(),
            precision: self.precision.into(),
            external_data_threshold_bytes: self.external_data_threshold,
            source,
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
        Command::Pipeline(a) => pipeline::run(a),
    }
}
