//! `osp bench`: per-stage latency of a pipeline bundle (tokenise, text encode, every denoising step,
//! VAE decode, video write) over warm-up and timed repeats of the first prompt; a table on stdout
//! and the raw numbers as JSON. The backend and threads are the global `--backend` / `--threads`.
//! The text-embedding cache is off so the encoder runs every time.
//!
//! `osp --threads 2 bench --bundle B --text_prompt "A cat." --num_frames 9 --height 64 --width 96 --json bench.json`

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use osp_runtime::pipeline::noise::SeededNoise;
use osp_runtime::pipeline::{GenerateObserver, Pipeline};
use osp_runtime::video;
use serde::Serialize;

use super::generate::SamplingOpts;
use super::reconstruct::EncodeOpts;
use super::BackendOpts;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub sampling: SamplingOpts,
    /// Untimed runs first (session warm-up, allocator, caches).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Timed runs.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Seed of the noise.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Write the results as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub encode: EncodeOpts,
}

/// Summary of one stage's samples, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct StageStats {
    pub stage: String,
    pub samples: usize,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
}

/// The JSON `osp bench --json` writes.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub bundle: String,
    pub backend: String,
    pub threads: Option<usize>,
    pub sample_method: String,
    pub num_sampling_steps: usize,
    pub denoising_steps: usize,
    pub num_frames: usize,
    pub height: usize,
    pub width: usize,
    pub latent_shape: [usize; 5],
    pub cfg_batch: usize,
    pub max_sequence_length: usize,
    pub warmup: usize,
    pub repeats: usize,
    pub stages: Vec<StageStats>,
    /// Every sample in seconds, by stage.
    pub samples_s: BTreeMap<String, Vec<f64>>,
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

pub fn stats(stage: &str, samples: &[f64]) -> StageStats {
    let mut s: Vec<f64> = samples.iter().map(|v| v * 1e3).collect();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    StageStats {
        stage: stage.to_string(),
        samples: n,
        mean_ms: if n > 0 { s.iter().sum::<f64>() / n as f64 } else { f64::NAN },
        p50_ms: percentile(&s, 50.0),
        p90_ms: percentile(&s, 90.0),
        min_ms: s.first().copied().unwrap_or(f64::NAN),
        max_ms: s.last().copied().unwrap_or(f64::NAN),
    }
}

#[derive(Default)]
struct Timings {
    timed: bool,
    samples: BTreeMap<String, Vec<f64>>,
}

impl Timings {
    fn add(&mut self, stage: &str, seconds: f64) {
        if self.timed {
            self.samples.entry(stage.to_string()).or_default().push(seconds);
        }
    }
}

impl GenerateObserver for Timings {
    fn stage(&mut self, _prompt: usize, stage: &'static str, seconds: f64) {
        self.add(stage, seconds);
    }
}

