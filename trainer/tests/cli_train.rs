//! `osp-train shapes` + `osp-train dit` end to end on CPU with tiny models: a generated data set
//! with a text-embedding cache, the tiny official WFVAE as the frozen encoder, a tiny random DiT.
//! Checks that 4 updates straight equal 2 updates, a new process resuming from `latest`, and 2
//! more (checkpoint bytes identical, metrics equal), that `latest` falls back past a broken
//! newest checkpoint, that checkpoints load through the strict official-name loader, and that
//! metrics (train and validation) are written, each step once.

mod common;

use std::path::{Path, PathBuf};

use osp_trainer::checkpoint::{Checkpoint, LoadOptions};
use osp_trainer::models::opensora_v1_3::OpenSoraT2V_v1_3Config;

use common::{arg as s, osp_train as run, DitSetup};

/// The model, EMA and optimizer files of two checkpoints are byte-identical.
fn assert_same_checkpoints(a: &Path, b: &Path, what: &str) {
    for file in [
        "model/diffusion_pytorch_model.safetensors",
        "model_ema/diffusion_pytorch_model.safetensors",
        "optimizer.safetensors",
    ] {
        let x = std::fs::read(a.join(file)).unwrap_or_else(|e| panic!("{}: {e}", a.join(file).display()));
        let y = std::fs::read(b.join(file)).unwrap_or_else(|e| panic!("{}: {e}", b.join(file).display()));
        assert!(x == y, "{file} differs ({what})");
    }
}

/// `metrics.jsonl` without the wall-clock field (`seconds`).
fn step_metrics(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .expect("metrics")
        .lines()
        .map(|l| {
            let mut r: serde_json::Value = serde_json::from_str(l).expect("json line");
            r.as_object_mut().expect("object").remove("seconds");
            r
        })
        .collect()
}

fn setup() -> DitSetup {
    common::dit_setup(8)
}

fn train_args(st: &DitSetup, out: &Path, steps: usize, resume: bool) -> Vec<String> {
    let mut a: Vec<String> = [
        "dit",
        "--model_config",
        &s(&st.config),
        "--ae_path",
        &s(&st.ae),
        "--data",
        &s(&st.data),
        "--val_data",
        &s(&st.data),
        "--validation_steps",
        "2",
        "--max_val_batches",
        "1",
        "--output_dir",
        &s(out),
        "--num_frames",
        "9",
        "--train_fps",
        "16",
        "--force_resolution",
        "--max_height",
        "32",
        "--max_width",
        "32",
        "--hw_stride",
        "16",
        "--train_batch_size",
        "1",
        "--dp_replicas",
        "2",
        "--max_train_steps",
        &steps.to_string(),
        "--learning_rate",
        "1e-3",
        "--lr_scheduler",
        "constant_with_warmup",
        "--lr_warmup_steps",
        "1",
        "--use_ema",
        "--ema_decay",
        "0.9",
        "--checkpointing_steps",
        "2",
        "--checkpoints_total_limit",
        "3",
        "--snr_gamma",
        "5.0",
        "--cfg",
        "0.3",
        "--null_text_embed",
        &s(&st.null),
        "--seed",
        "7",
        "--progress",
        "off",
    ]
    .iter()
    .map(|x| x.to_string())
    .collect();
    if resume {
        a.extend(["--resume_from_checkpoint".to_string(), "latest".to_string()]);
    }
    a
}

