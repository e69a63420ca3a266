//! Strict loading of `MT5EncoderModel`: safetensors (single and sharded), PyTorch
//! `pytorch_model.bin` (`fixtures/mt5_tiny/pytorch_model.bin`, made by its `make_pytorch_bin.py`),
//! the `shared.weight` / `encoder.embed_tokens.weight` tie, and clear errors for bad weights and
//! bad inputs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::backend::NdArray;
use burn::store::TensorSnapshot;
use burn::tensor::{Int, Tensor, TensorData};
use osp_trainer::checkpoint::{Checkpoint, LoadOptions};
use osp_trainer::models::mt5::{MT5Config, MT5EncoderModel, SHARED, TIED_EMBED_TOKENS};
use osp_trainer::Error;
use safetensors::SafeTensors;

type B = NdArray<f32>;

fn fixture() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/reference/parity/mt5_tiny"))
}

fn model() -> MT5EncoderModel<B> {
    MT5Config::from_json_file(fixture().join("config.json")).unwrap().init::<B>(&Default::default()).unwrap()
}

fn checkpoint() -> Checkpoint {
    Checkpoint::open(fixture().join("weights.safetensors")).unwrap()
}

fn snapshot(values: Vec<f32>, shape: Vec<usize>) -> TensorSnapshot {
    TensorSnapshot::from_data(TensorData::new(values, shape), vec![], vec![], Default::default())
}

fn params(model: &MT5EncoderModel<B>) -> BTreeMap<String, Vec<f32>> {
    use burn::store::ModuleSnapshot;
    model
        .collect(None, None, true)
        .into_iter()
        .map(|s| (s.full_path(), s.to_data().unwrap().to_vec::<f32>().unwrap()))
        .collect()
}

fn ids(values: Vec<i64>, shape: [usize; 2]) -> Tensor<B, 2, Int> {
    Tensor::from_data(TensorData::new(values, shape), &Default::default())
}

#[test]
fn one_tied_key_is_enough_and_both_must_agree() {
    let mut reference = model();
    reference.load_official(&checkpoint(), LoadOptions::default()).unwrap();

    for drop in [SHARED, TIED_EMBED_TOKENS] {
        let mut ckpt = checkpoint();
        ckpt.remove(drop).unwrap();
        let mut m = model();
        m.load_official(&ckpt, LoadOptions::default()).unwrap();
        assert_eq!(params(&m), params(&reference), "loading without `{drop}`");
    }

    let mut ckpt = checkpoint();
    let mut values = ckpt.get(SHARED).unwrap().to_data().unwrap().to_vec::<f32>().unwrap();
    values[5] += 0.5;
    ckpt.insert(TIED_EMBED_TOKENS, snapshot(values, vec![128, 32]));
    let err = model().load_official(&ckpt, LoadOptions::default()).unwrap_err().to_string();
    assert!(err.contains(TIED_EMBED_TOKENS) && err.contains("5e-1"), "{err}");

    let mut ckpt = checkpoint();
    ckpt.insert(TIED_EMBED_TOKENS, snapshot(vec![0.0; 64 * 32], vec![64, 32]));
    let err = model().load_official(&ckpt, LoadOptions::default()).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { ref path, .. } if path == TIED_EMBED_TOKENS), "{err}");
}

#[test]
fn missing_unexpected_and_misshaped_tensors_are_named() {
    let mut ckpt = checkpoint();
    ckpt.remove("encoder.block.1.layer.1.DenseReluDense.wo.weight").unwrap();
    let err = model().load_official(&ckpt, LoadOptions::default()).unwrap_err();
    assert!(
        matches!(err, Error::MissingTensor { ref path } if path == "encoder.block.1.layer.1.DenseReluDense.wo.weight"),
        "{err}"
    );

    let mut ckpt = checkpoint();
    ckpt.insert(
        "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight",
        snapshot(vec![0.0; 128], vec![32, 4]),
    );
    let err = model().load_official(&ckpt, LoadOptions::default()).unwrap_err();
    assert!(matches!(err, Error::UnexpectedTensor { ref path } if path.starts_with("encoder.block.1")), "{err}");

    let mut ckpt = checkpoint();
    ckpt.insert("encoder.final_layer_norm.weight", snapshot(vec![1.0; 16], vec![16]));
    let err = model().load_official(&ckpt, LoadOptions::default()).unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { ref path, .. } if path == "encoder.final_layer_norm.weight"), "{err}");

    // A config whose vocabulary does not match the checkpoint's embedding table.
    let config = MT5Config { vocab_size: 250, ..MT5Config::from_json_file(fixture().join("config.json")).unwrap() };
    let err = config.init::<B>(&Default::default()).unwrap().load_official(&checkpoint(), LoadOptions::default());
    let err = err.unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { ref path, .. } if path == SHARED), "{err}");
}

