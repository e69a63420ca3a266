//! Integrity of what osp reads back (issue 14, items 3-5), table-driven:
//!
//! - weights: `osp inspect --verify` checks the SHA-256 of every graph and data file recorded at
//!   export (200 flipped bytes in `.onnx.data` are caught; without `--verify` only lengths are);
//!   `osp inspect` decodes every graph and fails on a truncated or empty `.onnx`;
//! - the text-embedding cache: a corrupted or swapped entry is recomputed with a warning;
//! - malformed tokenizer files: `osp tokenize`, `osp generate` and `osp inspect` fail with an
//!   error naming the file (exit 1), never a panic (exit 101).
//!
//! `cargo test --release --locked -p osp-tests --test integrity` (needs the `osp` binary:
//! `cargo build --release --locked -p osp-runtime --bin osp`)

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{ensure, Context, Result};
use osp_graphs::BundleManifest;
use osp_runtime::text::{EmbeddingCache, TextEncoder};
use osp_runtime::{Bundle, SessionOptions};
use osp_tests::{block_bundle, copy_dir};

fn osp() -> Command {
    osp_tests::osp_command(2)
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn default_bundle() -> PathBuf {
    osp_tests::repo_root().join("assets/default")
}

fn flip(path: &Path, at: usize, count: usize) -> Result<()> {
    let mut bytes = std::fs::read(path)?;
    ensure!(at + count <= bytes.len(), "{} has {} bytes", path.display(), bytes.len());
    for b in &mut bytes[at..at + count] {
        *b ^= 0xA5;
    }
    std::fs::write(path, bytes)?;
    Ok(())
}

type Damage = fn(&Path) -> Result<()>;

#[test]
fn inspect_checks_graphs_always_and_digests_on_verify() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let good = block_bundle(&tmp.path().join("good"))?;
    let m = BundleManifest::load(&good)?;
    ensure!(m.file_sha256.len() == 2, "digests of block.onnx and block.onnx.data: {:?}", m.file_sha256);
    // (case, damage, --verify, expected outcome: Ok(stdout needle) or Err(stderr needles))
    let cases: Vec<(&str, Damage, bool, std::result::Result<&str, &[&str]>)> = vec![
        ("intact, verified", |_| Ok(()), true, Ok("verified: 2 files")),
        ("intact, checked", |_| Ok(()), false, Ok("checked graph block")),
        (
            "200 bytes flipped in .onnx.data, verified",
            |b| flip(&b.join("block.onnx.data"), 1000, 200),
            true,
            Err(&["block.onnx.data", "SHA-256 is", "corrupt or was replaced"]),
        ),
        (
            // Lengths are all a plain load checks: the flip goes unnoticed without --verify.
            "200 bytes flipped in .onnx.data, not verified",
            |b| flip(&b.join("block.onnx.data"), 1000, 200),
            false,
            Ok("checked graph block"),
        ),
        (
            "a byte of a node name changed in .onnx, verified",
            |b| {
                let bytes = std::fs::read(b.join("block.onnx"))?;
                let mut bytes = bytes;
                let at = bytes.windows(4).position(|w| w == b"Norm").context("a node name in block.onnx")?;
                bytes[at] = b'X';
                Ok(std::fs::write(b.join("block.onnx"), bytes)?)
            },
            true,
            Err(&["block.onnx", "SHA-256 is"]),
        ),
        (
            "truncated .onnx",
            |b| {
                let bytes = std::fs::read(b.join("block.onnx"))?;
                Ok(std::fs::write(b.join("block.onnx"), &bytes[..bytes.len() * 2 / 3])?)
            },
            false,
            Err(&["block.onnx", "not an ONNX model"]),
        ),
        ("empty .onnx", |b| Ok(std::fs::write(b.join("block.onnx"), b"")?), false, Err(&["block.onnx", "empty"])),
        (
            "truncated .onnx.data",
            |b| {
                let f = std::fs::OpenOptions::new().write(true).open(b.join("block.onnx.data"))?;
                Ok(f.set_len(100)?)
            },
            false,
            Err(&["block.onnx.data", "truncated or was replaced"]),
        ),
        (
            "manifest without digests, verified",
            |b| {
                let mut m = BundleManifest::load(b)?;
                m.file_sha256.clear();
                m.save(b)?;
                Ok(())
            },
            true,
            Err(&["no digests recorded", "re-export to enable --verify"]),
        ),
        (
            "external data range past the end of its file",
            |b| {
                // Shrink the data file and its recorded length together: only the graph check sees it.
                let mut m = BundleManifest::load(b)?;
                let f = std::fs::OpenOptions::new().write(true).open(b.join("block.onnx.data"))?;
                f.set_len(64)?;
                m.data_files.insert("block.onnx.data".into(), 64);
                m.save(b)?;
                Ok(())
            },
            false,
            Err(&["block.onnx", "spans bytes", "which holds 64"]),
        ),
    ];
    for (name, damage, verify, want) in cases {
        let dir = tmp.path().join(name.replace([' ', ',', '.'], "_"));
        copy_dir(&good, &dir)?;
        damage(&dir).with_context(|| format!("damaging for `{name}`"))?;
        let mut cmd = osp();
        cmd.arg("inspect").arg(&dir);
        if verify {
            cmd.arg("--verify");
        }
        let out = cmd.output()?;
        let all = text(&out);
        ensure!(!all.contains("panicked"), "{name}: a panic:\n{all}");
        match want {
            Ok(needle) => {
                ensure!(out.status.success(), "{name}: should pass:\n{all}");
                ensure!(all.contains(needle), "{name}: `{needle}` missing:\n{all}");
            }
            Err(needles) => {
                ensure!(out.status.code() == Some(1), "{name}: exit {:?}, want 1:\n{all}", out.status.code());
                for n in needles {
                    ensure!(all.contains(n), "{name}: `{n}` missing:\n{all}");
                }
            }
        }
    }
    Ok(())
}

