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

/// The inputs of a tiny `osp-train dit` run in a temporary folder (removed on drop).
pub struct DitSetup {
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    /// The `--data` file (shapes clips, their text-embedding cache, the annotation).
    pub data: PathBuf,
    /// The `--ae_path` folder (the tiny official WFVAE).
    pub ae: PathBuf,
    /// The `--model_config` of a tiny DiT with 4 latent channels.
    pub config: PathBuf,
    /// The `--null_text_embed` file.
    pub null: PathBuf,
}

/// A random text embedding (`text_emb` `[4, 32]`, `mask` `[4]`) as a cache `.npz`.
pub fn write_embedding(path: &Path, rng: &mut osp_trainer::train::Rng) {
    use osp_runtime::text::npz::{write_npz, NpyArray};
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let emb = NpyArray::f32(vec![4, 32], &rng.normals(4 * 32));
    let mask = NpyArray::u8(vec![4], vec![1, 1, 1, 0]);
    write_npz(path, &[("mask", &mask), ("text_emb", &emb)]).expect("npz");
}

/// `clips` shapes clips of 9 frames at 32x32 with seeded embeddings, the tiny WFVAE and a tiny DiT config.
pub fn dit_setup(clips: usize) -> DitSetup {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().to_path_buf();
    let shapes = root.join("shapes");
    self::shapes(&shapes, clips, 9, 32, 1);
    let anno: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(shapes.join("annotation.json")).expect("annotation"))
            .expect("json");
    assert_eq!(anno.len(), clips);
    let emb = root.join("emb");
    let mut rng = osp_trainer::train::Rng::new(9);
    for item in &anno {
        let rel = item["path"].as_str().expect("path").replace(".mp4", "-0.npz");
        write_embedding(&emb.join(rel), &mut rng);
    }
    let null = root.join("null.npz");
    write_embedding(&null, &mut rng);
    let data = root.join("data.txt");
    std::fs::write(&data, format!("{},{},{}\n", arg(&shapes), arg(&emb), arg(&shapes.join("annotation.json"))))
        .expect("data");

    let ae = root.join("vae");
    std::fs::create_dir_all(&ae).expect("mkdir");
    let tiny = wfvae_tiny_dir();
    std::fs::copy(tiny.join("config.json"), ae.join("config.json")).expect("copy");
    std::fs::copy(tiny.join("weights.safetensors"), ae.join("weights.safetensors")).expect("copy");

    let mut dit: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(reference_dir().join("parity/dit_tiny/config.json")).expect("dit config"),
    )
    .expect("json");
    dit["in_channels"] = 4.into();
    dit["out_channels"] = 4.into();
    let config = root.join("dit_config.json");
    std::fs::write(&config, dit.to_string()).expect("write");
    DitSetup { _dir: dir, root, data, ae, config, null }
}
