//! `LPIPSWithDiscriminator3D`: the WFVAE loss module (frozen `logvar`, LPIPS, 3-D discriminator)
//! and its constructor arguments as the training flags set them.
//!
//! Upstream: <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/causalvideovae/model/losses/perceptual_loss.py#L56-L206>
//! Parameter names are upstream's (`logvar`, `perceptual_loss.*`, `discriminator.main.*`), so the
//! `state_dict.dics_model` of an upstream training checkpoint loads strictly
//! ([`LPIPSWithDiscriminator3D::load_official`]).

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::{adopt_weight, scalar, DiscLossType, LossType};
use crate::checkpoint::{load_module, Checkpoint, LoadOptions, LoadReport};
use crate::error::{Error, Result};
use crate::models::discriminator::{is_num_batches_tracked, NLayerDiscriminator3D, NLayerDiscriminator3DConfig};
use crate::models::lpips::{frames_as_images, official_to_port_name, LPIPSConfig, LPIPS};

/// The loss flags of `train_causalvae.py` (defaults are the argparse defaults; `scripts/causalvae/train.sh`
/// sets `--disc_start 0 --perceptual_weight 1.0 --loss_type l1 --wavelet_loss --wavelet_weight 0.1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LossConfig {
    /// `--disc_start`: first step with the adversarial term and discriminator updates.
    pub disc_start: u64,
    /// `--disc_weight`: scale of the adaptive adversarial weight.
    pub disc_weight: f64,
    /// `--kl_weight`.
    pub kl_weight: f64,
    /// `--logvar_init`: the frozen NLL log-variance.
    pub logvar_init: f64,
    /// `--perceptual_weight`: LPIPS weight (0 disables LPIPS).
    pub perceptual_weight: f64,
    /// `--loss_type`.
    pub loss_type: LossType,
    /// `--wavelet_loss`: add the wavelet (energy-flow) loss.
    pub wavelet_loss: bool,
    /// `--wavelet_weight`.
    pub wavelet_weight: f64,
    /// `disc_factor` (constructor default 1.0; not a flag).
    pub disc_factor: f64,
    /// `disc_loss` (constructor default hinge; not a flag).
    pub disc_loss: DiscLossType,
    /// The discriminator (`disc_in_channels` 3, `disc_num_layers` 4, `ndf` 64 upstream).
    pub discriminator: NLayerDiscriminator3DConfig,
    /// LPIPS widths (VGG16 upstream; smaller only for tests).
    pub lpips: LPIPSConfig,
}

impl Default for LossConfig {
    // https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/train/train_causalvae.py#L588-L602
    fn default() -> Self {
        LossConfig {
            disc_start: 5,
            disc_weight: 0.5,
            kl_weight: 1e-6,
            logvar_init: 0.0,
            perceptual_weight: 1.0,
            loss_type: LossType::L1,
            wavelet_loss: false,
            wavelet_weight: 0.1,
            disc_factor: 1.0,
            disc_loss: DiscLossType::Hinge,
            discriminator: NLayerDiscriminator3DConfig::default(),
            lpips: LPIPSConfig::default(),
        }
    }
}

impl LossConfig {
    /// The flags of `scripts/causalvae/train.sh` (wavelet loss on, discriminator from step 0).
    // https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/scripts/causalvae/train.sh
    pub fn train_sh() -> Self {
        LossConfig { disc_start: 0, wavelet_loss: true, ..Self::default() }
    }

    /// Checks the weights.
    pub fn validate(&self) -> Result<()> {
        let non_negative = [
            ("disc_weight", self.disc_weight),
            ("kl_weight", self.kl_weight),
            ("perceptual_weight", self.perceptual_weight),
            ("wavelet_weight", self.wavelet_weight),
            ("disc_factor", self.disc_factor),
        ];
        for (key, v) in non_negative {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::Config(format!("`{key}` must be a finite number >= 0, found {v}")));
            }
        }
        if !self.logvar_init.is_finite() {
            return Err(Error::Config(format!("`logvar_init` must be finite, found {}", self.logvar_init)));
        }
        Ok(())
    }

    /// Builds the loss module: LPIPS with random weights (load real ones before training with
    /// [`LPIPS::load_pretrained`] on `perceptual_loss`), the discriminator with upstream init.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<LPIPSWithDiscriminator3D<B>> {
        self.validate()?;
        let logvar = Param::from_tensor(Tensor::from_data(TensorData::new(vec![self.logvar_init as f32], [1]), device))
            .set_require_grad(false);
        Ok(LPIPSWithDiscriminator3D {
            logvar,
            perceptual_loss: self.lpips.init(device)?,
            discriminator: self.discriminator.init(device)?,
            config: self.clone(),
        })
    }
}

/// The generator's reconstruction terms.
#[derive(Debug, Clone)]
pub struct NllLoss<B: Backend> {
    /// `sum(rec / exp(logvar) + logvar) / (b*t)`, differentiable.
    pub nll: Tensor<B, 1>,
    /// Mean pixel loss per element (L1 or L2), for logs.
    pub pixel: f64,
    /// Mean LPIPS per frame (0 when `perceptual_weight` is 0), for logs.
    pub perceptual: f64,
}

/// Upstream `LPIPSWithDiscriminator3D` (loss flags in [`LossConfig`]).
#[derive(Module, Debug)]
pub struct LPIPSWithDiscriminator3D<B: Backend> {
    /// Frozen scalar log-variance (upstream shape `[]`, here `[1]`).
    pub logvar: Param<Tensor<B, 1>>,
    pub perceptual_loss: LPIPS<B>,
    pub discriminator: NLayerDiscriminator3D<B>,
    #[module(skip)]
    pub config: LossConfig,
}

