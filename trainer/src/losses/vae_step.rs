//! One WFVAE training step: the generator update (reconstruction NLL with LPIPS, KL, wavelet loss,
//! adaptive-weighted adversarial term after `disc_start`) or the discriminator update, each with
//! its own AdamW, as `train_causalvae.py` alternates them.
//!
//! Upstream: <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/train/train_causalvae.py#L405-L480>
//!
//! Alternation (upstream): step `s` updates the discriminator when `s % 2 == 1 && s >= disc_start`,
//! else the generator. Optimisers: generator AdamW(lr, weight decay 1e-4) over encoder + decoder
//! (decoder only with `--freeze_encoder`), discriminator AdamW(lr, weight decay 0.01); betas
//! (0.9, 0.999), eps 1e-8 (PyTorch defaults). The discriminator gradient is clipped to a joint
//! norm of 1.0; upstream parses `--clip_grad_norm` (1e5) but its generator clip is commented out,
//! here it is applied (at 1e5 it practically never binds).
//!
//! The adaptive weight needs `∇_W nll` and `∇_W g` apart, `W` = `decoder.conv_out.weight`
//! (upstream `autograd.grad(..., retain_graph=True)` twice). Burn's backward consumes the graph,
//! so the decoder is split at its last layer: the trunk runs once; two small "heads"
//! (`conv_out` + output wavelet transform, on detached copies of the trunk outputs and of
//! `conv_out`'s parameters) carry the NLL (with LPIPS) and the adversarial loss, each with its own
//! backward. Their gradients w.r.t. the trunk outputs are combined with the adaptive weight and
//! pulled through the trunk with one more backward of `sum(out · grad) + kl_weight·kl +
//! wavelet_weight·wl` (a vector-Jacobian product), which gives exactly the gradient of the upstream
//! total loss at the cost of one extra `conv_out` + wavelet transform, never an extra VAE, LPIPS
//! or discriminator pass. Before `disc_start` the discriminator is not run in the generator step
//! (its output is multiplied by 0 upstream; only its BatchNorm running statistics would move).
//!
//! Stages: the pinned commit ships one recipe (`scripts/causalvae/train.sh`: 25 frames at 256,
//! lr 1e-5, `--disc_start 0`, LPIPS 1.0, L1, `--wavelet_loss --wavelet_weight 0.1`, EMA 0.999).
//! Upstream "stage 1/2/3" runs are the same trainer relaunched with other flags: clip size
//! (`--num_frames`, `--resolution`), `--lr`, when the GAN starts (`--disc_start`), whether the
//! encoder trains (`--freeze_encoder`) and where weights come from
//! (`--pretrained_model_name_or_path` for a new stage, `--resume_from_checkpoint` to continue one).
//! Per-stage values are not in the repository and are not invented here. Upstream trains in
//! bf16 autocast with a GradScaler; this step runs in the backend's float type.

use std::path::{Path, PathBuf};

use burn::module::{AutodiffModule, Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Distribution, Tensor};
use serde::{Deserialize, Serialize};

use super::{
    adaptive_weight, adopt_weight, kl_loss, scalar, wavelet_loss, LPIPSWithDiscriminator3D, LossConfig, WaveletCoeffs,
};
use crate::error::{Error, Result};
use crate::models::discriminator::NLayerDiscriminator3D;
use crate::models::lpips::MIN_SIZE;
use crate::models::wfvae::{DecoderTrunk, Posterior, WFVAEModel};
use crate::train::checkpoint::{self as ckpt, CheckpointContents, TrainingState};
use crate::train::grads::clip_global_norm;
use crate::train::optim::{AdamW, AdamWConfig};
use crate::train::trainer::set_trainable;

/// Optimiser flags of `train_causalvae.py` (argparse defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VaeOptimConfig {
    /// `--lr` (both optimisers).
    pub lr: f64,
    /// AdamW betas (PyTorch default, not an upstream flag).
    pub betas: (f32, f32),
    /// AdamW eps (PyTorch default).
    pub eps: f32,
    /// Generator AdamW weight decay (hard-coded upstream).
    pub gen_weight_decay: f32,
    /// Discriminator AdamW weight decay (hard-coded upstream).
    pub disc_weight_decay: f32,
    /// `--clip_grad_norm`: joint gradient-norm bound of the generator.
    pub clip_grad_norm: f64,
    /// Joint gradient-norm bound of the discriminator (hard-coded 1.0 upstream).
    pub disc_clip_grad_norm: f64,
    /// `--freeze_encoder`: train the decoder only.
    pub freeze_encoder: bool,
}

