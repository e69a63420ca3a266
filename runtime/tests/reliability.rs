//! The `osp` binary on inputs that used to give a normal-looking result or a misleading error
//! (docs/reliability_checks.md), table-driven on the embedded default bundle (`assets/default`,
//! copied to a temp dir wherever a case breaks it):
//! - non-finite values (NaN latents given to `osp decode`, weight files overwritten with 0xFF,
//!   NaN initial latents, a NaN text-cache entry) stop with the stage, step and prompt, and
//!   write nothing;
//! - requests whose estimated memory exceeds the host are refused before any model loads (the
//!   VAE tile workers of `--devices` counted and named);
//! - a `.txt` prompt file that cannot be read, and a `--save_img_path` or bundle file that is a
//!   regular file, a FIFO, a symbolic link loop or a dangling link, are named with what they are.
//!
//! `cargo test --release --locked -p osp-runtime --test reliability`

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ndarray::{ArrayD, IxDyn};
use osp_runtime::{read_safetensors, write_safetensors, Tensor};

fn default_bundle() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/default")
}

fn osp() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_osp"));
    for var in ["OSP_BACKEND", "OSP_THREADS", "OSP_TEXT_CACHE", "OSP_PIPELINE_BUNDLE", "OSP_SKIP_MEMORY_CHECK"] {
        cmd.env_remove(var);
    }
    // Model loading is logged at info; the cases that must fail first look for it.
    cmd.env("RUST_LOG", "info,ort=warn").args(["--threads", "2"]);
    cmd
}

/// `osp generate` on `bundle` for "a red circle moving to the right" into `out`, with a fresh
/// text cache `cache`, 2 steps, and `extra` flags.
fn generate(bundle: &Path, cache: &Path, out: &Path, extra: &[&str]) -> Output {
    osp()
        .env("OSP_TEXT_CACHE", cache)
        .args(["generate", "--progress", "off", "--num_sampling_steps", "2", "--bundle"])
        .arg(bundle)
        .args(["--text_prompt", "a red circle moving to the right", "--save_img_path"])
        .arg(out)
        .args(extra)
        .output()
        .expect("osp should run")
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let dest = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &dest);
        } else {
            std::fs::copy(entry.path(), &dest).unwrap();
        }
    }
}

/// A writable copy of the default bundle.
fn bundle_copy(dir: &Path) -> PathBuf {
    let b = dir.join("bundle");
    copy_dir(&default_bundle(), &b);
    b
}

fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo").arg(path).status().expect("mkfifo should run").success();
    assert!(ok, "mkfifo {}", path.display());
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files = Vec::new();
    for e in entries {
        let p = e.unwrap().path();
        if p.is_dir() {
            files.extend(files_under(&p));
        } else {
            files.push(p);
        }
    }
    files.sort();
    files
}

