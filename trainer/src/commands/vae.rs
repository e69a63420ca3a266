//! `osp-train vae`: trains the WFVAE as upstream `train_causalvae.py` does (upstream flag names):
//! generator and discriminator updates alternating from `--disc_start`, L1/L2 + LPIPS NLL, KL,
//! wavelet loss, adaptive adversarial weight (one step: `osp_trainer::losses::vae_step`), EMA of
//! the generator, atomic checkpoints in the official names (generator, EMA, discriminator, both
//! optimizers, step, data position) with exact `--resume_from_checkpoint`, metrics to
//! `<ckpt_dir>/metrics.jsonl`.
//!
//! Upstream: <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/train/train_causalvae.py>
//!
//! Data: `--video_path DIR` (every video file under it, as upstream) or `--data FILE` (the
//! `MEDIA_ROOT,ANNOTATION.json` lines of the DiT trainer); clips are cut and transformed as
//! upstream's `TrainVideoDataset` ([`osp_trainer::data::VaeClips`]): on every load a new window of
//! `--num_frames` frames at stride `--sample_rate` (`--dynamic_sample`: a stride drawn from
//! 1..=`--sample_rate`), the short edge resized to `--resolution` with antialiasing, centre crop.
//! Determinism: the posterior noise and the clip draws of step `s` come from generators seeded
//! with `(--seed, s)`, the data order from `--seed`, so a resumed run repeats the straight run.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use burn::module::AutodiffModule;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Tensor, TensorData};
use clap::Args;
use serde::Serialize;

use osp_trainer::checkpoint::{Checkpoint, LoadOptions};
use osp_trainer::data::annotation::{AnnotationItem, Captions, DataSource};
use osp_trainer::data::{read_data_file, DataConfig, DataPosition, Dataset, VaeClips};
use osp_trainer::losses::vae_step::{
    vae_checkpoint_files, VaeCheckpoint, VaeOptimConfig, VaeStepLog, VaeTrainer, FROZEN_VAE_PARAMS,
};
use osp_trainer::losses::{LossConfig, LossType};
use osp_trainer::models::discriminator::NLayerDiscriminator3DConfig;
use osp_trainer::models::wfvae::{WFVAEModel, WFVAEModelConfig};
use osp_trainer::train::checkpoint::{write_json, TrainingState};
use osp_trainer::train::trainer::set_trainable;
use osp_trainer::train::{Ema, EmaConfig, MetricsLog, Rng, StepStats};

use super::progress::Progress;
use super::{CheckpointArgs, RunArgs};

/// Video file extensions picked up under `--video_path`.
const VIDEO_EXTENSIONS: &[&str] = &["mp4", "avi", "mov", "mkv", "webm"];

/// `--loss_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
pub enum PixelLoss {
    /// Mean absolute error.
    L1,
    /// Mean squared error.
    L2,
}

