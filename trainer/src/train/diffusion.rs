//! The diffusion objective of DiT training: diffusers' `DDPMScheduler(prediction_type=
//! "v_prediction", rescale_betas_zero_snr=True)` (linear betas 1e-4..0.02, 1000 steps,
//! `alphas_cumprod[-1] == 0`), upstream's stratified timestep sampling, `add_noise`, the
//! v-target and the min-SNR weighted MSE (`--snr_gamma`).
//!
//! The schedule tables (torch's float32 `linspace` with FMA, `cumprod` accumulated in float64) come
//! from the runtime (`runtime/src/scheduler/{schedule,training}.rs`), so training and inference use
//! the same numbers; this module adds the loss side on top.
// https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/train/train_t2v_diffusers.py#L669-L770

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use osp_runtime::scheduler::{BetaSchedule, PredictionType as RuntimePrediction, SchedulerConfig, TrainingSchedule};
use serde::{Deserialize, Serialize};

use super::rng::Rng;
use crate::error::{Error, Result};

/// `--prediction_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    Epsilon,
    #[value(name = "v_prediction")]
    #[serde(rename = "v_prediction")]
    VPrediction,
}

/// The training noise schedule: the runtime's [`TrainingSchedule`] (the one implementation of the
/// betas, the zero-SNR rescale and `alphas_cumprod`, shared with inference) plus the loss side of
/// training (timestep sampling, targets, min-SNR weights).
#[derive(Debug, Clone, PartialEq)]
pub struct DdpmSchedule {
    pub prediction_type: PredictionType,
    table: TrainingSchedule,
}

impl DdpmSchedule {
    /// The v1.3 training schedule (`--prediction_type v_prediction --rescale_betas_zero_snr`).
    pub fn open_sora_plan_v13() -> Self {
        Self::linear(1000, 1e-4, 0.02, true, PredictionType::VPrediction)
            .expect("the built-in v1.3 training schedule should be valid")
    }

    /// Linear betas `beta_start..beta_end` over `num_train_timesteps`, optionally rescaled to
    /// zero terminal SNR.
    pub fn linear(
        num_train_timesteps: usize,
        beta_start: f32,
        beta_end: f32,
        rescale_betas_zero_snr: bool,
        prediction_type: PredictionType,
    ) -> Result<Self> {
        if num_train_timesteps < 2 || !(0.0 < beta_start && beta_start <= beta_end && beta_end < 1.0) {
            return Err(Error::Config(format!(
                "DDPM schedule: need >= 2 steps and 0 < beta_start <= beta_end < 1, got {num_train_timesteps} steps, {beta_start}..{beta_end}"
            )));
        }
        let config = SchedulerConfig {
            num_train_timesteps,
            beta_start: f64::from(beta_start),
            beta_end: f64::from(beta_end),
            beta_schedule: BetaSchedule::Linear,
            prediction_type: match prediction_type {
                PredictionType::Epsilon => RuntimePrediction::Epsilon,
                PredictionType::VPrediction => RuntimePrediction::VPrediction,
            },
            rescale_betas_zero_snr,
            ..SchedulerConfig::default()
        };
        Ok(DdpmSchedule { prediction_type, table: TrainingSchedule::new(&config)? })
    }

    pub fn num_train_timesteps(&self) -> usize {
        self.table.num_train_timesteps()
    }

    pub fn betas(&self) -> &[f32] {
        &self.table.betas
    }

    pub fn alphas_cumprod(&self) -> &[f32] {
        &self.table.alphas_cumprod
    }

    /// `(sqrt(ac[t]), sqrt(1 - ac[t]))` in float32, as `add_noise` computes them.
    pub fn coefficients(&self, t: usize) -> Result<(f32, f32)> {
        Ok(self.table.coefficients(t)?)
    }

    /// `compute_snr`: `(sqrt(ac) / sqrt(1 - ac))^2`.
    pub fn snr(&self, t: usize) -> Result<f32> {
        Ok(self.table.snr(t)?)
    }

    /// Min-SNR weight `min(snr, gamma) / (snr + 1)` (v-prediction) or `/ snr` (epsilon).
    pub fn min_snr_weight(&self, t: usize, gamma: f32) -> Result<f32> {
        Ok(self.table.min_snr_weight(t, gamma)?)
    }

    /// `explicit_uniform_sampling`: rank `rank` of `ranks` draws `round(U[T r/n - 0.5,
    /// T (r+1)/n - 0.5))` with Python's round-half-to-even.
    pub fn sample_timesteps(&self, rng: &mut Rng, batch: usize, ranks: usize, rank: usize) -> Vec<usize> {
        let interval = self.num_train_timesteps() as f64 / ranks.max(1) as f64;
        let (lo, hi) = (interval * rank as f64 - 0.5, interval * (rank + 1) as f64 - 0.5);
        (0..batch)
            .map(|_| {
                let t = (lo + (hi - lo) * rng.uniform()).round_ties_even();
                (t.max(0.0) as usize).min(self.num_train_timesteps() - 1)
            })
            .collect()
    }
}

/// One diffusion training example set: clean latents and the noise and timesteps drawn for them
/// (drawn on the host so that a step is a pure function of the batch).
#[derive(Debug, Clone)]
pub struct NoisedBatch {
    /// `[b, c, t, h, w]` normalised latents.
    pub latents: TensorData,
    /// Same shape as `latents`.
    pub noise: TensorData,
    /// One per item.
    pub timesteps: Vec<usize>,
}

/// The model input `x_t`, the target and the per-item loss weights of a noised batch.
pub struct DiffusionTargets<B: Backend> {
    pub noisy: Tensor<B, 5>,
    pub target: Tensor<B, 5>,
    /// `[b]`; all ones without `--snr_gamma`.
    pub weights: Vec<f32>,
}

