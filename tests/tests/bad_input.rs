//! Bad input, table-driven (issue 2): every case gives a typed error naming the thing at fault, never a
//! panic, on every CPU backend.
//!
//! `cargo test --release -p osp-tests --test bad_input`

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use ndarray::{ArrayD, IxDyn};
use osp_runtime::session::Backend;
use osp_runtime::{Bundle, SessionOptions, Tensor};
use osp_tests::{block_bundle, cpu_backends};

fn f32_tensor(shape: &[usize]) -> Tensor {
    Tensor::from(ArrayD::<f32>::zeros(IxDyn(shape)))
}

/// Runs the block with the given inputs; the error text when it fails.
fn run_err(bundle: &Path, backend: &Backend, inputs: &[(&str, Tensor)]) -> Result<String> {
    let bundle = Bundle::open(bundle)?;
    let mut s = bundle.session("block", &SessionOptions::new(backend.clone()))?;
    let refs: Vec<(&str, &Tensor)> = inputs.iter().map(|(n, t)| (*n, t)).collect();
    match s.run(&refs) {
        Ok(_) => bail!("run succeeded but should have failed"),
        Err(e) => Ok(e.to_string()),
    }
}

#[test]
fn wrong_inputs_are_named_in_the_error() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let bundle = block_bundle(&tmp.path().join("b"))?;
    let half = Tensor::from(ArrayD::<half::f16>::zeros(IxDyn(&[1, 4, 32])));
    let cases: Vec<(&str, Vec<(&str, Tensor)>, &str)> = vec![
        (
            "wrong dtype",
            vec![("hidden_states", half), ("attention_mask", f32_tensor(&[1, 4]))],
            "input `hidden_states`: dtype must be f32, got f16",
        ),
        (
            "wrong rank",
            vec![("hidden_states", f32_tensor(&[4, 32])), ("attention_mask", f32_tensor(&[1, 4]))],
            "input `hidden_states`: rank must be 3",
        ),
        (
            "wrong fixed dim",
            vec![("hidden_states", f32_tensor(&[1, 4, 31])), ("attention_mask", f32_tensor(&[1, 4]))],
            "input `hidden_states`: dim 2 must be 32, got 31",
        ),
        (
            "inconsistent symbol",
            vec![("hidden_states", f32_tensor(&[1, 4, 32])), ("attention_mask", f32_tensor(&[1, 5]))],
            "input `attention_mask`: dim 1 must be n = 4 (bound by input `hidden_states`), got 5",
        ),
        ("missing input", vec![("hidden_states", f32_tensor(&[1, 4, 32]))], "missing input `attention_mask`"),
        (
            "unexpected input",
            vec![
                ("hidden_states", f32_tensor(&[1, 4, 32])),
                ("attention_mask", f32_tensor(&[1, 4])),
                ("timestep", f32_tensor(&[1])),
            ],
            "unexpected input `timestep`",
        ),
    ];
    for backend in cpu_backends() {
        for (what, inputs, want) in &cases {
            let inputs: Vec<(&str, Tensor)> = inputs.iter().map(|(n, t)| (*n, t.clone())).collect();
            let err = run_err(&bundle, &backend, &inputs).with_context(|| format!("{what} on {backend}"))?;
            assert!(err.contains(want), "{what} on {backend}: `{err}` should contain `{want}`");
        }
    }
    Ok(())
}

