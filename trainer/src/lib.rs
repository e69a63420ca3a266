//! osp-trainer: Burn models of Open-Sora-Plan v1.3 with the official PyTorch parameter names,
//! checkpoint reading/loading, and (later) losses, data and training.

pub mod checkpoint;
pub mod error;
pub mod io;
pub mod models;
pub mod remap;

pub use error::{Error, Result};