impl Default for VaeOptimConfig {
    // https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/train/train_causalvae.py#L327-L330
    fn default() -> Self {
        VaeOptimConfig {
            lr: 1e-5,
            betas: (0.9, 0.999),
            eps: 1e-8,
            gen_weight_decay: 1e-4,
            disc_weight_decay: 0.01,
            clip_grad_norm: 1e5,
            disc_clip_grad_norm: 1.0,
            freeze_encoder: false,
        }
    }
}

impl VaeOptimConfig {
    fn validate(&self) -> Result<()> {
        let positive = [
            ("lr", self.lr),
            ("clip_grad_norm", self.clip_grad_norm),
            ("disc_clip_grad_norm", self.disc_clip_grad_norm),
        ];
        for (key, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::Config(format!("`{key}` must be a finite number > 0, found {v}")));
            }
        }
        let (b1, b2) = self.betas;
        if !((0.0..1.0).contains(&b1) && (0.0..1.0).contains(&b2)) {
            return Err(Error::Config(format!("AdamW betas must lie in [0, 1), found ({b1}, {b2})")));
        }
        Ok(())
    }

    fn adamw(&self, weight_decay: f32) -> AdamWConfig {
        AdamWConfig {
            beta1: f64::from(self.betas.0),
            beta2: f64::from(self.betas.1),
            weight_decay: f64::from(weight_decay),
            epsilon: f64::from(self.eps),
        }
    }
}

/// Log record of a generator step (upstream `train/*` keys).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GeneratorLog {
    pub step: u64,
    /// The optimised loss `nll + kl_weight*kl + d_weight*disc_factor*g + wavelet_weight*wl`.
    pub total_loss: f64,
    pub logvar: f64,
    pub kl_loss: f64,
    pub nll_loss: f64,
    /// Upstream `rec_loss` (the weighted NLL; equal to `nll_loss` without weights).
    pub rec_loss: f64,
    /// Mean pixel loss per element (L1 or L2).
    pub pixel_loss: f64,
    /// Mean LPIPS per frame.
    pub p_loss: f64,
    pub wl_loss: f64,
    pub d_weight: f64,
    pub disc_factor: f64,
    pub g_loss: f64,
    /// Standard deviation of the sampled latents (upstream `latents_std`).
    pub latents_std: f64,
    /// Joint generator gradient norm before clipping.
    pub grad_norm: f64,
}

/// Log record of a discriminator step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiscriminatorLog {
    pub step: u64,
    pub disc_loss: f64,
    pub logits_real: f64,
    pub logits_fake: f64,
    /// Joint discriminator gradient norm before clipping.
    pub grad_norm: f64,
}

/// What one [`VaeTrainer::step`] did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "update", rename_all = "lowercase")]
pub enum VaeStepLog {
    Generator(GeneratorLog),
    Discriminator(DiscriminatorLog),
}

/// Detached copies of the decoder's trunk outputs and last-layer parameters, as gradient leaves.
struct Head<B: AutodiffBackend> {
    hidden: Tensor<B, 5>,
    l1: Tensor<B, 5>,
    weight: Tensor<B, 4>,
    bias: Tensor<B, 1>,
}

/// Gradients of one head's loss w.r.t. its leaves.
struct HeadGrads<B: AutodiffBackend> {
    hidden: Tensor<B::InnerBackend, 5>,
    l1: Tensor<B::InnerBackend, 5>,
    weight: Tensor<B::InnerBackend, 4>,
    bias: Tensor<B::InnerBackend, 1>,
}

impl<B: AutodiffBackend> Head<B> {
    fn new(trunk: &DecoderTrunk<B>, model: &WFVAEModel<B>) -> Self {
        let conv_out = &model.decoder.conv_out;
        Head {
            hidden: trunk.hidden.clone().detach().require_grad(),
            l1: trunk.l1.clone().detach().require_grad(),
            weight: conv_out.weight.val().detach().require_grad(),
            bias: conv_out.bias.val().detach().require_grad(),
        }
    }

    fn reconstruction(&self, model: &WFVAEModel<B>) -> Tensor<B, 5> {
        model.decoder.forward_head(self.hidden.clone(), self.l1.clone(), self.weight.clone(), self.bias.clone())
    }