#[test]
fn non_finite_latents_given_to_decode_stop_it_and_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let shape = [1usize, 8, 3, 4, 4];
    let total: usize = shape.iter().product();
    /// Name, flat indices set to a value (none: every value NaN), and the expected count text.
    type Case<'a> = (&'a str, &'a [(usize, f32)], &'a str);
    let cases: &[Case] = &[
        (
            "one NaN",
            &[(37, f32::NAN)],
            "1 of 384 values are not finite (1 NaN, 0 infinite), the first at index [0, 0, 2, 1, 1]",
        ),
        (
            "infinities",
            &[(5, f32::INFINITY), (200, f32::NEG_INFINITY)],
            "2 of 384 values are not finite (0 NaN, 2 infinite), the first at index [0, 0, 0, 1, 1]",
        ),
        ("all NaN", &[], "384 of 384 values are not finite (384 NaN"),
    ];
    for (i, (what, bad, want)) in cases.iter().enumerate() {
        let mut z = ArrayD::<f32>::from_elem(IxDyn(&shape), 0.1);
        if bad.is_empty() {
            z.fill(f32::NAN);
        }
        for &(at, v) in *bad {
            z.as_slice_mut().unwrap()[at] = v;
        }
        assert_eq!(z.len(), total);
        let latents = tmp.path().join(format!("z{i}.safetensors"));
        write_safetensors(&latents, [("z", &Tensor::F32(z))]).unwrap();
        let video = tmp.path().join(format!("v{i}.mp4"));
        let sample = tmp.path().join(format!("s{i}.safetensors"));
        for (mode, save_sample) in [("whole", false), ("streamed", false), ("streamed", true)] {
            let extra = [&["--no-streaming", "--no-tiling"][..], &[]][usize::from(mode == "streamed")];
            let mut cmd = osp();
            cmd.args(["decode", "--bundle"]).arg(default_bundle().join("vae")).arg("--latents").arg(&latents);
            cmd.arg("--out").arg(&video).args(extra);
            if save_sample {
                cmd.arg("--save-sample").arg(&sample);
            }
            let out = cmd.output().unwrap();
            let msg = text(&out);
            assert!(!out.status.success(), "{what} {mode}: decode succeeded:\n{msg}");
            assert!(msg.contains("non-finite values in the latents given to the VAE decoder"), "{what}: {msg}");
            assert!(msg.contains(want), "{what} {mode}: `{want}` not in:\n{msg}");
            assert!(!video.exists() && !sample.exists(), "{what} {mode}: a file was written");
        }
    }
    assert!(files_under(tmp.path()).iter().all(|p| p.extension().is_some_and(|e| e == "safetensors")));
}

#[test]
fn weights_overwritten_with_0xff_stop_generation_at_the_stage_they_break() {
    let tmp = tempfile::tempdir().unwrap();
    let prompt = "of prompt 0 (\"a red circle moving to the right\")";
    let cases: &[(&str, &[&str])] = &[
        ("text_encoder/text_encoder.onnx.data", &["non-finite values in the text encoder output for", prompt]),
        (
            "transformer/transformer.onnx.data",
            &["non-finite values in the transformer output at denoising step 0", prompt],
        ),
        ("vae/decoder.onnx.data", &["non-finite values in the VAE decoder output", prompt]),
    ];
    for (i, (file, needles)) in cases.iter().enumerate() {
        let dir = tmp.path().join(format!("case{i}"));
        let bundle = bundle_copy(&dir);
        let len = std::fs::metadata(bundle.join(file)).unwrap().len() as usize;
        std::fs::write(bundle.join(file), vec![0xFFu8; len]).unwrap();
        let (cache, out_dir) = (dir.join("cache"), dir.join("videos"));
        let out = generate(&bundle, &cache, &out_dir, &[]);
        let msg = text(&out);
        assert!(!out.status.success(), "{file}: generation succeeded:\n{msg}");
        for n in *needles {
            assert!(msg.contains(n), "{file}: `{n}` not in:\n{msg}");
        }
        assert!(!out_dir.exists(), "{file}: {:?} was written", files_under(&out_dir));
        // A non-finite embedding is never cached.
        if i == 0 {
            assert!(files_under(&cache).is_empty(), "{:?}", files_under(&cache));
        }
    }
}

