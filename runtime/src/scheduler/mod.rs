//! The sampling schedulers of Open-Sora-Plan v1.3, reproducing diffusers 0.30.2 value for value.
//!
//! Upstream: `opensora/utils/sample_utils.py::get_scheduler` at PKU-YuanGroup/Open-Sora-Plan
//! commit 9fa322fb builds a diffusers scheduler from `--sample_method` with
//! `prediction_type`, `rescale_betas_zero_snr` and `timestep_spacing="trailing"` (when zero-SNR is
//! on), `clip_sample=False` for DDIM, and PNDM without the zero-SNR flag. The v1.3 release samples
//! with `EulerAncestralDiscrete`, v-prediction and zero-SNR ([`SchedulerConfig::open_sora_plan_v13`]).
//!
//! A [`Scheduler`] is driven by step index: `set_timesteps(n)`, then for each `i` in
//! `0..timesteps().len()` the model runs on `scale_model_input(x, i)` at `timesteps()[i]` and
//! `x = step(model_output, i, x, noise)`. Ancestral schedulers take the per-step noise explicitly
//! (so a run of another implementation can be replayed); the others ignore it.
//!
//! ```
//! # fn main() -> osp_runtime::Result<()> {
//! use osp_runtime::scheduler::{SampleMethod, SchedulerConfig};
//! let config = SchedulerConfig::open_sora_plan_v13(SampleMethod::EulerAncestralDiscrete);
//! let mut scheduler = SampleMethod::EulerAncestralDiscrete.build(&config)?;
//! scheduler.set_timesteps(100)?;
//! assert_eq!(scheduler.timesteps()[..3], [999.0, 989.0, 979.0]);
//! // sqrt(2^24 - 1): the largest sigma under zero-SNR, ~4096.
//! assert!((scheduler.init_noise_sigma() - 4096.0).abs() < 1e-3);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::path::Path;

use ndarray::{ArrayD, Zip};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub mod ddim;
pub mod dpm_solver;
pub mod euler;
pub mod euler_ancestral;
pub mod pndm;
pub mod schedule;
pub mod training;

pub use ddim::DdimScheduler;
pub use dpm_solver::DpmSolverMultistepScheduler;
pub use euler::EulerDiscreteScheduler;
pub use euler_ancestral::EulerAncestralDiscreteScheduler;
pub use pndm::PndmScheduler;
pub use training::TrainingSchedule;

/// The `--sample_method` names of upstream `sample.py` that osp implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
pub enum SampleMethod {
    /// Euler ancestral (the v1.3 release default); needs per-step noise.
    #[value(name = "EulerAncestralDiscrete")]
    EulerAncestralDiscrete,
    /// DDIM with eta = 0 (deterministic).
    #[value(name = "DDIM")]
    #[serde(rename = "DDIM")]
    Ddim,
    /// Euler (deterministic, s_churn = 0).
    #[value(name = "EulerDiscrete")]
    EulerDiscrete,
    /// DPM-Solver++ (2M), multistep, second order.
    #[value(name = "DPMSolverMultistep")]
    #[serde(rename = "DPMSolverMultistep")]
    DpmSolverMultistep,
    /// PNDM (Runge-Kutta warm-up, then linear multistep); upstream drops the zero-SNR flag.
    #[value(name = "PNDM")]
    #[serde(rename = "PNDM")]
    Pndm,
}

