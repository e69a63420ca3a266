//! `EulerAncestralDiscreteScheduler` (diffusers 0.30.2,
//! `schedulers/scheduling_euler_ancestral_discrete.py`), the sampler of the Open-Sora-Plan v1.3
//! release (v-prediction, zero-terminal-SNR betas, trailing timesteps; `init_noise_sigma` 4096).
//!
//! Step, in float32: `x0 = -σ/√(σ²+1)·v + x/(σ²+1)`, `σ_up = √(σ'²(σ²-σ'²)/σ²)`,
//! `σ_down = √(σ'² - σ_up²)`, `x' = x + (x - x0)/σ·(σ_down - σ) + noise·σ_up`.
//! Upstream draws `noise` from the global torch RNG even at the last step (where `σ_up = 0`);
//! here the caller passes it.

use ndarray::ArrayD;

use super::euler::{sigma_schedule_methods, SigmaSchedule};
use super::{check_index, zip3, SampleMethod, Scheduler, SchedulerConfig, StepInput};
use crate::error::Result;

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

    sigma_schedule_methods!();

    fn needs_noise(&self) -> bool {
        true
    }

    fn step_checked(
        &mut self,
        StepInput { model_output, step_index, sample, noise }: StepInput<'_>,
    ) -> Result<ArrayD<f32>> {
        let noise = noise.expect("step passes the noise needs_noise asks for");
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
