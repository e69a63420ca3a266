//! Graph sessions on every compiled-in backend, on the fixture bundle made by
//! `tests/fixtures/make_fixtures.py`. Each check is written once and instantiated per backend.

mod common;

use common::*;
use half::{bf16, f16};
use osp_graphs::{Approx, DType, Dim};
use osp_runtime::{Backend, Bundle, Error, SessionOptions, Tensor};

fn opts(backend: &Backend) -> SessionOptions {
    SessionOptions::new(backend.clone()).with_threads(1)
}

fn add_runs_at_several_shapes(backend: Backend) {
    let bundle = Bundle::open(fixture_bundle()).unwrap();
    let mut s = bundle.session("add", &opts(&backend)).unwrap();
    for shape in [[2, 3], [1, 5], [2, 3]] {
        let x = f32_tensor(&shape);
        let out = s.run(&[("x", &x)]).unwrap();
        let expected = Tensor::F32(x.as_f32().unwrap().mapv(|v| v + 1.0));
        assert_approx(&out["y"], &expected, Approx::Exact);
    }
    // A transposed (non-contiguous) input is read in logical order.
    let x = f32_tensor(&[3, 2]);
    let xt = Tensor::F32(x.as_f32().unwrap().clone().reversed_axes());
    let out = s.run(&[("x", &xt)]).unwrap();
    assert_eq!(out["y"].to_f32_vec(), xt.to_f32_vec().iter().map(|v| v + 1.0).collect::<Vec<_>>());
}

fn every_dtype_in_and_out(backend: Backend) {
    let bundle = Bundle::open(fixture_bundle()).unwrap();
    let mut s = bundle.session("dtypes", &opts(&backend)).unwrap();
    let h = Tensor::F16(arr(&[3], [1.5f32, -2.0, 0.25].map(f16::from_f32).to_vec()));
    let l = Tensor::I64(arr(&[3], vec![1, -5, i64::MAX - 1]));
    let i = Tensor::I32(arr(&[3], vec![1, 2, -3]));
    let u = Tensor::U8(arr(&[3], vec![0, 7, 255]));
    let m = Tensor::Bool(arr(&[3], vec![true, false, true]));
    let out = s.run(&[("m", &m), ("h", &h), ("l", &l), ("i", &i), ("u", &u)]).unwrap();
    assert_eq!(out["h_out"], Tensor::F16(arr(&[3], [3.0f32, -4.0, 0.5].map(f16::from_f32).to_vec())));
    assert_eq!(out["l_out"], Tensor::I64(arr(&[3], vec![2, -4, i64::MAX])));
    assert_eq!(out["i_out"], Tensor::I32(arr(&[3], vec![3, 6, -9])));
    assert_eq!(out["u_out"], u);
    assert_eq!(out["m_out"], Tensor::Bool(arr(&[3], vec![false, true, false])));
}

fn external_data_model_loads_and_runs(backend: Backend) {
    let bundle = Bundle::open(fixture_bundle()).unwrap();
    assert_eq!(bundle.manifest().graphs["linear"].external_data, vec!["linear.onnx.data".to_string()]);
    let mut s = bundle.session("linear", &opts(&backend)).unwrap();
    let x = f32_tensor(&[2, 4]);
    let out = s.run(&[("x", &x)]).unwrap();
    assert_approx(&out["y"], &linear_reference(&x), Approx::Close);
}

fn truncated_model_is_a_load_error_naming_the_file(backend: Backend) {
    let dir = bundle_copy();
    let path = dir.path().join("dtypes.onnx");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = Bundle::open(dir.path()).unwrap().session("dtypes", &opts(&backend)).unwrap_err();
    match &err {
        Error::ModelLoad { path: p, .. } => assert_eq!(p, &path),
        other => panic!("expected ModelLoad, got {other}"),
    }
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
}

fn bad_inputs_are_rejected_before_running(backend: Backend) {
    let bundle = Bundle::open(fixture_bundle()).unwrap();
    let mut s = bundle.session("linear", &opts(&backend)).unwrap();
    let cases: Vec<(Vec<(&str, Tensor)>, &str)> = vec![
        (vec![], "missing input `x` (expected f32 [b, 4])"),
        (vec![("x", Tensor::zeros(DType::F16, &[2, 4]).unwrap())], "input `x`: dtype must be f32, got f16"),
        (vec![("x", f32_tensor(&[8]))], "input `x`: rank must be 2"),
        (vec![("x", f32_tensor(&[2, 5]))], "input `x`: dim 1 must be 4, got 5"),
        (vec![("x", f32_tensor(&[2, 4])), ("z", f32_tensor(&[1]))], "unexpected input `z`"),
    ];
    for (inputs, want) in cases {
        let named: Vec<(&str, &Tensor)> = inputs.iter().map(|(n, t)| (*n, t)).collect();
        let err = s.run(&named).unwrap_err();
        assert!(matches!(err, Error::Graph(_)), "{err}");
        assert!(err.to_string().contains(want), "`{err}` should contain `{want}`");
    }
}

