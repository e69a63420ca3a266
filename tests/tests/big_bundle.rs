//! A bundle whose weights exceed 2 GiB of external data (the protobuf limit) loads and runs on ort CPU
//! and tract. Heavy (writes 2.4 GB, needs ~6 GB of RAM): ignored by default, run by hand with
//!
//! `./scripts/test.sh -p osp-tests --test big_bundle -- --ignored --nocapture`

use std::time::Instant;

use anyhow::Result;
use ndarray::{ArrayD, IxDyn};
use osp_export::models::big_linear::{export_big_linear, weight_row};
use osp_graphs::Approx;
use osp_runtime::{Bundle, SessionOptions, Tensor};

const IN: usize = 16384;
const OUT: usize = 36864;
const SEED: u64 = 3;

#[test]
#[ignore = "heavy: writes a 2.4 GB bundle; run with `-- --ignored` before changing external-data code (README)"]
fn external_data_over_2_gib_loads_and_runs() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().join("big");
    let t = Instant::now();
    let manifest = export_big_linear(&dir, IN, OUT, SEED)?;
    let g = manifest.graph("linear")?;
    let data: u64 = g.external_data.iter().map(|f| std::fs::metadata(dir.join(f)).map(|m| m.len()).unwrap_or(0)).sum();
    assert!(data > 2 * 1024 * 1024 * 1024, "external data is {data} bytes");
    eprintln!("export: {:.1} s, {:.2} GB external data", t.elapsed().as_secs_f64(), data as f64 / 1e9);

    // x = e_j picks column j of W: y[r] = W[r, j].
    let j = 12345;
    let mut x = ArrayD::<f32>::zeros(IxDyn(&[1, IN]));
    x[[0, j]] = 1.0;
    let x = Tensor::from(x);
    let rows = [0usize, 1, 4097, OUT / 2, OUT - 1];
    let expected: Vec<f32> = rows.iter().map(|&r| weight_row(SEED, r, IN)[j]).collect();
    let bundle = Bundle::open(&dir)?;
    for backend in osp_tests::cpu_backends() {
        let t = Instant::now();
        let mut s = bundle.session("linear", &SessionOptions::new(backend.clone()).with_threads(2))?;
        let load = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let y = s.run(&[("x", &x)])?.remove("y").expect("output y").to_f32_vec();
        let run = t.elapsed().as_secs_f64();
        let got: Vec<f32> = rows.iter().map(|&r| y[r]).collect();
        osp_tests::check_close(&format!("big linear on {backend}"), &got, &expected, Approx::Exact)?;
        eprintln!("{backend}: load {load:.1} s, run {run:.2} s");
    }
    Ok(())
}