#[test]
fn dit_training_resumes_exactly_and_writes_official_checkpoints() {
    let st = setup();
    let straight = st.root.join("run_straight");
    run(&train_args(&st, &straight, 4, false));
    let split = st.root.join("run_split");
    run(&train_args(&st, &split, 2, false));
    run(&train_args(&st, &split, 4, true));

    assert_same_checkpoints(&straight.join("checkpoint-4"), &split.join("checkpoint-4"), "resumed vs uninterrupted");
    assert_eq!(step_metrics(&split), step_metrics(&straight), "resumed metrics vs uninterrupted");

    // A run that got to step 3 and left a broken checkpoint-3: `latest` warns, resumes from
    // checkpoint-2, and the metrics of step 3 are logged once.
    let crashed = st.root.join("run_crashed");
    run(&train_args(&st, &crashed, 3, false));
    std::fs::write(crashed.join("checkpoint-3/optimizer.safetensors"), b"").expect("break checkpoint-3");
    let log = run(&train_args(&st, &crashed, 4, true));
    assert!(log.contains("checkpoint-3") && log.contains("incomplete or corrupt"), "{log}");
    assert_same_checkpoints(&straight.join("checkpoint-4"), &crashed.join("checkpoint-4"), "resumed after a fallback");
    assert_eq!(step_metrics(&crashed), step_metrics(&straight), "metrics after a fallback");
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(straight.join("checkpoint-4/training_state.json")).expect("state"),
    )
    .expect("json");
    assert_eq!(state["step"], 4);
    assert_eq!(state["data_position"]["batch"], 4);

    let config =
        OpenSoraT2V_v1_3Config::from_json_file(straight.join("checkpoint-4/model/config.json")).expect("config");
    let mut model = config.init::<common::B>(&Default::default()).expect("model");
    let ckpt =
        Checkpoint::open(straight.join("checkpoint-4/model_ema/diffusion_pytorch_model.safetensors")).expect("open");
    model.load_official(&ckpt, LoadOptions::default()).expect("strict load of our checkpoint");

    let metrics = std::fs::read_to_string(straight.join("metrics.jsonl")).expect("metrics");
    let records: Vec<serde_json::Value> =
        metrics.lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert_eq!(records.iter().filter(|r| r.get("loss").is_some()).count(), 4);
    assert_eq!(records.iter().filter(|r| r.get("val_loss").is_some()).count(), 2);
    assert!(records.iter().all(|r| r
        .get("loss")
        .or(r.get("val_loss"))
        .and_then(|v| v.as_f64())
        .is_some_and(f64::is_finite)));
}

#[test]
fn cached_latents_train_exactly_like_encoding_every_step() {
    let st = setup();
    let plain = st.root.join("run_plain");
    run(&train_args(&st, &plain, 6, false));
    let cached = st.root.join("run_cached");
    let mut args = train_args(&st, &cached, 6, false);
    args.push("--cache_latents".into());
    // The cache report is an info line (`-v`).
    args.push("-v".into());
    // The log without its colour escapes.
    let raw = run(&args);
    let mut parts = raw.split('\x1b');
    let log: String =
        parts.next().into_iter().chain(parts.map(|part| part.split_once('m').map_or(part, |(_, rest)| rest))).collect();
    // 6 steps of 2 clips over 8 clips: the first epoch encodes, the next steps hit the cache.
    assert!(log.contains("latent cache") && log.contains("hits=4") && log.contains("misses=8"), "{log}");
    assert_same_checkpoints(
        &plain.join("checkpoint-6"),
        &cached.join("checkpoint-6"),
        "cached latents vs encoding every step",
    );
}