impl DdpmSchedule {
    /// `x_t = sqrt(ac) x0 + sqrt(1 - ac) eps` and the target (`v = sqrt(ac) eps - sqrt(1 - ac) x0`,
    /// or `eps`), with min-SNR weights when `snr_gamma` is set.
    pub fn targets<B: Backend>(
        &self,
        batch: &NoisedBatch,
        snr_gamma: Option<f32>,
        device: &B::Device,
    ) -> Result<DiffusionTargets<B>> {
        let shape = batch.latents.shape.clone();
        if shape.len() != 5 || batch.noise.shape != shape || batch.timesteps.len() != shape[0] {
            return Err(Error::input(
                "latents",
                format!(
                    "must be [b, c, t, h, w] with noise of the same shape and b timesteps; got {:?}, noise {:?}, {} timesteps",
                    shape,
                    batch.noise.shape,
                    batch.timesteps.len()
                ),
            ));
        }
        let b = shape[0];
        let mut sa = Vec::with_capacity(b);
        let mut sb = Vec::with_capacity(b);
        let mut weights = Vec::with_capacity(b);
        for &t in &batch.timesteps {
            let (a, s) = self.coefficients(t)?;
            sa.push(a);
            sb.push(s);
            weights.push(match snr_gamma {
                Some(g) => self.min_snr_weight(t, g)?,
                None => 1.0,
            });
        }
        let col = |v: Vec<f32>| Tensor::<B, 1>::from_data(TensorData::new(v, [b]), device).reshape([b, 1, 1, 1, 1]);
        let (sa, sb) = (col(sa), col(sb));
        let x0 = Tensor::<B, 5>::from_data(batch.latents.clone(), device);
        let eps = Tensor::<B, 5>::from_data(batch.noise.clone(), device);
        let noisy = x0.clone() * sa.clone() + eps.clone() * sb.clone();
        let target = match self.prediction_type {
            PredictionType::VPrediction => eps * sa - x0 * sb,
            PredictionType::Epsilon => eps,
        };
        Ok(DiffusionTargets { noisy, target, weights })
    }
}

/// `mean_b(w_b * mean((pred - target)^2))`, upstream's `(loss * mse_loss_weights).mean()`.
pub fn weighted_mse<B: Backend>(pred: Tensor<B, 5>, target: Tensor<B, 5>, weights: &[f32]) -> Tensor<B, 1> {
    let [b, c, t, h, w] = pred.dims();
    let device = pred.device();
    let per_item = (pred - target).square().reshape([b, c * t * h * w]).mean_dim(1).reshape([b]);
    let w = Tensor::<B, 1>::from_data(TensorData::new(weights.to_vec(), [b]), &device);
    (per_item * w).mean()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use osp_graphs::Approx;

    use super::*;

    #[test]
    fn schedule_matches_the_official_training_table() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/reference/parity/scheduler_euler_ancestral_v13.json");
        let text = std::fs::read_to_string(&path).expect("the shared scheduler table should exist");
        let table: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        let expected: Vec<f32> = table["training_ddpm_alphas_cumprod"]
            .as_array()
            .expect("an array")
            .iter()
            .map(|v| v.as_f64().expect("a number") as f32)
            .collect();
        let s = DdpmSchedule::open_sora_plan_v13();
        let c = Approx::Close.compare(s.alphas_cumprod(), &expected);
        assert!(c.ok(), "alphas_cumprod: {c}");
        assert_eq!(s.alphas_cumprod()[999], 0.0);
        assert_eq!(s.betas()[999], 1.0);
    }

    #[test]
    fn min_snr_weights_and_sampling() {
        let s = DdpmSchedule::open_sora_plan_v13();
        // snr(0) is huge: min(snr, 5) / (snr + 1) ~ 5 / snr; at the zero-SNR end the weight is 0.
        assert_eq!(s.min_snr_weight(999, 5.0).expect("in range"), 0.0);
        let snr0 = s.snr(0).expect("in range");
        assert!((s.min_snr_weight(0, 5.0).expect("in range") - 5.0 / (snr0 + 1.0)).abs() < 1e-9);
        assert!(s.coefficients(1000).is_err());
        let mut rng = Rng::new(0);
        let all = s.sample_timesteps(&mut rng, 4000, 1, 0);
        assert!(all.iter().all(|&t| t < 1000));
        assert!(all.contains(&0) && all.contains(&999));
        let upper = s.sample_timesteps(&mut rng, 1000, 2, 1);
        assert!(upper.iter().all(|&t| (500..1000).contains(&t)), "rank 1 of 2 samples 500..999");
    }

    #[test]
    fn v_target_and_noisy_input() {
        type B = burn::backend::NdArray<f32>;
        let s = DdpmSchedule::open_sora_plan_v13();
        let batch = NoisedBatch {
            latents: TensorData::new(vec![1.0f32, 2.0], [2, 1, 1, 1, 1]),
            noise: TensorData::new(vec![0.5f32, -1.0], [2, 1, 1, 1, 1]),
            timesteps: vec![0, 999],
        };
        let out = s.targets::<B>(&batch, Some(5.0), &Default::default()).expect("valid batch");
        let (a0, b0) = s.coefficients(0).expect("in range");
        let noisy = out.noisy.into_data().to_vec::<f32>().expect("f32");
        let target = out.target.into_data().to_vec::<f32>().expect("f32");
        assert_eq!(noisy, vec![a0 * 1.0 + b0 * 0.5, -1.0]);
        assert_eq!(target, vec![a0 * 0.5 - b0 * 1.0, -2.0]);
        assert_eq!(out.weights[1], 0.0);
    }
}
