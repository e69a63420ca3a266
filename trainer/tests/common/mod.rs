//! Shared helpers of the trainer integration tests: fixture paths and tensor comparison.
//!
//! Fixtures come from `../shared/reference/parity/` (official PyTorch outputs, made by
//! `../shared/reference/generators/parity.py`); `OSP_REFERENCE` overrides the directory.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::backend::NdArray;
use burn::tensor::{Tensor, TensorData};
use osp_graphs::Approx;

pub type B = NdArray<f32>;

pub fn reference_dir() -> PathBuf {
    std::env::var_os("OSP_REFERENCE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/reference")))
}

pub fn wfvae_tiny_dir() -> PathBuf {
    reference_dir().join("parity/wfvae_tiny")
}

pub fn values(t: &Tensor<B, 5>) -> Vec<f32> {
    t.to_data().convert::<f32>().to_vec::<f32>().expect("f32 tensor")
}

/// Asserts `actual` matches fixture tensor `name` at `level` (shape and values).
pub fn assert_matches(actual: &Tensor<B, 5>, io: &BTreeMap<String, TensorData>, name: &str, level: Approx) {
    let expected = io.get(name).unwrap_or_else(|| panic!("fixture has no `{name}`"));
    assert_eq!(actual.dims().to_vec(), expected.shape.to_vec(), "shape of `{name}`");
    let e = expected.to_vec::<f32>().expect("f32 fixture");
    let c = level.compare(&values(actual), &e);
    assert!(c.ok(), "`{name}` vs official at {level}: {c}");
}

/// Asserts two tensors of ours agree at `level`.
pub fn assert_same(actual: &Tensor<B, 5>, expected: &Tensor<B, 5>, what: &str, level: Approx) {
    assert_eq!(actual.dims(), expected.dims(), "shape of {what}");
    let c = level.compare(&values(actual), &values(expected));
    assert!(c.ok(), "{what} at {level}: {c}");
}
