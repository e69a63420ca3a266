//! Strict loading of official WFVAE weights: every missing, unexpected or mis-shaped tensor is
//! an error naming it; Haar kernels are built in (may be absent, must match when present).

mod common;

use burn::module::ParamId;
use burn::store::TensorSnapshot;
use burn::tensor::TensorData;
use common::{wfvae_tiny_dir, B};
use osp_trainer::checkpoint::{Checkpoint, LoadOptions};
use osp_trainer::models::wfvae::{WFVAEModel, WFVAEModelConfig};
use osp_trainer::Error;

fn model() -> WFVAEModel<B> {
    let config = WFVAEModelConfig::from_json_file(wfvae_tiny_dir().join("config.json")).unwrap();
    config.init::<B>(&Default::default()).unwrap()
}

fn checkpoint() -> Checkpoint {
    Checkpoint::open(wfvae_tiny_dir().join("weights.safetensors")).unwrap()
}

fn snapshot(values: Vec<f32>, shape: Vec<usize>) -> TensorSnapshot {
    TensorSnapshot::from_data(TensorData::new(values, shape), vec![], vec![], ParamId::new())
}

#[test]
fn missing_tensor_is_named() {
    let mut ckpt = checkpoint();
    ckpt.remove("decoder.conv_in.conv.bias").unwrap();
    let err = model().load_official(&ckpt, LoadOptions::default()).unwrap_err();
    assert!(matches!(&err, Error::MissingTensor { path } if path == "decoder.conv_in.conv.bias"), "{err}");
}

#[test]
fn unexpected_tensor_is_named() {
    let mut ckpt = checkpoint();
    ckpt.insert("decoder.extra.weight", snapshot(vec![0.0; 4], vec![4]));
    let err = model().load_official(&ckpt, LoadOptions::default()).unwrap_err();
    assert!(matches!(&err, Error::UnexpectedTensor { path } if path == "decoder.extra.weight"), "{err}");
}

#[test]
fn wrong_shape_is_named() {
    let mut ckpt = checkpoint();
    ckpt.insert("encoder.norm_out.norm.weight", snapshot(vec![1.0; 3], vec![3]));
    let err = model().load_official(&ckpt, LoadOptions::default()).unwrap_err();
    match &err {
        Error::ShapeMismatch { path, expected, found } => {
            assert_eq!(path, "encoder.norm_out.norm.weight");
            assert_eq!(expected, &vec![64]);
            assert_eq!(found, &vec![3]);
        }
        other => panic!("expected ShapeMismatch, got {other}"),
    }
}

#[test]
fn several_problems_are_all_listed() {
    let mut ckpt = checkpoint();
    ckpt.remove("encoder.conv_out.conv.weight").unwrap();
    ckpt.insert("bogus", snapshot(vec![0.0], vec![1]));
    let err = model().load_official(&ckpt, LoadOptions::default()).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, Error::Incompatible { .. }));
    assert!(text.contains("encoder.conv_out.conv.weight") && text.contains("bogus"), "{text}");
}

#[test]
fn allow_partial_reports_instead_of_failing() {
    let mut ckpt = checkpoint();
    ckpt.remove("encoder.conv_out.conv.weight").unwrap();
    ckpt.insert("bogus", snapshot(vec![0.0], vec![1]));
    let report = model().load_official(&ckpt, LoadOptions { allow_partial: true }).unwrap();
    assert_eq!(report.missing, vec!["encoder.conv_out.conv.weight".to_string()]);
    assert_eq!(report.unused, vec!["bogus".to_string()]);
}

#[test]
fn haar_kernels_may_be_absent_but_must_match() {
    let model0 = model();
    let fixed = model0.fixed_tensor_names();
    assert_eq!(fixed.len(), 8 + 4 + 8 + 8 + 4 + 8, "{fixed:?}");
    let mut ckpt = checkpoint();
    for name in &fixed {
        ckpt.remove(name).unwrap();
    }
    let report = model().load_official(&ckpt, LoadOptions::default()).unwrap();
    assert_eq!(report.builtin.len(), fixed.len());

    let mut ckpt = checkpoint();
    ckpt.insert("decoder.inverse_wavelet_transform_out.g", snapshot(vec![0.5; 8], vec![1, 1, 2, 2, 2]));
    let err = model().load_official(&ckpt, LoadOptions::default()).unwrap_err();
    assert!(
        matches!(&err, Error::FixedTensorMismatch { path, .. } if path == "decoder.inverse_wavelet_transform_out.g"),
        "{err}"
    );
}

#[test]
fn wrong_dtype_is_named() {
    let mut ckpt = checkpoint();
    let data = TensorData::new(vec![1.0f64; 64], vec![64]);
    ckpt.insert("encoder.norm_out.norm.bias", TensorSnapshot::from_data(data, vec![], vec![], ParamId::new()));
    let err = model().load_official(&ckpt, LoadOptions::default()).unwrap_err();
    assert!(matches!(&err, Error::DTypeMismatch { path, .. } if path == "encoder.norm_out.norm.bias"), "{err}");
}

/// The PyTorch pickle reader returns the same names, shapes and values as the safetensors copy
/// (real LPIPS weights shipped in both forms in `../shared/reference/assets/`).
#[test]
fn pytorch_pickle_and_safetensors_agree() {
    let assets = common::reference_dir().join("assets");
    let pth = Checkpoint::open(assets.join("lpips_v0.1_vgg.pth")).unwrap();
    let st = Checkpoint::open(assets.join("lpips_v0.1_vgg.safetensors")).unwrap();
    assert!(!pth.is_empty());
    assert_eq!(pth.names().collect::<Vec<_>>(), st.names().collect::<Vec<_>>());
    for name in st.names() {
        let (a, b) = (pth.get(name).unwrap(), st.get(name).unwrap());
        assert_eq!(a.shape, b.shape, "{name}");
        assert_eq!(a.to_data().unwrap(), b.to_data().unwrap(), "{name}");
    }
}
