//! `PNDMScheduler` (diffusers 0.30.2, `schedulers/scheduling_pndm.py`): pseudo numerical methods,
//! a Runge-Kutta warm-up (PRK, 12 model evaluations unless `skip_prk_steps`) followed by linear
//! multistep (PLMS). Upstream builds it without the zero-SNR flag (PNDM has no such option), so the
//! betas are the plain linear ones; `set_alpha_to_one` defaults to false.

use ndarray::ArrayD;

use super::schedule::{self, check_steps, timestep_index};
use super::{
    check_next_step, zip2, PredictionType, SampleMethod, Scheduler, SchedulerConfig, StepInput, TimestepSpacing,
};
use crate::error::{Error, Result};

const PNDM_ORDER: usize = 4;

#[derive(Debug, Clone)]
pub struct PndmScheduler {
    config: SchedulerConfig,
    alphas_cumprod: Vec<f32>,
    final_alpha_cumprod: f32,
    skip_prk_steps: bool,
    num_inference_steps: usize,
    prk_timesteps: Vec<i64>,
    timesteps: Vec<i64>,
    timesteps_f32: Vec<f32>,
    counter: usize,
    ets: Vec<ArrayD<f32>>,
    cur_model_output: Option<ArrayD<f32>>,
    cur_sample: Option<ArrayD<f32>>,
}

impl PndmScheduler {
    pub fn new(config: &SchedulerConfig) -> Result<Self> {
        if config.rescale_betas_zero_snr {
            tracing::warn!("PNDMScheduler has no rescale_betas_zero_snr option; it is ignored (as upstream does)");
        }
        if config.prediction_type == PredictionType::Sample {
            return Err(Error::InvalidSchedulerConfig {
                key: "prediction_type".into(),
                why: "PNDMScheduler implements `epsilon` and `v_prediction` only".into(),
            });
        }
        let (_, alphas_cumprod) = schedule::alphas_cumprod(config, false, false)?;
        let final_alpha_cumprod = if config.set_alpha_to_one.unwrap_or(false) { 1.0 } else { alphas_cumprod[0] };
        Ok(PndmScheduler {
            config: config.clone(),
            alphas_cumprod,
            final_alpha_cumprod,
            skip_prk_steps: config.skip_prk_steps.unwrap_or(false),
            num_inference_steps: 0,
            prk_timesteps: Vec::new(),
            timesteps: Vec::new(),
            timesteps_f32: Vec::new(),
            counter: 0,
            ets: Vec::new(),
            cur_model_output: None,
            cur_sample: None,
        })
    }

    /// `alphas_cumprod` of the (plain, not rescaled) training schedule.
    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.alphas_cumprod
    }

    fn alpha(&self, t: i64) -> Result<f32> {
        Ok(self.alphas_cumprod[timestep_index(SampleMethod::Pndm.name(), t, self.alphas_cumprod.len())?])
    }

    /// Formula (9) of the PNDM paper: the sample at `prev_timestep` from `sample` at `timestep`.
    fn prev_sample(
        &self,
        sample: &ArrayD<f32>,
        t: i64,
        prev_t: i64,
        model_output: &ArrayD<f32>,
    ) -> Result<ArrayD<f32>> {
        let a_t = self.alpha(t)?;
        let a_prev = if prev_t >= 0 { self.alpha(prev_t)? } else { self.final_alpha_cumprod };
        let b_t = 1.0 - a_t;
        let b_prev = 1.0 - a_prev;
        let eps = match self.config.prediction_type {
            PredictionType::VPrediction => {
                let (sa, sb) = (a_t.sqrt(), b_t.sqrt());
                zip2(model_output, sample, |m, s| sa * m + sb * s)
            }
            _ => model_output.clone(),
        };
        let sample_coeff = (a_prev / a_t).sqrt();
        let denom = a_t * b_prev.sqrt() + (a_t * b_t * a_prev).sqrt();
        let diff = a_prev - a_t;
        Ok(zip2(sample, &eps, |s, e| sample_coeff * s - diff * e / denom))
    }

    fn step_prk(&mut self, model_output: &ArrayD<f32>, sample: &ArrayD<f32>) -> Result<ArrayD<f32>> {
        let half_ratio = (self.config.num_train_timesteps / self.num_inference_steps / 2) as i64;
        let diff_to_prev = if self.counter % 2 == 1 { 0 } else { half_ratio };
        let prev_t = self.prk_timesteps[self.counter] - diff_to_prev;
        let t = self.prk_timesteps[self.counter / 4 * 4];
        let (sixth, third) = ((1.0f64 / 6.0) as f32, (1.0f64 / 3.0) as f32);
        let model_output = match self.counter % 4 {
            0 => {
                self.cur_model_output = Some(model_output.mapv(|m| sixth * m));
                self.ets.push(model_output.clone());
                self.cur_sample = Some(sample.clone());
                model_output.clone()
            }
            1 | 2 => {
                let cur = self.cur_model_output.take().expect("PRK sub-step 0 stores the running sum");
                self.cur_model_output = Some(zip2(&cur, model_output, |c, m| c + third * m));
                model_output.clone()
            }
            _ => {
                let cur = self.cur_model_output.take().expect("PRK sub-step 0 stores the running sum");
                zip2(&cur, model_output, |c, m| c + sixth * m)
            }
        };
        let cur_sample = self.cur_sample.clone().unwrap_or_else(|| sample.clone());
        let prev = self.prev_sample(&cur_sample, t, prev_t, &model_output)?;
        self.counter += 1;
        Ok(prev)
    }

    fn step_plms(&mut self, model_output: &ArrayD<f32>, timestep: i64, sample: &ArrayD<f32>) -> Result<ArrayD<f32>> {
        if !self.skip_prk_steps && self.ets.len() < 3 {
            return Err(Error::SchedulerStep {
                method: SampleMethod::Pndm.name().into(),
                why: "PLMS steps can only run after the 12 Runge-Kutta steps".into(),
            });
        }
        let ratio = (self.config.num_train_timesteps / self.num_inference_steps) as i64;
        let (mut t, mut prev_t) = (timestep, timestep - ratio);
        if self.counter != 1 {
            let keep = self.ets.len().saturating_sub(3);
            self.ets.drain(..keep);
            self.ets.push(model_output.clone());
        } else {
            prev_t = timestep;
            t = timestep + ratio;
        }
        let mut sample = sample.clone();
        let n = self.ets.len();
        let e = |k: usize| &self.ets[n - k];
        let model_output = if n == 1 && self.counter == 0 {
            self.cur_sample = Some(sample.clone());
            model_output.clone()
        } else if n == 1 && self.counter == 1 {
            sample = self.cur_sample.take().expect("PLMS step 0 stores the sample");
            zip2(model_output, e(1), |m, e1| (m + e1) / 2.0)
        } else if n == 2 {
            zip2(e(1), e(2), |e1, e2| (3.0 * e1 - e2) / 2.0)
        } else if n == 3 {
            let a = zip2(e(1), e(2), |e1, e2| 23.0 * e1 - 16.0 * e2);
            zip2(&a, e(3), |a, e3| (a + 5.0 * e3) / 12.0)
        } else {
            let c = (1.0f64 / 24.0) as f32;
            let a = zip2(e(1), e(2), |e1, e2| 55.0 * e1 - 59.0 * e2);
            let b = zip2(&a, e(3), |a, e3| a + 37.0 * e3);
            zip2(&b, e(4), |b, e4| c * (b - 9.0 * e4))
        };
        let prev = self.prev_sample(&sample, t, prev_t, &model_output)?;
        self.counter += 1;
        Ok(prev)
    }
}

