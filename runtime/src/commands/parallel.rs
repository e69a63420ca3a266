//! `--sp`, `--cfg-parallel` and `--devices` of `osp generate` and `osp bench`: the parallel DiT
//! (`osp_runtime::parallel`) and the VAE's spatial tiles on the same devices, checked before any
//! model loads.

use anyhow::{bail, Context};
use clap::Args;
use osp_graphs::{BundleManifest, DitSegments};
use osp_runtime::parallel::{ParallelPlan, RankTimings};
use osp_runtime::pipeline::{GenerateRequest, ParallelPlacement, PipelineSpec};
use osp_runtime::{Backend, BackendKind, SessionOptions};

use super::BackendOpts;

#[derive(Debug, Clone, Default, Args)]
pub struct ParallelOpts {
    /// Sequence-parallel degree: the DiT's tokens split over this many ranks (DeepSpeed-Ulysses
    /// all-to-all around each self-attention). Must divide the attention heads.
    #[arg(long, default_value_t = 1)]
    pub sp: usize,
    /// Run the negative and positive halves of the guidance batch on two rank groups (world =
    /// 2 x --sp). Needs --guidance_scale > 1.
    #[arg(long)]
    pub cfg_parallel: bool,
    /// One device per rank, comma-separated (GPU ordinals for ort-cuda / ort-tensorrt; CPU rank
    /// labels for ort-cpu). Default: 0, 1, ... one per rank. The VAE's spatial tiles
    /// (--spatial-tiling) are spread over the same devices.
    #[arg(long, value_delimiter = ',')]
    pub devices: Option<Vec<i32>>,
}

fn gpu_count() -> Option<usize> {
    std::fs::read_dir("/proc/driver/nvidia/gpus").ok().map(|d| d.count())
}

impl ParallelOpts {
    pub fn enabled(&self) -> bool {
        self.sp > 1 || self.cfg_parallel
    }

    /// Checks the flags against the bundle's manifests and the request; `None` when no parallel
    /// flag is given. Loads nothing.
    pub fn check(
        &self,
        spec: &PipelineSpec,
        req: &GenerateRequest,
        backend: &BackendOpts,
    ) -> anyhow::Result<Option<ParallelPlacement>> {
        if !self.enabled() {
            if self.devices.is_some() {
                bail!("--devices: needs --sp > 1 or --cfg-parallel (one device per rank)");
            }
            return Ok(None);
        }
        if self.sp == 0 {
            bail!("--sp: the sequence-parallel degree must be at least 1");
        }
        if backend.backend == BackendKind::Tract {
            bail!("--sp / --cfg-parallel: the parallel DiT runs on ONNX Runtime backends (ort-cpu, ort-cuda, ort-tensorrt), not tract");
        }
        let cfg = req.guidance_scale > 1.0;
        if self.cfg_parallel && !cfg {
            bail!("--cfg-parallel: needs classifier-free guidance (--guidance_scale > 1), got {}", req.guidance_scale);
        }
        let plan = ParallelPlan { sp: self.sp, cfg_groups: if self.cfg_parallel { 2 } else { 1 } };
        let dir = spec.dir().join(&spec.manifest().components.transformer);
        let manifest = BundleManifest::load(&dir).with_context(|| format!("reading {}", dir.display()))?;
        if manifest.graphs.values().any(|g| g.precision == osp_graphs::Precision::Int8) {
            bail!(
                "--sp / --cfg-parallel: {} is an int8 bundle; the parallel DiT needs an f32/f16/bf16 bundle (int8's \
                 per-tensor activation scales depend on how the sequence is split, so shards could not equal one device)",
                dir.display()
            );
        }
        let protocol = DitSegments::read(&manifest.graphs)?.with_context(|| {
            format!(
                "--sp: {} has no sequence-parallel segment graphs (re-export it with this osp-export)",
                dir.display()
            )
        })?;
        let frames = spec.latent_shape(req)[2];
        let batch = if cfg { 2 } else { 1 } * req.num_samples_per_prompt;
        plan.check(&protocol, batch, frames)?;
        let devices: Vec<i32> = self.devices.clone().unwrap_or_else(|| (0..plan.world() as i32).collect());
        if devices.len() != plan.world() {
            bail!(
                "--devices: {} ranks ({} group(s) x --sp {}) need {} devices, got {} ({devices:?})",
                plan.world(),
                plan.cfg_groups,
                plan.sp,
                plan.world(),
                devices.len()
            );
        }
        let mut seen = devices.clone();
        seen.sort_unstable();
        seen.dedup();
        if seen.len() != devices.len() || devices.iter().any(|&d| d < 0) {
            bail!("--devices: one distinct non-negative device per rank, got {devices:?}");
        }
        let base = backend.session_options()?;
        let gpu = matches!(backend.backend, BackendKind::OrtCuda | BackendKind::OrtTensorrt);
        if gpu {
            if let Some(n) = gpu_count() {
                if let Some(d) = devices.iter().find(|&&d| d as usize >= n) {
                    bail!("--devices: GPU {d} does not exist (this host has {n})");
                }
            }
        }
        let threads = base.threads.or_else(|| {
            (!gpu).then(|| {
                let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
                (cores / plan.world()).max(1)
            })
        });
        let ranks = devices
            .iter()
            .map(|&d| SessionOptions {
                backend: Backend::from_kind(backend.backend, d, backend.trt_cache_dir.clone()),
                threads,
                ..base.clone()
            })
            .collect();
        Ok(Some(ParallelPlacement { plan, ranks }))
    }
}

/// `osp bench` rows: per rank, mean milliseconds per DiT call of each segment kind and exchange.
pub fn print_timings(totals: &[RankTimings], calls: usize, plan: ParallelPlan) {
    if calls == 0 {
        return;
    }
    println!("parallel DiT: --sp {} x {} CFG group(s), {calls} DiT calls; mean ms per call", plan.sp, plan.cfg_groups);
    println!("{:<6} {:<16} {:>10} {:>10}", "rank", "part", "compute", "exchange");
    for (rank, t) in totals.iter().enumerate() {
        for (k, v) in &t.compute {
            println!("{rank:<6} {k:<16} {:>10.2} {:>10}", v * 1e3 / calls as f64, "");
        }
        for (k, v) in &t.exchange {
            println!("{rank:<6} {k:<16} {:>10} {:>10.2}", "", v * 1e3 / calls as f64);
        }
        let c: f64 = t.compute.values().sum();
        let e: f64 = t.exchange.values().sum();
        println!("{rank:<6} {:<16} {:>10.2} {:>10.2}", "total", c * 1e3 / calls as f64, e * 1e3 / calls as f64);
    }
}