impl SampleMethod {
    /// The upstream name (`--sample_method` value).
    pub fn name(self) -> &'static str {
        match self {
            SampleMethod::EulerAncestralDiscrete => "EulerAncestralDiscrete",
            SampleMethod::Ddim => "DDIM",
            SampleMethod::EulerDiscrete => "EulerDiscrete",
            SampleMethod::DpmSolverMultistep => "DPMSolverMultistep",
            SampleMethod::Pndm => "PNDM",
        }
    }

    /// The diffusers class this method instantiates (`_class_name` of its config).
    pub fn class_name(self) -> &'static str {
        match self {
            SampleMethod::EulerAncestralDiscrete => "EulerAncestralDiscreteScheduler",
            SampleMethod::Ddim => "DDIMScheduler",
            SampleMethod::EulerDiscrete => "EulerDiscreteScheduler",
            SampleMethod::DpmSolverMultistep => "DPMSolverMultistepScheduler",
            SampleMethod::Pndm => "PNDMScheduler",
        }
    }

    /// The method whose diffusers class is `class_name`, if osp implements it.
    pub fn from_class_name(class_name: &str) -> Option<Self> {
        [
            SampleMethod::EulerAncestralDiscrete,
            SampleMethod::Ddim,
            SampleMethod::EulerDiscrete,
            SampleMethod::DpmSolverMultistep,
            SampleMethod::Pndm,
        ]
        .into_iter()
        .find(|m| m.class_name() == class_name)
    }

    /// Builds this scheduler from `config` (keys the class does not have are ignored, as
    /// diffusers' `ConfigMixin` does).
    pub fn build(self, config: &SchedulerConfig) -> Result<Box<dyn Scheduler>> {
        Ok(match self {
            SampleMethod::EulerAncestralDiscrete => Box::new(EulerAncestralDiscreteScheduler::new(config)?),
            SampleMethod::Ddim => Box::new(DdimScheduler::new(config)?),
            SampleMethod::EulerDiscrete => Box::new(EulerDiscreteScheduler::new(config)?),
            SampleMethod::DpmSolverMultistep => Box::new(DpmSolverMultistepScheduler::new(config)?),
            SampleMethod::Pndm => Box::new(PndmScheduler::new(config)?),
        })
    }
}

impl fmt::Display for SampleMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `beta_schedule` values implemented here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    Linear,
    ScaledLinear,
}

/// `prediction_type`: what the model predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    Epsilon,
    VPrediction,
    Sample,
}

/// `timestep_spacing`: how inference timesteps are placed on the training grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    Linspace,
    Leading,
    Trailing,
}

/// A diffusers scheduler config (`scheduler_config.json`), keys named as in diffusers. Keys a
/// scheduler class does not take are ignored by it. `None` means "the class default" where the
/// classes disagree (`set_alpha_to_one`: DDIM true, PNDM false; `timestep_spacing`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchedulerConfig {
    #[serde(rename = "_class_name", default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    #[serde(default = "default_num_train_timesteps")]
    pub num_train_timesteps: usize,
    #[serde(default = "default_beta_start")]
    pub beta_start: f64,
    #[serde(default = "default_beta_end")]
    pub beta_end: f64,
    #[serde(default = "default_beta_schedule")]
    pub beta_schedule: BetaSchedule,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trained_betas: Option<Vec<f64>>,
    #[serde(default = "default_prediction_type")]
    pub prediction_type: PredictionType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestep_spacing: Option<TimestepSpacing>,
    #[serde(default)]
    pub steps_offset: usize,
    #[serde(default)]
    pub rescale_betas_zero_snr: bool,
    /// DDIM only; diffusers' default is true, upstream passes false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_sample: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_sample_range: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_alpha_to_one: Option<bool>,
    /// Dynamic thresholding (DDIM, DPM-Solver) is not implemented; `true` is rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thresholding: Option<bool>,
    /// PNDM only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skip_prk_steps: Option<bool>,
    /// DPM-Solver only: 1 or 2 (default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub solver_order: Option<usize>,
    /// DPM-Solver only: `dpmsolver++` (the only one implemented).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm_type: Option<String>,
    /// DPM-Solver only: `midpoint` (default) or `heun`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub solver_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lower_order_final: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub euler_at_final: Option<bool>,
    /// Euler and DPM-Solver: `zero` (default) or `sigma_min`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub final_sigmas_type: Option<String>,
    /// Karras sigmas are not implemented; `true` is rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_karras_sigmas: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub use_lu_lambdas: Option<bool>,
    /// EulerDiscrete only: `linear` (the only one implemented).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interpolation_type: Option<String>,
    /// EulerDiscrete only: `discrete` (the only one implemented).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestep_type: Option<String>,
    /// DPM-Solver only: must be absent, null or -inf (no clipping).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambda_min_clipped: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variance_type: Option<String>,
}

