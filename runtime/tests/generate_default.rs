//! `osp generate` on the embedded default bundle (`assets/default/`) as a user runs it: quiet by
//! default (the video's path on stdout, at most two lines on stderr when stderr is not a terminal),
//! and a second run never replaces an earlier video unless `--overwrite` is given.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn default_bundle() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/default")
}

/// `osp --threads 2 generate --bundle assets/default --save_img_path out --text_prompt prompt [extra]`,
/// with stdout and stderr piped (not terminals) and no logging or placement variables inherited.
fn generate(tmp: &Path, prompt: &str, extra: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_osp"));
    for var in ["RUST_LOG", "OSP_BACKEND", "OSP_THREADS", "OSP_DEVICE", "OSP_PIPELINE_BUNDLE"] {
        cmd.env_remove(var);
    }
    cmd.env("OSP_TEXT_CACHE", tmp.join("cache"))
        .args(["--threads", "2", "generate", "--bundle"])
        .arg(default_bundle())
        .arg("--save_img_path")
        .arg(tmp.join("out"))
        .args(["--text_prompt", prompt])
        .args(extra)
        .output()
        .expect("osp should start")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The one video path a successful run printed.
fn written(out: &Output) -> PathBuf {
    assert!(out.status.success(), "osp generate failed:\n{}", stderr(out));
    let text = stdout(out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "stdout should be the video's path alone:\n{text}");
    let path = PathBuf::from(lines[0]);
    assert!(path.is_file(), "{} was printed but not written", path.display());
    path
}

#[test]
fn a_plain_run_prints_the_path_and_at_most_two_stderr_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let out = generate(tmp.path(), "a red circle moving to the right", &[]);
    let video = written(&out);
    assert_eq!(video.extension().and_then(|e| e.to_str()), Some("mp4"));
    assert!(video.starts_with(tmp.path().join("out")), "{}", video.display());
    let err = stderr(&out);
    assert!(err.lines().count() <= 2, "a plain run writes at most two lines to stderr, got:\n{err}");

    // The quiet default is a filter, not missing logs: `-v` shows the info lines.
    let verbose = generate(tmp.path(), "a red circle moving to the right", &["--overwrite", "-v"]);
    assert_eq!(written(&verbose), video);
    assert!(stderr(&verbose).contains("INFO"), "-v should log info lines:\n{}", stderr(&verbose));
}

#[test]
fn a_second_run_keeps_the_first_video_and_names_both() {
    let tmp = tempfile::tempdir().unwrap();
    let first = written(&generate(tmp.path(), "a red circle moving to the right", &[]));
    let first_bytes = std::fs::read(&first).unwrap();

    let out = generate(tmp.path(), "a blue triangle moving up", &[]);
    let second = written(&out);
    let stem = first.file_stem().unwrap().to_str().unwrap();
    assert_eq!(second, first.with_file_name(format!("{stem}-1.mp4")), "the first free name after the upstream one");
    assert_eq!(std::fs::read(&first).unwrap(), first_bytes, "the first video must be left as it was");
    assert_ne!(std::fs::read(&second).unwrap(), first_bytes, "another prompt makes another video");
    let err = stderr(&out);
    for want in [first.display().to_string(), second.display().to_string(), "--overwrite".to_string()] {
        assert!(err.contains(&want), "the warning should name `{want}`:\n{err}");
    }
    assert!(err.lines().count() <= 2, "{err}");

    let third = written(&generate(tmp.path(), "a green square moving to the left", &[]));
    assert_eq!(third, first.with_file_name(format!("{stem}-2.mp4")));
}

#[test]
fn overwrite_replaces_the_video_and_says_which() {
    let tmp = tempfile::tempdir().unwrap();
    let first = written(&generate(tmp.path(), "a red circle moving to the right", &[]));
    let first_bytes = std::fs::read(&first).unwrap();

    let out = generate(tmp.path(), "a blue triangle moving up", &["--overwrite"]);
    assert_eq!(written(&out), first, "--overwrite keeps upstream's name");
    assert_ne!(std::fs::read(&first).unwrap(), first_bytes, "the video was replaced");
    let err = stderr(&out);
    assert!(err.contains(&first.display().to_string()) && err.contains("replacing"), "{err}");
    let names: Vec<_> = std::fs::read_dir(tmp.path().join("out")).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1, "no second file and no temporary left: {names:?}");
}