    fn backward(self, loss: Tensor<B, 1>) -> HeadGrads<B> {
        let grads = loss.backward();
        let grad_or_zeros = |t: &Tensor<B, 5>| t.grad(&grads).unwrap_or_else(|| t.clone().inner().zeros_like());
        HeadGrads {
            hidden: grad_or_zeros(&self.hidden),
            l1: grad_or_zeros(&self.l1),
            weight: self.weight.grad(&grads).unwrap_or_else(|| self.weight.clone().inner().zeros_like()),
            bias: self.bias.grad(&grads).unwrap_or_else(|| self.bias.clone().inner().zeros_like()),
        }
    }
}

/// Removes the gradients of every parameter of the visited module.
struct DropGrads<'a> {
    grads: &'a mut GradientsParams,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for DropGrads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let _ = self.grads.remove::<B::InnerBackend, D>(param.id);
    }
}

/// The WFVAE generator, its loss module (LPIPS + discriminator) and both optimisers.
pub struct VaeTrainer<B: AutodiffBackend> {
    pub model: WFVAEModel<B>,
    pub loss: LPIPSWithDiscriminator3D<B>,
    /// Generator AdamW (torch-exact, moments keyed by module path: checkpointable).
    pub gen_optimizer: AdamW<B::InnerBackend>,
    /// Discriminator AdamW.
    pub disc_optimizer: AdamW<B::InnerBackend>,
    pub optim: VaeOptimConfig,
}

impl<B: AutodiffBackend> VaeTrainer<B> {
    /// Pairs a WFVAE with its loss module and fresh AdamW optimisers.
    pub fn new(model: WFVAEModel<B>, loss: LPIPSWithDiscriminator3D<B>, optim: VaeOptimConfig) -> Result<Self> {
        optim.validate()?;
        loss.config.validate()?;
        Ok(VaeTrainer {
            gen_optimizer: AdamW::new(optim.adamw(optim.gen_weight_decay))?,
            disc_optimizer: AdamW::new(optim.adamw(optim.disc_weight_decay))?,
            model,
            loss,
            optim,
        })
    }

    /// The loss flags.
    pub fn loss_config(&self) -> &LossConfig {
        &self.loss.config
    }

    /// Whether upstream runs the discriminator update at `global_step`.
    pub fn is_discriminator_step(&self, global_step: u64) -> bool {
        global_step % 2 == 1 && global_step >= self.loss.config.disc_start
    }

    /// One upstream training step on video `x` `[b, 3, 4n+1, h, w]` in [-1, 1]: the discriminator
    /// update on odd steps from `disc_start`, the generator update otherwise.
    pub fn step(&mut self, x: Tensor<B, 5>, global_step: u64) -> Result<VaeStepLog> {
        if self.is_discriminator_step(global_step) {
            self.discriminator_step(x, global_step).map(VaeStepLog::Discriminator)
        } else {
            self.generator_step(x, global_step).map(VaeStepLog::Generator)
        }
    }

    fn check_input(&self, x: &Tensor<B, 5>) -> Result<()> {
        let [b, c, t, h, w] = x.dims();
        if b == 0 || c != 3 {
            return Err(Error::input(
                "x",
                format!("must be a non-empty video batch [b, 3, t, h, w], found {:?}", x.dims()),
            ));
        }
        if t % 4 != 1 {
            return Err(Error::input("x", format!("frame count must be 4n+1 (1, 5, 9, ...), found {t}")));
        }
        if h == 0 || w == 0 || h % 8 != 0 || w % 8 != 0 {
            return Err(Error::input("x", format!("height and width must be positive multiples of 8, found {h}x{w}")));
        }
        self.loss.discriminator.check_input(x.dims())?;
        if self.loss.config.perceptual_weight > 0.0 && (h < MIN_SIZE || w < MIN_SIZE) {
            return Err(Error::input(
                "x",
                format!("LPIPS needs frames of at least {MIN_SIZE}x{MIN_SIZE}, found {h}x{w}"),
            ));
        }
        Ok(())
    }

