//! `DDIMScheduler` (diffusers 0.30.2, `schedulers/scheduling_ddim.py`) with `eta = 0` (the
//! pipeline's default, so no noise is drawn) and upstream's `clip_sample=False`.

use ndarray::ArrayD;

use super::schedule::{self, check_steps, timestep_index};
use super::{zip2, PredictionType, SampleMethod, Scheduler, SchedulerConfig, StepInput, TimestepSpacing};
use crate::error::Result;

#[derive(Debug, Clone)]
pub struct DdimScheduler {
    config: SchedulerConfig,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    /// `Some(range)` when `clip_sample` is on.
    clip: Option<f32>,
    num_inference_steps: usize,
    timesteps: Vec<i64>,
    timesteps_f32: Vec<f32>,
}

impl DdimScheduler {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        config.reject_true("thresholding", config.thresholding)?;
        let (_, alphas_cumprod) = schedule::alphas_cumprod(config, config.rescale_betas_zero_snr, false)?;
        let final_alpha_cumprod = if config.set_alpha_to_one.unwrap_or(true) { 1.0 } else { alphas_cumprod[0] };
        let clip = config.clip_sample.unwrap_or(true).then(|| config.clip_sample_range.unwrap_or(1.0) as f32);
        Ok(DdimScheduler {
            config: config.clone(),
            alphas_cumprod,
            final_alpha_cumprod,
            clip,
            num_inference_steps: 0,
            timesteps: Vec::new(),
            timesteps_f32: Vec::new(),
        })
    }

    /// `alphas_cumprod` of the training schedule (exactly 0 at the end under zero-SNR).
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }
}

impl Scheduler for DdimScheduler {
    fn method(&self) -> SampleMethod {
        SampleMethod::Ddim
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        check_steps(SampleMethod::Ddim.name(), n, self.config.num_train_timesteps)?;
        let spacing = self.config.timestep_spacing.unwrap_or(TimestepSpacing::Leading);
        self.timesteps =
            schedule::spaced_timesteps(spacing, self.config.num_train_timesteps, n, self.config.steps_offset, true)
                .into_iter()
                .map(|t| t as i64)
                .collect();
        self.timesteps_f32 = self.timesteps.iter().map(|&t| t as f32).collect();
        self.num_inference_steps = n;
        Ok(())
    }

    fn timesteps(&self) -> &[f32] {
        &self.timesteps_f32
    }

    fn step_checked(
        &mut self,
        StepInput { model_output, step_index, sample, .. }: StepInput<'_>,
    ) -> Result<ArrayD<f32>> {
        let name = SampleMethod::Ddim.name();
        let len = self.alphas_cumprod.len();
        let t = self.timesteps[step_index];
        let prev_t = t - (self.config.num_train_timesteps / self.num_inference_steps) as i64;
        let a_t = self.alphas_cumprod[timestep_index(name, t, len)?];
        let a_prev = if prev_t >= 0 {
            self.alphas_cumprod[timestep_index(name, prev_t, len)?]
        } else {
            self.final_alpha_cumprod
        };
        let b_t = 1.0 - a_t;
        let (sa, sb) = (a_t.sqrt(), b_t.sqrt());
        let (mut x0, eps) = match self.config.prediction_type {
            PredictionType::Epsilon => (zip2(sample, model_output, |s, m| (s - sb * m) / sa), model_output.clone()),
            PredictionType::Sample => (model_output.clone(), zip2(sample, model_output, |s, m| (s - sa * m) / sb)),
            PredictionType::VPrediction => {
                (zip2(sample, model_output, |s, m| sa * s - sb * m), zip2(model_output, sample, |m, s| sa * m + sb * s))
            }
        };
        if let Some(range) = self.clip {
            x0.mapv_inplace(|v| v.clamp(-range, range));
        }
        // eta = 0: the variance term std_dev_t is 0, so `1 - a_prev - std^2` is `1 - a_prev`.
        let dir = (1.0 - a_prev).sqrt();
        let sp = a_prev.sqrt();
        Ok(zip2(&x0, &eps, |x, e| sp * x + dir * e))
    }
}
