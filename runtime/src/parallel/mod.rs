//! Multi-device execution: ranks, the collectives they exchange values through, and (built on
//! them) the sequence-parallel / CFG-parallel DiT executor.
//!
//! One process, one worker thread per rank, each rank bound to one device (a CPU rank or a CUDA
//! device). Ranks exchange values only through a [`Collective`].

pub mod collective;
pub mod host;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod sp;
pub mod workers;

pub use collective::{Buffer, BufferMut, Collective, CollectiveError};
pub use host::{HostCollective, HostWorld};
pub use sp::{ParallelDit, ParallelPlan, RankProbe, RankTimings};