    /// The generator update (upstream `optimizer_idx == 0`): [`Self::generator_grads`], encoder
    /// gradients dropped with `freeze_encoder`, joint-norm clipping, AdamW.
    pub fn generator_step(&mut self, x: Tensor<B, 5>, global_step: u64) -> Result<GeneratorLog> {
        let (mut grads, mut log) = self.generator_grads(x, global_step)?;
        if self.optim.freeze_encoder {
            self.model.encoder.visit(&mut DropGrads { grads: &mut grads });
        }
        let grad_norm = clip_global_norm::<B, _>(&self.model, &mut grads, self.optim.clip_grad_norm);
        if !grad_norm.is_finite() {
            return Err(Error::input("x", format!("generator gradient norm is {grad_norm} at step {global_step}")));
        }
        self.model = self.gen_optimizer.step::<B, _>(self.model.clone(), &mut grads, self.optim.lr);
        log.grad_norm = grad_norm;
        Ok(log)
    }

    /// The gradients of the upstream generator loss w.r.t. every WFVAE parameter (before
    /// clipping) and the step's log record (`grad_norm` is filled in by [`Self::generator_step`]).
    /// The posterior sample uses the backend's random generator.
    pub fn generator_grads(&self, x: Tensor<B, 5>, global_step: u64) -> Result<(GradientsParams, GeneratorLog)> {
        self.check_input(&x)?;
        let _span = tracing::trace_span!("wfvae_generator_step", global_step).entered();
        let config = self.loss.config.clone();
        let x = x.detach();

        // Trunk: encoder, posterior sample, decoder up to its last layer.
        let (moments, (enc_l1, enc_l2)) = self.model.encoder.forward_with_coeffs(x.clone());
        let posterior = Posterior::from_moments(moments);
        let noise = Tensor::random(posterior.mean.shape(), Distribution::Normal(0.0, 1.0), &posterior.mean.device());
        let z = posterior.mean.clone() + posterior.std() * noise;
        let latents_std = std_of(&z);
        let trunk = self.model.decoder.forward_trunk(z);

        // Head A: NLL (pixel + LPIPS) -> gradients w.r.t. the trunk outputs and conv_out.
        let head = Head::new(&trunk, &self.model);
        let nll = self.loss.nll_loss(x.clone(), head.reconstruction(&self.model));
        let nll_value = scalar(nll.nll.clone().detach());
        let nll_grads = head.backward(nll.nll);

        // Head B: adversarial term, from disc_start on.
        let disc_factor = adopt_weight(config.disc_factor, global_step, config.disc_start);
        let (d_weight, g_value, g_grads) = if global_step >= config.disc_start {
            let head = Head::new(&trunk, &self.model);
            let g = self.loss.g_loss(head.reconstruction(&self.model));
            let g_value = scalar(g.clone().detach());
            let g_grads = head.backward(g);
            let d_weight = if config.disc_factor > 0.0 {
                adaptive_weight(nll_grads.weight.clone(), g_grads.weight.clone(), config.disc_weight)
            } else {
                1.0
            };
            (d_weight, g_value, Some(g_grads))
        } else {
            (0.0, 0.0, None)
        };
        let coef = d_weight * disc_factor;
        let combine = |a: Tensor<B::InnerBackend, 5>, b: Option<Tensor<B::InnerBackend, 5>>| match b {
            Some(b) if coef != 0.0 => a + b.mul_scalar(coef),
            _ => a,
        };
        let g_hidden = combine(nll_grads.hidden, g_grads.as_ref().map(|g| g.hidden.clone()));
        let g_l1 = combine(nll_grads.l1, g_grads.as_ref().map(|g| g.l1.clone()));
        let (mut w_grad, mut b_grad) = (nll_grads.weight, nll_grads.bias);
        if let Some(g) = &g_grads {
            if coef != 0.0 {
                w_grad = w_grad + g.weight.clone().mul_scalar(coef);
                b_grad = b_grad + g.bias.clone().mul_scalar(coef);
            }
        }

        // Trunk losses and the vector-Jacobian product of the heads.
        let kl = kl_loss(&posterior);
        let kl_value = scalar(kl.clone().detach());
        let mut surrogate = (trunk.hidden.clone() * Tensor::from_inner(g_hidden)).sum()
            + (trunk.l1.clone() * Tensor::from_inner(g_l1)).sum()
            + kl.mul_scalar(config.kl_weight);
        let wl_value = if config.wavelet_loss {
            let enc = WaveletCoeffs { l1: enc_l1, l2: enc_l2 };
            let dec = WaveletCoeffs { l1: trunk.l1_coeffs.clone(), l2: trunk.l2_coeffs.clone() };
            let wl = wavelet_loss(&enc, &dec)?;
            let value = scalar(wl.clone().detach());
            surrogate = surrogate + wl.mul_scalar(config.wavelet_weight);
            value
        } else {
            0.0
        };
        let mut grads = GradientsParams::from_grads(surrogate.backward(), &self.model);
        // conv_out is not in the trunk graph: its gradient comes from the heads alone.
        let conv_out = &self.model.decoder.conv_out;
        grads.register::<B::InnerBackend, 4>(conv_out.weight.id, w_grad);
        grads.register::<B::InnerBackend, 1>(conv_out.bias.id, b_grad);

        let total_loss = nll_value + config.kl_weight * kl_value + coef * g_value + config.wavelet_weight * wl_value;
        let log = GeneratorLog {
            step: global_step,
            total_loss,
            logvar: self.loss.logvar_value(),
            kl_loss: kl_value,
            nll_loss: nll_value,
            rec_loss: nll_value,
            pixel_loss: nll.pixel,
            p_loss: nll.perceptual,
            wl_loss: wl_value,
            d_weight,
            disc_factor,
            g_loss: g_value,
            latents_std,
            grad_norm: 0.0,
        };
        Ok((grads, log))
    }

