//! The `osp` command line: global flags, logging setup and subcommand dispatch.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use osp_runtime::{Backend, BackendKind, SessionOptions};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

pub mod decode;
pub mod encode_text;
pub mod eval;
pub mod extract_text_embeds;
pub mod inspect;
pub mod reconstruct;
pub mod run_graph;
pub mod schedule;
pub mod tokenize;

/// Run exported Open-Sora-Plan bundles with ONNX Runtime or tract.
#[derive(Debug, Parser)]
#[command(name = "osp", version, about)]
pub struct Cli {
    /// Write a Chrome trace (open in chrome://tracing or Perfetto) of the run.
    #[arg(long, global = true)]
    pub tracing: bool,
    /// Where `--tracing` writes its trace.
    #[arg(long, global = true, default_value = "osp-trace.json")]
    pub trace_file: PathBuf,
    #[command(flatten)]
    pub backend: BackendOpts,
    #[command(subcommand)]
    pub command: Command,
}

/// Which engine runs the graphs.
#[derive(Debug, Clone, Args)]
pub struct BackendOpts {
    /// Execution backend. CUDA and TensorRT fail instead of falling back to the CPU.
    #[arg(long, env = "OSP_BACKEND", value_enum, default_value_t = BackendKind::OrtCpu, global = true)]
    pub backend: BackendKind,
    /// Intra-op threads per graph (default: all cores).
    #[arg(long, env = "OSP_THREADS", global = true)]
    pub threads: Option<usize>,
    /// GPU ordinal for ort-cuda and ort-tensorrt.
    #[arg(long, env = "OSP_DEVICE", default_value_t = 0, global = true)]
    pub device: i32,
    /// TensorRT engine and timing cache directory (default: ~/.cache/osp/tensorrt).
    #[arg(long, env = "OSP_TRT_CACHE_DIR", global = true)]
    pub trt_cache_dir: Option<PathBuf>,
}

impl BackendOpts {
    pub fn session_options(&self) -> anyhow::Result<SessionOptions> {
        if self.threads == Some(0) {
            anyhow::bail!("--threads must be at least 1 (leave it unset to use all cores)");
        }
        let backend = Backend::from_kind(self.backend, self.device, self.trt_cache_dir.clone());
        Ok(SessionOptions { backend, threads: self.threads })
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one graph of a bundle on named tensors read from a safetensors file.
    RunGraph(run_graph::RunGraphArgs),
    /// Print a bundle's manifest: model, graphs with their I/O specs, precision, attention, provenance.
    Inspect(inspect::InspectArgs),
    /// Print a sampling scheduler's timesteps, sigmas and initial noise sigma as JSON.
    Schedule(schedule::ScheduleArgs),
    /// Reconstruct a video (or a folder of videos) through a VAE bundle: decode, resize and crop,
    /// encode, decode, write H.264.
    Reconstruct(reconstruct::ReconstructArgs),
    /// Decode latents (safetensors `[b, c, t, h, w]`) into a video through a VAE bundle: whole,
    /// streamed in time (--chunk), tiled in space (--tile-size), or both; prints the decode time.
    Decode(decode::DecodeArgs),
    /// PSNR and SSIM between a folder of real videos and a folder of generated ones.
    Eval(eval::EvalArgs),
    /// Print a prompt's token ids and attention mask as JSON.
    Tokenize(tokenize::TokenizeArgs),
    /// Encode prompts with a bundle's text encoder (through the embedding cache) into a safetensors file.
    EncodeText(encode_text::EncodeTextArgs),
    /// Write one text-embedding .npz per caption of an annotation JSON (training cache; resumable).
    ExtractTextEmbeds(extract_text_embeds::ExtractTextEmbedsArgs),
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let _chrome_guard = init_tracing(&cli)?;
    match &cli.command {
        Command::RunGraph(args) => run_graph::run(args, &cli.backend),
        Command::Inspect(args) => inspect::run(args),
        Command::Schedule(args) => schedule::run(args),
        Command::Reconstruct(args) => reconstruct::run(args, &cli.backend),
        Command::Decode(args) => decode::run(args, &cli.backend),
        Command::Eval(args) => eval::run(args),
        Command::Tokenize(args) => tokenize::run(args),
        Command::EncodeText(args) => encode_text::run(args, &cli.backend),
        Command::ExtractTextEmbeds(args) => extract_text_embeds::run(args, &cli.backend),
    }
}

/// Logs to stderr with the `RUST_LOG` filter (default `info,ort=warn`); `--tracing` adds the Chrome
/// layer, whose guard flushes the trace file when dropped.
fn init_tracing(cli: &Cli) -> anyhow::Result<Option<tracing_chrome::FlushGuard>> {
    let filter = EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new("info,ort=warn"))?;
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    let registry = tracing_subscriber::registry().with(filter).with(fmt);
    if cli.tracing {
        let (chrome, guard) =
            tracing_chrome::ChromeLayerBuilder::new().file(&cli.trace_file).include_args(true).build();
        registry.with(chrome).try_init().context("installing the tracing subscriber")?;
        tracing::info!(file = %cli.trace_file.display(), "writing a Chrome trace");
        Ok(Some(guard))
    } else {
        registry.try_init().context("installing the tracing subscriber")?;
        Ok(None)
    }
}
