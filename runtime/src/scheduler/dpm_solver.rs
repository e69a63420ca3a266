//! `DPMSolverMultistepScheduler` (diffusers 0.30.2, `schedulers/scheduling_dpmsolver_multistep.py`)
//! as upstream builds it: DPM-Solver++ (`algorithm_type="dpmsolver++"`), order 2 (2M), midpoint
//! solver, `lower_order_final`, final sigma 0. Karras/Lu sigmas, thresholding, the SDE variants
//! and order 3 are rejected at construction.

use ndarray::ArrayD;

use super::schedule::{self, check_steps};
use super::{
    check_next_step, zip2, zip3, PredictionType, SampleMethod, Scheduler, SchedulerConfig, StepInput, TimestepSpacing,
};
use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SolverType {
    Midpoint,
    Heun,
}

#[derive(Debug, Clone)]
pub struct DpmSolverMultistepScheduler {
    config: SchedulerConfig,
    alphas_cumprod: Vec<f32>,
    solver_order: usize,
    solver_type: SolverType,
    lower_order_final: bool,
    euler_at_final: bool,
    final_sigma_zero: bool,
    timesteps: Vec<f32>,
    sigmas: Vec<f32>,
    /// The converted (x0) model outputs of the last `solver_order` steps, oldest first.
    model_outputs: Vec<Option<ArrayD<f32>>>,
    lower_order_nums: usize,
    next_step: usize,
}

/// `(alpha_t, sigma_t)` of a sigma: `alpha = 1/sqrt(sigma^2 + 1)`, `sigma_t = sigma * alpha`.
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

/// `lambda = log(alpha) - log(sigma)` (+inf at sigma 0).
fn lambda(alpha: f32, sigma: f32) -> f32 {
    alpha.ln() - sigma.ln()
}

impl DpmSolverMultistepScheduler {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        config.reject_true("thresholding", config.thresholding)?;
        config.reject_true("use_karras_sigmas", config.use_karras_sigmas)?;
        config.reject_true("use_lu_lambdas", config.use_lu_lambdas)?;
        config.expect_str("algorithm_type", &config.algorithm_type, &["dpmsolver++"])?;
        config.expect_str("solver_type", &config.solver_type, &["midpoint", "heun"])?;
        config.expect_str("final_sigmas_type", &config.final_sigmas_type, &["zero", "sigma_min"])?;
        if let Some(v) = &config.variance_type {
            return Err(Error::InvalidSchedulerConfig {
                key: "variance_type".into(),
                why: format!("`{v}` is not implemented (only null)"),
            });
        }
        if let Some(l) = config.lambda_min_clipped {
            if l != f64::NEG_INFINITY {
                return Err(Error::InvalidSchedulerConfig {
                    key: "lambda_min_clipped".into(),
                    why: format!("{l} is not implemented (only -inf, no clipping)"),
                });
            }
        }
        let solver_order = config.solver_order.unwrap_or(2);
        if !(1..=2).contains(&solver_order) {
            return Err(Error::InvalidSchedulerConfig {
                key: "solver_order".into(),
                why: format!("{solver_order} is not implemented (1 or 2)"),
            });
        }
        let (_, alphas_cumprod) = schedule::alphas_cumprod(config, config.rescale_betas_zero_snr, true)?;
        Ok(DpmSolverMultistepScheduler {
            config: config.clone(),
            alphas_cumprod,
            solver_order,
            solver_type: if config.solver_type.as_deref() == Some("heun") {
                SolverType::Heun
            } else {
                SolverType::Midpoint
            },
            lower_order_final: config.lower_order_final.unwrap_or(true),
            euler_at_final: config.euler_at_final.unwrap_or(false),
            final_sigma_zero: config.final_sigmas_type.as_deref() != Some("sigma_min"),
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            model_outputs: vec![None; solver_order],
            lower_order_nums: 0,
            next_step: 0,
        })
    }

    /// `alphas_cumprod` of the training schedule (with the zero-SNR clamp).
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    fn convert_model_output(&self, model_output: &ArrayD<f32>, sample: &ArrayD<f32>, i: usize) -> ArrayD<f32> {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i]);
        match self.config.prediction_type {
            PredictionType::Epsilon => zip2(sample, model_output, |s, m| (s - sigma_t * m) / alpha_t),
            PredictionType::Sample => model_output.clone(),
            PredictionType::VPrediction => zip2(sample, model_output, |s, m| alpha_t * s - sigma_t * m),
        }
    }

    fn first_order(&self, m0: &ArrayD<f32>, sample: &ArrayD<f32>, i: usize) -> ArrayD<f32> {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s, sigma_s) = alpha_sigma(self.sigmas[i]);
        let h = lambda(alpha_t, sigma_t) - lambda(alpha_s, sigma_s);
        let c_sample = sigma_t / sigma_s;
        let c_out = alpha_t * ((-h).exp() - 1.0);
        zip2(sample, m0, |s, m| c_sample * s - c_out * m)
    }

    fn second_order(&self, m0: &ArrayD<f32>, m1: &ArrayD<f32>, sample: &ArrayD<f32>, i: usize) -> ArrayD<f32> {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[i + 1]);
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[i]);
        let (alpha_s1, sigma_s1) = alpha_sigma(self.sigmas[i - 1]);
        let lambda_t = lambda(alpha_t, sigma_t);
        let lambda_s0 = lambda(alpha_s0, sigma_s0);
        let lambda_s1 = lambda(alpha_s1, sigma_s1);
        let h = lambda_t - lambda_s0;
        let h_0 = lambda_s0 - lambda_s1;
        let r0 = h_0 / h;
        let inv_r0 = 1.0 / r0;
        let d1 = zip2(m0, m1, |a, b| inv_r0 * (a - b));
        let c_sample = sigma_t / sigma_s0;
        let c_d0 = alpha_t * ((-h).exp() - 1.0);
        match self.solver_type {
            SolverType::Midpoint => {
                let c_d1 = 0.5 * (alpha_t * ((-h).exp() - 1.0));
                zip3(sample, m0, &d1, |s, d0, d1| c_sample * s - c_d0 * d0 - c_d1 * d1)
            }
            SolverType::Heun => {
                let c_d1 = alpha_t * (((-h).exp() - 1.0) / h + 1.0);
                zip3(sample, m0, &d1, |s, d0, d1| c_sample * s - c_d0 * d0 + c_d1 * d1)
            }
        }
    }
}