#[derive(Debug, Args, Serialize)]
pub struct VaeArgs {
    /// WFVAE `config.json` (upstream keys); a fresh seeded init unless weights are given.
    #[arg(long = "model_config")]
    pub model_config: Option<PathBuf>,
    /// WFVAE folder (`config.json` + one *.safetensors/*.ckpt) to start from (a new stage).
    #[arg(long = "pretrained_model_name_or_path")]
    pub pretrained_model_name_or_path: Option<PathBuf>,
    /// Folder of training videos (searched recursively).
    #[arg(long = "video_path")]
    pub video_path: Option<PathBuf>,
    /// `--data` file instead of --video_path: lines `MEDIA_ROOT,ANNOTATION.json`.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Run folder: checkpoints, metrics.jsonl, run_config.json.
    #[arg(long = "ckpt_dir")]
    pub ckpt_dir: PathBuf,
    #[command(flatten)]
    #[serde(flatten)]
    pub clips: ClipArgs,
    /// Learning rate of both optimisers.
    #[arg(long, default_value_t = 1e-5)]
    pub lr: f64,
    /// Clips per step.
    #[arg(long = "batch_size", default_value_t = 1)]
    pub batch_size: usize,
    /// Training steps (generator and discriminator updates both count, as upstream's global step).
    #[arg(long = "max_steps", default_value_t = 100_000)]
    pub max_steps: usize,
    /// KL loss weight.
    #[arg(long = "kl_weight", default_value_t = 1e-6)]
    pub kl_weight: f64,
    /// First step with the adversarial term and discriminator updates.
    #[arg(long = "disc_start", default_value_t = 5)]
    pub disc_start: u64,
    /// Scale of the adaptive adversarial weight.
    #[arg(long = "disc_weight", default_value_t = 0.5)]
    pub disc_weight: f64,
    /// Discriminator base width (upstream 64).
    #[arg(long = "disc_ndf", default_value_t = 64)]
    pub disc_ndf: usize,
    /// Discriminator downsampling layers (upstream 4).
    #[arg(long = "disc_num_layers", default_value_t = 4)]
    pub disc_num_layers: usize,
    /// LPIPS weight (0: no LPIPS, no VGG file needed).
    #[arg(long = "perceptual_weight", default_value_t = 1.0)]
    pub perceptual_weight: f64,
    /// torchvision `vgg16` weights (safetensors or .pth) for LPIPS.
    #[arg(long = "lpips_vgg")]
    pub lpips_vgg: Option<PathBuf>,
    /// LPIPS linear layers (`lpips_v0.1_vgg.safetensors` or `.pth`).
    #[arg(long = "lpips_lin")]
    pub lpips_lin: Option<PathBuf>,
    /// Add the wavelet (energy-flow) loss.
    #[arg(long = "wavelet_loss")]
    pub wavelet_loss: bool,
    /// Wavelet loss weight.
    #[arg(long = "wavelet_weight", default_value_t = 0.1)]
    pub wavelet_weight: f64,
    /// Pixel loss.
    #[arg(long = "loss_type", value_enum, default_value_t = PixelLoss::L1)]
    pub loss_type: PixelLoss,
    /// The frozen NLL log-variance.
    #[arg(long = "logvar_init", default_value_t = 0.0)]
    pub logvar_init: f64,
    /// Train the decoder only.
    #[arg(long = "freeze_encoder")]
    pub freeze_encoder: bool,
    /// Generator gradient-norm bound.
    #[arg(long = "clip_grad_norm", default_value_t = 1e5)]
    pub clip_grad_norm: f64,
    /// Keep an EMA of the generator (saved as model_ema/).
    #[arg(long)]
    pub ema: bool,
    /// EMA decay ceiling.
    #[arg(long = "ema_decay", default_value_t = 0.999)]
    pub ema_decay: f64,
    /// Save a checkpoint every this many steps.
    #[arg(long = "save_ckpt_step", default_value_t = 2000)]
    pub save_ckpt_step: usize,
    #[command(flatten)]
    #[serde(flatten)]
    pub checkpoints: CheckpointArgs,
    /// Log a metrics line every this many steps.
    #[arg(long = "log_steps", default_value_t = 1)]
    pub log_steps: usize,
    /// Seed of the initialisation, data order and posterior noise.
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
    #[command(flatten)]
    #[serde(flatten)]
    pub run: RunArgs,
}

pub fn run(args: VaeArgs) -> anyhow::Result<()> {
    with_backend!(args.run.device, |B| train::<burn::backend::Autodiff<B>>(&args, Default::default()))
}