    /// The discriminator update (upstream `optimizer_idx == 1`): the generator runs without
    /// gradients, the discriminator sees real and reconstructed clips.
    pub fn discriminator_step(&mut self, x: Tensor<B, 5>, global_step: u64) -> Result<DiscriminatorLog> {
        self.check_input(&x)?;
        let _span = tracing::trace_span!("wfvae_discriminator_step", global_step).entered();
        let model = self.model.valid();
        let posterior = model.encode(x.clone().inner())?;
        let noise = Tensor::random(posterior.mean.shape(), Distribution::Normal(0.0, 1.0), &posterior.mean.device());
        let z = posterior.mean.clone() + posterior.std() * noise;
        let recon = Tensor::<B, 5>::from_inner(model.decode(z)?);

        let (d_loss, logits_real, logits_fake) = self.loss.discriminator_loss(x.detach(), recon, global_step);
        let disc_loss = scalar(d_loss.clone().detach());
        let mut grads = GradientsParams::from_grads(d_loss.backward(), &self.loss.discriminator);
        let grad_norm = clip_global_norm::<B, _>(&self.loss.discriminator, &mut grads, self.optim.disc_clip_grad_norm);
        if !grad_norm.is_finite() {
            return Err(Error::input("x", format!("discriminator gradient norm is {grad_norm} at step {global_step}")));
        }
        self.loss.discriminator =
            self.disc_optimizer.step::<B, _>(self.loss.discriminator.clone(), &mut grads, self.optim.lr);
        Ok(DiscriminatorLog { step: global_step, disc_loss, logits_real, logits_fake, grad_norm })
    }
}

/// File of the WFVAE weights inside a checkpoint's `model/` and `model_ema/` (next to `config.json`).
pub const VAE_WEIGHTS_FILE: &str = "diffusion_pytorch_model.safetensors";
/// The discriminator's weights (official `dics_model` names without the prefix).
pub const DISCRIMINATOR_FILE: &str = "discriminator/discriminator.safetensors";
/// The discriminator AdamW state.
pub const DISCRIMINATOR_OPTIMIZER_FILE: &str = "discriminator_optimizer.safetensors";

/// The Burn-path fragment of the WFVAE's built-in Haar kernels, never trained.
pub const FROZEN_VAE_PARAMS: &str = "wavelet_transform";

/// What a WFVAE run saves besides the trainer's own tensors.
pub struct VaeCheckpoint<'a, B: Backend> {
    /// Generator EMA weights (`--ema`) with their update count.
    pub ema: Option<(&'a WFVAEModel<B>, usize)>,
    /// The WFVAE `config.json` written next to the weights.
    pub model_config: &'a serde_json::Value,
    /// Global step, RNG, data position and run settings (optimizer counters are filled in).
    pub state: TrainingState,
}

/// The files of a WFVAE checkpoint (for [`crate::train::checkpoint::resolve_resume`]).
pub fn vae_checkpoint_files() -> ckpt::CheckpointFiles {
    ckpt::CheckpointFiles::new(VAE_WEIGHTS_FILE, &[DISCRIMINATOR_FILE, DISCRIMINATOR_OPTIMIZER_FILE])
}

