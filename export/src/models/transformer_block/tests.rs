use osp_graphs::{BundleManifest, Precision};
use prost::Message;

use super::*;
use crate::onnx;
use crate::options::ExportOptions;

fn cfg() -> TransformerBlockConfig {
    TransformerBlockConfig {
        hidden_size: 32,
        num_attention_heads: 2,
        attention_head_dim: 16,
        ff_inner_dim: 64,
        norm_eps: 1e-6,
        attention_mask: true,
    }
}

#[test]
fn strict_loading_names_the_key_and_shapes() {
    let cfg = cfg();
    let good = TransformerBlockWeights::random(&cfg, 7).unwrap().weights().clone();
    assert_eq!(good.len(), 16);
    assert!(TransformerBlockWeights::from_weights(&cfg, good.clone()).is_ok());

    let mut missing = good.clone();
    missing.remove("attn1.to_k.bias");
    let err = TransformerBlockWeights::from_weights(&cfg, missing).unwrap_err();
    assert!(
        matches!(&err, Error::MissingTensor { key, expected } if key == "attn1.to_k.bias" && expected == &[32]),
        "{err}"
    );

    let mut extra = good.clone();
    extra.insert("attn2.to_q.weight", HostTensor::from_f32(vec![1], &[0.0]).unwrap());
    let err = TransformerBlockWeights::from_weights(&cfg, extra).unwrap_err();
    assert!(err.to_string().contains("attn2.to_q.weight"), "{err}");

    let mut shaped = good.clone();
    shaped.insert("ff.net.2.weight", HostTensor::from_f32(vec![64, 32], &[0.0; 2048]).unwrap());
    let err = TransformerBlockWeights::from_weights(&cfg, shaped).unwrap_err();
    assert_eq!(err.to_string(), "weights: tensor `ff.net.2.weight` must have shape [32, 64], got [64, 32]");

    let mut typed = good;
    let f16 = typed.get("norm1.bias").unwrap().cast_float(DType::F16).unwrap();
    typed.insert("norm1.bias", f16);
    assert!(matches!(TransformerBlockWeights::from_weights(&cfg, typed), Err(Error::TensorDType { .. })));
}

#[test]
fn random_weights_are_deterministic_and_non_trivial() {
    let a = TransformerBlockWeights::random(&cfg(), 1).unwrap();
    assert_eq!(a, TransformerBlockWeights::random(&cfg(), 1).unwrap());
    assert_ne!(a, TransformerBlockWeights::random(&cfg(), 2).unwrap());
    let q = a.weights().get("attn1.to_q.weight").unwrap().to_f32().unwrap();
    let std = (q.iter().map(|v| v * v).sum::<f32>() / q.len() as f32).sqrt();
    assert!((0.05..0.2).contains(&std), "std {std}");
    let ln = a.weights().get("norm1.weight").unwrap().to_f32().unwrap();
    assert!(ln.iter().all(|v| (0.7..1.3).contains(v)));
}

#[test]
fn export_writes_aligned_external_data_and_a_loadable_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = cfg();
    let w = TransformerBlockWeights::random(&cfg, 0).unwrap();
    let src = dir.path().join("w.safetensors");
    w.save(&src).unwrap();
    let out = dir.path().join("block.bundle");
    for precision in [Precision::F32, Precision::F16] {
        let opts = ExportOptions {
            attention: AttentionKind::Decomposed,
            precision,
            external_data_threshold_bytes: 100,
            source: Some(src.clone()),
            ..Default::default()
        };
        let m = export_transformer_block(&cfg, w.weights(), &opts, &out).unwrap();
        assert_eq!(BundleManifest::load(&out).unwrap(), m);
        assert!(osp_fs::temporaries(dir.path()).unwrap().is_empty(), "no staging folder left");
        let g = m.graph("block").unwrap();
        assert_eq!(g.precision, precision);
        assert_eq!(g.external_data, vec!["block.onnx.data".to_string()]);
        assert_eq!(m.provenance.source.as_deref(), Some("w.safetensors"));
        assert_eq!(m.provenance.source_sha256.as_ref().map(String::len), Some(64));

        let data_len = std::fs::metadata(out.join("block.onnx.data")).unwrap().len();
        let proto = onnx::ModelProto::decode(std::fs::read(out.join("block.onnx")).unwrap().as_slice()).unwrap();
        let mut external = 0;
        for t in &proto.graph.unwrap().initializer {
            let numel: i64 = t.dims.iter().product();
            let size = numel as u64 * crate::tensor::dtype_from_onnx(t.data_type.unwrap()).unwrap().size() as u64;
            if t.data_location == Some(onnx::tensor_proto::DataLocation::External as i32) {
                external += 1;
                let get = |k: &str| {
                    t.external_data.iter().find(|e| e.key.as_deref() == Some(k)).unwrap().value.clone().unwrap()
                };
                let (offset, length): (u64, u64) = (get("offset").parse().unwrap(), get("length").parse().unwrap());
                assert_eq!(offset % 64, 0, "{:?}", t.name);
                assert_eq!(length, size);
                assert!(offset + length <= data_len);
                assert_eq!(get("location"), "block.onnx.data");
                assert!(t.raw_data.is_none());
                assert!(size > 100);
            } else {
                assert_eq!(t.raw_data.as_ref().unwrap().len() as u64, size);
                assert!(size <= 100);
            }
        }
        assert!(external >= 6, "{external}");
    }
}

#[test]
fn refuses_to_replace_a_directory_that_is_not_a_bundle() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("precious.txt"), b"x").unwrap();
    let cfg = cfg();
    let w = TransformerBlockWeights::random(&cfg, 0).unwrap();
    let err = export_transformer_block(&cfg, w.weights(), &ExportOptions::default(), dir.path()).unwrap_err();
    assert!(err.to_string().contains("is not a bundle"), "{err}");
    assert!(dir.path().join("precious.txt").exists());
}
