//! `osp-train dit`: trains `OpenSoraT2V_v1_3` as upstream `train_t2v_diffusers.py` does (upstream
//! flag names): v-prediction on the zero-terminal-SNR DDPM schedule, min-SNR weighting, CFG text
//! dropout, AdamW with warm-up, global-norm clipping, gradient accumulation, data-parallel
//! replicas, EMA, gradient checkpointing, checkpoints in the official names with exact resume,
//! validation loss, metrics to `<output_dir>/metrics.jsonl`.
//!
//! Latents come from the frozen WFVAE (`--ae_path`, float32), text states from the 3-item `--data`
//! lines' cache. `--mixed_precision bf16|fp16` is torch-style autocast of the DiT (see
//! [`osp_trainer::models::autocast`]); it needs a backend with that dtype (CUDA), Burn's CPU
//! backend trains in float32 only.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::FloatDType;
use clap::{Args, ValueEnum};
use serde::Serialize;

use osp_trainer::checkpoint::{Checkpoint, LoadOptions};
use osp_trainer::data::{read_data_file, DataConfig, DataPosition, Dataset};
use osp_trainer::models::autocast;
use osp_trainer::models::opensora_v1_3::{OpenSoraT2V_v1_3, OpenSoraT2V_v1_3Config};
use osp_trainer::models::wfvae::{WFVAEModel, WFVAEModelConfig};
use osp_trainer::train::diffusion::{DdpmSchedule, PredictionType};
use osp_trainer::train::dit::{DitBatch, DitBatcher, DitObjective, LatentCache, TextEmbedding};
use osp_trainer::train::{
    AdamWConfig, EmaConfig, LossScaleConfig, LrSchedule, LrSchedulerKind, MetricsLog, OptimConfig, Rng, StepStats,
    Trainer, WeightsLayout,
};

use super::progress::Progress;
use super::{CheckpointArgs, RunArgs};

/// The weights file of a diffusers DiT folder.
const WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";

/// `--mixed_precision`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ValueEnum)]
pub enum MixedPrecision {
    /// float32 throughout (the only mode of Burn's CPU backend).
    No,
    /// bfloat16 autocast: linear layers, the patch convolution and attention matmuls in bfloat16;
    /// weights, optimizer state, norms, softmax and the loss in float32.
    Bf16,
    /// float16 autocast, as bf16 but in float16, with dynamic loss scaling.
    Fp16,
}

impl MixedPrecision {
    /// The autocast compute dtype (`None`: float32).
    pub fn compute_dtype(self) -> Option<FloatDType> {
        match self {
            MixedPrecision::No => None,
            MixedPrecision::Bf16 => Some(FloatDType::BF16),
            MixedPrecision::Fp16 => Some(FloatDType::F16),
        }
    }
}

