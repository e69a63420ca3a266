//! The `osp` command line: global flags, logging setup and subcommand dispatch.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use osp_runtime::session::{ArenaExtend, ConvAlgoSearch, GpuOptions, ProfileRange};
use osp_runtime::{Backend, BackendKind, SessionOptions};
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

pub mod bench;
pub mod decode;
pub mod encode_text;
pub mod eval;
pub mod extract_text_embeds;
pub mod generate;
pub mod inspect;
pub mod parallel;
pub mod reconstruct;
pub mod refine;
pub mod run_graph;
pub mod schedule;
pub mod tokenize;

/// Run exported Open-Sora-Plan bundles with ONNX Runtime or tract.
#[derive(Debug, Parser)]
#[command(name = "osp", version, about)]
pub struct Cli {
    /// Log more on stderr: `-v` info, `-vv` debug, `-vvv` trace (default: warnings and errors only;
    /// `RUST_LOG` overrides).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
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
    /// Give each ort-cpu graph session its own prepacked weights (default: the graphs of one
    /// bundle share one prepacked-weights container).
    #[arg(long, global = true)]
    pub no_shared_weights: bool,
    #[command(flatten)]
    pub gpu: GpuOpts,
}

/// CUDA and TensorRT session settings (docs/runtime.md, "GPU sessions"); CPU backends ignore them.
#[derive(Debug, Clone, Args)]
pub struct GpuOpts {
    /// TF32 tensor-core math in the CUDA provider's MatMul and Conv; `off` for parity runs
    /// against float32 references.
    #[arg(long, env = "OSP_TF32", value_enum, default_value_t = Switch::On, global = true)]
    pub tf32: Switch,
    /// cuDNN convolution algorithm search of the CUDA provider.
    #[arg(long, env = "OSP_CUDNN_CONV_ALGO_SEARCH", value_enum, default_value_t = ConvAlgoSearch::Exhaustive, global = true)]
    pub cudnn_conv_algo_search: ConvAlgoSearch,
    /// How the CUDA provider's memory arena grows.
    #[arg(long, env = "OSP_ARENA_EXTEND", value_enum, default_value_t = ArenaExtend::NextPowerOfTwo, global = true)]
    pub arena_extend: ArenaExtend,
    /// Cap of the CUDA provider's memory arena, in bytes.
    #[arg(long, env = "OSP_GPU_MEM_LIMIT", global = true)]
    pub gpu_mem_limit: Option<usize>,
    /// Refuse any node placed on the CPU in a GPU session (`session.disable_cpu_ep_fallback`):
    /// the graph fails to load instead. By default ONNX Runtime may place the small shape
    /// computations the CUDA provider leaves on the CPU, and says so on stderr.
    #[arg(long, global = true)]
    pub no_cpu_fallback: bool,
    /// TensorRT optimisation profile over the manifest's symbolic dims: `sym=min:opt:max` or
    /// `sym=value`, comma-separated (e.g. `b=1:2:2,t=1:5:9`); every symbol of a loaded graph's
    /// dynamic inputs must be given (`2*h`-style dims follow from `h`). Default: `osp generate` and
    /// `osp bench` build the DiT and VAE engines for the request's shapes; other graphs and
    /// commands for the first shapes seen.
    #[arg(long, env = "OSP_TRT_PROFILE", global = true)]
    pub trt_profile: Option<ProfileRange>,
}

/// `on` / `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

impl GpuOpts {
    pub fn options(&self) -> GpuOptions {
        GpuOptions {
            tf32: self.tf32 == Switch::On,
            conv_algo_search: self.cudnn_conv_algo_search,
            arena_extend: self.arena_extend,
            memory_limit: self.gpu_mem_limit,
            allow_cpu_fallback: !self.no_cpu_fallback,
            trt_profile: self.trt_profile.clone(),
            trt_request_profiles: Default::default(),
        }
    }
}