/// The WFVAE config and, with --pretrained_model_name_or_path, its weights file.
fn model_source(args: &VaeArgs) -> anyhow::Result<(PathBuf, Option<PathBuf>)> {
    match (&args.pretrained_model_name_or_path, &args.model_config) {
        (Some(dir), config) => {
            let mut weights: Vec<PathBuf> = std::fs::read_dir(dir)
                .with_context(|| format!("--pretrained_model_name_or_path {}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("safetensors" | "ckpt")))
                .collect();
            weights.sort();
            let Some(file) = weights.pop() else {
                bail!("--pretrained_model_name_or_path {}: no *.safetensors or *.ckpt file", dir.display());
            };
            Ok((config.clone().unwrap_or_else(|| dir.join("config.json")), Some(file)))
        }
        (None, Some(config)) => Ok((config.clone(), None)),
        (None, None) => bail!("give --model_config (fresh init) or --pretrained_model_name_or_path (a WFVAE folder)"),
    }
}

/// The clips of `osp-train vae` and `latent-stats` (upstream `train_causalvae.py` flags).
#[derive(Debug, Args, Serialize)]
pub struct ClipArgs {
    /// Square clip size in pixels (a multiple of 8).
    #[arg(long, default_value_t = 256)]
    pub resolution: usize,
    /// Frames per clip (4n+1).
    #[arg(long = "num_frames", default_value_t = 25)]
    pub num_frames: usize,
    /// Frame stride of a clip (with --dynamic_sample, the largest one).
    #[arg(long = "sample_rate", default_value_t = 1)]
    pub sample_rate: usize,
    /// Draw each clip's stride uniformly from 1..=--sample_rate on every load, as upstream.
    #[arg(long = "dynamic_sample")]
    pub dynamic_sample: bool,
}

impl ClipArgs {
    /// `num_frames` frames every `sample_rate`-th, centre-cropped and resized to `resolution`
    /// squared, in batches of `batch`.
    pub(super) fn data_config(&self, batch: usize, seed: u64) -> anyhow::Result<DataConfig> {
        if self.resolution == 0 || !self.resolution.is_multiple_of(8) {
            bail!("--resolution must be a positive multiple of 8, got {}", self.resolution);
        }
        Ok(DataConfig {
            num_frames: self.num_frames,
            train_fps: 0.0,
            sample_rate: self.sample_rate.max(1),
            max_height: self.resolution,
            max_width: self.resolution,
            max_hxw: None,
            min_hxw: None,
            force_resolution: true,
            hw_stride: 8,
            ae_stride_t: 4,
            total_batch_size: batch,
            min_bucket_items: batch,
            drop_short_ratio: 0.0,
            speed_factor: 1.0,
            vae_clips: Some(VaeClips { dynamic_sample: self.dynamic_sample }),
            seed,
        })
    }
}

/// The data sources: every video under --video_path (no captions needed), or the --data lines.
pub(super) fn sources(
    video_path: &Option<PathBuf>,
    data: &Option<PathBuf>,
) -> anyhow::Result<Vec<(DataSource, Vec<AnnotationItem>)>> {
    match (video_path, data) {
        (Some(dir), None) => {
            let mut files = Vec::new();
            collect_videos(dir, dir, &mut files)?;
            files.sort();
            if files.is_empty() {
                bail!("--video_path {}: no video files ({})", dir.display(), VIDEO_EXTENSIONS.join(", "));
            }
            let items = files
                .into_iter()
                .map(|path| AnnotationItem {
                    path,
                    cap: Some(Captions::One(String::new())),
                    resolution: None,
                    num_frames: None,
                    fps: None,
                    cut: None,
                    crop: None,
                    aesthetic: None,
                })
                .collect();
            let source = DataSource { media_root: dir.clone(), text_embed_root: None, annotation: dir.clone() };
            Ok(vec![(source, items)])
        }
        (None, Some(file)) => read_data_file(file)?
            .into_iter()
            .map(|s| {
                let items = osp_trainer::data::annotation::read_annotation(&s.annotation)?;
                Ok((s, items))
            })
            .collect::<osp_trainer::Result<Vec<_>>>()
            .map_err(Into::into),
        _ => bail!("give exactly one of --video_path and --data"),
    }
}

fn collect_videos(root: &Path, dir: &Path, out: &mut Vec<String>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            collect_videos(root, &path, out)?;
        } else if path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| VIDEO_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

#[derive(Serialize)]
struct StepRecord<'a> {
    #[serde(flatten)]
    log: &'a VaeStepLog,
    epoch: usize,
    seconds: f64,
}

/// The backend seed of step `step`'s posterior noise.
fn step_seed(seed: u64, step: usize) -> u64 {
    Rng::derive(seed, 0x7A_E000 + step as u64).next_u64()
}

fn train<B: AutodiffBackend>(args: &VaeArgs, device: B::Device) -> anyhow::Result<()> {
    if args.batch_size == 0 || args.save_ckpt_step == 0 {
        bail!("--batch_size and --save_ckpt_step must be at least 1");
    }
    if args.perceptual_weight > 0.0 && (args.lpips_vgg.is_none() || args.lpips_lin.is_none()) {
        bail!("--perceptual_weight {} needs --lpips_vgg (torchvision vgg16 weights) and --lpips_lin (lpips_v0.1_vgg); pass --perceptual_weight 0 to train without LPIPS", args.perceptual_weight);
    }
    let (config_path, weights) = model_source(args)?;
    let model_json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&config_path).with_context(|| format!("reading {}", config_path.display()))?,
    )
    .with_context(|| format!("parsing {}", config_path.display()))?;
    let config = WFVAEModelConfig::from_json_file(&config_path)?;

    B::seed(&device, args.seed);
    let mut inner = config.init::<B::InnerBackend>(&device)?;
    if let Some(file) = &weights {
        inner
            .load_official(&Checkpoint::open(file)?, LoadOptions::default())
            .with_context(|| format!("loading {}", file.display()))?;
    }
    let model = set_trainable(WFVAEModel::<B>::from_inner(inner), &[FROZEN_VAE_PARAMS.to_string()]);

    let loss_config = LossConfig {
        disc_start: args.disc_start,
        disc_weight: args.disc_weight,
        kl_weight: args.kl_weight,
        logvar_init: args.logvar_init,
        perceptual_weight: args.perceptual_weight,
        loss_type: match args.loss_type {
            PixelLoss::L1 => LossType::L1,
            PixelLoss::L2 => LossType::L2,
        },
        wavelet_loss: args.wavelet_loss,
        wavelet_weight: args.wavelet_weight,
        discriminator: NLayerDiscriminator3DConfig {
            ndf: args.disc_ndf,
            n_layers: args.disc_num_layers,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut loss = loss_config.init::<B>(&device)?;
    if let (Some(vgg), Some(lin)) = (&args.lpips_vgg, &args.lpips_lin) {
        if args.perceptual_weight > 0.0 {
            loss.perceptual_loss
                .load_pretrained(&Checkpoint::open(vgg)?, &Checkpoint::open(lin)?)
                .context("loading the LPIPS weights")?;
        }
    }
    let optim = VaeOptimConfig {
        lr: args.lr,
        clip_grad_norm: args.clip_grad_norm,
        freeze_encoder: args.freeze_encoder,
        ..Default::default()
    };
    let mut trainer = VaeTrainer::new(model, loss, optim)?;
    let ema_config = EmaConfig { decay: args.ema_decay, ..Default::default() };
    let mut ema = args.ema.then(|| Ema::new(ema_config, trainer.model.valid()));

    let data_config = args.clips.data_config(args.batch_size, args.seed)?;
    let dataset = Dataset::build_from_items(&sources(&args.video_path, &args.data)?, data_config)?;

    std::fs::create_dir_all(&args.ckpt_dir).with_context(|| format!("creating {}", args.ckpt_dir.display()))?;
    osp_fs::collect_stale_logged(&args.ckpt_dir);
    let run_config = serde_json::to_value(args)?;
    write_json(&args.ckpt_dir.join("run_config.json"), &run_config)?;

    let mut step = 0usize;
    let mut position = DataPosition::default();
    if let Some(dir) = args.checkpoints.resume_dir(&args.ckpt_dir, &vae_checkpoint_files())? {
        let (state, ema_weights) = trainer.resume(&dir)?;
        step = state.step;
        position = serde_json::from_value(state.data_position).context("the checkpoint's data position")?;
        if let Some(e) = &mut ema {
            match (ema_weights, state.ema_steps) {
                (Some(w), Some(n)) => {
                    e.module = w;
                    e.optimization_step = n;
                }
                _ => {
                    tracing::warn!(dir = %dir.display(), "the checkpoint has no EMA weights; EMA restarts");
                    *e = Ema::new(ema_config, trainer.model.valid());
                }
            }
        }
    }

    // Step records carry the global step before the update (0-based).
    let mut metrics = MetricsLog::open_from(args.ckpt_dir.join("metrics.jsonl"), step as u64)?;
    let mut progress = Progress::new(args.run.progress, args.max_steps, step);
    let mut bad = BTreeSet::new();
    let mut last_saved = None;
    let res = args.clips.resolution;
    while step < args.max_steps {
        let started = Instant::now();
        let (indices, next) = dataset.batch_at(position)?;
        let epoch = position.epoch;
        position = next;
        // Each clip's window, drawn anew per load as upstream's `TemporalRandomCrop`; seeded by
        // the step, so a resumed run draws the same windows.
        let mut clip_rng = Rng::derive(step_seed(args.seed, step), 0xC11F);
        let draws: Vec<f64> = indices.iter().map(|_| clip_rng.uniform()).collect();
        let items = dataset.load_batch(&indices, Some(&draws), &mut bad)?;
        let mut values = Vec::with_capacity(items.len() * 3 * args.clips.num_frames * res * res);
        for (_, pixels) in &items {
            values.extend_from_slice(pixels);
        }
        let x = Tensor::<B, 5>::from_data(
            TensorData::new(values, [items.len(), 3, args.clips.num_frames, res, res]),
            &device,
        );
        B::seed(&device, step_seed(args.seed, step));
        let log = trainer.step(x, step as u64)?;
        if let (Some(e), VaeStepLog::Generator(_)) = (&mut ema, &log) {
            e.update::<B, WFVAEModel<B>>(&trainer.model);
        }
        step += 1;
        let (loss_value, grad_norm) = match &log {
            VaeStepLog::Generator(g) => (g.total_loss, g.grad_norm),
            VaeStepLog::Discriminator(d) => (d.disc_loss, d.grad_norm),
        };
        if step.is_multiple_of(args.log_steps.max(1)) {
            metrics.log(&StepRecord { log: &log, epoch, seconds: started.elapsed().as_secs_f64() })?;
        }
        progress.step(&StepStats { step, loss: loss_value, grad_norm, lr: args.lr, loss_scale: None, skipped: false });
        if step.is_multiple_of(args.save_ckpt_step) || step == args.max_steps {
            let state = TrainingState {
                step,
                optimizer_steps: 0,
                ema_steps: None,
                rng: Rng::new(args.seed),
                data_position: serde_json::to_value(position)?,
                run_config: run_config.clone(),
                aux_optimizer_steps: None,
                loss_scale: None,
            };
            let checkpoint = VaeCheckpoint {
                ema: ema.as_ref().map(|e| (&e.module, e.optimization_step)),
                model_config: &model_json,
                state,
            };
            trainer.save(&args.ckpt_dir, checkpoint, args.checkpoints.checkpoints_total_limit)?;
            last_saved = Some(step);
        }
    }
    if last_saved.is_none() && step > 0 {
        tracing::info!(step, "no new step to train: the run is already at --max_steps");
    }
    progress.finish();
    tracing::info!(steps = step, metrics = %metrics.path().display(), "WFVAE training done");
    Ok(())
}