impl<B: Backend> LPIPSWithDiscriminator3D<B> {
    /// `rec = loss(x, x̂) + perceptual_weight * LPIPS(x, x̂)` per element, then the `logvar` NLL
    /// summed and divided by the number of frames `b*t`. Videos `[b, 3, t, h, w]` in [-1, 1].
    pub fn nll_loss(&self, inputs: Tensor<B, 5>, reconstructions: Tensor<B, 5>) -> NllLoss<B> {
        let x = frames_as_images(inputs);
        let r = frames_as_images(reconstructions);
        let frames = x.dims()[0];
        let elements = x.shape().num_elements() as f64;
        let rec = self.config.loss_type.apply(x.clone(), r.clone());
        let pixel = scalar(rec.clone().sum().detach()) / elements;
        let (rec, perceptual) = if self.config.perceptual_weight > 0.0 {
            let p = self.perceptual_loss.forward(x, r);
            let perceptual = scalar(p.clone().mean().detach());
            (rec + p.mul_scalar(self.config.perceptual_weight), perceptual)
        } else {
            (rec, 0.0)
        };
        let logvar = self.logvar.val().reshape([1, 1, 1, 1]);
        let nll = rec / logvar.clone().exp() + logvar;
        NllLoss { nll: nll.sum().div_scalar(frames as f64), pixel, perceptual }
    }

    /// Generator adversarial loss `g = -mean(D(x̂))`, differentiable w.r.t. `x̂` only: the
    /// discriminator runs as a frozen copy (its gradient would be discarded anyway; BatchNorm
    /// still uses batch statistics and updates the shared running ones, as upstream).
    pub fn g_loss(&self, reconstructions: Tensor<B, 5>) -> Tensor<B, 1> {
        -self.discriminator.clone().no_grad().forward(reconstructions).mean()
    }

    /// Discriminator loss `disc_factor(step) * d_loss(D(x), D(x̂))` (inputs treated as constants;
    /// two forward passes as upstream, so BatchNorm sees real and fake batches apart). Returns
    /// `(loss, mean real logit, mean fake logit)`.
    pub fn discriminator_loss(
        &self,
        inputs: Tensor<B, 5>,
        reconstructions: Tensor<B, 5>,
        global_step: u64,
    ) -> (Tensor<B, 1>, f64, f64) {
        let logits_real = self.discriminator.forward(inputs.detach());
        let logits_fake = self.discriminator.forward(reconstructions.detach());
        let real = scalar(logits_real.clone().mean().detach());
        let fake = scalar(logits_fake.clone().mean().detach());
        let factor = adopt_weight(self.config.disc_factor, global_step, self.config.disc_start);
        let loss = self.config.disc_loss.apply(logits_real, logits_fake).mul_scalar(factor);
        (loss, real, fake)
    }

    /// The frozen `logvar` value.
    pub fn logvar_value(&self) -> f64 {
        scalar(self.logvar.val())
    }

    /// Loads an upstream `LPIPSWithDiscriminator3D` state dict (`state_dict.dics_model` of a
    /// training checkpoint) strictly: `logvar` (shape `[]`), `perceptual_loss.*` (backbone keys
    /// `net.slice{k}.N` renamed to `net.features.N`), `discriminator.main.*` (BatchNorm
    /// `num_batches_tracked` dropped). `module.` prefixes (DDP) are removed first.
    pub fn load_official(&mut self, checkpoint: &Checkpoint, options: LoadOptions) -> Result<LoadReport> {
        let logvar_key = ["logvar", "module.logvar"].into_iter().find(|k| checkpoint.get(k).is_some());
        let mut renamed = checkpoint.map_names(|n| {
            let n = crate::remap::strip_module_prefix(n);
            if n == "logvar" || is_num_batches_tracked(&n) {
                return None;
            }
            match n.strip_prefix("perceptual_loss.") {
                Some(rest) => Some(format!("perceptual_loss.{}", official_to_port_name(rest))),
                None => Some(n),
            }
        })?;
        let mut logvar = match logvar_key {
            Some(key) => {
                let snapshot = checkpoint.get(key).expect("key found above");
                if snapshot.shape.num_elements() != 1 {
                    return Err(Error::ShapeMismatch {
                        path: "logvar".into(),
                        expected: vec![],
                        found: snapshot.shape.to_vec(),
                    });
                }
                let data = snapshot
                    .to_data()
                    .map_err(|e| Error::checkpoint(&checkpoint.path, format!("reading `logvar`: {e:?}")))?
                    .convert::<f32>();
                let value = data
                    .to_vec::<f32>()
                    .map_err(|e| Error::checkpoint(&checkpoint.path, format!("reading `logvar`: {e:?}")))?[0];
                let device = self.logvar.device();
                let logvar = Tensor::from_data(TensorData::new(vec![value], [1]), &device);
                Some(Param::from_tensor(logvar).set_require_grad(false))
            }
            None if options.allow_partial => None,
            None => return Err(Error::MissingTensor { path: "logvar".into() }),
        };
        renamed.source.push_str(" (logvar read apart, num_batches_tracked dropped)");
        // `logvar` is applied apart (rank 0 upstream): listed as fixed so the strict pass skips it.
        let mut fixed: std::collections::BTreeSet<String> =
            LPIPS::<B>::fixed_tensor_names().into_iter().map(|n| format!("perceptual_loss.{n}")).collect();
        fixed.insert("logvar".into());
        let mut load_report = load_module(self, &renamed, &fixed, options)?;
        load_report.builtin.retain(|n| n != "logvar");
        match logvar.take() {
            Some(logvar) => {
                self.logvar = logvar;
                load_report.applied.push("logvar".into());
            }
            None => load_report.missing.push("logvar".into()),
        }
        Ok(load_report)
    }
}
