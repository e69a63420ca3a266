//! The `osp` binary end to end: help, inspect, run-graph, and library-discovery errors.

mod common;

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

use common::*;
use osp_graphs::Approx;
use osp_runtime::{read_safetensors, write_safetensors};

fn osp() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_osp"));
    for var in ["OSP_ORT_DYLIB", "ORT_DYLIB_PATH", "OSP_BACKEND", "OSP_THREADS"] {
        cmd.env_remove(var);
    }
    cmd
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

/// `osp run-graph <flags> <fixture bundle> linear --inputs <dir>/in.safetensors --out
/// <dir>/out.safetensors`, with the input `x` (`x_shape`, f32) written first.
fn run_graph(dir: &Path, x_shape: &[usize], flags: &[&OsStr]) -> Command {
    let inputs = dir.join("in.safetensors");
    write_safetensors(&inputs, [("x", &f32_tensor(x_shape))]).unwrap();
    let mut cmd = osp();
    cmd.arg("run-graph").args(flags).arg(fixture_bundle()).arg("linear");
    cmd.arg("--inputs").arg(&inputs).arg("--out").arg(dir.join("out.safetensors"));
    cmd
}

#[test]
fn help_lists_the_subcommands_and_flags() {
    let out = osp().arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = text(&out.stdout);
    for want in ["run-graph", "inspect", "--backend", "--threads", "--tracing", "OSP_BACKEND", "ort-tensorrt"] {
        assert!(help.contains(want), "help lacks `{want}`:\n{help}");
    }
}

#[test]
fn inspect_prints_the_manifest_summary() {
    let out = osp().arg("inspect").arg(fixture_bundle()).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    for want in [
        "model: transformer_block",
        "provenance: exporter runtime/tests/fixtures/make_fixtures.py",
        "linear: linear.onnx (precision f32, attention none, opset 17)",
        "external data: linear.onnx.data",
        "in  x: f32 [b, 4]",
        "out y: f32 [b, 3]",
        "in  m: bool [n]",
    ] {
        assert!(s.contains(want), "inspect output lacks `{want}`:\n{s}");
    }
}

#[test]
fn run_graph_writes_outputs_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let outputs = dir.path().join("out.safetensors");
    let x = f32_tensor(&[2, 4]);
    let trace = dir.path().join("trace.json");
    let flags = ["--threads", "1", "--tracing", "--trace-file"].map(OsStr::new);
    let flags = [&flags[..], &[trace.as_os_str()]].concat();
    let out = run_graph(dir.path(), &[2, 4], &flags).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.contains("y: f32 [2, 3]"), "{stdout}");
    assert!(stdout.contains("ran `linear` on ort-cpu in"), "{stdout}");
    let result = read_safetensors(&outputs).unwrap();
    assert_eq!(result.keys().collect::<Vec<_>>(), vec!["y"]);
    assert_approx(&result["y"], &linear_reference(&x), Approx::Close);
    let trace = std::fs::read_to_string(&trace).unwrap();
    assert!(trace.contains("graph_run"), "the chrome trace should hold the graph_run span");
}

#[test]
fn wrong_input_names_the_input_and_rule() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_graph(dir.path(), &[2, 5], &[]).output().unwrap();
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("input `x`: dim 1 must be 4, got 5"), "{stderr}");
    assert!(!dir.path().join("out.safetensors").exists());
}

#[test]
fn library_variable_to_a_missing_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope/libonnxruntime.so");
    let out = run_graph(dir.path(), &[1, 4], &[]).env("OSP_ORT_DYLIB", &missing).output().unwrap();
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("OSP_ORT_DYLIB"), "{stderr}");
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
    assert!(stderr.contains("scripts/setup.sh"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn cuda_backend_fails_instead_of_running_on_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_graph(dir.path(), &[1, 4], &[]).env("OSP_BACKEND", "ort-cuda").output().unwrap();
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("ort-cuda") || stderr.contains("CUDA"), "{stderr}");
    assert!(!dir.path().join("out.safetensors").exists());
}

/// The shipped binary (release profile, no tract) stays under 15 MB.
#[cfg(all(not(debug_assertions), not(feature = "tract")))]
#[test]
fn release_binary_stays_small() {
    let size = std::fs::metadata(env!("CARGO_BIN_EXE_osp")).unwrap().len();
    assert!(size < 15 * 1024 * 1024, "osp is {size} bytes");
}

/// `osp` restarts itself once with glibc's huge-page malloc where the kernel gives transparent huge
/// pages on request (`madvise` mode), says so at debug level, and stays as it is with
/// `OSP_MALLOC_HUGE_PAGES=0`.
#[test]
fn restarts_with_malloc_huge_pages_in_madvise_mode() {
    let run = |opt_out: bool| {
        let mut cmd = osp();
        cmd.env_remove("GLIBC_TUNABLES").env_remove("RUST_LOG").env_remove("OSP_MALLOC_HUGE_PAGES");
        if opt_out {
            cmd.env("OSP_MALLOC_HUGE_PAGES", "0");
        }
        let out = cmd.args(["-vv", "schedule"]).output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stderr)
    };
    let mode = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").unwrap_or_default();
    let on = run(false);
    if cfg!(all(target_os = "linux", target_env = "gnu")) && mode.contains("[madvise]") {
        assert!(on.contains("malloc huge pages: GLIBC_TUNABLES=glibc.malloc.hugetlb=1"), "{on}");
    } else {
        assert!(on.contains("malloc huge pages: off"), "{on}");
    }
    let off = run(true);
    assert!(off.contains("malloc huge pages: off (OSP_MALLOC_HUGE_PAGES=0)"), "{off}");
}
