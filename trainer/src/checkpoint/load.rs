//! Strict loading of a [`Checkpoint`] into a Burn module (STYLE rule 5).
//!
//! The module's tensors are named with official keys through [`remap::burn_to_official`];
//! every name must then match one-to-one with the checkpoint, with equal shape and dtype.
//! Fixed tensors (non-trainable constants the model builds itself, such as the Haar wavelet
//! kernels) may be absent; when present they must equal the built-in value and are not
//! overwritten.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use burn::store::{ModuleSnapshot, TensorSnapshot};
use burn::tensor::backend::Backend;

use super::Checkpoint;
use crate::error::{Error, Result};
use crate::remap;

/// How strict a load is.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Accept missing and unused tensors (reported in [`LoadReport`]); shape, dtype and fixed-value
    /// mismatches are errors regardless.
    pub allow_partial: bool,
}

/// What a load did, by official name.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Tensors copied from the checkpoint.
    pub applied: Vec<String>,
    /// Fixed tensors kept at their built-in value (absent from, or equal in, the checkpoint).
    pub builtin: Vec<String>,
    /// Model tensors the checkpoint lacks (only with `allow_partial`).
    pub missing: Vec<String>,
    /// Checkpoint tensors the model does not use (only with `allow_partial`).
    pub unused: Vec<String>,
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "applied {}, built-in {}, missing {}, unused {}",
            self.applied.len(),
            self.builtin.len(),
            self.missing.len(),
            self.unused.len()
        )?;
        for m in &self.missing {
            writeln!(f, "  missing: {m}")?;
        }
        for u in &self.unused {
            writeln!(f, "  unused:  {u}")?;
        }
        Ok(())
    }
}

/// Loads `checkpoint` into `module`. `fixed` names the module's built-in constant tensors
/// (official keys). On error the module is left untouched.
pub fn load_module<B: Backend, M: ModuleSnapshot<B>>(
    module: &mut M,
    checkpoint: &Checkpoint,
    fixed: &BTreeSet<String>,
    options: LoadOptions,
) -> Result<LoadReport> {
    let expected: BTreeMap<String, TensorSnapshot> = module
        .collect(None, Some(remap::burn_to_official()), remap::SKIP_ENUM_VARIANTS)
        .into_iter()
        .map(|s| (s.full_path(), s))
        .collect();

    let mut problems = Vec::new();
    let mut report = LoadReport::default();
    let mut to_apply = Vec::new();
    for (name, want) in &expected {
        let Some(have) = checkpoint.get(name) else {
            if fixed.contains(name) {
                report.builtin.push(name.clone());
            } else {
                report.missing.push(name.clone());
            }
            continue;
        };
        if have.shape != want.shape {
            problems.push(Error::ShapeMismatch {
                path: name.clone(),
                expected: want.shape.to_vec(),
                found: have.shape.to_vec(),
            });
            continue;
        }
        if have.dtype != want.dtype {
            problems.push(Error::DTypeMismatch {
                path: name.clone(),
                expected: format!("{:?}", want.dtype),
                found: format!("{:?}", have.dtype),
            });
            continue;
        }
        if fixed.contains(name) {
            match max_abs_diff(name, checkpoint, have, want) {
                Ok(0.0) => report.builtin.push(name.clone()),
                Ok(max_abs) => problems.push(Error::FixedTensorMismatch { path: name.clone(), max_abs }),
                Err(e) => problems.push(e),
            }
            continue;
        }
        report.applied.push(name.clone());
        to_apply.push(have.clone());
    }
    report.unused = checkpoint.names().filter(|n| !expected.contains_key(*n)).map(str::to_string).collect();
    if !options.allow_partial {
        problems.extend(report.missing.iter().map(|p| Error::MissingTensor { path: p.clone() }));
        problems.extend(report.unused.iter().map(|p| Error::UnexpectedTensor { path: p.clone() }));
    }
    match problems.len() {
        0 => {}
        1 => return Err(problems.remove(0)),
        _ => return Err(Error::Incompatible { path: checkpoint.path.clone(), problems }),
    }

    let result = module.apply(to_apply, None, Some(remap::official_to_burn()), remap::SKIP_ENUM_VARIANTS);
    if let Some(e) = result.errors.first() {
        return Err(Error::checkpoint(&checkpoint.path, format!("applying tensors failed: {e}")));
    }
    if result.applied.len() != report.applied.len() {
        return Err(Error::checkpoint(
            &checkpoint.path,
            format!(
                "{} tensors validated but burn-store applied {}; a remap rule is missing",
                report.applied.len(),
                result.applied.len()
            ),
        ));
    }
    tracing::info!(path = %checkpoint.path.display(), source = %checkpoint.source, "{}", report.to_string().trim_end());
    Ok(report)
}

fn max_abs_diff(name: &str, checkpoint: &Checkpoint, have: &TensorSnapshot, want: &TensorSnapshot) -> Result<f64> {
    let load = |s: &TensorSnapshot| -> Result<Vec<f64>> {
        let data = s.to_data().map_err(|e| Error::checkpoint(&checkpoint.path, format!("reading `{name}`: {e:?}")))?;
        let data = data.convert::<f64>();
        data.to_vec::<f64>().map_err(|e| Error::checkpoint(&checkpoint.path, format!("reading `{name}`: {e:?}")))
    };
    let (a, b) = (load(have)?, load(want)?);
    Ok(a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max))
}
