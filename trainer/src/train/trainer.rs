//! One optimizer update of any Burn model: gradient accumulation over micro-batches, data
//! parallelism over model replicas, global-norm clipping, AdamW, learning-rate schedule and EMA.
//!
//! Data parallelism: each shard of a micro-batch runs on its own replica (`model.fork(device)`,
//! one thread per shard, devices taken round-robin from [`Trainer::devices`]); the shard
//! gradients are then summed onto the first device through Burn's collective operations (one
//! peer per replica, see `train/collective.rs`; the same code on CPU and CUDA), and one
//! update is applied to the single master model. Replicas are re-forked from it at every step, so
//! they all start each step from identical weights, as under upstream's DDP.
//!
//! Every shard's loss must be a mean over its own items, and shards should be equally sized: the
//! update then equals one step on the whole batch (each shard gradient is weighted
//! `1 / (accumulation steps x shards)`).
//!
//! Dynamic loss scaling ([`LossScaleConfig`], torch's `GradScaler`, which accelerate turns on for
//! `--mixed_precision fp16`): every shard's loss is multiplied by the current scale before its
//! backward pass, so small float16 gradients do not flush to zero, and the gradients are divided by
//! it again when they are summed. An update whose gradients overflowed (non-finite norm) is
//! skipped: the weights and AdamW are left as they were, the learning-rate schedule does not
//! advance (accelerate skips the scheduler with the optimizer), and the scale is multiplied by the
//! backoff factor; after `growth_interval` updates in a row without overflow it is multiplied by
//! the growth factor. Scales are powers of two, so scaling and unscaling are exact.

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{ElementConversion, Tensor};
use serde::{Deserialize, Serialize};

use super::collective;
use super::ema::{Ema, EmaConfig};
use super::grads;
use super::lr::LrSchedule;
use super::optim::{AdamW, AdamWConfig};
use crate::error::{Error, Result};

/// The optimisation settings of a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    pub adamw: AdamWConfig,
    pub lr: LrSchedule,
    /// `--max_grad_norm` (global L2 norm; `None` disables clipping).
    pub max_grad_norm: Option<f64>,
    /// `--use_ema` with its settings.
    pub ema: Option<EmaConfig>,
    /// Dynamic loss scaling (on for `--mixed_precision fp16`).
    #[serde(default)]
    pub loss_scale: Option<LossScaleConfig>,
}

/// torch's `GradScaler` settings (its defaults in [`Default`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScaleConfig {
    pub init_scale: f64,
    pub growth_factor: f64,
    pub backoff_factor: f64,
    pub growth_interval: usize,
}

impl Default for LossScaleConfig {
    fn default() -> Self {
        Self { init_scale: 65536.0, growth_factor: 2.0, backoff_factor: 0.5, growth_interval: 2000 }
    }
}

impl LossScaleConfig {
    fn check(&self) -> Result<()> {
        let power_of_two = |x: f64| x > 0.0 && x.is_finite() && x.log2().fract() == 0.0;
        if !power_of_two(self.init_scale) || !power_of_two(self.growth_factor) || !power_of_two(self.backoff_factor) {
            return Err(Error::Config(format!(
                "loss scaling needs powers of two for the initial scale, growth and backoff factors, got {self:?}"
            )));
        }
        if self.growth_factor <= 1.0 || self.backoff_factor >= 1.0 || self.growth_interval == 0 {
            return Err(Error::Config(format!(
                "loss scaling needs growth_factor > 1, backoff_factor < 1 and growth_interval >= 1, got {self:?}"
            )));
        }
        Ok(())
    }
}

/// Where dynamic loss scaling stands; saved in checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LossScaleState {
    /// The scale the next update's losses are multiplied by.
    pub scale: f64,
    /// Updates in a row without overflow since the scale last changed.
    pub growth_tracker: usize,
    /// Updates skipped for overflow so far (the learning-rate schedule runs `step - skipped`).
    pub skipped: usize,
}

impl LossScaleState {
    fn new(config: &LossScaleConfig) -> Self {
        Self { scale: config.init_scale, growth_tracker: 0, skipped: 0 }
    }

    /// Records one update: `overflow` backs the scale off, otherwise it may grow.
    fn update(&mut self, config: &LossScaleConfig, overflow: bool) {
        if overflow {
            self.scale *= config.backoff_factor;
            self.growth_tracker = 0;
            self.skipped += 1;
        } else {
            self.growth_tracker += 1;
            if self.growth_tracker == config.growth_interval {
                self.scale *= config.growth_factor;
                self.growth_tracker = 0;
            }
        }
    }
}