/// The shipped default bundle passes `inspect --verify` (its manifests carry digests).
#[test]
fn the_default_bundle_verifies() -> Result<()> {
    let out = osp().arg("inspect").arg(default_bundle()).arg("--verify").output()?;
    let all = text(&out);
    ensure!(out.status.success(), "{all}");
    ensure!(all.matches("verified:").count() == 3, "one verified line per component:\n{all}");
    ensure!(all.contains("checked tokenizer"), "{all}");
    Ok(())
}

const DECODER: &str = "\"decoder\": {";

/// Malformed `tokenizer.json` contents, each with what the error must say besides the file name.
fn bad_tokenizers() -> Result<Vec<(&'static str, Vec<u8>, &'static str)>> {
    let good = std::fs::read_to_string(default_bundle().join("text_encoder/tokenizer.json"))?;
    ensure!(good.contains(DECODER), "the default tokenizer.json has a decoder block");
    Ok(vec![
        (
            // The tokenizers library panics on this one (`expect("Helper")` in its decoder deserializer).
            "a non-string key in the decoder block",
            good.replacen(DECODER, "\"decoder\": {1: 2, ", 1).into_bytes(),
            "panicked while loading it",
        ),
        ("truncated", good.as_bytes()[..good.len() / 2].to_vec(), "not a valid"),
        ("empty", Vec::new(), "not a valid"),
        ("not JSON", b"\xff\xfe\x00garbage".to_vec(), "not a valid"),
        (
            "the model is a number",
            good.replacen("\"model\": {", "\"model\": 3, \"x\": {", 1).into_bytes(),
            "not a valid",
        ),
        ("no </s> token", good.replace("</s>", "</x>").into_bytes(), "no `</s>` token"),
    ])
}

#[test]
fn malformed_tokenizers_are_errors_naming_the_file() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    for (i, (name, bytes, reason)) in bad_tokenizers()?.into_iter().enumerate() {
        // `osp tokenize`
        let file = tmp.path().join(format!("bad-{i}.json"));
        std::fs::write(&file, &bytes)?;
        let out = osp().args(["tokenize", "--prompt", "a red circle", "--tokenizer"]).arg(&file).output()?;
        let all = text(&out);
        ensure!(out.status.code() == Some(1), "tokenize, {name}: exit {:?}, want 1:\n{all}", out.status.code());
        ensure!(all.contains(&file.display().to_string()), "tokenize, {name}: the file is not named:\n{all}");
        ensure!(all.contains(reason), "tokenize, {name}: `{reason}` missing:\n{all}");
        ensure!(!all.contains("panicked at"), "tokenize, {name}: a panic message was printed:\n{all}");

        // `osp generate` and `osp inspect` on a copy of the default pipeline with this tokenizer
        let pipeline = tmp.path().join(format!("pipeline-{i}"));
        copy_dir(&default_bundle(), &pipeline)?;
        let tok = pipeline.join("text_encoder/tokenizer.json");
        std::fs::write(&tok, &bytes)?;
        let cache = tmp.path().join("cache");
        let runs: [(&str, Vec<std::ffi::OsString>); 2] = [
            (
                "generate",
                vec![
                    "generate".into(),
                    "--progress".into(),
                    "off".into(),
                    "--bundle".into(),
                    pipeline.clone().into(),
                    "--text_prompt".into(),
                    "a red circle".into(),
                    "--save_img_path".into(),
                    tmp.path().join(format!("out-{i}")).into(),
                ],
            ),
            ("inspect", vec!["inspect".into(), pipeline.clone().into()]),
        ];
        for (cmd, args) in runs {
            let out = osp().env("OSP_TEXT_CACHE", &cache).args(&args).output()?;
            let all = text(&out);
            ensure!(out.status.code() == Some(1), "{cmd}, {name}: exit {:?}, want 1:\n{all}", out.status.code());
            ensure!(all.contains(&tok.display().to_string()), "{cmd}, {name}: the file is not named:\n{all}");
            ensure!(!all.contains("panicked at"), "{cmd}, {name}: a panic message was printed:\n{all}");
        }
    }
    Ok(())
}

