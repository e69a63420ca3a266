//! Subcommands of `osp-export`.

mod big_linear;
mod dit;
mod llama;
mod mt5;
mod pipeline;
#[cfg(feature = "progress")]
mod progress;
mod transformer_block;
mod wfvae;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use osp_export::bundle::DEFAULT_EXTERNAL_DATA_THRESHOLD;
use osp_export::{ExportOptions, Lowering, VideoConv};
use osp_graphs::{AttentionKind, Precision};
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Lowers osp models into ONNX bundles (graphs, external-data weights, manifest.json).
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Args {
    /// Log more on stderr: `-v` info, `-vv` debug, `-vvv` trace (default: warnings and errors only;
    /// `RUST_LOG` overrides).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Export one transformer block (the proof model) from a config and weights.
    ///
    /// --weights: a safetensors file keyed by PyTorch parameter name.
    TransformerBlock(transformer_block::TransformerBlockArgs),
    /// Export the Open-Sora-Plan v1.3 diffusion transformer (OpenSoraT2V_v1_3) from its config.json and checkpoint.
    ///
    /// --weights: the official diffusers names in `*.safetensors`, a sharded `*.safetensors.index.json`
    /// or a PyTorch pickle.
    Dit(dit::DitArgs),
    /// Export a bias-free linear layer with streamed random weights (the >2 GiB external-data check).
    BigLinear(big_linear::BigLinearArgs),
    /// Export WFVAE: encoder, whole decoder and the streaming decoder graphs.
    ///
    /// --weights: the official names in `.safetensors`, `*.safetensors.index.json`, or a PyTorch
    /// `.ckpt`/`.pt`.
    Wfvae(wfvae::WfvaeArgs),
    /// Export the mT5 text encoder (graph `text_encoder`) from a config and a checkpoint or a seed.
    ///
    /// --weights: `.safetensors`, sharded `*.safetensors.index.json`, or a PyTorch `.bin`/`.pt` (the
    /// decoder half of a full mT5 checkpoint is ignored). With f16/bf16, `DenseReluDense.wo`, the
    /// norms and the residual stream stay f32.
    Mt5(mt5::Mt5Args),
    /// Export a complete text-to-video pipeline bundle (text encoder + tokenizer, transformer, VAE,
    /// scheduler config, sampling defaults) from component files.
    Pipeline(pipeline::PipelineArgs),
    /// Export a Llama causal LM (the prompt refiner, Llama-3.1-8B-Instruct architecture) from its
    /// Hugging Face folder: graphs `prefill` and `decode` sharing one copy of the weights, plus the
    /// tokenizer and config files. Weights are streamed tensor by tensor.
    Llama(llama::LlamaArgs),
}

/// How attention is expressed in the graph.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AttentionArg {
    /// Per call: `com.microsoft.MultiHeadAttention` without a bias (ONNX Runtime's CPU flash
    /// kernel, memory linear in the sequence), ONNX `Attention` with one; ONNX `Attention`
    /// everywhere at f16/bf16.
    Auto,
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
            AttentionArg::Auto => AttentionKind::Auto,
            AttentionArg::Onnx => AttentionKind::OnnxAttention,
            AttentionArg::Ms => AttentionKind::MsMultiHeadAttention,
            AttentionArg::Decomposed => AttentionKind::Decomposed,
        }
    }
}

/// Which exact op forms the graphs use (`osp_export::Lowering`).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LoweringArg {
    /// The forms before issue #17: decomposed GELU (for A/B runs).
    Reference,
    /// ONNX `Gelu` (opset 20, tanh approximation).
    Fast,
}

impl From<LoweringArg> for Lowering {
    fn from(l: LoweringArg) -> Self {
        match l {
            LoweringArg::Reference => Lowering::Reference,
            LoweringArg::Fast => Lowering::Fast,
        }
    }
}

/// How the WFVAE's video convolutions are written (`osp_export::VideoConv`).
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum VideoConvArg {
    /// One 5-D `Conv`.
    Conv3d,
    /// Frames folded into the batch, time taps into the channels: one 4-D `Conv` per video
    /// convolution (ORT's NCHWc kernels), video values `[b, t, c, h, w]` inside the graphs.
    Folded,
    /// `conv3d` with the 3x3 spatial convolutions as Winograd F(2x2, 3x3).
    WinogradF2,
    /// `conv3d` with the 3x3 spatial convolutions as Winograd F(4x4, 3x3) (approximate).
    WinogradF4,
}

impl From<VideoConvArg> for VideoConv {
    fn from(v: VideoConvArg) -> Self {
        match v {
            VideoConvArg::Conv3d => VideoConv::Conv3d,
            VideoConvArg::Folded => VideoConv::Folded,
            VideoConvArg::WinogradF2 => VideoConv::WinogradF2,
            VideoConvArg::WinogradF4 => VideoConv::WinogradF4,
        }
    }
}

/// Precision of weights and interior arithmetic.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PrecisionArg {
    F32,
    F16,
    Bf16,
    /// Approximate, opt-in: int8 weight-and-activation matmuls for the linear layers of the DiT
    /// and mT5 (ONNX Runtime's `DynamicQuantizeMatMul`), everything else f32; `pipeline` keeps the
    /// VAE f32. ONNX Runtime only. See docs/export.md.
    Int8,
}