impl Scheduler for PndmScheduler {
    fn method(&self) -> SampleMethod {
        SampleMethod::Pndm
    }

    fn set_timesteps(&mut self, n: usize) -> Result<()> {
        let method = SampleMethod::Pndm.name();
        let num_train = self.config.num_train_timesteps;
        check_steps(method, n, num_train)?;
        if !self.skip_prk_steps && n < PNDM_ORDER {
            return Err(Error::InvalidSamplingSteps {
                method: method.into(),
                steps: n,
                rule: format!("PNDM's Runge-Kutta warm-up needs at least {PNDM_ORDER} sampling steps"),
            });
        }
        // Ascending, as diffusers' `_timesteps`.
        let base: Vec<i64> = match self.config.timestep_spacing.unwrap_or(TimestepSpacing::Leading) {
            TimestepSpacing::Linspace => schedule::np_linspace(0.0, (num_train - 1) as f64, n)
                .into_iter()
                .map(|v| v.round_ties_even() as i64)
                .collect(),
            TimestepSpacing::Leading => {
                (0..n).map(|i| (i * (num_train / n) + self.config.steps_offset) as i64).collect()
            }
            TimestepSpacing::Trailing => {
                let mut t: Vec<i64> = schedule::np_arange_down(num_train as f64, num_train as f64 / n as f64)
                    .into_iter()
                    .map(|v| v.round_ties_even() as i64 - 1)
                    .collect();
                t.reverse();
                t
            }
        };
        let (prk, plms): (Vec<i64>, Vec<i64>) = if self.skip_prk_steps {
            let len = base.len();
            let mut plms: Vec<i64> = base[..len - 1].to_vec();
            if len >= 2 {
                plms.push(base[len - 2]);
            }
            plms.push(base[len - 1]);
            plms.reverse();
            (Vec::new(), plms)
        } else {
            let half = (num_train / n / 2) as i64;
            let tail = &base[base.len() - PNDM_ORDER..];
            let offsets: Vec<i64> = tail.iter().flat_map(|&t| [t, t + half]).collect();
            let doubled: Vec<i64> = offsets[..offsets.len() - 1].iter().flat_map(|&t| [t, t]).collect();
            let mut prk = doubled[1..doubled.len() - 1].to_vec();
            prk.reverse();
            let mut plms = base[..base.len() - 3].to_vec();
            plms.reverse();
            (prk, plms)
        };
        self.timesteps = prk.iter().chain(&plms).copied().collect();
        self.timesteps_f32 = self.timesteps.iter().map(|&t| t as f32).collect();
        self.prk_timesteps = prk;
        self.num_inference_steps = n;
        self.counter = 0;
        self.ets.clear();
        self.cur_model_output = None;
        self.cur_sample = None;
        Ok(())
    }

    fn timesteps(&self) -> &[f32] {
        &self.timesteps_f32
    }

    fn step_checked(
        &mut self,
        StepInput { model_output, step_index, sample, .. }: StepInput<'_>,
    ) -> Result<ArrayD<f32>> {
        check_next_step(SampleMethod::Pndm, self.counter, step_index)?;
        if self.counter < self.prk_timesteps.len() && !self.skip_prk_steps {
            self.step_prk(model_output, sample)
        } else {
            self.step_plms(model_output, self.timesteps[step_index], sample)
        }
    }
}