impl Scheduler for DpmSolverMultistepScheduler {
    fn method(&self) -> SampleMethod {
        SampleMethod::DpmSolverMultistep
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let num_train = self.config.num_train_timesteps;
        check_steps(SampleMethod::DpmSolverMultistep.name(), n, num_train)?;
        // lambda_min_clipped = -inf clips nothing: last_timestep = num_train_timesteps.
        let last = num_train;
        let timesteps: Vec<i64> = match self.config.timestep_spacing.unwrap_or(TimestepSpacing::Linspace) {
            TimestepSpacing::Linspace => {
                let mut t: Vec<i64> = schedule::np_linspace(0.0, (last - 1) as f64, n + 1)
                    .into_iter()
                    .map(|v| v.round_ties_even() as i64)
                    .collect();
                t.reverse();
                t.truncate(n);
                t
            }
            TimestepSpacing::Leading => {
                let ratio = last / (n + 1);
                (1..=n).rev().map(|i| (i * ratio + self.config.steps_offset) as i64).collect()
            }
            TimestepSpacing::Trailing => schedule::np_arange_down(last as f64, num_train as f64 / n as f64)
                .into_iter()
                .map(|v| v.round_ties_even() as i64 - 1)
                .collect(),
        };
        let at: Vec<f64> = timesteps.iter().map(|&t| t as f64).collect();
        let final_sigma =
            if self.final_sigma_zero { 0.0 } else { schedule::train_sigmas(&self.alphas_cumprod[..1])[0] };
        self.sigmas = schedule::interpolated_sigmas(&self.alphas_cumprod, &at, final_sigma);
        self.timesteps = timesteps.iter().map(|&t| t as f32).collect();
        self.model_outputs = vec![None; self.solver_order];
        self.lower_order_nums = 0;
        self.next_step = 0;
        Ok(())
    }

    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn sigmas(&self) -> Option<&[f32]> {
        Some(&self.sigmas)
    }

    fn step_checked(
        &mut self,
        StepInput { model_output, step_index, sample, .. }: StepInput<'_>,
    ) -> Result<ArrayD<f32>> {
        check_next_step(SampleMethod::DpmSolverMultistep, self.next_step, step_index)?;
        let len = self.timesteps.len();
        let i = step_index;
        let lower_order_final =
            i == len - 1 && (self.euler_at_final || (self.lower_order_final && len < 15) || self.final_sigma_zero);
        // diffusers' `lower_order_second` only chooses between orders 2 and 3; order 3 is rejected.
        let x0 = self.convert_model_output(model_output, sample, i);
        self.model_outputs.rotate_left(1);
        let last = self.model_outputs.len() - 1;
        self.model_outputs[last] = Some(x0);
        let m0 = self.model_outputs[last].as_ref().expect("the newest output was just stored");
        let prev = if self.solver_order == 1 || self.lower_order_nums < 1 || lower_order_final {
            self.first_order(m0, sample, i)
        } else {
            let m1 = self.model_outputs[last - 1]
                .as_ref()
                .expect("lower_order_nums >= 1 means the previous output is stored");
            self.second_order(m0, m1, sample, i)
        };
        if self.lower_order_nums < self.solver_order {
            self.lower_order_nums += 1;
        }
        self.next_step += 1;
        Ok(prev)
    }
}