#[derive(Debug, Args, Serialize)]
pub struct DitArgs {
    /// The DiT `config.json` (diffusers keys of OpenSoraT2V_v1_3).
    #[arg(long = "model_config")]
    pub model_config: PathBuf,
    /// Official DiT weights to start from (diffusers safetensors or index); random init without.
    #[arg(long)]
    pub pretrained: Option<PathBuf>,
    /// WFVAE folder: `config.json` and one weights file (*.safetensors or *.ckpt).
    #[arg(long = "ae_path")]
    pub ae_path: PathBuf,
    /// `--data` file: lines `MEDIA_ROOT,TEXT_EMBED_ROOT,ANNOTATION.json`.
    #[arg(long)]
    pub data: PathBuf,
    /// Validation `--data` file; its loss is logged every `--validation_steps`.
    #[arg(long = "val_data")]
    pub val_data: Option<PathBuf>,
    /// Updates between validation losses.
    #[arg(long = "validation_steps", default_value_t = 500)]
    pub validation_steps: usize,
    /// Validation batches per evaluation (0: all).
    #[arg(long = "max_val_batches", default_value_t = 0)]
    pub max_val_batches: usize,
    /// Run folder: checkpoints, metrics.jsonl, run_config.json.
    #[arg(long = "output_dir")]
    pub output_dir: PathBuf,
    /// Frames per clip (4n+1; 1 trains on images).
    #[arg(long = "num_frames", default_value_t = 65)]
    pub num_frames: usize,
    /// Resample videos to this frame rate (0: take every --sample_rate-th frame).
    #[arg(long = "train_fps", default_value_t = 24.0)]
    pub train_fps: f64,
    /// Frame stride when --train_fps is 0.
    #[arg(long = "sample_rate", default_value_t = 1)]
    pub sample_rate: usize,
    /// Probability of dropping a video shorter than --num_frames (the v1.3 scripts pass 0: keep
    /// every video of at least min(29, --num_frames) frames, cut to 4n+1).
    #[arg(long = "drop_short_ratio", default_value_t = 1.0)]
    pub drop_short_ratio: f64,
    /// Speed a longer video up by at most this factor (even frame subsampling) before cutting a clip.
    #[arg(long = "speed_factor", default_value_t = 1.0)]
    pub speed_factor: f64,
    /// Sample height with --force_resolution.
    #[arg(long = "max_height", default_value_t = 320)]
    pub max_height: usize,
    /// Sample width with --force_resolution.
    #[arg(long = "max_width", default_value_t = 240)]
    pub max_width: usize,
    /// Most pixels per frame without --force_resolution (area-preserving downscale).
    #[arg(long = "max_hxw")]
    pub max_hxw: Option<usize>,
    /// Fewest pixels per frame without --force_resolution.
    #[arg(long = "min_hxw")]
    pub min_hxw: Option<usize>,
    /// Centre-crop and resize every item to --max_height x --max_width.
    #[arg(long = "force_resolution")]
    pub force_resolution: bool,
    /// Sample sizes are multiples of this.
    #[arg(long = "hw_stride", default_value_t = 32)]
    pub hw_stride: usize,
    /// Items per replica per micro-batch.
    #[arg(long = "train_batch_size", default_value_t = 16)]
    pub train_batch_size: usize,
    /// Micro-batches per update.
    #[arg(long = "gradient_accumulation_steps", default_value_t = 1)]
    pub gradient_accumulation_steps: usize,
    /// Data-parallel model replicas (CPU: threads on one device; CUDA: one GPU each).
    #[arg(long = "dp_replicas", default_value_t = 1)]
    pub dp_replicas: usize,
    /// Optimizer updates to train for.
    #[arg(long = "max_train_steps")]
    pub max_train_steps: usize,
    /// Peak learning rate.
    #[arg(long = "learning_rate", default_value_t = 1e-4)]
    pub learning_rate: f64,
    /// Learning-rate schedule.
    #[arg(long = "lr_scheduler", value_enum, default_value_t = LrSchedulerKind::Constant)]
    pub lr_scheduler: LrSchedulerKind,
    /// Warm-up updates (constant_with_warmup, linear, cosine).
    #[arg(long = "lr_warmup_steps", default_value_t = 500)]
    pub lr_warmup_steps: usize,
    /// AdamW beta1.
    #[arg(long = "adam_beta1", default_value_t = 0.9)]
    pub adam_beta1: f64,
    /// AdamW beta2.
    #[arg(long = "adam_beta2", default_value_t = 0.999)]
    pub adam_beta2: f64,
    /// AdamW decoupled weight decay.
    #[arg(long = "adam_weight_decay", default_value_t = 1e-2)]
    pub adam_weight_decay: f64,
    /// AdamW epsilon.
    #[arg(long = "adam_epsilon", default_value_t = 1e-15)]
    pub adam_epsilon: f64,
    /// Clip the global gradient L2 norm to this (0 disables).
    #[arg(long = "max_grad_norm", default_value_t = 1.0)]
    pub max_grad_norm: f64,
    /// Keep an exponential moving average of the weights (saved as model_ema/).
    #[arg(long = "use_ema")]
    pub use_ema: bool,
    /// EMA decay ceiling.
    #[arg(long = "ema_decay", default_value_t = 0.9999)]
    pub ema_decay: f64,
    /// Updates before the EMA starts to lag.
    #[arg(long = "ema_start_step", default_value_t = 0)]
    pub ema_start_step: usize,
    /// Save a checkpoint every this many updates.
    #[arg(long = "checkpointing_steps", default_value_t = 500)]
    pub checkpointing_steps: usize,
    #[command(flatten)]
    #[serde(flatten)]
    pub checkpoints: CheckpointArgs,
    /// What the model predicts (the v1.3 script: v_prediction).
    #[arg(long = "prediction_type", value_enum, default_value_t = PredictionType::VPrediction)]
    pub prediction_type: PredictionType,
    /// Rescale the betas to zero terminal SNR (the v1.3 script passes it).
    #[arg(long = "rescale_betas_zero_snr", default_value_t = true, action = clap::ArgAction::Set)]
    pub rescale_betas_zero_snr: bool,
    /// Min-SNR loss weighting gamma (the v1.3 script: 5.0).
    #[arg(long = "snr_gamma")]
    pub snr_gamma: Option<f32>,
    /// Probability of replacing the caption by the empty one (classifier-free guidance).
    #[arg(long, default_value_t = 0.1)]
    pub cfg: f64,
    /// Cached embedding (`text_emb`, `mask` npz) of the empty caption, used by --cfg.
    #[arg(long = "null_text_embed")]
    pub null_text_embed: Option<PathBuf>,
    /// Keep each clip's VAE posterior and each caption's text states in memory after first use
    /// (the clip is then not decoded or encoded again; batches are unchanged).
    #[arg(long = "cache_latents")]
    pub cache_latents: bool,
    /// Memory bound of --cache_latents in MiB; past it, items are encoded every step.
    #[arg(long = "latent_cache_max_mb", default_value_t = 2048)]
    pub latent_cache_max_mb: usize,
    /// Recompute activations in the backward pass (Burn's balanced checkpointing).
    #[arg(long = "gradient_checkpointing")]
    pub gradient_checkpointing: bool,
    /// Mixed precision (autocast of the DiT; bf16/fp16 need a backend with that dtype: CUDA).
    #[arg(long = "mixed_precision", value_enum, default_value_t = MixedPrecision::No)]
    pub mixed_precision: MixedPrecision,
    /// Seed of initialisation, data order and every random draw of training.
    #[arg(long, default_value_t = 1234)]
    pub seed: u64,
    #[command(flatten)]
    #[serde(flatten)]
    pub run: RunArgs,
}

