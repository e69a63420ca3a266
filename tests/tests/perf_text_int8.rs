//! Issue #17's before/after measurements (a benchmark, not a timed test: `#[ignore]`d; run by
//! `scripts/bench_text_int8.sh`): seeded bundles at release width, medians of `OSP_BENCH_ROUNDS`
//! (default 3) timed runs after one warm-up, ratios taken in one run.
//!
//! - mT5, 2 layers at xxl width (d_model 4096, 64 heads, d_ff 10240; the T5 v1.1 vocabulary): a
//!   ~20-token prompt encoded at 512 positions (today) vs its real tokens only, f32 and int8.
//! - DiT, 4 layers at release width (2304, caption 4096), CFG batch 2 at 1280 video tokens: the
//!   `transformer` graph with 512 text positions (today) vs the cached-text step on the real
//!   tokens, f32 and int8, with int8's output error against f32.
//!
//! Writes `docs/measurements/text_int8.json` and prints the markdown rows of docs/benchmarks.md.
//!
//! `cargo test --release -p osp-tests --test perf_text_int8 -- --ignored --nocapture`

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use ndarray::{ArrayD, IxDyn};
use osp_export::models::mt5::{export_mt5, Mt5ExportOptions, Mt5Weights};
use osp_export::models::opensora_v1_3::{export_opensora_t2v, DitWeights, CACHED_GRAPH, GRAPH_NAME, TEXT_GRAPH};
use osp_export::ExportOptions;
use osp_graphs::{Approx, AttentionKind, Precision};
use osp_runtime::text::{TextEncoder, TextPositions};
use osp_runtime::{Bundle, SessionOptions, Tensor};
use osp_tests::{repo_root, shared_reference};
use osp_trainer::models::mt5::MT5Config;
use osp_trainer::models::opensora_v1_3::OpenSoraT2V_v1_3Config;
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::StandardNormal;

const PROMPT: &str = "A serene lake surrounded by snow-capped mountains at sunrise, with mist rising slowly.";
const MAX_LEN: usize = 512;
/// Real text tokens of the DiT's text input (a long prompt; the negative prompt is shorter).
const DIT_REAL_TOKENS: usize = 120;