#[test]
fn nan_inputs_and_cache_entries_never_reach_the_video() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = default_bundle();
    // NaN initial latents (--init-latents, latents 1 x 8 x 3 x 4 x 4 for 9 x 32 x 32).
    for (i, key) in ["p0.latents.init_randn", "p0.latents.init"].iter().enumerate() {
        let mut z = ArrayD::<f32>::zeros(IxDyn(&[1, 8, 3, 4, 4]));
        z[[0, 2, 1, 0, 3]] = f32::NAN;
        let init = tmp.path().join(format!("init{i}.safetensors"));
        write_safetensors(&init, [(*key, &Tensor::F32(z))]).unwrap();
        let out_dir = tmp.path().join(format!("init{i}"));
        let out = generate(&bundle, &tmp.path().join("cache"), &out_dir, &["--init-latents", init.to_str().unwrap()]);
        let msg = text(&out);
        assert!(!out.status.success(), "{key}: {msg}");
        assert!(msg.contains("non-finite values in the initial latents of prompt 0"), "{key}: {msg}");
        assert!(msg.contains("the first at index [0, 2, 1, 0, 3]"), "{key}: {msg}");
        assert!(!out_dir.exists(), "{key}: something was written");
    }

    // A text-cache entry holding NaN is recomputed: the video equals a clean run's.
    let cache = tmp.path().join("nan-cache");
    let clean = generate(&bundle, &cache, &tmp.path().join("clean"), &["--output-format", "gif"]);
    assert!(clean.status.success(), "{}", text(&clean));
    let entries: Vec<PathBuf> =
        files_under(&cache).into_iter().filter(|p| p.extension().is_some_and(|e| e == "safetensors")).collect();
    assert!(!entries.is_empty(), "the clean run should cache its embeddings");
    for entry in &entries {
        let mut tensors = read_safetensors(entry).unwrap();
        let Some(Tensor::F32(e)) = tensors.get_mut("prompt_embeds") else {
            panic!("{}: no prompt_embeds", entry.display())
        };
        e.fill(f32::NAN);
        let refs: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
        write_safetensors(entry, refs).unwrap();
    }
    let again = generate(&bundle, &cache, &tmp.path().join("again"), &["--output-format", "gif"]);
    assert!(again.status.success(), "{}", text(&again));
    let bytes =
        |d: &str| files_under(&tmp.path().join(d)).iter().map(|p| std::fs::read(p).unwrap()).collect::<Vec<_>>();
    assert_eq!(bytes("clean"), bytes("again"), "a NaN cache entry changed the video");
    for entry in &entries {
        let tensors = read_safetensors(entry).unwrap();
        let Some(Tensor::F32(e)) = tensors.get("prompt_embeds") else {
            panic!("{}: no prompt_embeds", entry.display())
        };
        assert!(e.iter().all(|v| v.is_finite()), "{}: still NaN", entry.display());
    }
}

#[test]
fn requests_beyond_the_host_memory_are_refused_before_any_model_loads() {
    let tmp = tempfile::tempdir().unwrap();
    // Each far beyond any host: 117M tokens of attention, 10^6 text tokens, a 40M-frame video,
    // 10^8 samples.
    let cases: &[&[&str]] = &[
        &["--height", "100000", "--width", "100000"],
        &["--height", "1000000"],
        &["--max_sequence_length", "1000000"],
        &["--num_frames", "40000001", "--stream-chunk", "2"],
        &["--num_samples_per_prompt", "100000000"],
        &["--height", "100000", "--width", "100000", "--spatial-tiling", "--devices", "0,1"],
    ];
    for args in cases {
        let out_dir = tmp.path().join("out");
        let out = generate(&default_bundle(), &tmp.path().join("cache"), &out_dir, args);
        let msg = text(&out);
        assert!(!out.status.success(), "{args:?} should be refused:\n{msg}");
        for n in ["this request needs an estimated", "GiB of memory", "available (", "--skip-memory-check"] {
            assert!(msg.contains(n), "{args:?}: `{n}` not in:\n{msg}");
        }
        assert!(!msg.contains("graph loaded") && !msg.contains("bad_alloc"), "{args:?}: {msg}");
        assert!(!out_dir.exists());
        // Tiles spread over two workers: the estimate counts both and the hint names the flag.
        let spread = args.contains(&"--devices");
        for n in ["on 2 workers", "fewer --devices (now 2 workers)"] {
            assert_eq!(msg.contains(n), spread, "{args:?}: `{n}` in:\n{msg}");
        }
    }
}

