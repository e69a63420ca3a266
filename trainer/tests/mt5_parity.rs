//! Parity of `MT5EncoderModel` with transformers 4.44.2 on the `mt5_tiny` fixture
//! (`../shared/reference/parity/mt5_tiny/`, made by `../shared/reference/generators/parity.py`
//! `run_mt5`): masked, unmasked, and 200 tokens (log-spaced relative-position buckets), all at
//! `Approx::Approximate`. Also runs `osp-train forward mt5` end to end.

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::backend::NdArray;
use burn::tensor::{Int, Tensor, TensorData};
use osp_graphs::Approx;
use osp_trainer::checkpoint::{Checkpoint, LoadOptions};
use osp_trainer::models::mt5::{MT5Config, MT5EncoderModel};
use safetensors::{Dtype, SafeTensors};

type B = NdArray<f32>;

fn fixture() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/reference/parity/mt5_tiny"))
}

/// Every tensor of `io.safetensors`: int64 ones as i64, float32 ones as f32.
fn io() -> BTreeMap<String, TensorData> {
    let bytes = std::fs::read(fixture().join("io.safetensors")).expect("io.safetensors should exist");
    let st = SafeTensors::deserialize(&bytes).expect("io.safetensors should parse");
    st.tensors()
        .into_iter()
        .map(|(name, v)| {
            let shape = v.shape().to_vec();
            let data = match v.dtype() {
                Dtype::I64 => TensorData::new(
                    v.data().chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect::<Vec<_>>(),
                    shape,
                ),
                Dtype::F32 => TensorData::new(
                    v.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect::<Vec<_>>(),
                    shape,
                ),
                other => panic!("unexpected dtype {other:?} for {name}"),
            };
            (name, data)
        })
        .collect()
}

fn model() -> MT5EncoderModel<B> {
    let config = MT5Config::from_json_file(fixture().join("config.json")).unwrap();
    let mut model = config.init::<B>(&Default::default()).unwrap();
    let ckpt = Checkpoint::open(fixture().join("weights.safetensors")).unwrap();
    let report = model.load_official(&ckpt, LoadOptions::default()).unwrap();
    assert_eq!(report.applied.len(), 2 * 9 + 3);
    model
}

fn ints(io: &BTreeMap<String, TensorData>, name: &str) -> Tensor<B, 2, Int> {
    Tensor::from_data(io[name].clone(), &Default::default())
}

fn check(actual: Tensor<B, 3>, expected: &TensorData) {
    assert_eq!(actual.dims().to_vec(), expected.shape.to_vec());
    let actual = actual.into_data().to_vec::<f32>().unwrap();
    let c = Approx::Approximate.compare(&actual, &expected.to_vec::<f32>().unwrap());
    assert!(c.ok(), "{c}");
}

#[test]
fn masked_matches_transformers() {
    let io = io();
    let out = model().forward(ints(&io, "input.input_ids"), Some(ints(&io, "input.attention_mask"))).unwrap();
    check(out, &io["output.last_hidden_state"]);
}

#[test]
fn unmasked_matches_transformers() {
    let io = io();
    let out = model().forward(ints(&io, "input.input_ids"), None).unwrap();
    check(out, &io["output.last_hidden_state_no_mask"]);
}

#[test]
fn two_hundred_tokens_match_transformers() {
    let io = io();
    let out = model().forward(ints(&io, "input.input_ids_long"), None).unwrap();
    check(out, &io["output.last_hidden_state_long"]);
}

#[test]
fn cli_forward_mt5_writes_last_hidden_state() {
    let io = io();
    let dir = tempfile::tempdir().unwrap();
    let inputs = dir.path().join("inputs.safetensors");
    let to_bytes =
        |d: &TensorData| d.to_vec::<i64>().unwrap().iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>();
    let (ids, mask) = (to_bytes(&io["input.input_ids"]), to_bytes(&io["input.attention_mask"]));
    let shape = io["input.input_ids"].shape.to_vec();
    let views = vec![
        ("input_ids", safetensors::tensor::TensorView::new(Dtype::I64, shape.clone(), &ids).unwrap()),
        ("attention_mask", safetensors::tensor::TensorView::new(Dtype::I64, shape, &mask).unwrap()),
    ];
    std::fs::write(&inputs, safetensors::serialize(views, None).unwrap()).unwrap();
    let out = dir.path().join("out.safetensors");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_osp-train"))
        .args(["forward", "mt5", "--config"])
        .arg(fixture().join("config.json"))
        .arg("--weights")
        .arg(fixture().join("weights.safetensors"))
        .arg("--inputs")
        .arg(&inputs)
        .arg("--out")
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let written = osp_trainer::io::read_tensors(&out).unwrap();
    let expected = io["output.last_hidden_state"].to_vec::<f32>().unwrap();
    let c = Approx::Approximate.compare(&written["last_hidden_state"].to_vec::<f32>().unwrap(), &expected);
    assert!(c.ok(), "{c}");
}
