//! `osp tokenize`, `osp encode-text` and `osp extract-text-embeds` end to end, on a small random
//! mT5-shaped bundle whose embedding table fits the real T5 v1.1 tokenizer
//! (`../shared/reference/assets/t5_v1_1_tokenizer.json`, 32100 ids; the table has 32128 rows as T5 v1.1 pads).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use osp_export::models::mt5::{export_mt5, MT5Config, Mt5ExportOptions, Mt5Weights};
use osp_graphs::Approx;
use osp_runtime::read_safetensors;
use osp_runtime::text::npz::read_npz;
use osp_runtime::{Bundle, SessionOptions, Tensor};

fn tokenizer() -> PathBuf {
    osp_tests::shared_reference().join("assets/t5_v1_1_tokenizer.json")
}

fn cfg(vocab_size: usize) -> MT5Config {
    MT5Config { vocab_size, d_model: 8, d_kv: 4, d_ff: 16, num_layers: 2, num_heads: 2, ..MT5Config::default() }
}

/// A random-weight bundle with the tokenizer copied in.
fn bundle(dir: &Path, vocab_size: usize) -> PathBuf {
    let out = dir.join(format!("mt5-{vocab_size}.bundle"));
    let opts = Mt5ExportOptions { tokenizer: Some(tokenizer()), ..Mt5ExportOptions::default() };
    export_mt5(&cfg(vocab_size), &Mt5Weights::Random { seed: 5 }, &opts, &out).expect("export should succeed");
    out
}

fn osp(cache: &Path) -> Command {
    let mut cmd = Command::new(osp_tests::osp_binary().expect("the osp binary should be built"));
    for var in ["OSP_BACKEND", "OSP_THREADS", "OSP_TEXT_CACHE"] {
        cmd.env_remove(var);
    }
    cmd.env("OSP_TEXT_CACHE", cache).args(["--threads", "2"]);
    cmd
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn tokenize_prints_ids_and_mask() {
    let tmp = tempfile::tempdir().unwrap();
    let out = osp(tmp.path())
        .args(["tokenize", "--max-sequence-length", "8", "--prompt", "hello world", "--tokenizer"])
        .arg(tokenizer())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<i64> = serde_json::from_value(v["input_ids"].clone()).unwrap();
    let mask: Vec<i64> = serde_json::from_value(v["attention_mask"].clone()).unwrap();
    assert_eq!(ids.len(), 8);
    let n = mask.iter().filter(|&&m| m == 1).count();
    assert_eq!(ids[n - 1], 1, "`</s>` closes the text");
    assert!(ids[n..].iter().all(|&i| i == 0) && mask[n..].iter().all(|&m| m == 0));
}

#[test]
fn encode_text_matches_the_graph_and_reuses_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let b = bundle(tmp.path(), 32128);
    let cache = tmp.path().join("cache");
    let prompts = tmp.path().join("prompts.txt");
    std::fs::write(&prompts, "A litter of golden retriever puppies playing in the snow.\n\n一只猫在草地上\n").unwrap();
    let emb = tmp.path().join("emb.safetensors");
    let run = |len: &str, extra: &[&str]| {
        let out = osp(&cache)
            .args(["encode-text", "--max-sequence-length", len, "--bundle"])
            .arg(&b)
            .arg("--prompts-file")
            .arg(&prompts)
            .arg("--out")
            .arg(&emb)
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        text(&out)
    };
    let first = run("16", &[]);
    assert!(first.contains("(1 encoder run(s), 0 cache hit(s))"), "{first}");
    let got = read_safetensors(&emb).unwrap();
    let (e, m) = (&got["prompt_embeds"], &got["prompt_attention_mask"]);
    assert_eq!(e.shape(), [2, 16, 8]);
    assert_eq!(m.shape(), [2, 16]);

    // Same numbers as running the graph on the tokenizer's ids, prompt by prompt.
    let bundle = Bundle::open(&b).unwrap();
    let mut s = bundle.session("text_encoder", &SessionOptions::default().with_threads(2)).unwrap();
    let tok = osp_runtime::tokenizer::Tokenizer::from_file(tokenizer()).unwrap();
    let lines = ["A litter of golden retriever puppies playing in the snow.", "一只猫在草地上"];
    for (i, line) in lines.iter().enumerate() {
        let enc = tok.encode(line, 16).unwrap();
        let ids = Tensor::I64(ndarray::ArrayD::from_shape_vec(vec![1, 16], enc.input_ids.clone()).unwrap());
        let mask = Tensor::I64(ndarray::ArrayD::from_shape_vec(vec![1, 16], enc.attention_mask.clone()).unwrap());
        let y = s.run(&[("input_ids", &ids), ("attention_mask", &mask)]).unwrap()["last_hidden_state"].to_f32_vec();
        let row = &e.to_f32_vec()[i * 128..(i + 1) * 128];
        let c = Approx::Close.compare(row, &y);
        assert!(c.ok(), "prompt {i}: {c}");
        assert_eq!(
            m.to_f32_vec()[i * 16..(i + 1) * 16],
            enc.attention_mask.iter().map(|&v| v as f32).collect::<Vec<_>>()
        );
    }

    let second = run("16", &[]);
    assert!(second.contains("(0 encoder run(s), 2 cache hit(s))"), "{second}");
    assert_eq!(read_safetensors(&emb).unwrap(), got, "cached embeddings are the computed ones, bit for bit");
    let other_len = run("12", &[]);
    assert!(other_len.contains("1 encoder run(s), 0 cache hit(s)"), "max length is part of the key: {other_len}");
    let bypass = run("16", &["--no-cache"]);
    assert!(bypass.contains("(1 encoder run(s), 0 cache hit(s))"), "{bypass}");
}