#[test]
fn unreadable_prompt_files_and_output_folders_say_what_they_are() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    std::fs::write(t.join("regular"), b"x").unwrap();
    std::fs::create_dir(t.join("folder.txt")).unwrap();
    mkfifo(&t.join("fifo.txt"));
    mkfifo(&t.join("fifo"));
    std::os::unix::fs::symlink("loop_b.txt", t.join("loop_a.txt")).unwrap();
    std::os::unix::fs::symlink("loop_a.txt", t.join("loop_b.txt")).unwrap();
    std::os::unix::fs::symlink("gone.txt", t.join("dangling.txt")).unwrap();
    let prompt = |name: &str| t.join(name).to_str().unwrap().to_string();
    let prompt_cases: &[(&str, &str)] = &[
        ("missing.txt", "does not exist; a single --text_prompt ending in .txt is read as a prompt file"),
        ("folder.txt", "is a folder, not a regular file"),
        ("fifo.txt", "is a FIFO (named pipe), not a regular file"),
        ("loop_a.txt", "is a symbolic link loop"),
        ("dangling.txt", "is a symbolic link to `gone.txt`, which does not exist"),
    ];
    for (name, want) in prompt_cases {
        let out = osp()
            .args(["generate", "--bundle"])
            .arg(default_bundle())
            .args(["--text_prompt", &prompt(name), "--save_img_path"])
            .arg(t.join("never"))
            .output()
            .unwrap();
        let msg = text(&out);
        assert!(!out.status.success(), "{name}: {msg}");
        assert!(msg.contains(&format!("--text_prompt `{}` {want}", prompt(name))), "{name}: `{want}` not in:\n{msg}");
        assert!(!msg.contains("graph loaded"), "{name}: {msg}");
    }
    let save_cases: &[(&str, &str)] = &[
        ("regular", "is a regular file; --save_img_path must be a folder"),
        ("fifo", "is a FIFO (named pipe); --save_img_path must be a folder"),
        ("loop_a.txt", "is a symbolic link loop (too many levels of symbolic links); --save_img_path must be a folder"),
        ("dangling.txt", "is a symbolic link to `gone.txt`, which does not exist; --save_img_path must be a folder"),
        ("regular/videos", "cannot be created: `"),
    ];
    for (name, want) in save_cases {
        let out = generate(&default_bundle(), &t.join("cache"), &t.join(name), &[]);
        let msg = text(&out);
        assert!(!out.status.success(), "{name}: {msg}");
        assert!(msg.contains(&format!("--save_img_path `{}`", prompt(name))), "{name}: path not named in:\n{msg}");
        assert!(msg.contains(want), "{name}: `{want}` not in:\n{msg}");
        assert!(!msg.contains("graph loaded"), "{name}: {msg}");
    }
    let msg = text(&generate(&default_bundle(), &t.join("cache"), &t.join("regular/videos"), &[]));
    assert!(msg.contains(&format!("`{}` is a regular file, not a folder", prompt("regular"))), "{msg}");
}

#[test]
fn bundle_files_that_are_fifos_or_link_loops_are_named_as_such() {
    let tmp = tempfile::tempdir().unwrap();
    type Break = fn(&Path);
    let cases: &[(&str, Break, &str)] = &[
        ("missing", |p| std::fs::remove_file(p).unwrap(), "which does not exist"),
        (
            "fifo",
            |p| {
                std::fs::remove_file(p).unwrap();
                mkfifo(p);
            },
            "which is a FIFO (named pipe), not a regular file",
        ),
        (
            "loop",
            |p| {
                std::fs::remove_file(p).unwrap();
                std::os::unix::fs::symlink(p.file_name().unwrap(), p).unwrap();
            },
            "which is a symbolic link loop",
        ),
        (
            "folder",
            |p| {
                std::fs::remove_file(p).unwrap();
                std::fs::create_dir(p).unwrap();
            },
            "which is a folder, not a regular file",
        ),
    ];
    for (i, (what, brk, want)) in cases.iter().enumerate() {
        let dir = tmp.path().join(format!("case{i}"));
        let bundle = bundle_copy(&dir);
        brk(&bundle.join("transformer/transformer.onnx.data"));
        let out = generate(&bundle, &dir.join("cache"), &dir.join("out"), &[]);
        let msg = text(&out);
        assert!(!out.status.success(), "{what}: {msg}");
        assert!(msg.contains("names file `transformer.onnx.data`, "), "{what}: {msg}");
        assert!(msg.contains(want), "{what}: `{want}` not in:\n{msg}");
    }
}