fn default_num_train_timesteps() -> usize {
    1000
}
fn default_beta_start() -> f64 {
    1e-4
}
fn default_beta_end() -> f64 {
    0.02
}
fn default_beta_schedule() -> BetaSchedule {
    BetaSchedule::Linear
}
fn default_prediction_type() -> PredictionType {
    PredictionType::Epsilon
}

impl Default for SchedulerConfig {
    /// diffusers' defaults (linear betas 1e-4..0.02 over 1000 steps, epsilon prediction).
    fn default() -> Self {
        SchedulerConfig {
            class_name: None,
            num_train_timesteps: default_num_train_timesteps(),
            beta_start: default_beta_start(),
            beta_end: default_beta_end(),
            beta_schedule: default_beta_schedule(),
            trained_betas: None,
            prediction_type: default_prediction_type(),
            timestep_spacing: None,
            steps_offset: 0,
            rescale_betas_zero_snr: false,
            clip_sample: None,
            clip_sample_range: None,
            set_alpha_to_one: None,
            thresholding: None,
            skip_prk_steps: None,
            solver_order: None,
            algorithm_type: None,
            solver_type: None,
            lower_order_final: None,
            euler_at_final: None,
            final_sigmas_type: None,
            use_karras_sigmas: None,
            use_lu_lambdas: None,
            interpolation_type: None,
            timestep_type: None,
            lambda_min_clipped: None,
            variance_type: None,
        }
    }
}

impl SchedulerConfig {
    /// The kwargs upstream `get_scheduler` passes for `method` in the v1.3 release command
    /// (`--prediction_type v_prediction --rescale_betas_zero_snr`).
    // https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/utils/sample_utils.py#L38-L79
    pub fn open_sora_plan_v13(method: SampleMethod) -> Self {
        let mut config = SchedulerConfig {
            class_name: Some(method.class_name().to_string()),
            prediction_type: PredictionType::VPrediction,
            rescale_betas_zero_snr: true,
            timestep_spacing: Some(TimestepSpacing::Trailing),
            ..SchedulerConfig::default()
        };
        match method {
            SampleMethod::Ddim => config.clip_sample = Some(false),
            SampleMethod::Pndm => config.rescale_betas_zero_snr = false,
            _ => {}
        }
        config
    }

    /// Reads a diffusers `scheduler_config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        serde_json::from_str(&text)
            .map_err(|e| Error::InvalidSchedulerConfig { key: path.display().to_string(), why: e.to_string() })
    }

    /// The method named by `_class_name`, if present and implemented.
    pub fn sample_method(&self) -> Result<Option<SampleMethod>> {
        match &self.class_name {
            None => Ok(None),
            Some(name) => SampleMethod::from_class_name(name).map(Some).ok_or_else(|| Error::InvalidSchedulerConfig {
                key: "_class_name".into(),
                why: format!(
                    "`{name}` is not implemented (implemented: EulerAncestralDiscreteScheduler, \
                         DDIMScheduler, EulerDiscreteScheduler, DPMSolverMultistepScheduler, PNDMScheduler)"
                ),
            }),
        }
    }

    pub(crate) fn reject_true(&self, key: &str, value: Option<bool>) -> Result<()> {
        if value == Some(true) {
            return Err(Error::InvalidSchedulerConfig { key: key.into(), why: "`true` is not implemented".into() });
        }
        Ok(())
    }

    pub(crate) fn expect_str(&self, key: &str, value: &Option<String>, allowed: &[&str]) -> Result<()> {
        match value {
            Some(v) if !allowed.contains(&v.as_str()) => Err(Error::InvalidSchedulerConfig {
                key: key.into(),
                why: format!("`{v}` is not implemented (implemented: {})", allowed.join(", ")),
            }),
            _ => Ok(()),
        }
    }
}