pub fn run(args: DitArgs) -> anyhow::Result<()> {
    use burn::backend::autodiff::checkpoint::strategy::BalancedCheckpointing;
    use burn::backend::Autodiff;
    with_backend!(args.run.device, |B, replicas| {
        let devices = replicas(args.dp_replicas.max(1));
        if args.gradient_checkpointing {
            train::<Autodiff<B, BalancedCheckpointing>>(&args, devices)
        } else {
            train::<Autodiff<B>>(&args, devices)
        }
    })
}

/// The weights file of a WFVAE folder (the last `*.safetensors` / `*.ckpt` by name).
pub(super) fn vae_weights_file(dir: &Path) -> anyhow::Result<PathBuf> {
    let mut weights: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("--ae_path {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let n = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            n.ends_with(".safetensors") || n.ends_with(".ckpt")
        })
        .collect();
    weights.sort();
    weights.pop().with_context(|| format!("--ae_path {}: no *.safetensors or *.ckpt weights file", dir.display()))
}

pub(super) fn load_vae<B: Backend>(
    dir: &Path,
    device: &B::Device,
) -> anyhow::Result<(WFVAEModel<B>, WFVAEModelConfig)> {
    let config = WFVAEModelConfig::from_json_file(dir.join("config.json"))
        .with_context(|| format!("--ae_path {}: reading config.json", dir.display()))?;
    let file = vae_weights_file(dir)?;
    let mut vae = config.init::<B>(device)?;
    vae.load_official(&Checkpoint::open(&file)?, LoadOptions::default())
        .with_context(|| format!("loading the VAE weights {}", file.display()))?;
    Ok((vae, config))
}

#[derive(Serialize)]
struct StepRecord {
    #[serde(flatten)]
    stats: StepStats,
    epoch: usize,
    items: usize,
    seconds: f64,
}

#[derive(Serialize)]
struct ValRecord {
    step: usize,
    val_loss: f64,
    val_batches: usize,
}

fn data_config(args: &DitArgs, seed: u64) -> DataConfig {
    let total = args.train_batch_size * args.gradient_accumulation_steps * args.dp_replicas.max(1);
    DataConfig {
        num_frames: args.num_frames,
        train_fps: args.train_fps,
        sample_rate: args.sample_rate,
        max_height: args.max_height,
        max_width: args.max_width,
        max_hxw: args.max_hxw,
        min_hxw: args.min_hxw,
        force_resolution: args.force_resolution,
        hw_stride: args.hw_stride,
        ae_stride_t: 4,
        total_batch_size: total,
        min_bucket_items: 4 * total,
        drop_short_ratio: args.drop_short_ratio,
        speed_factor: args.speed_factor,
        vae_clips: None,
        seed,
    }
}