fn outputs_are_checked_against_the_manifest(backend: Backend) {
    let dir = bundle_copy();
    edit_manifest(dir.path(), |m| {
        m.graphs.get_mut("add").unwrap().outputs[0].dims = vec![Dim::sym("b"), Dim::Fixed(7)];
    });
    let mut s = Bundle::open(dir.path()).unwrap().session("add", &opts(&backend)).unwrap();
    let err = s.run(&[("x", &f32_tensor(&[2, 3]))]).unwrap_err().to_string();
    assert!(err.contains("graph `add` output `y`: expected f32 [b, 7] (dim 1 = 7), got f32 [2, 3]"), "{err}");
}

fn manifest_names_must_match_the_model(backend: Backend) {
    let dir = bundle_copy();
    edit_manifest(dir.path(), |m| m.graphs.get_mut("add").unwrap().inputs[0].name = "hidden_states".into());
    let err = Bundle::open(dir.path()).unwrap().session("add", &opts(&backend)).unwrap_err().to_string();
    assert!(err.contains("manifest names input `hidden_states`, which the model lacks (model inputs: x)"), "{err}");
}

macro_rules! for_each_backend {
    ($($check:ident),* $(,)?) => {$(
        mod $check {
            #[test]
            fn ort_cpu() {
                super::$check(osp_runtime::Backend::OrtCpu);
            }
            #[cfg(feature = "tract")]
            #[test]
            fn tract() {
                super::$check(osp_runtime::Backend::Tract);
            }
        }
    )*};
}

for_each_backend!(
    add_runs_at_several_shapes,
    every_dtype_in_and_out,
    external_data_model_loads_and_runs,
    truncated_model_is_a_load_error_naming_the_file,
    bad_inputs_are_rejected_before_running,
    outputs_are_checked_against_the_manifest,
    manifest_names_must_match_the_model,
);

#[test]
fn ort_runs_bf16() {
    let bundle = Bundle::open(fixture_bundle()).unwrap();
    let mut s = bundle.session("bf16", &SessionOptions::default()).unwrap();
    let x = Tensor::Bf16(arr(&[3], [1.0f32, -0.5, 3e38].map(bf16::from_f32).to_vec()));
    assert_eq!(s.run(&[("x", &x)]).unwrap()["y"], x);
}

#[test]
fn gpu_backends_never_fall_back_to_cpu() {
    let bundle = Bundle::open(fixture_bundle()).unwrap();
    let cache = tempfile::tempdir().unwrap();
    for backend in [
        Backend::OrtCuda { device_id: 0 },
        Backend::OrtTensorRt { device_id: 0, cache_dir: cache.path().to_path_buf() },
    ] {
        let err = bundle.session("add", &SessionOptions::new(backend.clone())).unwrap_err();
        match &err {
            Error::EpRegistration { .. } => assert!(backend.compiled_in(), "{err}"),
            Error::BackendUnavailable { backend: name, .. } => {
                assert!(!backend.compiled_in(), "{err}");
                assert_eq!(name, backend.name());
            }
            other => panic!("{backend}: expected an EP registration or unavailable-backend error, got {other}"),
        }
    }
}

#[cfg(feature = "tract")]
#[test]
fn tract_rejects_bf16_with_a_clear_error() {
    let bundle = Bundle::open(fixture_bundle()).unwrap();
    let x = Tensor::Bf16(arr(&[2], vec![bf16::ONE; 2]));
    let err = match bundle.session("bf16", &SessionOptions::new(Backend::Tract)) {
        Ok(mut s) => s.run(&[("x", &x)]).unwrap_err(),
        Err(e) => e,
    };
    assert!(err.to_string().contains("bf16"), "{err}");
}

#[cfg(feature = "tract")]
#[test]
fn tract_matches_ort_on_the_external_data_model() {
    let bundle = Bundle::open(fixture_bundle()).unwrap();
    let x = f32_tensor(&[3, 4]);
    let mut ort = bundle.session("linear", &SessionOptions::default()).unwrap();
    let mut tract = bundle.session("linear", &SessionOptions::new(Backend::Tract).with_threads(2)).unwrap();
    assert_approx(&tract.run(&[("x", &x)]).unwrap()["y"], &ort.run(&[("x", &x)]).unwrap()["y"], Approx::Close);
}

#[cfg(not(feature = "tract"))]
#[test]
fn tract_is_unavailable_without_the_feature() {
    let bundle = Bundle::open(fixture_bundle()).unwrap();
    let err = bundle.session("add", &SessionOptions::new(Backend::Tract)).unwrap_err();
    assert!(matches!(err, Error::BackendUnavailable { .. }), "{err}");
    assert!(err.to_string().contains("--features tract"), "{err}");
}