#[test]
fn decoder_half_of_a_full_release_is_ignored() {
    let mut ckpt = checkpoint();
    ckpt.insert("decoder.block.0.layer.0.SelfAttention.q.weight", snapshot(vec![0.0; 32 * 32], vec![32, 32]));
    ckpt.insert("lm_head.weight", snapshot(vec![0.0; 128 * 32], vec![128, 32]));
    let report = model().load_official(&ckpt, LoadOptions::default()).unwrap();
    assert!(report.unused.is_empty());
}

#[test]
fn sharded_safetensors_load_like_the_single_file() {
    let bytes = std::fs::read(fixture().join("weights.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut weight_map = BTreeMap::new();
    let mut shards: [Vec<(String, safetensors::tensor::TensorView<'_>)>; 2] = [Vec::new(), Vec::new()];
    for (i, (name, view)) in st.tensors().into_iter().enumerate() {
        let shard = format!("model-{:05}-of-00002.safetensors", i % 2 + 1);
        weight_map.insert(name.clone(), shard);
        shards[i % 2].push((name, view));
    }
    for (i, shard) in shards.into_iter().enumerate() {
        let path = dir.path().join(format!("model-{:05}-of-00002.safetensors", i + 1));
        std::fs::write(path, safetensors::serialize(shard, None).unwrap()).unwrap();
    }
    let index = dir.path().join("model.safetensors.index.json");
    std::fs::write(&index, serde_json::json!({"metadata": {}, "weight_map": weight_map}).to_string()).unwrap();

    let mut reference = model();
    reference.load_official(&checkpoint(), LoadOptions::default()).unwrap();
    let mut sharded = model();
    sharded.load_official(&Checkpoint::open(&index).unwrap(), LoadOptions::default()).unwrap();
    assert_eq!(params(&sharded), params(&reference));
}

#[test]
fn pytorch_model_bin_loads_bit_identically() {
    let bin = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/mt5_tiny/pytorch_model.bin"));
    let mut reference = model();
    reference.load_official(&checkpoint(), LoadOptions::default()).unwrap();
    let mut from_bin = model();
    let report = from_bin.load_official(&Checkpoint::open(&bin).unwrap(), LoadOptions::default()).unwrap();
    assert_eq!(report.applied.len(), 21);
    assert_eq!(params(&from_bin), params(&reference));
}

#[test]
fn missing_or_corrupt_weight_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = Checkpoint::open(dir.path().join("absent.safetensors")).unwrap_err().to_string();
    assert!(err.contains("absent.safetensors") && err.contains("not found"), "{err}");
    let corrupt = dir.path().join("pytorch_model.bin");
    std::fs::write(&corrupt, b"not a zip").unwrap();
    let err = Checkpoint::open(&corrupt).unwrap_err();
    assert!(matches!(err, Error::Checkpoint { .. }), "{err}");
}

#[test]
fn bad_inputs_are_rejected_with_their_names() {
    let mut m = model();
    m.load_official(&checkpoint(), LoadOptions::default()).unwrap();

    let err = m.forward(ids(vec![3, 128], [1, 2]), None).unwrap_err();
    assert!(matches!(err, Error::InvalidInput { ref name, .. } if name == "input_ids"), "{err}");
    assert!(err.to_string().contains("128"), "{err}");

    let err = m.forward(ids(vec![3, -1], [1, 2]), None).unwrap_err();
    assert!(matches!(err, Error::InvalidInput { ref name, .. } if name == "input_ids"), "{err}");

    let err = m.forward(ids(vec![3, 4], [1, 2]), Some(ids(vec![1, 1, 1], [1, 3]))).unwrap_err();
    assert!(matches!(err, Error::InvalidInput { ref name, .. } if name == "attention_mask"), "{err}");

    let err = m.forward(ids(vec![3, 4], [1, 2]), Some(ids(vec![1, 2], [1, 2]))).unwrap_err();
    assert!(matches!(err, Error::InvalidInput { ref name, .. } if name == "attention_mask"), "{err}");

    let out = m.forward(ids(vec![3, 4, 1, 0], [2, 2]), Some(ids(vec![1, 1, 1, 0], [2, 2]))).unwrap();
    assert_eq!(out.dims(), [2, 2, 32]);
}
