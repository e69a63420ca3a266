//! The DDPM training schedule of Open-Sora-Plan v1.3: `DDPMScheduler(prediction_type="v_prediction",
//! rescale_betas_zero_snr=True)` with linear betas 1e-4..0.02 over 1000 steps
//! (`opensora/train/train_t2v_diffusers.py` at commit 9fa322fb). Unlike the sampling schedulers,
//! `alphas_cumprod[-1]` stays exactly 0 (no `2**-24` clamp).
//!
//! Everything is float32 as in diffusers' `add_noise` / `get_velocity` and
//! `diffusers.training_utils.compute_snr`.

use ndarray::{ArrayD, Axis};

use super::schedule;
use super::{PredictionType, SchedulerConfig};
use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq)]
pub struct TrainingSchedule {
    pub prediction_type: PredictionType,
    pub betas: Vec<f32>,
    pub alphas_cumprod: Vec<f32>,
}

impl TrainingSchedule {
    /// The v1.3 training schedule.
    // https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/train/train_t2v_diffusers.py
    pub fn open_sora_plan_v13() -> Self {
        let config = SchedulerConfig {
            prediction_type: PredictionType::VPrediction,
            rescale_betas_zero_snr: true,
            ..SchedulerConfig::default()
        };
        Self::new(&config).expect("the built-in v1.3 training config should be valid")
    }

    /// A DDPM training schedule from a diffusers config.
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        let (betas, alphas_cumprod) = schedule::alphas_cumprod(config, config.rescale_betas_zero_snr, false)?;
        Ok(TrainingSchedule { prediction_type: config.prediction_type, betas, alphas_cumprod })
    }

    pub fn num_train_timesteps(&self) -> usize {
        self.alphas_cumprod.len()
    }

    fn alpha(&self, t: usize) -> Result<f32> {
        self.alphas_cumprod.get(t).copied().ok_or_else(|| Error::SchedulerStep {
            method: "DDPM (training)".into(),
            why: format!("timestep {t} is outside the training schedule 0..{}", self.alphas_cumprod.len()),
        })
    }

    /// `(sqrt(ac[t]), sqrt(1 - ac[t]))` in float32.
    pub fn coefficients(&self, t: usize) -> Result<(f32, f32)> {
        let a = self.alpha(t)?;
        Ok((a.sqrt(), (1.0 - a).sqrt()))
    }

    /// `x_t = sqrt(ac[t]) * x0 + sqrt(1 - ac[t]) * noise`, with one timestep per batch item (axis 0).
    pub fn add_noise(&self, original: &ArrayD<f32>, noise: &ArrayD<f32>, timesteps: &[usize]) -> Result<ArrayD<f32>> {
        self.per_item(original, noise, timesteps, |sa, sb, x, n| sa * x + sb * n)
    }

    /// The v-prediction target `sqrt(ac[t]) * noise - sqrt(1 - ac[t]) * x0`, per batch item.
    pub fn velocity(&self, original: &ArrayD<f32>, noise: &ArrayD<f32>, timesteps: &[usize]) -> Result<ArrayD<f32>> {
        self.per_item(original, noise, timesteps, |sa, sb, x, n| sa * n - sb * x)
    }

    /// `snr = (sqrt(ac) / sqrt(1 - ac))^2` (0 at the zero-SNR end).
    pub fn snr(&self, t: usize) -> Result<f32> {
        let (sa, sb) = self.coefficients(t)?;
        let r = sa / sb;
        Ok(r * r)
    }

    /// The min-SNR loss weight: `min(snr, gamma) / (snr + 1)` for v-prediction,
    /// `min(snr, gamma) / snr` for epsilon (upstream `--snr_gamma`, 5.0 in the v1.3 script).
    pub fn min_snr_weight(&self, t: usize, gamma: f32) -> Result<f32> {
        let snr = self.snr(t)?;
        let clipped = snr.min(gamma);
        Ok(match self.prediction_type {
            PredictionType::VPrediction => clipped / (snr + 1.0),
            _ => clipped / snr,
        })
    }

    fn per_item(
        &self,
        original: &ArrayD<f32>,
        noise: &ArrayD<f32>,
        timesteps: &[usize],
        f: impl Fn(f32, f32, f32, f32) -> f32,
    ) -> Result<ArrayD<f32>> {
        if original.shape() != noise.shape() {
            return Err(Error::Tensor {
                name: "noise".into(),
                why: format!("shape {:?} differs from the sample's {:?}", noise.shape(), original.shape()),
            });
        }
        let batch = original.shape().first().copied().unwrap_or(0);
        if original.ndim() == 0 || timesteps.len() != batch {
            return Err(Error::Tensor {
                name: "timesteps".into(),
                why: format!("{} timesteps for a batch of {batch} (one per item of axis 0)", timesteps.len()),
            });
        }
        let mut out = original.clone();
        for (i, &t) in timesteps.iter().enumerate() {
            let (sa, sb) = self.coefficients(t)?;
            let n = noise.index_axis(Axis(0), i);
            out.index_axis_mut(Axis(0), i).zip_mut_with(&n, |x, &nv| *x = f(sa, sb, *x, nv));
        }
        Ok(out)
    }
}