/// What one update did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    /// The update number just done (1-based, upstream's `global_step`).
    pub step: usize,
    /// Mean of the shard losses.
    pub loss: f64,
    /// Gradient norm before clipping (non-finite on an update skipped for overflow).
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f64,
    /// The loss scale this update ran with (dynamic loss scaling only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f64>,
    /// The gradients overflowed and the weights were left unchanged (dynamic loss scaling only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
}

/// The model under training with its optimizer, EMA and update counter.
pub struct Trainer<B: AutodiffBackend, M: AutodiffModule<B>> {
    pub model: M,
    pub optimizer: AdamW<B::InnerBackend>,
    pub ema: Option<Ema<B::InnerBackend, M::InnerModule>>,
    pub config: OptimConfig,
    /// Updates done.
    pub step: usize,
    /// Dynamic loss scaling, when [`OptimConfig::loss_scale`] is set.
    pub loss_scale: Option<LossScaleState>,
    /// Replica devices; the first holds the model.
    pub devices: Vec<B::Device>,
    /// Burn-path fragments of parameters kept frozen (e.g. `wavelet_transform` for the WFVAE's
    /// built-in Haar kernels); every other float parameter is trained.
    frozen: Vec<String>,
}

/// Marks every float parameter of `module` trainable (`require_grad`) unless its Burn module path
/// contains one of `frozen`. Weights loaded into a module of the inner backend come back from
/// `from_inner` without `require_grad`, so this runs after every load.
pub fn set_trainable<B: AutodiffBackend, M: AutodiffModule<B>>(module: M, frozen: &[String]) -> M {
    struct Mark<'a> {
        frozen: &'a [String],
        path: Vec<String>,
    }
    impl<B: AutodiffBackend> burn::module::ModuleMapper<B> for Mark<'_> {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn map_float<const D: usize>(
            &mut self,
            param: burn::module::Param<Tensor<B, D>>,
        ) -> burn::module::Param<Tensor<B, D>> {
            let path = self.path.join(".");
            let trainable = !self.frozen.iter().any(|f| path.contains(f.as_str()));
            let (id, tensor, mapper) = param.consume();
            burn::module::Param::from_mapped_value(id, tensor.set_require_grad(trainable), mapper)
        }
    }
    module.map(&mut Mark { frozen, path: Vec::new() })
}

impl<B: AutodiffBackend, M: AutodiffModule<B>> Trainer<B, M> {
    /// A trainer of `model` (all float parameters trained; see [`Self::new_with_frozen`]).
    pub fn new(model: M, config: OptimConfig, devices: Vec<B::Device>) -> Result<Self> {
        Self::new_with_frozen(model, config, devices, Vec::new())
    }

    /// A trainer that keeps the parameters whose Burn path contains one of `frozen` fixed.
    pub fn new_with_frozen(
        model: M,
        config: OptimConfig,
        devices: Vec<B::Device>,
        frozen: Vec<String>,
    ) -> Result<Self> {
        if devices.is_empty() {
            return Err(Error::Config("the trainer needs at least one device".into()));
        }
        if let Some(max) = config.max_grad_norm {
            if max.is_nan() || max <= 0.0 {
                return Err(Error::Config(format!("--max_grad_norm must be > 0, got {max}")));
            }
        }
        if let Some(ls) = &config.loss_scale {
            ls.check()?;
        }
        let model = set_trainable(model, &frozen);
        let ema = config.ema.map(|c| Ema::new(c, model.valid()));
        let loss_scale = config.loss_scale.as_ref().map(LossScaleState::new);
        Ok(Trainer { model, optimizer: AdamW::new(config.adamw)?, ema, config, step: 0, loss_scale, devices, frozen })
    }

    /// Gradients of the mean loss over `micro_batches[accumulation][shard]`, without updating.
    /// Returns them with the mean loss. Under dynamic loss scaling the backward passes run on the
    /// scaled loss and the returned gradients are unscaled again.
    pub fn gradients<S, F>(&self, micro_batches: &[Vec<S>], loss_fn: &F) -> Result<(GradientsParams, f64)>
    where
        S: Sync,
        F: Fn(&M, &S) -> Result<Tensor<B, 1>> + Sync,
    {
        let shards: usize = micro_batches.iter().map(Vec::len).sum();
        if shards == 0 {
            return Err(Error::input("batch", "a training step needs at least one shard"));
        }
        let weight = 1.0 / shards as f64;
        let scale = self.loss_scale.map_or(1.0, |s| s.scale);
        let mut total = GradientsParams::new();
        let mut loss_sum = 0.0;
        for micro in micro_batches.iter().filter(|m| !m.is_empty()) {
            if let [shard] = micro.as_slice() {
                let (g, loss) = shard_gradients(&self.model, shard, loss_fn, scale)?;
                grads::accumulate::<B, M>(&self.model, &mut total, g, weight / scale);
                loss_sum += loss;
                continue;
            }
            let (contributions, losses) = self.replica_gradients(micro, loss_fn, scale)?;
            let sum = collective::reduce_sum::<B, M>(contributions)?;
            grads::accumulate::<B, M>(&self.model, &mut total, sum, weight / scale);
            loss_sum += losses.iter().sum::<f64>();
        }
        Ok((total, loss_sum * weight))
    }

