//! `EulerDiscreteScheduler` (diffusers 0.30.2, `schedulers/scheduling_euler_discrete.py`) with the
//! pipeline's defaults: `s_churn = 0` (no noise is added), linear sigma interpolation, discrete
//! timesteps, final sigma 0 or `sigma_min`.
//!
//! Also holds the sigma schedule shared with [`super::EulerAncestralDiscreteScheduler`].

use ndarray::ArrayD;

use super::schedule::{self, check_steps};
use super::{check_index, zip2, PredictionType, SampleMethod, Scheduler, SchedulerConfig, StepInput, TimestepSpacing};
use crate::error::{Error, Result};

/// The sigma schedule of the Euler schedulers: `alphas_cumprod` (with the `2**-24` clamp under
/// zero-SNR), float32 timesteps and the interpolated sigmas.
#[derive(Debug, Clone)]
pub(crate) struct SigmaSchedule {
    pub method: SampleMethod,
    pub config: SchedulerConfig,
    pub spacing: TimestepSpacing,
    pub alphas_cumprod: Vec<f32>,
    pub timesteps: Vec<f32>,
    pub sigmas: Vec<f32>,
    pub final_sigma: f32,
}

impl SigmaSchedule {
    pub fn new(method: SampleMethod, config: &SchedulerConfig, final_sigma_key: bool) -> Result<Self> {
        let (_, alphas_cumprod) = schedule::alphas_cumprod(config, config.rescale_betas_zero_snr, true)?;
        let mut final_sigma = 0.0;
        if final_sigma_key {
            config.expect_str("final_sigmas_type", &config.final_sigmas_type, &["zero", "sigma_min"])?;
            if config.final_sigmas_type.as_deref() == Some("sigma_min") {
                final_sigma = schedule::train_sigmas(&alphas_cumprod[..1])[0];
            }
        }
        Ok(SigmaSchedule {
            method,
            config: config.clone(),
            spacing: config.timestep_spacing.unwrap_or(TimestepSpacing::Linspace),
            alphas_cumprod,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            final_sigma,
        })
    }

    pub fn set_timesteps(&mut self, n: usize) -> Result<()> {
        check_steps(self.method.name(), n, self.config.num_train_timesteps)?;
        let timesteps: Vec<f32> = schedule::spaced_timesteps(
            self.spacing,
            self.config.num_train_timesteps,
            n,
            self.config.steps_offset,
            false,
        )
        .into_iter()
        .map(|t| t as f32)
        .collect();
        let at: Vec<f64> = timesteps.iter().map(|&t| f64::from(t)).collect();
        self.sigmas = schedule::interpolated_sigmas(&self.alphas_cumprod, &at, self.final_sigma);
        self.timesteps = timesteps;
        Ok(())
    }

    /// Replaces the schedule by recorded `timesteps` and `sigmas` (one more sigma than timesteps).
    pub fn set_recorded(&mut self, timesteps: &[f32], sigmas: &[f32]) -> Result<()> {
        let bad = |why: String| Error::SchedulerStep {
            method: self.method.name().into(),
            why: format!("recorded schedule: {why}"),
        };
        if timesteps.is_empty() || sigmas.len() != timesteps.len() + 1 {
            return Err(bad(format!(
                "{} timesteps need {} sigmas, got {}",
                timesteps.len(),
                timesteps.len() + 1,
                sigmas.len()
            )));
        }
        if let Some(s) = sigmas.iter().find(|s| !(s.is_finite() && **s >= 0.0)) {
            return Err(bad(format!("sigma {s} is not a finite non-negative number")));
        }
        if let Some(i) = sigmas[..timesteps.len()].iter().position(|&s| s == 0.0) {
            return Err(bad(format!("sigma {i} is 0 but a step divides by it")));
        }
        self.timesteps = timesteps.to_vec();
        self.sigmas = sigmas.to_vec();
        Ok(())
    }