fn train<B: AutodiffBackend>(args: &DitArgs, devices: Vec<B::Device>) -> anyhow::Result<()> {
    let device = devices[0].clone();
    let compute = args.mixed_precision.compute_dtype();
    if let Some(dtype) = compute.filter(|_| !autocast::supported::<B>(compute, &device)) {
        bail!(
            "--mixed_precision {}: the {} backend cannot compute in {dtype:?}; train with --mixed_precision no, or on a backend with {dtype:?} (--device cuda)",
            args.mixed_precision.to_possible_value().expect("every variant is a flag value").get_name(),
            B::name(&device),
        );
    }
    if args.mixed_precision == MixedPrecision::Fp16 {
        tracing::info!("--mixed_precision fp16: dynamic loss scaling on (torch GradScaler defaults)");
    }
    B::seed(&device, args.seed);
    std::fs::create_dir_all(&args.output_dir).with_context(|| format!("creating {}", args.output_dir.display()))?;
    osp_fs::collect_stale_logged(&args.output_dir);
    let run_config = serde_json::to_value(args)?;
    osp_trainer::train::checkpoint::write_json(&args.output_dir.join("run_config.json"), &run_config)?;

    let model_json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&args.model_config)
            .with_context(|| format!("reading {}", args.model_config.display()))?,
    )?;
    let dit_config = OpenSoraT2V_v1_3Config::from_json_file(&args.model_config)?;
    let mut inner = dit_config.init::<B::InnerBackend>(&device)?;
    if let Some(p) = &args.pretrained {
        inner
            .load_official(&Checkpoint::open(p)?, LoadOptions::default())
            .with_context(|| format!("loading {}", p.display()))?;
    }
    let inner = inner.with_compute_dtype(compute, &device)?;
    tracing::info!(backend = %B::name(&device), compute_dtype = ?compute, "DiT autocast (None: float32)");
    let (vae, vae_config) = load_vae::<B::InnerBackend>(&args.ae_path, &device)?;
    let dims = inner.dims();
    if dims.in_channels != vae_config.latent_dim {
        bail!("the DiT takes {} latent channels but the VAE makes {}", dims.in_channels, vae_config.latent_dim);
    }

    let dataset = Dataset::build(&read_data_file(&args.data)?, data_config(args, args.seed))?;
    let val = match &args.val_data {
        Some(p) => {
            let mut c = data_config(args, args.seed);
            c.min_bucket_items = 1;
            c.total_batch_size = args.train_batch_size;
            Some(Dataset::build(&read_data_file(p)?, c).context("building --val_data")?)
        }
        None => None,
    };
    let null_text = args.null_text_embed.as_deref().map(TextEmbedding::read_npz).transpose()?;
    if args.cfg > 0.0 && null_text.is_none() {
        bail!("--cfg {} needs --null_text_embed (the cached embedding of the empty caption); pass --cfg 0 to train without text dropout", args.cfg);
    }
    let schedule = DdpmSchedule::linear(1000, 1e-4, 0.02, args.rescale_betas_zero_snr, args.prediction_type)?;
    let objective = DitObjective { schedule: schedule.clone(), snr_gamma: args.snr_gamma };
    let batcher = DitBatcher::<B::InnerBackend> {
        dataset: &dataset,
        vae: &vae,
        vae_scale: vae_config.scale.iter().map(|&v| v as f32).collect(),
        vae_shift: vae_config.shift.iter().map(|&v| v as f32).collect(),
        null_text: null_text.clone(),
        cfg: args.cfg,
        schedule: &schedule,
        timestep_ranks: args.dp_replicas.max(1),
        device: device.clone(),
        cache: args.cache_latents.then(|| std::sync::Mutex::new(LatentCache::new(args.latent_cache_max_mb << 20))),
    };

    let optim = OptimConfig {
        adamw: AdamWConfig {
            beta1: args.adam_beta1,
            beta2: args.adam_beta2,
            weight_decay: args.adam_weight_decay,
            epsilon: args.adam_epsilon,
        },
        lr: LrSchedule::new(args.lr_scheduler, args.learning_rate, args.lr_warmup_steps, args.max_train_steps)?,
        max_grad_norm: (args.max_grad_norm > 0.0).then_some(args.max_grad_norm),
        ema: args.use_ema.then_some(EmaConfig {
            decay: args.ema_decay,
            update_after_step: args.ema_start_step,
            ..Default::default()
        }),
        // As accelerate: float16 autocast trains with torch's GradScaler, bfloat16 without.
        loss_scale: (args.mixed_precision == MixedPrecision::Fp16).then(LossScaleConfig::default),
    };
    let mut trainer = Trainer::new(OpenSoraT2V_v1_3::<B>::from_inner(inner), optim, devices)?;
    let layout = WeightsLayout { file: WEIGHTS_FILE.into(), config: Some(model_json), fixed: Default::default() };
    let mut rng = Rng::new(args.seed);
    let mut position = DataPosition::default();
    if let Some(dir) = args.checkpoints.resume_dir(&args.output_dir, &layout.checkpoint_files())? {
        let state = trainer.resume(&dir, &layout)?;
        rng = state.rng;
        position = serde_json::from_value(state.data_position).context("the checkpoint's data position")?;
    }
    // Step records carry the update number (1-based).
    let mut metrics = MetricsLog::open_from(args.output_dir.join("metrics.jsonl"), trainer.step as u64 + 1)?;
    let shards = args.dp_replicas.max(1);
    let loss = |m: &OpenSoraT2V_v1_3<B>, b: &DitBatch| objective.loss(m, b);
    let mut bad = BTreeSet::new();
    let mut progress = Progress::new(args.run.progress, args.max_train_steps, trainer.step);
    let mut last_saved = None;
    while trainer.step < args.max_train_steps {
        let started = Instant::now();
        let mut micro = Vec::with_capacity(args.gradient_accumulation_steps);
        let (indices, next) = dataset.batch_at(position)?;
        let epoch = position.epoch;
        position = next;
        for chunk in indices.chunks(args.train_batch_size * shards) {
            let batch = batcher.batch(chunk, &mut bad, &mut rng)?;
            micro.push(batch.shards(shards)?);
        }
        let stats = trainer.step(&micro, &loss)?;
        metrics.log(&StepRecord { stats, epoch, items: indices.len(), seconds: started.elapsed().as_secs_f64() })?;
        progress.step(&stats);
        if stats.step % args.checkpointing_steps.max(1) == 0 {
            let pos = serde_json::to_value(position)?;
            trainer.save(
                &args.output_dir,
                &layout,
                &rng,
                pos,
                run_config.clone(),
                args.checkpoints.checkpoints_total_limit,
            )?;
            last_saved = Some(stats.step);
        }
        if let Some(val) = &val {
            if stats.step % args.validation_steps.max(1) == 0 {
                let (val_loss, n) = validation_loss(
                    &trainer.model.valid(),
                    val,
                    args,
                    &vae_config,
                    &vae,
                    &schedule,
                    &objective,
                    &device,
                )?;
                metrics.log(&ValRecord { step: stats.step, val_loss, val_batches: n })?;
                progress.message(&format!("step {} val_loss {val_loss:.5}", stats.step));
            }
        }
    }
    if last_saved != Some(trainer.step) && trainer.step > 0 {
        let pos = serde_json::to_value(position)?;
        trainer.save(&args.output_dir, &layout, &rng, pos, run_config, args.checkpoints.checkpoints_total_limit)?;
    }
    progress.finish();
    if let Some(cache) = &batcher.cache {
        let (hits, misses, bytes) = cache.lock().unwrap_or_else(|e| e.into_inner()).stats();
        tracing::info!(hits, misses, mib = bytes >> 20, "latent cache");
    }
    tracing::info!(steps = trainer.step, metrics = %metrics.path().display(), "training done");
    Ok(())
}