#[test]
fn embed_writes_the_text_cache_that_dit_trains_on() {
    let st = setup();
    let mut mt5: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::reference_dir().join("parity/mt5_tiny/config.json")).expect("mt5 config"),
    )
    .expect("json");
    mt5["vocab_size"] = 32128.into();
    let mt5_config = st.root.join("mt5_config.json");
    std::fs::write(&mt5_config, mt5.to_string()).expect("write");
    let emb = st.root.join("emb_mt5");
    let embed = |seed: &str| {
        run(&[
            "embed".into(),
            "--config".into(),
            s(&mt5_config),
            "--tokenizer".into(),
            s(&common::reference_dir().join("assets/t5_v1_1_tokenizer.json")),
            "--annotation".into(),
            s(&st.root.join("shapes/annotation.json")),
            "--out".into(),
            s(&emb),
            "--model_max_length".into(),
            "8".into(),
            "--seed".into(),
            seed.into(),
        ])
    };
    embed("3");
    let first = emb.join("videos/00000-0.npz");
    let arrays = osp_runtime::text::npz::read_npz(&first).expect("cache file");
    let text = arrays.iter().find(|(n, _)| n == "text_emb").expect("text_emb");
    assert_eq!(text.1.shape, vec![8, 32]);
    let null = osp_trainer::train::dit::TextEmbedding::read_npz(&emb.join("null.npz")).expect("null embedding");
    assert_eq!(null.mask, vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], "the empty caption is just </s>");
    let before = std::fs::read(&first).expect("read");
    embed("4");
    assert_eq!(std::fs::read(&first).expect("read"), before, "existing cache files are kept");

    let data = st.root.join("data_mt5.txt");
    let shapes = st.root.join("shapes");
    std::fs::write(&data, format!("{},{},{}\n", s(&shapes), s(&emb), s(&shapes.join("annotation.json"))))
        .expect("data");
    let out = st.root.join("run_mt5");
    let mut args = train_args(&st, &out, 1, false);
    let at = |flag: &str, args: &Vec<String>| args.iter().position(|a| a == flag).expect("flag") + 1;
    let i = at("--data", &args);
    args[i] = s(&data);
    let i = at("--val_data", &args);
    args[i] = s(&data);
    let i = at("--null_text_embed", &args);
    args[i] = s(&emb.join("null.npz"));
    run(&args);
    assert!(out.join("checkpoint-1/model/diffusion_pytorch_model.safetensors").is_file());
}

#[test]
fn embed_writes_every_aesthetic_notice_variant_of_a_scored_caption() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    let mut mt5: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::reference_dir().join("parity/mt5_tiny/config.json")).expect("mt5 config"),
    )
    .expect("json");
    mt5["vocab_size"] = 32128.into();
    let mt5_config = root.join("mt5_config.json");
    std::fs::write(&mt5_config, mt5.to_string()).expect("write");
    let embed = |annotation: &str, out: &Path, notices: bool| {
        let anno = root.join(format!("{}.json", out.file_name().expect("name").to_string_lossy()));
        std::fs::write(&anno, annotation).expect("write");
        let mut args: Vec<String> = ["embed", "--config", &s(&mt5_config), "--tokenizer"].map(String::from).to_vec();
        args.push(s(&common::reference_dir().join("assets/t5_v1_1_tokenizer.json")));
        args.extend([
            "--annotation".into(),
            s(&anno),
            "--out".into(),
            s(out),
            "--model_max_length".into(),
            "16".into(),
        ]);
        if notices {
            args.push("--aesthetic_notices".into());
        }
        run(&args);
    };
    let emb = root.join("emb");
    embed(
        r#"[{"path": "v/a.mp4", "cap": "A cat", "aes": 6.0}, {"path": "i/b.jpg", "cap": "a dog", "aesthetic": 5.0}]"#,
        &emb,
        true,
    );
    for k in 0..20 {
        assert!(emb.join(format!("v/a-0-aes{k}.npz")).is_file(), "variant {k}");
    }
    assert!(emb.join("v/a-0.npz").is_file() && emb.join("i/b-0.npz").is_file());
    assert!(!emb.join("i/b-0-aes0.npz").exists(), "a score of 5.0 gets no notice");
    // Variant 3: notice 1 before the caption, encoded like that text given plainly.
    let check = root.join("check");
    embed(r#"[{"path": "c.mp4", "cap": "The beauty of this video is exceptional. A cat"}]"#, &check, false);
    let read = |p: PathBuf| osp_trainer::train::dit::TextEmbedding::read_npz(&p).expect("cache file");
    assert_eq!(read(emb.join("v/a-0-aes3.npz")), read(check.join("c-0.npz")));
    assert_ne!(read(emb.join("v/a-0-aes3.npz")), read(emb.join("v/a-0.npz")));
}
