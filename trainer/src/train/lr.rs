//! Learning-rate schedules as diffusers' `get_scheduler` builds them for upstream's
//! `--lr_scheduler` (`constant`, `constant_with_warmup`, `linear`, `cosine`) with
//! `--lr_warmup_steps`. `lr(step)` is the rate of optimizer update number `step` (0-based), as
//! torch's `LambdaLR` applies it.
// https://github.com/huggingface/diffusers/blob/v0.30.2/src/diffusers/optimization.py

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// `--lr_scheduler`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum LrSchedulerKind {
    /// The base rate throughout (warm-up steps ignored, as diffusers does).
    Constant,
    /// Linear ramp from 0 over the warm-up steps, then constant.
    ConstantWithWarmup,
    /// Warm-up, then linear decay to 0 at `max_train_steps`.
    Linear,
    /// Warm-up, then half a cosine to 0 at `max_train_steps`.
    Cosine,
}

/// A learning-rate schedule.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub kind: LrSchedulerKind,
    pub learning_rate: f64,
    pub warmup_steps: usize,
    /// Needed by `linear` and `cosine`.
    pub total_steps: usize,
}

impl LrSchedule {
    pub fn new(kind: LrSchedulerKind, learning_rate: f64, warmup_steps: usize, total_steps: usize) -> Result<Self> {
        if !(learning_rate.is_finite() && learning_rate >= 0.0) {
            return Err(Error::Config(format!("--learning_rate must be finite and >= 0, got {learning_rate}")));
        }
        if matches!(kind, LrSchedulerKind::Linear | LrSchedulerKind::Cosine) && total_steps <= warmup_steps {
            return Err(Error::Config(format!(
                "--lr_scheduler {kind:?} needs --max_train_steps ({total_steps}) > --lr_warmup_steps ({warmup_steps})"
            )));
        }
        Ok(LrSchedule { kind, learning_rate, warmup_steps, total_steps })
    }

    /// The rate of update `step` (0-based).
    pub fn lr(&self, step: usize) -> f64 {
        let warm = |s: usize| {
            if s < self.warmup_steps {
                Some(s as f64 / self.warmup_steps.max(1) as f64)
            } else {
                None
            }
        };
        let factor = match self.kind {
            LrSchedulerKind::Constant => 1.0,
            LrSchedulerKind::ConstantWithWarmup => warm(step).unwrap_or(1.0),
            LrSchedulerKind::Linear => warm(step).unwrap_or_else(|| {
                let left = self.total_steps.saturating_sub(step) as f64;
                (left / (self.total_steps - self.warmup_steps).max(1) as f64).max(0.0)
            }),
            LrSchedulerKind::Cosine => warm(step).unwrap_or_else(|| {
                let progress = (step - self.warmup_steps) as f64 / (self.total_steps - self.warmup_steps).max(1) as f64;
                (0.5 * (1.0 + (std::f64::consts::PI * progress).cos())).max(0.0)
            }),
        };
        self.learning_rate * factor
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_with_warmup_ramps_linearly_from_zero() {
        let s = LrSchedule::new(LrSchedulerKind::ConstantWithWarmup, 2.0, 4, 0).expect("valid");
        let lrs: Vec<f64> = (0..6).map(|i| s.lr(i)).collect();
        assert_eq!(lrs, vec![0.0, 0.5, 1.0, 1.5, 2.0, 2.0]);
        let c = LrSchedule::new(LrSchedulerKind::Constant, 1e-4, 4, 0).expect("valid");
        assert_eq!(c.lr(0), 1e-4);
    }

    #[test]
    fn decaying_schedules_end_at_zero_and_need_a_length() {
        let l = LrSchedule::new(LrSchedulerKind::Linear, 1.0, 2, 10).expect("valid");
        assert_eq!(l.lr(2), 1.0);
        assert_eq!(l.lr(6), 0.5);
        assert_eq!(l.lr(10), 0.0);
        let c = LrSchedule::new(LrSchedulerKind::Cosine, 1.0, 0, 10).expect("valid");
        assert!((c.lr(5) - 0.5).abs() < 1e-12);
        assert!(LrSchedule::new(LrSchedulerKind::Cosine, 1.0, 10, 10).is_err());
    }
}
