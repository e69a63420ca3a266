//! osp-trainer: Burn models of Open-Sora-Plan v1.3 with the official PyTorch parameter names,
//! checkpoint reading/loading, losses and training.
//!
//! Models live under [`models`], one file per upstream class; checkpoint I/O under
//! [`checkpoint`]; the few unavoidable PyTorch <-> Burn renames in [`remap`]; the WFVAE training
//! losses and step under [`losses`].

pub mod checkpoint;
/// Command-line support shared with `osp-export`, which does not name `osp-runtime` directly.
pub use osp_runtime::cli;
pub mod data;
pub mod error;
pub mod io;
pub mod losses;
pub mod models;
pub mod remap;
pub mod text;
pub mod train;

pub use error::{Error, Result};
