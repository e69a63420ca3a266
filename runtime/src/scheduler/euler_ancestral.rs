//! `EulerAncestralDiscreteScheduler` (diffusers 0.30.2,
//! `schedulers/scheduling_euler_ancestral_discrete.py`), the sampler of the Open-Sora-Plan v1.3
//! release (v-prediction, zero-terminal-SNR betas, trailing timesteps; `init_noise_sigma` 4096).
//!
//! Step, in float32: `x0 = -σ/√(σ²+1)·v + x/(σ²+1)`, `σ_up = √(σ'²(σ²-σ'²)/σ²)`,
//! `σ_down = √(σ'² - σ_up²)`, `x' = x + (x - x0)/σ·(σ_down - σ) + noise·σ_up`.
//! Upstream draws `noise` from the global torch RNG even at the last step (where `σ_up = 0`);
//! here the caller passes it.

use ndarray::ArrayD;

use super::euler::SigmaSchedule;
use super::{check_index, check_shape, zip3, SampleMethod, Scheduler, SchedulerConfig};
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct EulerAncestralDiscreteScheduler {
    schedule: SigmaSchedule,
}

impl EulerAncestralDiscreteScheduler {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        Ok(EulerAncestralDiscreteScheduler {
            schedule: SigmaSchedule::new(SampleMethod::EulerAncestralDiscrete, config, false)?,
        })
    }

    /// `alphas_cumprod` of the training schedule (with the zero-SNR clamp).
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.schedule.alphas_cumprod
    }

    /// `(sigma_up, sigma_down)` of step `step_index`, in float32 as diffusers computes them.
    pub fn sigma_up_down(&self, step_index: usize) -> Result<(f32, f32)> {
        check_index(SampleMethod::EulerAncestralDiscrete, step_index, self.schedule.timesteps.len())?;
        let from = self.schedule.sigmas[step_index];
        let to = self.schedule.sigmas[step_index + 1];
        let up = (to * to * (from * from - to * to) / (from * from)).sqrt();
        let down = (to * to - up * up).sqrt();
        Ok((up, down))
    }
}

impl Scheduler for EulerAncestralDiscreteScheduler {
    fn method(&self) -> SampleMethod {
        SampleMethod::EulerAncestralDiscrete
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        self.schedule.set_timesteps(n)
    }

    fn timesteps(&self) -> &[f32] {
        &self.schedule.timesteps
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.schedule.sigmas)
    }

    fn init_noise_sigma(&self) -> f32 {
        self.schedule.init_noise_sigma()
    }

    fn needs_noise(&self) -> bool {
        true
    }

    fn scale_model_input(&self, sample: &ArrayD<f32>, step_index: usize) -> Result<ArrayD<f32>> {
        self.schedule.scale_model_input(sample, step_index)
    }

    fn set_recorded_schedule(&mut self, timesteps: &[f32], sigmas: &[f32]) -> Result<()> {
        self.schedule.set_recorded(timesteps, sigmas)
    }

    fn step(
        &mut self,
        model_output: &ArrayD<f32>,
        step_index: usize,
        sample: &ArrayD<f32>,
        noise: Option<&ArrayD<f32>>,
    ) -> Result<ArrayD<f32>> {
        let method = SampleMethod::EulerAncestralDiscrete;
        check_index(method, step_index, self.schedule.timesteps.len())?;
        check_shape(method, "model_output", model_output, sample)?;
        let noise =
            noise.ok_or_else(|| Error::MissingSchedulerNoise { method: method.name().into(), step: step_index })?;
        check_shape(method, "noise", noise, sample)?;
        let sigma = self.schedule.sigmas[step_index];
        let x0 = self.schedule.pred_original_sample(model_output, sample, sigma)?;
        let (sigma_up, sigma_down) = self.sigma_up_down(step_index)?;
        let dt = sigma_down - sigma;
        Ok(zip3(sample, &x0, noise, |s, x, n| {
            let prev = s + (s - x) / sigma * dt;
            prev + n * sigma_up
        }))
    }
}
