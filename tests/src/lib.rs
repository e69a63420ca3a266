//! Shared pieces of the osp integration suites: paths to the shared reference material, a plain-Rust
//! reference of the proof-model transformer block, and comparison helpers.
//!
//! Suites live in `tests/tests/*.rs`; each runs its body on every CPU backend (`ort-cpu`, `tract`).

pub mod reference;

use std::path::PathBuf;

use anyhow::{bail, Result};
use osp_graphs::{Approx, Comparison};

/// The workspace root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the workspace").to_path_buf()
}

/// `../shared/reference` beside the checkout (parity fixtures, manifests, assets).
pub fn shared_reference() -> PathBuf {
    repo_root().join("../shared/reference")
}

/// Compares two f32 slices at a named level; the error carries the full comparison report.
pub fn check_close(what: &str, actual: &[f32], expected: &[f32], level: Approx) -> Result<Comparison> {
    let c = level.compare(actual, expected);
    if !c.ok() {
        bail!("{what}: {c}");
    }
    Ok(c)
}

/// Every backend the CPU suites run on.
pub fn cpu_backends() -> Vec<osp_runtime::session::Backend> {
    vec![osp_runtime::session::Backend::OrtCpu, osp_runtime::session::Backend::Tract]
}