#[test]
fn broken_bundles_are_named_in_the_error() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    type Break = fn(&Path) -> Result<()>;
    let cases: Vec<(&str, Break, &str)> = vec![
        ("truncated .onnx", |d| truncate(&d.join("block.onnx")), "block.onnx"),
        (
            "manifest naming a missing file",
            |d| Ok(std::fs::remove_file(d.join("block.onnx.data"))?),
            "names file `block.onnx.data`, which does not exist",
        ),
        ("manifest not json", |d| Ok(std::fs::write(d.join("manifest.json"), "{ not json")?), "manifest.json"),
        ("no manifest", |d| Ok(std::fs::remove_file(d.join("manifest.json"))?), "manifest.json"),
        ("truncated external data", |d| truncate(&d.join("block.onnx.data")), "block.onnx"),
    ];
    for backend in cpu_backends() {
        for (i, (what, brk, want)) in cases.iter().enumerate() {
            let dir = block_bundle(&tmp.path().join(format!("{}-{i}", backend.name())))?;
            brk(&dir)?;
            let err = match Bundle::open(&dir)
                .and_then(|b| b.session("block", &SessionOptions::new(backend.clone())).map(|_| ()))
            {
                Ok(()) => bail!("{what} on {backend}: loading succeeded but should have failed"),
                Err(e) => format!("{e:#}"),
            };
            assert!(err.contains(want), "{what} on {backend}: `{err}` should contain `{want}`");
        }
        let bundle = Bundle::open(block_bundle(&tmp.path().join(format!("{}-ok", backend.name())))?)?;
        let err = bundle.session("decoder", &SessionOptions::new(backend.clone())).unwrap_err().to_string();
        assert!(err.contains("no graph named `decoder` (graphs: block)"), "{err}");
    }
    Ok(())
}

fn truncate(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path)?;
    std::fs::write(path, &bytes[..bytes.len() / 2])?;
    Ok(())
}

#[test]
fn gpu_backends_never_fall_back_to_cpu() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let bundle = Bundle::open(block_bundle(&tmp.path().join("b"))?)?;
    let cache = tmp.path().join("trt-cache");
    for backend in [Backend::OrtCuda { device_id: 0 }, Backend::OrtTensorRt { device_id: 0, cache_dir: cache }] {
        match bundle.session("block", &SessionOptions::new(backend.clone())) {
            Ok(_) => {
                bail!("{backend}: a session was built on a machine without that execution provider")
            }
            Err(e) => {
                let msg = e.to_string();
                assert!(msg.contains("execution provider") || msg.contains("not available"), "{backend}: {msg}");
            }
        }
    }
    Ok(())
}

#[test]
fn run_graph_cli_round_trip() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let bundle = block_bundle(&tmp.path().join("b"))?;
    let inputs = tmp.path().join("in.safetensors");
    let x = Tensor::from(ArrayD::<f32>::from_shape_fn(IxDyn(&[2, 5, 32]), |i| (i[1] as f32 - i[2] as f32) / 16.0));
    let m = Tensor::from(ArrayD::<f32>::ones(IxDyn(&[2, 5])));
    osp_runtime::write_safetensors(&inputs, [("hidden_states", &x), ("attention_mask", &m)])?;
    // The CLI on other backends is covered by runtime/tests/cli.rs, where the binary's features are known.
    for backend in ["ort-cpu"] {
        let out = tmp.path().join(format!("out-{backend}.safetensors"));
        let status = Command::new(osp_tests::osp_binary()?)
            .args([
                "run-graph",
                bundle.to_str().unwrap(),
                "block",
                "--inputs",
                inputs.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ])
            .args(["--backend", backend, "--threads", "1"])
            .output()?;
        assert!(status.status.success(), "{backend}: {}", String::from_utf8_lossy(&status.stderr));
        let got = osp_runtime::read_safetensors(&out)?;
        let y = got.get("output").context("output written by name")?;
        assert_eq!(y.shape(), &[2, 5, 32]);
        let expected = Bundle::open(&bundle)?
            .session("block", &SessionOptions::new(Backend::OrtCpu))?
            .run(&[("hidden_states", &x), ("attention_mask", &m)])?;
        osp_tests::check_close(
            &format!("run-graph {backend}"),
            &y.to_f32_vec(),
            &expected["output"].to_f32_vec(),
            osp_graphs::Approx::Close,
        )?;
    }
    Ok(())
}