impl<B: AutodiffBackend> VaeTrainer<B> {
    /// Writes `<output_dir>/checkpoint-<step>/` atomically: `model/` and `model_ema/` (official
    /// WFVAE names + `config.json`), the discriminator, both optimizer states and
    /// `training_state.json` (see [`crate::train::checkpoint`]).
    pub fn save(
        &self,
        output_dir: &Path,
        checkpoint: VaeCheckpoint<'_, B::InnerBackend>,
        total_limit: Option<usize>,
    ) -> Result<PathBuf> {
        let mut state = checkpoint.state;
        state.optimizer_steps = self.gen_optimizer.steps();
        state.aux_optimizer_steps = Some(self.disc_optimizer.steps());
        state.ema_steps = checkpoint.ema.map(|(_, n)| n);
        let ema = checkpoint.ema.map(|(m, _)| ckpt::official_tensors::<B::InnerBackend, _>(m)).transpose()?;
        let contents = CheckpointContents {
            weights_file: VAE_WEIGHTS_FILE,
            model_config: Some(checkpoint.model_config),
            model: ckpt::official_tensors::<B::InnerBackend, _>(&self.model.valid())?,
            ema,
            optimizer: self.gen_optimizer.state_tensors(),
            extra: vec![
                (
                    DISCRIMINATOR_FILE.to_string(),
                    ckpt::official_tensors::<B::InnerBackend, _>(&self.loss.discriminator.valid())?,
                ),
                (DISCRIMINATOR_OPTIMIZER_FILE.to_string(), self.disc_optimizer.state_tensors()),
            ],
            state: &state,
        };
        ckpt::save_checkpoint(output_dir, &contents, total_limit)
    }

    /// Restores generator, discriminator and both optimizers from a checkpoint folder written by
    /// [`Self::save`] (strict official-name loading). Returns the training state and, when the
    /// checkpoint has them, the EMA weights.
    pub fn resume(&mut self, dir: &Path) -> Result<(TrainingState, Option<WFVAEModel<B::InnerBackend>>)> {
        use crate::checkpoint::{load_module, Checkpoint, LoadOptions};
        let state = ckpt::read_state(dir)?;
        let mut model = self.model.valid();
        model.load_official(&Checkpoint::open(dir.join("model").join(VAE_WEIGHTS_FILE))?, LoadOptions::default())?;
        self.model = set_trainable(WFVAEModel::from_inner(model), &[FROZEN_VAE_PARAMS.to_string()]);
        let ema = match state.ema_steps {
            Some(_) => {
                let mut ema = self.model.valid();
                let file = dir.join("model_ema").join(VAE_WEIGHTS_FILE);
                ema.load_official(&Checkpoint::open(&file)?, LoadOptions::default())?;
                Some(ema)
            }
            None => None,
        };
        let mut disc = self.loss.discriminator.valid();
        let none = Default::default();
        load_module::<B::InnerBackend, _>(
            &mut disc,
            &Checkpoint::open(dir.join(DISCRIMINATOR_FILE))?,
            &none,
            LoadOptions::default(),
        )?;
        self.loss.discriminator = set_trainable(NLayerDiscriminator3D::from_inner(disc), &[]);
        let device = self
            .model
            .valid()
            .devices()
            .into_iter()
            .next()
            .ok_or_else(|| Error::Config("the WFVAE has no parameters on any device".into()))?;
        let gen_state = ckpt::read_optimizer(dir)?;
        self.gen_optimizer.load_state(&self.model.valid(), state.optimizer_steps, &gen_state, &device)?;
        let disc_state = crate::io::read_tensors(dir.join(DISCRIMINATOR_OPTIMIZER_FILE))?;
        let disc_steps = state.aux_optimizer_steps.ok_or_else(|| {
            Error::input(
                dir.display().to_string(),
                "training_state.json has no discriminator optimizer count (not a WFVAE checkpoint?)",
            )
        })?;
        self.disc_optimizer.load_state(&self.loss.discriminator.valid(), disc_steps, &disc_state, &device)?;
        tracing::info!(dir = %dir.display(), step = state.step, "resumed WFVAE training");
        Ok((state, ema))
    }
}

/// Population standard deviation of every element (as `tensor.std()` reports it, up to n/(n-1)).
fn std_of<B: Backend>(z: &Tensor<B, 5>) -> f64 {
    let flat = z.clone().detach().flatten::<1>(0, 4);
    let n = flat.dims()[0] as f64;
    let mean = scalar(flat.clone().mean());
    let var = scalar(flat.sub_scalar(mean).square().sum()) / (n - 1.0).max(1.0);
    var.sqrt()
}
