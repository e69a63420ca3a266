//! `osp run-graph`: run one graph on tensors from a safetensors file, write its outputs by name.
//! With `--repeats N` (and `--warmup W` untimed runs first) the graph runs `W + N` times on the
//! same session and the reported time is the median of the timed runs; every timed run is also
//! printed as one JSON line `{"run_ms": [...]}` for benchmark scripts. `--profile PREFIX` turns on
//! ONNX Runtime's per-node profiler for the session.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use osp_runtime::{read_safetensors, write_safetensors, Bundle};

use super::BackendOpts;

#[derive(Debug, Args)]
pub struct RunGraphArgs {
    /// Bundle directory (holding manifest.json).
    pub bundle: PathBuf,
    /// Graph name in the manifest.
    pub graph: String,
    /// Safetensors file with one tensor per graph input, keyed by input name.
    #[arg(long)]
    pub inputs: PathBuf,
    /// Safetensors file to write the outputs to, keyed by output name.
    #[arg(long)]
    pub out: PathBuf,
    /// Untimed runs before the timed ones (session warm-up).
    #[arg(long, default_value_t = 0)]
    pub warmup: usize,
    /// ONNX Runtime's profiler: write its per-node JSON (every run, warm-up included) to a file
    /// whose name starts with this prefix, and print the file's path (ort backends only).
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// Timed runs; the outputs written are those of the last one.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub repeats: u64,
}

pub fn run(args: &RunGraphArgs, backend: &BackendOpts) -> anyhow::Result<()> {
    let mut opts = backend.session_options()?;
    if let Some(prefix) = &args.profile {
        opts = opts.with_profiling(prefix);
    }
    let bundle = Bundle::open(&args.bundle).with_context(|| format!("opening bundle {}", args.bundle.display()))?;
    let inputs = read_safetensors(&args.inputs)?;
    let mut session = bundle
        .session(&args.graph, &opts)
        .with_context(|| format!("loading graph `{}` of {} on {}", args.graph, args.bundle.display(), opts.backend))?;
    let named: Vec<(&str, &osp_runtime::Tensor)> = inputs.iter().map(|(k, v)| (k.as_str(), v)).collect();
    for _ in 0..args.warmup {
        session.run(&named).with_context(|| format!("running graph `{}`", args.graph))?;
    }
    let mut times_ms = Vec::new();
    let mut outputs = Default::default();
    for _ in 0..args.repeats {
        let start = Instant::now();
        outputs = session.run(&named).with_context(|| format!("running graph `{}`", args.graph))?;
        times_ms.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let mut sorted = times_ms.clone();
    sorted.sort_by(f64::total_cmp);
    let median_ms = sorted[sorted.len() / 2];
    write_safetensors(&args.out, outputs.iter().map(|(k, v)| (k.as_str(), v)))?;
    for (name, t) in &outputs {
        println!("{name}: {} {:?}", t.dtype(), t.shape());
    }
    if args.profile.is_some() {
        let path = session.end_profiling()?;
        println!("profile: {}", path.display());
    }
    if args.repeats > 1 || args.warmup > 0 {
        println!("{}", serde_json::json!({ "run_ms": times_ms }));
    }
    println!("ran `{}` on {} in {median_ms:.2} ms; wrote {}", args.graph, opts.backend, args.out.display());
    Ok(())
}
