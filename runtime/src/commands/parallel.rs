//! `--sp`, `--cfg-parallel` and `--devices` of `osp generate` and `osp bench`: the parallel DiT
//! (`osp_runtime::parallel`) and the VAE's spatial tiles on the same devices, or, with `--devices`
//! alone, the single DiT on the first device and the tiles over all of them; checked before any
//! model loads.

use anyhow::{bail, Context};
use clap::Args;
use osp_graphs::{BundleManifest, DitSegments};
use osp_runtime::parallel::workers::{check_devices_exist, host_gpus, on_device, worker_options, DeviceList};
use osp_runtime::parallel::{ParallelPlan, RankTimings};
use osp_runtime::pipeline::{GenerateRequest, ParallelPlacement, PipelineSpec, Placement};
use osp_runtime::{BackendKind, SessionOptions};

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
    /// Devices, comma-separated, each at most once (GPU ordinals for ort-cuda / ort-tensorrt;
    /// CPU worker labels for ort-cpu and tract). With --sp / --cfg-parallel: one per rank
    /// (default 0, 1, ... one per rank). Without: the DiT and the text encoder run on the first
    /// and the VAE's spatial tiles (--spatial-tiling) are spread over all of them, bit-identical
    /// to one worker with the same session options (on CPU backends the tile workers split
    /// --threads, and ORT's CPU kernels may round differently than at the full thread count).
    #[arg(long)]
    pub devices: Option<DeviceList>,
}

impl ParallelOpts {
    pub fn enabled(&self) -> bool {
        self.sp > 1 || self.cfg_parallel
    }

    /// Checks the flags against the bundle's manifests and the request; `None` when none of
    /// --sp, --cfg-parallel and --devices is given. Loads nothing.
    pub fn check(
        &self,
        spec: &PipelineSpec,
        req: &GenerateRequest,
        backend: &BackendOpts,
    ) -> anyhow::Result<Option<Placement>> {
        if self.sp == 0 {
            bail!("--sp: the sequence-parallel degree must be at least 1");
        }
        let base = backend.session_options()?;
        let tiled = req.decode.tiling.is_some();
        if !self.enabled() {
            let Some(DeviceList(devices)) = &self.devices else { return Ok(None) };
            check_devices_exist(&base.backend, devices, host_gpus()).context("--devices")?;
            let main = on_device(&base, devices[0]);
            let vae = if tiled {
                worker_options(&base, devices).context("--devices")?
            } else {
                if devices.len() > 1 {
                    tracing::warn!(
                        ?devices,
                        "--devices: the VAE decode is not tiled (no --spatial-tiling), so it runs on the first device only"
                    );
                }
                vec![main.clone()]
            };
            return Ok(Some(Placement { main, dit: None, vae }));
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
        let devices: Vec<i32> = match &self.devices {
            Some(DeviceList(d)) => d.clone(),
            None => (0..plan.world() as i32).collect(),
        };
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
        check_devices_exist(&base.backend, &devices, host_gpus()).context("--devices")?;
        let gpu = matches!(backend.backend, BackendKind::OrtCuda | BackendKind::OrtTensorrt);
        let threads = base.threads.or_else(|| {
            (!gpu).then(|| {
                let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
                (cores / plan.world()).max(1)
            })
        });
        let ranks: Vec<SessionOptions> =
            devices.iter().map(|&d| SessionOptions { threads, ..on_device(&base, d) }).collect();
        let main = match &self.devices {
            Some(DeviceList(d)) => on_device(&base, d[0]),
            None => base,
        };
        let vae = if tiled { ranks.clone() } else { ranks[..1].to_vec() };
        Ok(Some(Placement { main, dit: Some(ParallelPlacement { plan, ranks }), vae }))
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