#[test]
fn bad_prompts_and_vocabulary_mismatch_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let b = bundle(tmp.path(), 32128);
    let cache = tmp.path().join("cache");
    let emb = tmp.path().join("emb.safetensors");
    let out = osp(&cache)
        .args(["encode-text", "--prompt", "  ", "--out"])
        .arg(&emb)
        .arg("--bundle")
        .arg(&b)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("prompt: must contain at least one non-whitespace character"), "{}", text(&out));

    let long = "word ".repeat(40);
    let out = osp(&cache)
        .args(["encode-text", "--max-sequence-length", "8", "--prompt", &long, "--out"])
        .arg(&emb)
        .arg("--bundle")
        .arg(&b)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("was truncated because `max_sequence_length` is set to 8 tokens"), "{}", text(&out));
    assert_eq!(read_safetensors(&emb).unwrap()["prompt_attention_mask"].to_f32_vec(), vec![1.0; 8]);

    let small = bundle(tmp.path(), 128);
    let out = osp(&cache)
        .args(["encode-text", "--prompt", "a cat", "--out"])
        .arg(&emb)
        .arg("--bundle")
        .arg(&small)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let msg = text(&out);
    assert!(
        msg.contains("tokenizer vocabulary has 32100 tokens but the text encoder's embedding table has 128 rows"),
        "{msg}"
    );
}

/// `osp extract-text-embeds` of `data` into `out_dir` with 10 tokens per caption.
fn extract(tmp: &Path, bundle: &Path, data: &Path, out_dir: &Path, extra: &[&str]) -> Output {
    osp(&tmp.join("cache"))
        .args(["extract-text-embeds", "--max-sequence-length", "10"])
        .args(extra)
        .arg("--bundle")
        .arg(bundle)
        .arg("--data")
        .arg(data)
        .arg("--out-dir")
        .arg(out_dir)
        .output()
        .unwrap()
}

#[test]
fn extract_text_embeds_writes_upstream_files_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let b = bundle(tmp.path(), 32128);
    let data = tmp.path().join("anno.json");
    std::fs::write(
        &data,
        r#"[{"path": "Fish/clip-1.mp4", "frame_idx": "0:65", "cap": "A fish swims."},
            {"path": "img/a.jpg", "cap": ["a red car", ""]}]"#,
    )
    .unwrap();
    let out_dir = tmp.path().join("emb");
    let run = || {
        let out = extract(tmp.path(), &b, &data, &out_dir, &["--progress", "jsonl", "--batch-size", "2"]);
        assert!(out.status.success(), "{}", text(&out));
        text(&out)
    };
    let first = run();
    assert!(first.contains("3 caption(s): wrote 3, skipped 0"), "{first}");
    assert!(first.contains(r#"{"done":3,"total":3}"#), "{first}");
    for f in ["Fish/clip-1-0.npz", "img/a-0.npz", "img/a-1.npz"] {
        let arrays = read_npz(&out_dir.join(f)).unwrap();
        let emb = &arrays.iter().find(|(n, _)| n == "text_emb").unwrap().1;
        let mask = &arrays.iter().find(|(n, _)| n == "mask").unwrap().1;
        assert_eq!((emb.descr.as_str(), emb.shape.as_slice()), ("<f4", &[10usize, 8][..]));
        assert_eq!((mask.descr.as_str(), mask.shape.as_slice()), ("|u1", &[10usize][..]));
        assert_eq!(mask.data[0], 1);
        assert!(emb.to_f32().unwrap().iter().all(|v| v.is_finite()));
    }
    let empty = read_npz(&out_dir.join("img/a-1.npz")).unwrap();
    let mask = &empty.iter().find(|(n, _)| n == "mask").unwrap().1;
    assert_eq!(mask.data, [1, 0, 0, 0, 0, 0, 0, 0, 0, 0], "an empty caption is `</s>` alone, as upstream");

    std::fs::remove_file(out_dir.join("img/a-0.npz")).unwrap();
    let second = run();
    assert!(second.contains("3 caption(s): wrote 1, skipped 2"), "{second}");
}

#[test]
fn extract_text_embeds_cleans_captions_as_upstream_training_unless_told_not_to() {
    let tmp = tempfile::tempdir().unwrap();
    let b = bundle(tmp.path(), 32128);
    let data = tmp.path().join("anno.json");
    // Upstream's clean_caption turns the first caption into the second.
    std::fs::write(&data, r#"[{"path": "v/a.mp4", "cap": ["A <b>RED</b> car", "a red car"]}]"#).unwrap();
    let embeddings = |clean: &str| {
        let out_dir = tmp.path().join(format!("emb-{clean}"));
        let out = extract(tmp.path(), &b, &data, &out_dir, &["--progress", "off", "--clean-caption", clean]);
        assert!(out.status.success(), "{}", text(&out));
        ["v/a-0.npz", "v/a-1.npz"].map(|f| {
            let arrays = read_npz(&out_dir.join(f)).unwrap();
            arrays.iter().find(|(n, _)| n == "text_emb").unwrap().1.to_f32().unwrap()
        })
    };
    let [raw, plain] = embeddings("true");
    assert_eq!(raw, plain, "the cleaned caption is encoded");
    let [raw, plain] = embeddings("false");
    assert_ne!(raw, plain, "captions encoded as given");
}