pub fn run(args: &BenchArgs, backend: &BackendOpts) -> anyhow::Result<()> {
    anyhow::ensure!(args.repeats >= 1, "--repeats must be at least 1");
    let mut sampling = args.sampling.clone();
    sampling.no_text_cache = true;
    let spec = sampling.spec()?;
    let mut req = sampling.request(&spec)?;
    req.prompts.truncate(1);
    let req = spec.prepare(req)?;
    let placement = sampling.placement(&spec, &req, backend)?;
    sampling.check_memory(&spec, &req, backend, placement.as_ref())?;
    let latent_shape = spec.latent_shape(&req);
    let steps = req.steps();
    let fps = spec.manifest().defaults.fps;
    let started = Instant::now();
    let mut pipeline: Pipeline =
        sampling.load_for(spec, &req, backend, placement.as_ref(), sampling.positions(false))?;
    let load_s = started.elapsed().as_secs_f64();
    let out_dir = tempfile_dir()?;
    let encode = args.encode.options();
    let mut t = Timings::default();
    t.samples.insert("load".into(), vec![load_s]);
    let prompt = pipeline.templated(&req, &req.prompts[0]);
    for run in 0..args.warmup + args.repeats {
        t.timed = run >= args.warmup;
        if run == args.warmup {
            if let Some(dit) = pipeline.parallel_mut() {
                dit.reset_timings();
            }
        }
        let s = Instant::now();
        let tok = pipeline.text_encoder().tokenizer();
        tok.encode(&prompt, req.max_sequence_length)?;
        tok.encode_negative(&req.negative_prompt, req.max_sequence_length)?;
        t.add("tokenize", s.elapsed().as_secs_f64());
        let mut noise = SeededNoise::new(args.seed);
        let s = Instant::now();
        let out = pipeline.generate_prompt(&req, 0, &mut noise, &mut t)?;
        t.add("total_generate", s.elapsed().as_secs_f64());
        let s = Instant::now();
        let ext = if out.frames[0].shape()[0] == 1 { "png" } else { "mp4" };
        let path = out_dir.path.join(format!("bench_{run}.{ext}"));
        video::write_video(&path, out.frames[0].view(), fps, &encode)?;
        t.add("write", s.elapsed().as_secs_f64());
        tracing::info!(run, timed = t.timed, "bench run done");
    }
    let order = ["load", "tokenize", "text_encode", "denoise_step", "vae_decode", "write", "total_generate"];
    let stages: Vec<StageStats> = order.iter().filter_map(|s| t.samples.get(*s).map(|v| stats(s, v))).collect();
    let cfg_batch = if req.guidance_scale > 1.0 { 2 } else { 1 } * req.num_samples_per_prompt;
    let report = BenchReport {
        bundle: args.sampling.bundle.display().to_string(),
        backend: backend.backend.name().to_string(),
        threads: backend.threads,
        sample_method: req.sample_method.name().to_string(),
        num_sampling_steps: req.num_sampling_steps,
        denoising_steps: steps,
        num_frames: req.num_frames,
        height: req.height,
        width: req.width,
        latent_shape,
        cfg_batch,
        max_sequence_length: req.max_sequence_length,
        warmup: args.warmup,
        repeats: args.repeats,
        stages,
        samples_s: t.samples,
    };
    println!(
        "{} on {} (threads {}), {} x {} x {} frames, latent {:?}, CFG batch {}, {} {} steps",
        report.bundle,
        report.backend,
        report.threads.map(|n| n.to_string()).unwrap_or_else(|| "all".into()),
        report.num_frames,
        report.height,
        report.width,
        report.latent_shape,
        report.cfg_batch,
        report.denoising_steps,
        report.sample_method
    );
    println!(
        "{:<15} {:>7} {:>11} {:>11} {:>11} {:>11} {:>11}",
        "stage", "samples", "mean ms", "p50 ms", "p90 ms", "min ms", "max ms"
    );
    for s in &report.stages {
        println!(
            "{:<15} {:>7} {:>11.2} {:>11.2} {:>11.2} {:>11.2} {:>11.2}",
            s.stage, s.samples, s.mean_ms, s.p50_ms, s.p90_ms, s.min_ms, s.max_ms
        );
    }
    if let Some(dit) = pipeline.parallel() {
        let (totals, calls) = dit.timing_totals();
        super::parallel::print_timings(totals, calls, dit.plan());
    }
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        osp_fs::write_bytes(path, text + "\n").context("writing --json")?;
    }
    Ok(())
}

/// A scratch folder for the written videos, removed on drop.
struct ScratchDir {
    path: PathBuf,
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn tempfile_dir() -> anyhow::Result<ScratchDir> {
    let path = std::env::temp_dir().join(format!("osp-bench-{}", std::process::id()));
    std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
    Ok(ScratchDir { path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let s = stats("x", &[4.0, 1.0, 3.0, 2.0, 10.0]);
        assert_eq!((s.samples, s.p50_ms, s.p90_ms, s.min_ms, s.max_ms), (5, 3000.0, 10000.0, 1000.0, 10000.0));
        assert_eq!(s.mean_ms, 4000.0);
    }
}