impl From<PrecisionArg> for Precision {
    fn from(p: PrecisionArg) -> Self {
        match p {
            PrecisionArg::F32 => Precision::F32,
            PrecisionArg::F16 => Precision::F16,
            PrecisionArg::Bf16 => Precision::Bf16,
            PrecisionArg::Int8 => Precision::Int8,
        }
    }
}

/// Graph options every model export takes.
#[derive(Debug, Clone, clap::Args)]
pub struct GraphOpts {
    /// Attention form in the graphs (`ms` runs on ONNX Runtime only: tract rejects its bias input;
    /// `auto` runs on both); see docs/export.md.
    #[arg(long, value_enum, default_value = "auto")]
    pub attention: AttentionArg,
    /// Precision of weights and interior arithmetic (graph I/O keep their manifest dtypes).
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: PrecisionArg,
    /// Initializers larger than this many bytes go to the external-data file.
    #[arg(long, default_value_t = DEFAULT_EXTERNAL_DATA_THRESHOLD)]
    pub external_data_threshold: usize,
    /// Which exact op forms the graphs use (same results up to summation order; `fast` runs faster
    /// on ort-cpu, `reference` is the previous lowering, for A/B benchmarks); see docs/export.md.
    #[arg(long, value_enum, default_value = "fast")]
    pub lowering: LoweringArg,
    /// How the WFVAE's video convolutions are written (same results up to summation order); see
    /// docs/export.md.
    #[arg(long, value_enum, default_value = "conv3d")]
    pub video_conv: VideoConvArg,
}

impl GraphOpts {
    /// The export options, recording `source` (the checkpoint read) in the provenance.
    pub fn export_options(&self, source: Option<PathBuf>) -> ExportOptions {
        ExportOptions {
            attention: self.attention.into(),
            precision: self.precision.into(),
            external_data_threshold_bytes: self.external_data_threshold,
            source,
            lowering: self.lowering.into(),
            video_conv: self.video_conv.into(),
        }
    }
}

/// Where a model export takes its weights from and writes its bundle.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["weights", "seed"])))]
pub struct ModelArgs {
    /// Checkpoint with the official parameter names, read strictly (no missing, extra or
    /// mis-shaped tensor); the formats are in the command's `--help`.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Seed for deterministic random weights (instead of --weights), for size, memory and speed checks.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Output bundle directory (replaced atomically if it already holds a bundle).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub graph: GraphOpts,
}

/// The weights a model export reads: `--weights` or `--seed`.
pub enum WeightSource<'a> {
    File(&'a Path),
    Seed(u64),
}

impl ModelArgs {
    /// `--weights` if given, else `--seed` (clap requires one of them).
    pub fn source(&self) -> anyhow::Result<WeightSource<'_>> {
        match (&self.weights, self.seed) {
            (Some(path), _) => Ok(WeightSource::File(path)),
            (None, Some(seed)) => Ok(WeightSource::Seed(seed)),
            (None, None) => anyhow::bail!("one of --weights or --seed is required"),
        }
    }

    /// The export options, recording the checkpoint read (if any) in the provenance.
    pub fn export_options(&self) -> ExportOptions {
        self.graph.export_options(self.weights.clone())
    }
}

/// The log filter: `RUST_LOG` when set, else warnings and errors, more with each `-v`.
fn log_filter(verbose: u8) -> anyhow::Result<EnvFilter> {
    Ok(osp_trainer::cli::log_filter(None, verbose, &["warn", "info", "debug", "trace"])?)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // A quiet run on a terminal shows its current stage in a spinner instead of log lines.
    #[cfg(feature = "progress")]
    let spinner =
        (args.verbose == 0 && std::env::var_os(EnvFilter::DEFAULT_ENV).is_none() && std::io::stderr().is_terminal())
            .then(progress::Spinner::new);
    #[cfg(feature = "progress")]
    let handle = spinner.as_ref().map(progress::Spinner::handle);
    #[cfg(feature = "progress")]
    let writer = progress::Stderr(handle.clone());
    #[cfg(not(feature = "progress"))]
    let writer = std::io::stderr;
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(log_filter(args.verbose)?);
    #[cfg(feature = "progress")]
    let spinner = spinner.map(|s| s.with_filter(tracing_subscriber::filter::LevelFilter::INFO));
    #[cfg(not(feature = "progress"))]
    let spinner: Option<tracing_subscriber::layer::Identity> = None;
    tracing_subscriber::registry().with(fmt).with(spinner).try_init().context("installing the tracing subscriber")?;
    let result = match args.command {
        Command::TransformerBlock(a) => transformer_block::run(a),
        Command::BigLinear(a) => big_linear::run(a),
        Command::Wfvae(a) => wfvae::run(a),
        Command::Dit(a) => dit::run(a),
        Command::Mt5(a) => mt5::run(a),
        Command::Pipeline(a) => pipeline::run(a),
        Command::Llama(a) => llama::run(a),
    };
    #[cfg(feature = "progress")]
    if let Some(bar) = handle {
        bar.finish_and_clear();
    }
    println!("{}", result?.display());
    Ok(())
}