fn rounds() -> usize {
    std::env::var("OSP_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3).max(1)
}

fn threads() -> usize {
    std::env::var("OSP_BENCH_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(2).max(1)
}

/// Median seconds of `rounds()` runs of `f` after one warm-up run.
fn median_secs(mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut t: Vec<f64> = (0..rounds())
        .map(|_| {
            let s = Instant::now();
            f().map(|_| s.elapsed().as_secs_f64())
        })
        .collect::<Result<_>>()?;
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

struct Row {
    what: String,
    secs: f64,
    baseline: f64,
}

fn mt5_rows(dir: &Path, rows: &mut Vec<Row>, notes: &mut BTreeMap<String, serde_json::Value>) -> Result<()> {
    let base = MT5Config::from_json_file(shared_reference().join("parity/mt5_tiny/config.json"))?;
    let cfg =
        MT5Config { vocab_size: 32128, d_model: 4096, d_kv: 64, d_ff: 10240, num_layers: 2, num_heads: 64, ..base };
    let tok = shared_reference().join("assets/t5_v1_1_tokenizer.json");
    let opts = SessionOptions::default().with_threads(threads());
    let mut encoders = HashMap::new();
    for precision in [Precision::F32, Precision::Int8] {
        let out = dir.join(format!("mt5-{precision}"));
        let graph = ExportOptions { precision, ..ExportOptions::default() };
        let started = Instant::now();
        export_mt5(
            &cfg,
            &Mt5Weights::Random { seed: 0 },
            &Mt5ExportOptions { graph, tokenizer: Some(tok.clone()) },
            &out,
        )?;
        eprintln!("exported mT5 {precision} in {:.1} s", started.elapsed().as_secs_f64());
        encoders.insert(precision, TextEncoder::open(&Bundle::open(&out)?, &opts, None)?);
    }
    let real = encoders[&Precision::F32].tokenizer().encode(PROMPT, MAX_LEN)?.attention_mask.iter().sum::<i64>();
    notes.insert("mt5_prompt_tokens".into(), serde_json::json!(real));
    let mut time = |p: Precision, pos: TextPositions| -> Result<f64> {
        let enc = encoders.get_mut(&p).context("encoder")?;
        median_secs(|| enc.encode_positions(&[PROMPT], MAX_LEN, false, pos).map(|_| ()).map_err(Into::into))
    };
    let today = time(Precision::F32, TextPositions::Padded)?;
    let label = |p: Precision, pos: &str| format!("mT5 2L xxl width, {real}-token prompt, {pos}, {p}");
    rows.push(Row { what: label(Precision::F32, "512 positions (today)"), secs: today, baseline: today });
    rows.push(Row {
        what: label(Precision::F32, "real tokens"),
        secs: time(Precision::F32, TextPositions::Real)?,
        baseline: today,
    });
    rows.push(Row {
        what: label(Precision::Int8, "512 positions"),
        secs: time(Precision::Int8, TextPositions::Padded)?,
        baseline: today,
    });
    rows.push(Row {
        what: label(Precision::Int8, "real tokens"),
        secs: time(Precision::Int8, TextPositions::Real)?,
        baseline: today,
    });
    Ok(())
}

fn run_sample(bundle: &Bundle, opts: &SessionOptions, inputs: &[(&str, &Tensor)]) -> Result<(f64, Vec<f32>)> {
    let mut s = bundle.session(GRAPH_NAME, opts)?;
    let mut y = Vec::new();
    let secs = median_secs(|| {
        let out = s.run(inputs)?;
        y = out.get("sample").context("sample")?.to_f32_vec();
        Ok(())
    })?;
    Ok((secs, y))
}

fn dit_rows(dir: &Path, rows: &mut Vec<Row>, notes: &mut BTreeMap<String, serde_json::Value>) -> Result<()> {
    let config = OpenSoraT2V_v1_3Config { num_layers: 4, ..OpenSoraT2V_v1_3Config::v1_3_2b_122() };
    let w = DitWeights::random(&config, 0)?;
    let mut rng = StdRng::seed_from_u64(1);
    let mut normal = |shape: &[usize]| ArrayD::from_shape_fn(IxDyn(shape), |_| rng.sample::<f32, _>(StandardNormal));
    let hidden = Tensor::F32(normal(&[2, 8, 5, 32, 32])); // 5 x 16 x 16 = 1280 tokens
    let timestep = Tensor::F32(ArrayD::from_elem(IxDyn(&[2]), 999.0));
    let states = normal(&[2, 1, MAX_LEN, 4096]);
    let mask =
        ArrayD::from_shape_fn(IxDyn(&[2, 1, MAX_LEN]), |ix| f32::from(u8::from(ix[2] < DIT_REAL_TOKENS - 40 * ix[0])));
    let cut = |a: &ArrayD<f32>, l: usize| Tensor::F32(a.slice_axis(ndarray::Axis(2), (0..l).into()).to_owned());
    let (states_full, mask_full) = (Tensor::F32(states.clone()), Tensor::F32(mask.clone()));
    let (states_real, mask_real) = (cut(&states, DIT_REAL_TOKENS), cut(&mask, DIT_REAL_TOKENS));
    let opts = SessionOptions::default().with_threads(threads());
    let mut outputs = HashMap::new();
    let mut today = 0.0;
    for precision in [Precision::F32, Precision::Int8] {
        let out = dir.join(format!("dit-{precision}"));
        let started = Instant::now();
        let eo = ExportOptions { attention: AttentionKind::OnnxAttention, precision, ..ExportOptions::default() };
        export_opensora_t2v(&config, &w, &eo, &out)?;
        eprintln!("exported DiT {precision} in {:.1} s", started.elapsed().as_secs_f64());
        let bundle = Bundle::open(&out)?;
        let full = [
            ("hidden_states", &hidden),
            ("timestep", &timestep),
            ("encoder_hidden_states", &states_full),
            ("encoder_attention_mask", &mask_full),
        ];
        let (secs, y) = run_sample(&bundle, &opts, &full)?;
        if precision == Precision::F32 {
            today = secs;
        }
        outputs.insert(precision, y);
        let label = |what: &str| format!("DiT 4L 2304, CFG batch 2, 1280 tokens, {what}, {precision}");
        rows.push(Row { what: label("`transformer`, 512 text positions (today)"), secs, baseline: today });
        // The exact fast path: text half once per prompt (not timed per step), the cached step on the real tokens.
        let mut text = bundle.session(TEXT_GRAPH, &opts)?;
        let kv = text.run(&[("encoder_hidden_states", &states_real)])?;
        let mut step = bundle.session(CACHED_GRAPH, &opts)?;
        let mut inputs: Vec<(&str, &Tensor)> =
            vec![("hidden_states", &hidden), ("timestep", &timestep), ("encoder_attention_mask", &mask_real)];
        inputs.extend(kv.iter().map(|(n, t)| (n.as_str(), t)));
        let secs = median_secs(|| step.run(&inputs).map(|_| ()).map_err(Into::into))?;
        rows.push(Row {
            what: label(&format!("cached-text step, {DIT_REAL_TOKENS} real text tokens")),
            secs,
            baseline: today,
        });
    }
    let c = Approx::Approximate.compare(&outputs[&Precision::Int8], &outputs[&Precision::F32]);
    let scale = outputs[&Precision::F32].iter().fold(0f32, |m, v| m.max(v.abs()));
    eprintln!(
        "DiT int8 vs f32 output: max |diff| {:.3e}, cosine {:.6} (max |f32 output| {scale})",
        c.max_abs, c.cosine
    );
    notes.insert(
        "dit_int8_vs_f32".into(),
        serde_json::json!({"max_abs": c.max_abs, "cosine": c.cosine, "max_abs_f32_output": scale}),
    );
    Ok(())
}

#[test]
#[ignore = "benchmark (~3 min quiet, ~6 GB of disk): on a quiet machine before changing text trimming, the cached-text graphs or int8, `scripts/bench_text_int8.sh` (README)"]
fn text_trimming_and_int8_speedups() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let mut rows = Vec::new();
    let mut notes = BTreeMap::new();
    notes.insert("rounds".into(), serde_json::json!(rounds()));
    notes.insert("threads".into(), serde_json::json!(threads()));
    mt5_rows(tmp.path(), &mut rows, &mut notes)?;
    dit_rows(tmp.path(), &mut rows, &mut notes)?;
    println!("| measurement | median s | speed-up vs today |");
    println!("|---|---|---|");
    for r in &rows {
        println!("| {} | {:.3} | {:.2}x |", r.what, r.secs, r.baseline / r.secs);
    }
    let json = serde_json::json!({
        "rows": rows.iter().map(|r| serde_json::json!({"what": r.what, "median_s": r.secs, "speedup": r.baseline / r.secs})).collect::<Vec<_>>(),
        "notes": notes,
    });
    let path = repo_root().join("docs/measurements/text_int8.json");
    osp_fs::write_bytes(&path, serde_json::to_string_pretty(&json)? + "\n")
        .with_context(|| path.display().to_string())?;
    println!("wrote {}", path.display());
    Ok(())
}
