//! Training infrastructure shared by every stage (DiT now, WFVAE later): AdamW, learning-rate
//! schedules, gradient accumulation, global-norm clipping, data-parallel replicas, EMA,
//! checkpoints in the official parameter names, a restorable random generator and JSONL metrics.
//!
//! Upstream: `opensora/train/train_t2v_diffusers.py` (accelerate + diffusers) at
//! <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/train/train_t2v_diffusers.py>.

pub mod checkpoint;
mod collective;
pub mod diffusion;
pub mod dit;
pub mod ema;
pub mod grads;
pub mod latent_stats;
pub mod lr;
pub mod metrics;
pub mod optim;
pub mod rng;
pub mod trainer;

pub use checkpoint::{
    check_checkpoint, official_tensors, resolve_resume, save_checkpoint, CheckpointContents, CheckpointFiles,
    TrainingState,
};
pub use ema::{Ema, EmaConfig};
pub use lr::{LrSchedule, LrSchedulerKind};
pub use metrics::MetricsLog;
pub use optim::{AdamW, AdamWConfig};
pub use rng::Rng;
pub use trainer::{LossScaleConfig, LossScaleState, OptimConfig, StepStats, Trainer, WeightsLayout};