/// Copies a boxed scheduler with its state: a copy of one fresh from `set_timesteps` starts a run,
/// so a request builds its scheduler once and each prompt runs a copy.
pub trait SchedulerClone {
    fn clone_box(&self) -> Box<dyn Scheduler>;
}

impl<T: Scheduler + Clone + 'static> SchedulerClone for T {
    fn clone_box(&self) -> Box<dyn Scheduler> {
        Box::new(self.clone())
    }
}

impl Clone for Box<dyn Scheduler> {
    fn clone(&self) -> Self {
        self.clone_box()
    }
}

/// A sampling scheduler driven by step index (see the module docs for the loop).
pub trait Scheduler: Send + SchedulerClone {
    /// Which upstream method this is.
    fn method(&self) -> SampleMethod;

    /// Computes the inference timesteps for `num_inference_steps` (1..=num_train_timesteps) and
    /// resets any multistep state.
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()>;

    /// The timesteps the model is evaluated at, one per `step` call (empty before
    /// `set_timesteps`). PNDM has more of them than sampling steps (its Runge-Kutta warm-up).
    fn timesteps(&self) -> &[f32];

    /// The sigmas (`timesteps().len() + 1` values, the last one final), for the schedulers that
    /// define them (`None` by default).
    fn sigmas(&self) -> Option<&[f32]> {
        None
    }

    /// The standard deviation of the initial noise: initial latents are `randn * init_noise_sigma`
    /// (1 by default; the Euler schedulers start at their largest sigma).
    fn init_noise_sigma(&self) -> f32 {
        1.0
    }

    /// Whether `step` needs a noise tensor (ancestral sampling).
    fn needs_noise(&self) -> bool {
        false
    }

    /// Replaces the computed schedule by recorded `timesteps` and `sigmas` (`timesteps.len() + 1`
    /// values), to replay a run made elsewhere bit for bit: torch's float32 schedule differs between
    /// CPUs by an ulp here and there (its MKL `sqrt` is not always correctly rounded), and the first
    /// Euler step `x + (x - x0)/σ·(σ_down - σ)` cancels two ~4096-sized terms, so an ulp in σ moves
    /// the result by ~1e-3. Only the sigma-driven Euler schedulers support it.
    fn set_recorded_schedule(&mut self, timesteps: &[f32], sigmas: &[f32]) -> Result<()> {
        let _ = (timesteps, sigmas);
        Err(Error::SchedulerStep {
            method: self.method().name().into(),
            why: "a recorded schedule can only be set on the Euler schedulers".into(),
        })
    }

    /// The model input for step `step_index`: the sample itself by default (the Euler schedulers
    /// divide by `sqrt(sigma^2 + 1)`).
    fn scale_model_input(&self, sample: &ArrayD<f32>, step_index: usize) -> Result<ArrayD<f32>> {
        check_index(self.method(), step_index, self.timesteps().len())?;
        Ok(sample.clone())
    }

    /// One denoising step from `sample` at `timesteps()[step_index]` given the (guided) model
    /// output; `noise` is the standard normal noise of this step, required when
    /// [`Scheduler::needs_noise`], ignored otherwise. Checks the input, then runs
    /// [`Scheduler::step_checked`].
    fn step(
        &mut self,
        model_output: &ArrayD<f32>,
        step_index: usize,
        sample: &ArrayD<f32>,
        noise: Option<&ArrayD<f32>>,
    ) -> Result<ArrayD<f32>> {
        let method = self.method();
        check_index(method, step_index, self.timesteps().len())?;
        check_shape(method, "model_output", model_output, sample)?;
        let noise = if self.needs_noise() {
            let noise =
                noise.ok_or_else(|| Error::MissingSchedulerNoise { method: method.name().into(), step: step_index })?;
            check_shape(method, "noise", noise, sample)?;
            Some(noise)
        } else {
            None
        };
        self.step_checked(StepInput { model_output, step_index, sample, noise })
    }

