//! The training random generator: the runtime's xoshiro256++ ([`osp_runtime::pipeline::noise::Xoshiro256`]),
//! whose whole state is four `u64`s, so a training run saves it in a checkpoint and continues with
//! exactly the same draws (noise, timesteps, CFG dropout, shuffling).
//!
//! Burn's backend generators are global and cannot be saved, so every random tensor of training
//! is drawn here on the host and uploaded.

pub use osp_runtime::pipeline::noise::Xoshiro256 as Rng;