/// A tokenizer.json that parses but differs from the one the bundle recorded is refused on load.
#[test]
fn a_replaced_bundle_tokenizer_fails_its_digest() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("text_encoder");
    copy_dir(&default_bundle().join("text_encoder"), &dir)?;
    let tok = dir.join("tokenizer.json");
    let good = std::fs::read_to_string(&tok)?;
    std::fs::write(&tok, good.replacen("\"version\": \"1.0\"", "\"version\": \"1.0\" ", 1))?;
    let bundle = Bundle::open(&dir)?;
    let err = TextEncoder::open(&bundle, &SessionOptions::default(), None).unwrap_err().to_string();
    ensure!(err.contains("tokenizer.json") && err.contains("SHA-256 is"), "{err}");
    Ok(())
}

#[test]
fn corrupted_or_swapped_cache_entries_are_recomputed_with_a_warning() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let bundle_dir = default_bundle().join("text_encoder");
    let cache_dir = tmp.path().join("cache");
    let prompts = ["a red circle moving to the right", "a blue triangle moving up"];
    let opts = SessionOptions::default().with_threads(2);
    let bundle = Bundle::open(&bundle_dir)?;
    let mut enc = TextEncoder::open(&bundle, &opts, None)?.with_cache(EmbeddingCache::new(&cache_dir)?);
    let fresh = enc.encode(&prompts, 16)?;
    let cache = EmbeddingCache::new(&cache_dir)?;
    let entry = |p: &str| cache.entry_path(&enc.cache_key(p, 16));
    let (a, b) = (entry(prompts[0]), entry(prompts[1]));
    ensure!(a.is_file() && b.is_file(), "both entries written");
    let good_a = std::fs::read(&a)?;
    let values: Vec<u8> = fresh.embeddings.to_f32_vec()[..4].iter().flat_map(|v| v.to_le_bytes()).collect();
    let emb_at = good_a.windows(16).position(|w| w == values.as_slice()).context("the embedding in the entry")?;

    type Damage = Box<dyn Fn() -> Result<()>>;
    let cases: Vec<(&str, Damage, &str)> = vec![
        (
            "XOR-ed bytes",
            Box::new({
                let a = a.clone();
                move || flip(&a, emb_at + 8, 40)
            }),
            "fails its SHA-256",
        ),
        (
            "another prompt's entry copied over it",
            Box::new({
                let (a, b) = (a.clone(), b.clone());
                move || Ok(std::fs::copy(&b, &a).map(|_| ())?)
            }),
            "belongs to another key",
        ),
    ];
    for (name, damage, warning) in cases {
        std::fs::write(&a, &good_a)?;
        damage()?;
        // Library: the damaged entry is a miss, recomputed (as a batch of one, so equal to the
        // fresh batch of two up to rounding), and rewritten.
        let runs = enc.encoder_runs();
        let again = enc.encode(&prompts, 16)?;
        ensure!(enc.encoder_runs() == runs + 1, "{name}: the encoder should run once for the damaged entry");
        ensure!(again.mask == fresh.mask, "{name}: masks differ");
        let (x, y) = (again.embeddings.to_f32_vec(), fresh.embeddings.to_f32_vec());
        let worst = x.iter().zip(&y).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
        ensure!(x.len() == y.len() && worst < 1e-4, "{name}: recomputed embeddings differ by {worst}");
        enc.encode(&prompts, 16)?;
        ensure!(enc.encoder_runs() == runs + 1, "{name}: the rewritten entry should be a hit");

        // CLI: the warning is printed.
        damage()?;
        let out = osp()
            .args(["encode-text", "--max-sequence-length", "16", "--bundle"])
            .arg(&bundle_dir)
            .args(["--prompt", prompts[0], "--cache-dir"])
            .arg(&cache_dir)
            .arg("--out")
            .arg(tmp.path().join("emb.safetensors"))
            .output()?;
        let all = text(&out);
        ensure!(out.status.success(), "{name}: {all}");
        ensure!(all.contains(warning) && all.contains("recomputing"), "{name}: warning `{warning}` missing:\n{all}");
        ensure!(all.contains(&a.display().to_string()), "{name}: the entry is not named:\n{all}");
    }
    Ok(())
}