    /// Forward and backward of each shard on its own replica (`fork` onto
    /// `devices[i % devices.len()]`, one thread per shard).
    #[allow(clippy::type_complexity)]
    fn replica_gradients<S, F>(
        &self,
        micro: &[S],
        loss_fn: &F,
        scale: f64,
    ) -> Result<(Vec<collective::Contribution<B, M>>, Vec<f64>)>
    where
        S: Sync,
        F: Fn(&M, &S) -> Result<Tensor<B, 1>> + Sync,
    {
        let results: Vec<Result<(collective::Contribution<B, M>, f64)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = micro
                .iter()
                .enumerate()
                .map(|(i, shard)| {
                    let device = self.devices[i % self.devices.len()].clone();
                    let replica = self.model.clone().fork(&device);
                    scope.spawn(move || {
                        let (grads, loss) = shard_gradients(&replica, shard, loss_fn, scale)?;
                        Ok((collective::Contribution { replica, device, grads }, loss))
                    })
                })
                .collect();
            handles
                .into_iter()
                .enumerate()
                .map(|(i, h)| {
                    h.join().unwrap_or_else(|_| Err(Error::Config(format!("data-parallel replica {i} panicked"))))
                })
                .collect()
        });
        results.into_iter().collect::<Result<Vec<_>>>().map(|v| v.into_iter().unzip())
    }

    /// One optimizer update from the mean loss over `micro_batches[accumulation][shard]`.
    pub fn step<S, F>(&mut self, micro_batches: &[Vec<S>], loss_fn: &F) -> Result<StepStats>
    where
        S: Sync,
        F: Fn(&M, &S) -> Result<Tensor<B, 1>> + Sync,
    {
        let (mut g, loss) = self.gradients(micro_batches, loss_fn)?;
        if !loss.is_finite() {
            return Err(Error::InvalidInput {
                name: "loss".into(),
                rule: format!("is {loss} at update {}; lower --learning_rate or check the data", self.step + 1),
            });
        }
        let grad_norm = grads::global_norm::<B, M>(&self.model, &g);
        let overflow = !grad_norm.is_finite();
        let scale = self.loss_scale.map(|s| s.scale);
        let lr = self.config.lr.lr(self.step - self.loss_scale.map_or(0, |s| s.skipped));
        match (&mut self.loss_scale, self.config.loss_scale) {
            (Some(state), Some(config)) => state.update(&config, overflow),
            _ if overflow => {
                return Err(Error::InvalidInput {
                    name: "gradients".into(),
                    rule: format!(
                        "have norm {grad_norm} at update {}; lower --learning_rate, check the data, or use loss scaling (--mixed_precision fp16 turns it on)",
                        self.step + 1
                    ),
                })
            }
            _ => {}
        }
        if !overflow {
            if let Some(max) = self.config.max_grad_norm {
                grads::clip_to_norm::<B, M>(&self.model, &mut g, grad_norm, max);
            }
            let model = self.model.clone();
            self.model = self.optimizer.step::<B, M>(model, &mut g, lr);
        } else {
            tracing::warn!(step = self.step + 1, scale, "gradients overflowed under loss scaling; update skipped");
        }
        // As upstream, the EMA follows the model on every update, skipped or not.
        if let Some(ema) = &mut self.ema {
            ema.update::<B, M>(&self.model);
        }
        self.step += 1;
        Ok(StepStats { step: self.step, loss, grad_norm, lr, loss_scale: scale, skipped: overflow })
    }
}

/// The gradients of `scale` times the shard's loss, and the (unscaled) loss.
fn shard_gradients<B, M, S, F>(model: &M, shard: &S, loss_fn: &F, scale: f64) -> Result<(GradientsParams, f64)>
where
    B: AutodiffBackend,
    M: AutodiffModule<B>,
    F: Fn(&M, &S) -> Result<Tensor<B, 1>>,
{
    let loss = loss_fn(model, shard)?;
    let value = loss.clone().into_scalar().elem::<f64>();
    let g = if scale == 1.0 { loss.backward() } else { loss.mul_scalar(scale).backward() };
    Ok((GradientsParams::from_grads(g, model), value))
}

