//! Helpers shared by the runtime's integration tests. The fixtures come from
//! `tests/fixtures/make_fixtures.py` (see its header for how to regenerate them).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use osp_graphs::{Approx, BundleManifest};
use osp_runtime::Tensor;

pub fn fixture_bundle() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bundle")
}

/// A writable copy of the fixture bundle.
pub fn bundle_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir should be creatable");
    for entry in std::fs::read_dir(fixture_bundle()).expect("fixture bundle should exist") {
        let entry = entry.expect("fixture entry should be readable");
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).expect("fixture should copy");
    }
    dir
}

pub fn edit_manifest(dir: &Path, edit: impl FnOnce(&mut BundleManifest)) {
    let mut m = BundleManifest::load(dir).expect("fixture manifest should load");
    edit(&mut m);
    m.save(dir).expect("manifest should save");
}

pub fn arr<T: Clone>(shape: &[usize], values: Vec<T>) -> ArrayD<T> {
    ArrayD::from_shape_vec(IxDyn(shape), values).expect("values should fill the shape")
}

pub fn f32_tensor(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    Tensor::F32(arr(shape, (0..n).map(|i| i as f32 * 0.25 - 1.0).collect()))
}

pub fn assert_approx(actual: &Tensor, expected: &Tensor, level: Approx) {
    assert_eq!(actual.dtype(), expected.dtype());
    assert_eq!(actual.shape(), expected.shape());
    let c = level.compare(&actual.to_f32_vec(), &expected.to_f32_vec());
    assert!(c.ok(), "{c:?}");
}

/// `y = x @ w + b` with the fixture's `w = arange(12).reshape(4, 3) / 10`, `b = [1, -1, 0.5]`.
pub fn linear_reference(x: &Tensor) -> Tensor {
    let x = x.as_f32().expect("linear input is f32");
    let b = x.shape()[0];
    let w: Vec<f32> = (0..12).map(|v| v as f32 / 10.0).collect();
    let bias = [1.0f32, -1.0, 0.5];
    let mut y = Vec::with_capacity(b * 3);
    for r in 0..b {
        for c in 0..3 {
            let mut acc = bias[c];
            for k in 0..4 {
                acc += x[[r, k]] * w[k * 3 + c];
            }
            y.push(acc);
        }
    }
    Tensor::F32(arr(&[b, 3], y))
}