    /// `sigmas.max()` for linspace/trailing spacing, else `sqrt(max^2 + 1)`. Before
    /// `set_timesteps` the training sigmas are used, as in diffusers.
    pub fn init_noise_sigma(&self) -> f32 {
        let max = if self.sigmas.is_empty() {
            schedule::train_sigmas(&self.alphas_cumprod).into_iter().fold(0.0f32, f32::max)
        } else {
            self.sigmas.iter().copied().fold(0.0f32, f32::max)
        };
        match self.spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max,
            TimestepSpacing::Leading => (max * max + 1.0).sqrt(),
        }
    }

    /// `sample / sqrt(sigma^2 + 1)` in float32.
    pub fn scale_model_input(&self, sample: &ArrayD<f32>, step_index: usize) -> Result<ArrayD<f32>> {
        check_index(self.method, step_index, self.timesteps.len())?;
        let sigma = self.sigmas[step_index];
        let denom = (sigma * sigma + 1.0).sqrt();
        Ok(sample.mapv(|x| x / denom))
    }

    /// The model's estimate of the clean sample at sigma `sigma`.
    pub fn pred_original_sample(
        &self,
        model_output: &ArrayD<f32>,
        sample: &ArrayD<f32>,
        sigma: f32,
    ) -> Result<ArrayD<f32>> {
        Ok(match self.config.prediction_type {
            PredictionType::Epsilon => zip2(sample, model_output, |s, m| s - sigma * m),
            PredictionType::VPrediction => {
                let c_out = -sigma / (sigma * sigma + 1.0).sqrt();
                let c_skip = sigma * sigma + 1.0;
                zip2(model_output, sample, |m, s| m * c_out + s / c_skip)
            }
            PredictionType::Sample => match self.method {
                SampleMethod::EulerAncestralDiscrete => {
                    return Err(Error::InvalidSchedulerConfig {
                        key: "prediction_type".into(),
                        why: "`sample` is not implemented by EulerAncestralDiscreteScheduler".into(),
                    })
                }
                _ => model_output.clone(),
            },
        })
    }
}

/// The [`Scheduler`] methods an Euler scheduler reads off its `schedule: SigmaSchedule` field
/// (everything but `method` and `step`).
macro_rules! sigma_schedule_methods {
    () => {
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

        fn scale_model_input(&self, sample: &ArrayD<f32>, step_index: usize) -> Result<ArrayD<f32>> {
            self.schedule.scale_model_input(sample, step_index)
        }

        fn set_recorded_schedule(&mut self, timesteps: &[f32], sigmas: &[f32]) -> Result<()> {
            self.schedule.set_recorded(timesteps, sigmas)
        }
    };
}
pub(crate) use sigma_schedule_methods;

/// Deterministic Euler sampling on the sigma schedule.
#[derive(Debug, Clone)]
pub struct EulerDiscreteScheduler {
    schedule: SigmaSchedule,
}

impl EulerDiscreteScheduler {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        config.reject_true("use_karras_sigmas", config.use_karras_sigmas)?;
        config.expect_str("interpolation_type", &config.interpolation_type, &["linear"])?;
        config.expect_str("timestep_type", &config.timestep_type, &["discrete"])?;
        Ok(EulerDiscreteScheduler { schedule: SigmaSchedule::new(SampleMethod::EulerDiscrete, config, true)? })
    }

    /// `alphas_cumprod` of the training schedule (with the zero-SNR clamp).
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.schedule.alphas_cumprod
    }
}

impl Scheduler for EulerDiscreteScheduler {
    fn method(&self) -> SampleMethod {
        SampleMethod::EulerDiscrete
    }

    sigma_schedule_methods!();

    fn step_checked(
        &mut self,
        StepInput { model_output, step_index, sample, .. }: StepInput<'_>,
    ) -> Result<ArrayD<f32>> {
        // With s_churn = 0, gamma = 0 and sigma_hat = sigma * (0 + 1) = sigma.
        let sigma = self.schedule.sigmas[step_index];
        let x0 = self.schedule.pred_original_sample(model_output, sample, sigma)?;
        let dt = self.schedule.sigmas[step_index + 1] - sigma;
        Ok(zip2(sample, &x0, |s, x| s + (s - x) / sigma * dt))
    }
}