    /// The step of each scheduler on input [`Scheduler::step`] has checked (call `step`).
    fn step_checked(&mut self, input: StepInput<'_>) -> Result<ArrayD<f32>>;
}

/// The input of one [`Scheduler::step`], checked: `step_index` is within the timesteps,
/// `model_output` and `noise` have the sample's shape, and `noise` is present exactly when the
/// scheduler [needs it](Scheduler::needs_noise).
#[derive(Debug, Clone, Copy)]
pub struct StepInput<'a> {
    pub model_output: &'a ArrayD<f32>,
    pub step_index: usize,
    pub sample: &'a ArrayD<f32>,
    pub noise: Option<&'a ArrayD<f32>>,
}

/// The JSON `osp schedule` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleSummary {
    pub sample_method: SampleMethod,
    pub num_sampling_steps: usize,
    pub timesteps: Vec<f32>,
    pub sigmas: Option<Vec<f32>>,
    pub init_noise_sigma: f32,
}

impl ScheduleSummary {
    /// Builds `method` from `config`, sets `num_sampling_steps` and reads off the schedule.
    pub fn new(method: SampleMethod, config: &SchedulerConfig, num_sampling_steps: usize) -> Result<Self> {
        let mut scheduler = method.build(config)?;
        scheduler.set_timesteps(num_sampling_steps)?;
        Ok(ScheduleSummary {
            sample_method: method,
            num_sampling_steps,
            timesteps: scheduler.timesteps().to_vec(),
            sigmas: scheduler.sigmas().map(<[f32]>::to_vec),
            init_noise_sigma: scheduler.init_noise_sigma(),
        })
    }
}

/// Checks that `step_index` is within the timesteps set by `set_timesteps`.
pub(crate) fn check_index(method: SampleMethod, step_index: usize, len: usize) -> Result<()> {
    if len == 0 {
        return Err(Error::SchedulerStep {
            method: method.name().into(),
            why: "call set_timesteps before stepping".into(),
        });
    }
    if step_index >= len {
        return Err(Error::SchedulerStep {
            method: method.name().into(),
            why: format!("step index {step_index} is out of range (there are {len} timesteps)"),
        });
    }
    Ok(())
}

/// Checks that `tensor` has the shape of `sample`.
pub(crate) fn check_shape(method: SampleMethod, name: &str, tensor: &ArrayD<f32>, sample: &ArrayD<f32>) -> Result<()> {
    if tensor.shape() != sample.shape() {
        return Err(Error::SchedulerStep {
            method: method.name().into(),
            why: format!("{name} has shape {:?} but the sample has shape {:?}", tensor.shape(), sample.shape()),
        });
    }
    Ok(())
}

/// A multistep scheduler holds the outputs of the steps before `expected`, so `step_index` must
/// be `expected`.
pub(crate) fn check_next_step(method: SampleMethod, expected: usize, step_index: usize) -> Result<()> {
    if step_index != expected {
        return Err(Error::SchedulerStep {
            method: method.name().into(),
            why: format!(
                "multistep state expects step {expected} next, got {step_index} (call set_timesteps to restart)"
            ),
        });
    }
    Ok(())
}

/// Element-wise `f(a, b)` over two arrays of the same shape (checked by the caller).
pub(crate) fn zip2(a: &ArrayD<f32>, b: &ArrayD<f32>, f: impl Fn(f32, f32) -> f32) -> ArrayD<f32> {
    Zip::from(a).and(b).map_collect(|&x, &y| f(x, y))
}

/// Element-wise `f(a, b, c)` over three arrays of the same shape (checked by the caller).
pub(crate) fn zip3(a: &ArrayD<f32>, b: &ArrayD<f32>, c: &ArrayD<f32>, f: impl Fn(f32, f32, f32) -> f32) -> ArrayD<f32> {
    Zip::from(a).and(b).and(c).map_collect(|&x, &y, &z| f(x, y, z))
}