/// Mean loss over the validation batches, with fixed draws (seeded anew each time, no text
/// dropout) so that values are comparable across evaluations.
#[allow(clippy::too_many_arguments)]
fn validation_loss<B: Backend>(
    model: &OpenSoraT2V_v1_3<B>,
    val: &Dataset,
    args: &DitArgs,
    vae_config: &WFVAEModelConfig,
    vae: &WFVAEModel<B>,
    schedule: &DdpmSchedule,
    objective: &DitObjective,
    device: &B::Device,
) -> anyhow::Result<(f64, usize)> {
    let batcher = DitBatcher::<B> {
        dataset: val,
        vae,
        vae_scale: vae_config.scale.iter().map(|&v| v as f32).collect(),
        vae_shift: vae_config.shift.iter().map(|&v| v as f32).collect(),
        null_text: None,
        cfg: 0.0,
        schedule,
        timestep_ranks: 1,
        device: device.clone(),
        cache: None,
    };
    let mut rng = Rng::derive(args.seed, 0x7A1);
    let mut bad = BTreeSet::new();
    let batches = val.epoch_batches(0);
    let take = if args.max_val_batches == 0 { batches.len() } else { args.max_val_batches.min(batches.len()) };
    let mut sum = 0.0;
    for indices in &batches[..take] {
        let batch = batcher.batch(indices, &mut bad, &mut rng)?;
        sum += objective.loss(model, &batch)?.into_scalar().elem::<f64>();
    }
    Ok((sum / take.max(1) as f64, take))
}

use burn::tensor::ElementConversion as _;
