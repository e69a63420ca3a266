//! Shared helpers of the trainer integration tests: fixture paths, tensor comparison and the
//! `osp-train` binary.
//!
//! Fixtures come from `../shared/reference/parity/` (official PyTorch outputs, made by
//! `../shared/reference/generators/parity.py`); `OSP_REFERENCE` overrides the directory.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

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

/// Runs `osp-train args`, failing the test with its log on error; returns its stderr (the log).
pub fn osp_train(args: &[String]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_osp-train")).args(args).output().expect("spawn osp-train");
    assert!(out.status.success(), "osp-train {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A path as a command-line argument.
pub fn arg(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_string()
}

/// `osp-train shapes`: `count` clips of `frames` frames, `size` x `size`, into `out`.
pub fn shapes(out: &Path, count: usize, frames: usize, size: usize, seed: u64) {
    let args = ["shapes", "--out", &arg(out), "--count", &count.to_string(), "--num-frames", &frames.to_string()];
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    for (flag, v) in [("--height", size), ("--width", size)] {
        args.extend([flag.to_string(), v.to_string()]);
    }
    args.extend(["--seed".to_string(), seed.to_string(), "--log".to_string(), "error".to_string()]);
    osp_train(&args);
}