/// How a model's weights are named and checked in a checkpoint folder.
#[derive(Debug, Clone)]
pub struct WeightsLayout {
    /// File name inside `model/` and `model_ema/` (e.g. `diffusion_pytorch_model.safetensors`).
    pub file: String,
    /// Upstream `config.json` written next to the weights.
    pub config: Option<serde_json::Value>,
    /// Official names of the model's built-in constant tensors (see [`crate::checkpoint::load_module`]).
    pub fixed: std::collections::BTreeSet<String>,
}

impl WeightsLayout {
    /// The files of this trainer's checkpoints (for [`super::checkpoint::resolve_resume`]).
    pub fn checkpoint_files(&self) -> super::checkpoint::CheckpointFiles {
        super::checkpoint::CheckpointFiles::new(&self.file, &[])
    }
}

impl<B: AutodiffBackend, M: AutodiffModule<B>> Trainer<B, M> {
    /// Writes `checkpoint-<step>` (see [`super::checkpoint`]) with `rng` and `data_position`.
    pub fn save(
        &self,
        output_dir: &std::path::Path,
        layout: &WeightsLayout,
        rng: &super::rng::Rng,
        data_position: serde_json::Value,
        run_config: serde_json::Value,
        total_limit: Option<usize>,
    ) -> Result<std::path::PathBuf> {
        let state = super::checkpoint::TrainingState {
            step: self.step,
            optimizer_steps: self.optimizer.steps(),
            ema_steps: self.ema.as_ref().map(|e| e.optimization_step),
            rng: rng.clone(),
            data_position,
            run_config,
            aux_optimizer_steps: None,
            loss_scale: self.loss_scale,
        };
        let model = super::checkpoint::official_tensors::<B::InnerBackend, _>(&self.model.valid())?;
        let ema = match &self.ema {
            Some(e) => Some(super::checkpoint::official_tensors::<B::InnerBackend, _>(&e.module)?),
            None => None,
        };
        let contents = super::checkpoint::CheckpointContents {
            weights_file: &layout.file,
            model_config: layout.config.as_ref(),
            model,
            ema,
            optimizer: self.optimizer.state_tensors(),
            extra: Vec::new(),
            state: &state,
        };
        super::checkpoint::save_checkpoint(output_dir, &contents, total_limit)
    }

    /// Restores model, EMA, optimizer and step from a checkpoint folder (strict official-name
    /// loading); returns its [`super::checkpoint::TrainingState`] for the caller's RNG and data.
    pub fn resume(
        &mut self,
        dir: &std::path::Path,
        layout: &WeightsLayout,
    ) -> Result<super::checkpoint::TrainingState> {
        use crate::checkpoint::{load_module, Checkpoint, LoadOptions};
        let state = super::checkpoint::read_state(dir)?;
        let mut inner = self.model.valid();
        let ckpt = Checkpoint::open(dir.join("model").join(&layout.file))?;
        load_module::<B::InnerBackend, _>(&mut inner, &ckpt, &layout.fixed, LoadOptions::default())?;
        self.model = set_trainable(M::from_inner(inner), &self.frozen);
        match (&mut self.ema, state.ema_steps) {
            (Some(ema), Some(steps)) => {
                let ckpt = Checkpoint::open(dir.join("model_ema").join(&layout.file))?;
                let mut module = self.model.valid();
                load_module::<B::InnerBackend, _>(&mut module, &ckpt, &layout.fixed, LoadOptions::default())?;
                ema.module = module;
                ema.optimization_step = steps;
            }
            (Some(ema), None) => {
                tracing::warn!(dir = %dir.display(), "the checkpoint has no EMA weights; EMA restarts from the model");
                ema.module = self.model.valid();
                ema.optimization_step = 0;
            }
            (None, _) => {}
        }
        let inner_device = self.devices[0].clone();
        let opt = super::checkpoint::read_optimizer(dir)?;
        self.optimizer.load_state(&self.model.valid(), state.optimizer_steps, &opt, &inner_device)?;
        self.step = state.step;
        match (&mut self.loss_scale, state.loss_scale) {
            (Some(ours), Some(saved)) => *ours = saved,
            (Some(ours), None) => {
                tracing::warn!(dir = %dir.display(), scale = ours.scale, "the checkpoint has no loss-scale state; loss scaling restarts from its initial scale");
            }
            (None, Some(_)) => {
                tracing::warn!(dir = %dir.display(), "the checkpoint was trained with loss scaling; this run has none");
            }
            (None, None) => {}
        }
        tracing::info!(dir = %dir.display(), step = self.step, "resumed from checkpoint");
        Ok(state)
    }
}