impl BackendOpts {
    pub fn session_options(&self) -> anyhow::Result<SessionOptions> {
        if self.threads == Some(0) {
            anyhow::bail!("--threads must be at least 1 (leave it unset to use all cores)");
        }
        let backend = Backend::from_kind(self.backend, self.device, self.trt_cache_dir.clone());
        Ok(SessionOptions {
            backend,
            threads: self.threads,
            share_weights: !self.no_shared_weights,
            gpu: self.gpu.options(),
            ..Default::default()
        })
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
    /// Generate videos from text prompts with a pipeline bundle (upstream sample.py flags).
    Generate(Box<generate::GenerateArgs>),
    /// Refine prompts with upstream's caption refiner (a bundle from `osp-export llama`): one
    /// `{"prompt": ..., "refined": ...}` JSON line per prompt.
    Refine(refine::RefineArgs),
    /// Per-stage latency of a pipeline bundle (tokenise, text encode, denoising steps, VAE decode,
    /// write): a table on stdout and JSON with --json.
    Bench(Box<bench::BenchArgs>),
}

pub fn run(cli: Cli, restart_error: Option<std::io::Error>) -> anyhow::Result<()> {
    let _chrome_guard = init_tracing(&cli)?;
    let state = osp_runtime::mem::malloc_huge_pages_state();
    match restart_error {
        Some(e) => tracing::debug!(error = %e, "malloc huge pages: the restart failed; {state}"),
        None => tracing::debug!("malloc huge pages: {state}"),
    }
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
        Command::Generate(args) => generate::run(args, &cli.backend),
        Command::Bench(args) => bench::run(args, &cli.backend),
        Command::Refine(args) => refine::run(args, &cli.backend),
    }
}

/// The log filter: `RUST_LOG` when set, else warnings and errors, more with each `-v`.
fn log_filter(verbose: u8) -> anyhow::Result<EnvFilter> {
    Ok(osp_runtime::cli::log_filter(None, verbose, &["warn", "info,ort=warn", "debug,ort=warn", "trace"])?)
}

/// Logs to stderr through [`log_filter`]; `--tracing` adds the Chrome layer (at least info-level
/// spans whatever the log level), whose guard flushes the trace file when dropped.
fn init_tracing(cli: &Cli) -> anyhow::Result<Option<tracing_chrome::FlushGuard>> {
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_filter(log_filter(cli.verbose)?);
    let registry = tracing_subscriber::registry().with(fmt);
    if cli.tracing {
        let (chrome, guard) =
            tracing_chrome::ChromeLayerBuilder::new().file(&cli.trace_file).include_args(true).build();
        let chrome = chrome.with_filter(log_filter(cli.verbose.max(1))?);
        registry.with(chrome).try_init().context("installing the tracing subscriber")?;
        tracing::info!(file = %cli.trace_file.display(), "writing a Chrome trace");
        Ok(Some(guard))
    } else {
        registry.try_init().context("installing the tracing subscriber")?;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Cli, Command};

    /// The official e2e run's `sample.py` argv (`reference/e2e/meta.json`), after `osp generate --bundle B`.
    #[test]
    fn an_upstream_sample_py_command_line_parses() {
        let argv = [
            "osp",
            "generate",
            "--bundle",
            "b",
            "--model_path",
            "m/transformer",
            "--version",
            "v1_3",
            "--model_type",
            "t2v",
            "--num_frames",
            "9",
            "--height",
            "64",
            "--width",
            "96",
            "--cache_dir",
            "e2e/video/_cache",
            "--text_encoder_name_1",
            "m/mt5",
            "--text_prompt",
            "A lake.",
            "A cat.",
            "--ae",
            "WFVAEModel_D8_4x8x8",
            "--ae_path",
            "m/vae",
            "--save_img_path",
            "e2e/video",
            "--fps",
            "18",
            "--guidance_scale",
            "7.5",
            "--num_sampling_steps",
            "4",
            "--max_sequence_length",
            "32",
            "--sample_method",
            "EulerAncestralDiscrete",
            "--seed",
            "1234",
            "--num_samples_per_prompt",
            "1",
            "--rescale_betas_zero_snr",
            "--prediction_type",
            "v_prediction",
            "--local_rank",
            "-1",
        ];
        let cli = Cli::try_parse_from(argv).unwrap();
        let Command::Generate(g) = cli.command else { panic!("not generate") };
        let s = &g.sampling;
        assert_eq!(s.text_prompt, ["A lake.", "A cat."]);
        assert_eq!((s.num_frames, s.height, s.width, s.num_sampling_steps), (Some(9), Some(64), Some(96), Some(4)));
        assert_eq!((s.guidance_scale, s.max_sequence_length, g.seed, g.fps), (Some(7.5), Some(32), 1234, Some(18.0)));
        assert!(s.rescale_betas_zero_snr && s.prediction_type.is_some());
        // Upstream's HF --cache_dir is not the text-embedding cache.
        assert_eq!(s.upstream.cache_dir.as_deref(), Some("e2e/video/_cache"));
        assert!(s.cache_dir.is_none());
        assert_eq!(s.upstream.local_rank.as_deref(), Some("-1"));
        // kebab-case works too.
        let cli = Cli::try_parse_from(["osp", "generate", "--bundle", "b", "--text-prompt", "x", "--num-frames", "5"]);
        assert!(cli.is_ok());
    }
}
