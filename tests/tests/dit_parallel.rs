//! The sequence-parallel / CFG-parallel DiT executor (`osp_runtime::parallel::ParallelDit`, CPU
//! ranks on the host collective) against the single `transformer` graph of the same bundle, within
//! `Close`: a seeded 12-head DiT with every layer kind (full, skiparse single, skiparse group) at
//! SP 1-4, CFG-parallel and both, with padded frame splits and a text length no degree divides; the
//! `dit_tiny` fixture (2 heads) at degree 2; a failing rank; refused settings.
//!
//! `cargo test --release -p osp-tests --test dit_parallel`

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use ndarray::{ArrayD, IxDyn};
use osp_export::models::opensora_v1_3::{export_opensora_t2v, DitWeights, GRAPH_NAME};
use osp_export::ExportOptions;
use osp_graphs::{Approx, AttentionKind, DitSegments, Precision};
use osp_runtime::engine::Resident;
use osp_runtime::parallel::{ParallelDit, ParallelPlan, RankProbe};
use osp_runtime::{Bundle, SessionOptions, Tensor};
use osp_tests::{check_close, shared_reference};
use osp_trainer::models::opensora_v1_3::OpenSoraT2V_v1_3Config;
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::StandardNormal;

const INPUTS: [&str; 4] = ["hidden_states", "timestep", "encoder_hidden_states", "encoder_attention_mask"];

/// 12 heads of 6, 4 layers (full, full, single4, group4), sparse_n 4.
fn twelve_heads() -> Result<OpenSoraT2V_v1_3Config> {
    let path = shared_reference().join("parity/dit_tiny/config.json");
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
    json["num_attention_heads"] = 12.into();
    json["attention_head_dim"] = 6.into();
    json["cross_attention_dim"] = 72.into();
    json["caption_channels"] = 16.into();
    Ok(serde_json::from_value(json)?)
}

/// [`twelve_heads`] with seeded random weights (`seed`), exported with ONNX `Attention` into a
/// temp folder (returned to keep it alive).
fn twelve_head_bundle(seed: u64) -> Result<(tempfile::TempDir, Bundle)> {
    let config = twelve_heads()?;
    let w = DitWeights::random(&config, seed)?;
    let tmp = tempfile::tempdir()?;
    let bundle = export(tmp.path(), &config, &w, AttentionKind::OnnxAttention)?;
    Ok((tmp, bundle))
}

fn export(dir: &Path, config: &OpenSoraT2V_v1_3Config, w: &DitWeights, attention: AttentionKind) -> Result<Bundle> {
    let opts = ExportOptions {
        attention,
        precision: Precision::F32,
        external_data_threshold_bytes: 1024,
        ..Default::default()
    };
    export_opensora_t2v(config, w, &opts, dir)?;
    Ok(Bundle::open(dir)?)
}

fn call(b: usize, c: usize, t: usize, h: usize, w: usize, l: usize, caption: usize, seed: u64) -> Vec<Tensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut normal = |shape: &[usize]| ArrayD::from_shape_fn(IxDyn(shape), |_| rng.sample::<f32, _>(StandardNormal));
    let hidden = normal(&[b, c, t, h, w]);
    let states = normal(&[b, 1, l, caption]);
    let timestep = ArrayD::from_shape_fn(IxDyn(&[b]), |i| [999.0, 421.0, 20.0, 3.0][i[0] % 4]);
    // row r keeps its first l - 1 - r % 3 text tokens
    let mask = ArrayD::from_shape_fn(IxDyn(&[b, 1, l]), |ix| if ix[2] + 1 + ix[0] % 3 < l + 1 - 1 { 1.0 } else { 0.0 });
    vec![hidden.into(), timestep.into(), states.into(), mask.into()]
}

fn named(call: &[Tensor]) -> Vec<(&str, &Tensor)> {
    INPUTS.iter().copied().zip(call.iter()).collect()
}

fn single(bundle: &Bundle, call: &[Tensor]) -> Result<ArrayD<f32>> {
    let mut s = bundle.session(GRAPH_NAME, &SessionOptions::default().with_threads(1))?;
    let out = s.run(&named(call))?;
    let y = out.get("sample").context("sample")?;
    Ok(ArrayD::from_shape_vec(IxDyn(y.shape()), y.to_f32_vec())?)
}

fn parallel(bundle: &Bundle, plan: ParallelPlan) -> Result<ParallelDit> {
    let opts = vec![SessionOptions::default().with_threads(1); plan.world()];
    Ok(ParallelDit::load(bundle, plan, &opts)?)
}

fn compare(what: &str, got: &ArrayD<f32>, want: &ArrayD<f32>) -> Result<()> {
    ensure!(got.shape() == want.shape(), "{what}: shape {:?} vs {:?}", got.shape(), want.shape());
    let c = check_close(what, got.as_slice().context("layout")?, want.as_slice().context("layout")?, Approx::Close)?;
    eprintln!("{what}: {c}");
    Ok(())
}

#[test]
fn twelve_head_dit_equals_the_single_graph_for_every_plan() -> Result<()> {
    let config = twelve_heads()?;
    let w = DitWeights::random(&config, 16)?;
    let tmp = tempfile::tempdir()?;
    let bundle = export(tmp.path(), &config, &w, AttentionKind::OnnxAttention)?;
    let protocol = DitSegments::read(&bundle.manifest().graphs)?.context("the bundle records dit_segments")?;
    let kinds: Vec<&str> = protocol.layers.iter().map(|l| l.attention.as_str()).collect();
    assert_eq!(kinds, ["full", "full", "single4", "group4"]);
    // the segments reference the transformer's weights: no second copy of the weight bytes
    let weight_bytes: u64 = w.weights().iter().map(|(_, t)| t.numel() as u64 * 4).sum();
    let data: u64 = bundle.manifest().data_files.values().sum();
    ensure!(data < weight_bytes + weight_bytes / 10, "data files {data} bytes for {weight_bytes} bytes of weights");

    // 7 frames: padded to 8 (SP 2, 4) and 9 (SP 3); 2x3 patches per frame, 42 tokens (skiparse pads
    // them to 48); 5 text tokens, which no degree divides
    let inputs = call(2, 8, 7, 4, 6, 5, 16, 1);
    let want = single(&bundle, &inputs)?;
    for (sp, cfg_groups) in [(1, 1), (2, 1), (3, 1), (4, 1), (1, 2), (2, 2), (3, 2)] {
        let plan = ParallelPlan { sp, cfg_groups };
        let mut dit = parallel(&bundle, plan)?;
        let got = dit.run(&named(&inputs))?;
        compare(&format!("12 heads, 7 frames, SP {sp} x CFG groups {cfg_groups}"), &got, &want)?;
        // a second call on the same executor (fresh communicators, same sessions)
        let again = dit.run(&named(&inputs))?;
        ensure!(again == got, "a second run differs");
        let t = &dit.timings()[0];
        ensure!(t.compute.contains_key("core_group4") && t.exchange.contains_key("all_gather"), "{t:?}");
        ensure!(t.exchange.contains_key("all_to_all") == (sp > 1), "{t:?}");
    }
    // negative control: another input gives another sample, so the equalities above are not vacuous
    let other = call(2, 8, 7, 4, 6, 5, 16, 9);
    let got = parallel(&bundle, ParallelPlan { sp: 2, cfg_groups: 1 })?.run(&named(&other))?;
    let c = Approx::Close.compare(got.as_slice().context("layout")?, want.as_slice().context("layout")?);
    ensure!(!c.ok(), "another input matched: {c}");
    // frames the degree divides (no padding)
    let inputs = call(2, 8, 6, 4, 6, 3, 16, 2);
    let want = single(&bundle, &inputs)?;
    for sp in [2, 3] {
        let got = parallel(&bundle, ParallelPlan { sp, cfg_groups: 2 })?.run(&named(&inputs))?;
        compare(&format!("12 heads, 6 frames, SP {sp} x CFG 2"), &got, &want)?;
    }
    Ok(())
}

/// Segment outputs stay in ONNX Runtime's memory (IoBinding), equal to the host-copy run, and the
/// collective reads them in place.
#[test]
fn resident_values_stay_in_the_engine_and_match_host_runs() -> Result<()> {
    let (_tmp, bundle) = twelve_head_bundle(20)?;
    let inputs = call(1, 8, 2, 4, 4, 3, 16, 8);
    let mut pre = bundle.session("sp_pre", &SessionOptions::default().with_threads(1))?;
    let host = pre.run(&named(&inputs))?;
    let resident_inputs: Vec<Resident> = inputs.iter().cloned().map(Resident::host).collect();
    let args: Vec<(&str, &Resident)> = INPUTS.iter().copied().zip(resident_inputs.iter()).collect();
    let resident = pre.run_resident(&args)?;
    for (name, r) in &resident {
        let place = format!("{r:?}");
        ensure!(!place.contains("on host"), "{name} came back to the host: {place}");
        ensure!(matches!(r.buffer()?, osp_runtime::parallel::Buffer::Host(_)), "ort-cpu memory is host-accessible");
        ensure!(r.to_host(name)? == host[name], "{name}: resident and host runs differ");
    }
    let mut buf = pre.resident_buffer(osp_graphs::DType::F32, &[2, 3])?;
    ensure!(buf.buffer_mut()?.len() == 24, "a 2x3 f32 buffer is 24 bytes");
    Ok(())
}

#[test]
fn every_attention_form_runs_the_segments() -> Result<()> {
    let config = twelve_heads()?;
    let w = DitWeights::random(&config, 17)?;
    let inputs = call(1, 8, 3, 4, 4, 4, 16, 3);
    for form in [AttentionKind::MsMultiHeadAttention, AttentionKind::Decomposed, AttentionKind::Auto] {
        let tmp = tempfile::tempdir()?;
        let bundle = export(tmp.path(), &config, &w, form)?;
        let want = single(&bundle, &inputs)?;
        let got = parallel(&bundle, ParallelPlan { sp: 2, cfg_groups: 1 })?.run(&named(&inputs))?;
        compare(&format!("{form}, SP 2"), &got, &want)?;
    }
    Ok(())
}

#[test]
fn dit_tiny_fixture_at_degree_two() -> Result<()> {
    let dir = shared_reference().join("parity/dit_tiny");
    let config = OpenSoraT2V_v1_3Config::from_json_file(dir.join("config.json"))?;
    let w = DitWeights::load(&config, &dir.join("weights.safetensors"))?;
    let tmp = tempfile::tempdir()?;
    let bundle = export(tmp.path(), &config, &w, AttentionKind::OnnxAttention)?;
    // 3 frames over 2 ranks: padded to 4; 7 text tokens
    let inputs = call(2, 8, 3, 8, 12, 7, 32, 4);
    let want = single(&bundle, &inputs)?;
    for (sp, cfg_groups) in [(2, 1), (1, 2), (2, 2)] {
        let got = parallel(&bundle, ParallelPlan { sp, cfg_groups })?.run(&named(&inputs))?;
        compare(&format!("dit_tiny, SP {sp} x CFG groups {cfg_groups}"), &got, &want)?;
    }
    Ok(())
}

#[test]
fn a_failing_rank_stops_every_rank_and_is_named() -> Result<()> {
    let (_tmp, bundle) = twelve_head_bundle(18)?;
    let inputs = call(2, 8, 4, 4, 4, 3, 16, 5);
    for (rank, segment) in [(1, "sp_core_single4_p2"), (2, "sp_block0_qkv"), (3, "sp_final")] {
        let mut dit = parallel(&bundle, ParallelPlan { sp: 2, cfg_groups: 2 })?;
        dit.inject_fault(rank, segment);
        let started = Instant::now();
        let err = dit.run(&named(&inputs)).expect_err("an injected fault must fail the run").to_string();
        ensure!(started.elapsed() < Duration::from_secs(10), "the failing run took {:?}", started.elapsed());
        ensure!(err.contains(&format!("rank {rank} ")) && err.contains(segment), "{err}");
        // the executor stays usable
        dit.inject_fault(usize::MAX, "");
        dit.run(&named(&inputs))?;
    }
    Ok(())
}

/// A rank run alone (`RankProbe`, the memory probe's executor) runs the same segments and exchanges
/// as that rank in a real run, and its settings are checked like the executor's.
#[test]
fn a_probed_rank_runs_the_segments_of_the_real_rank() -> Result<()> {
    let (_tmp, bundle) = twelve_head_bundle(21)?;
    let inputs = call(2, 8, 7, 4, 6, 5, 16, 10);
    let one = SessionOptions::default().with_threads(1);
    for (sp, cfg_groups, rank) in [(2, 1, 0), (3, 1, 2), (2, 2, 3)] {
        let plan = ParallelPlan { sp, cfg_groups };
        let mut dit = parallel(&bundle, plan)?;
        dit.run(&named(&inputs))?;
        let real = &dit.timings()[rank];
        let probed = RankProbe::load(&bundle, plan, rank, &one)?.run(&named(&inputs))?;
        let keys = |m: &std::collections::BTreeMap<String, f64>| m.keys().cloned().collect::<Vec<_>>();
        ensure!(keys(&probed.compute) == keys(&real.compute), "{plan:?} rank {rank}: {probed:?} vs {real:?}");
        ensure!(keys(&probed.exchange) == keys(&real.exchange), "{plan:?} rank {rank}: {probed:?} vs {real:?}");
        ensure!(probed.compute.values().all(|&s| s > 0.0), "{probed:?}");
    }
    let plan = ParallelPlan { sp: 2, cfg_groups: 1 };
    let err = RankProbe::load(&bundle, plan, 2, &one).expect_err("rank 2 of 2").to_string();
    ensure!(err.contains("rank") && err.contains("world size 2"), "{err}");
    let err = RankProbe::load(&bundle, ParallelPlan { sp: 5, cfg_groups: 1 }, 0, &one).expect_err("5").to_string();
    ensure!(err.contains("--sp") && err.contains("divide the 12"), "{err}");
    let mut probe = RankProbe::load(&bundle, ParallelPlan { sp: 4, cfg_groups: 1 }, 0, &one)?;
    let err = probe.run(&named(&call(1, 8, 5, 4, 4, 3, 16, 6))).expect_err("5 frames over 4").to_string();
    ensure!(err.contains("--sp") && err.contains("only padding"), "{err}");
    Ok(())
}

#[test]
fn bad_settings_are_refused_naming_the_rule() -> Result<()> {
    let (_tmp, bundle) = twelve_head_bundle(19)?;
    let err = parallel(&bundle, ParallelPlan { sp: 5, cfg_groups: 1 }).expect_err("5 does not divide 12").to_string();
    ensure!(err.contains("--sp") && err.contains("divide the 12"), "{err}");
    let err = ParallelDit::load(&bundle, ParallelPlan { sp: 2, cfg_groups: 1 }, &[SessionOptions::default()])
        .expect_err("one device for two ranks")
        .to_string();
    ensure!(err.contains("--devices"), "{err}");
    let mut dit = parallel(&bundle, ParallelPlan { sp: 4, cfg_groups: 1 })?;
    // 5 frames over 4 ranks: 2 per rank, the last rank would hold only padding
    let err = dit.run(&named(&call(1, 8, 5, 4, 4, 3, 16, 6))).expect_err("5 frames over 4").to_string();
    ensure!(err.contains("--sp") && err.contains("only padding"), "{err}");
    let mut dit = parallel(&bundle, ParallelPlan { sp: 1, cfg_groups: 2 })?;
    let err = dit.run(&named(&call(1, 8, 2, 4, 4, 3, 16, 7))).expect_err("batch 1 over 2 groups").to_string();
    ensure!(err.contains("--cfg-parallel"), "{err}");
    Ok(())
}

/// Release geometry (hidden 2304 = 24 heads x 96, caption 4096), 2 layers, seeded random weights,
/// 1280 tokens (t=5, 32x32 latent -> 5x16x16 patches), the default `auto` attention, ort-cpu with
/// 2 threads in all: the single
/// graph vs the segmented path at SP 1, 2 and 3 (threads split over the ranks), median of 9 rounds
/// after a warm-up, the paths alternating within each round. Prints markdown rows and a JSON line
/// (`BENCH_JSON ...`).
#[test]
#[ignore = "benchmark (0.9 GB of weights, ~1 min on 2 cores): on a quiet machine before changing the segments or the executor, `cargo test --release -p osp-tests --test dit_parallel release_geometry_segment_bench -- --ignored --nocapture` (README, docs/benchmarks.md)"]
fn release_geometry_segment_bench() -> Result<()> {
    let config = OpenSoraT2V_v1_3Config { num_layers: 2, ..OpenSoraT2V_v1_3Config::v1_3_2b_122() };
    let w = DitWeights::random(&config, 0)?;
    let tmp = tempfile::tempdir()?;
    let bundle = export(tmp.path(), &config, &w, AttentionKind::Auto)?;
    let mut rng = StdRng::seed_from_u64(1);
    let mut normal = |shape: &[usize]| ArrayD::from_shape_fn(IxDyn(shape), |_| rng.sample::<f32, _>(StandardNormal));
    let inputs: Vec<Tensor> = vec![
        normal(&[1, 8, 5, 32, 32]).into(),
        ArrayD::from_elem(IxDyn(&[1]), 999.0f32).into(),
        normal(&[1, 1, 64, 4096]).into(),
        ArrayD::from_shape_fn(IxDyn(&[1, 1, 64]), |ix| if ix[2] < 20 { 1.0f32 } else { 0.0 }).into(),
    ];
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let rounds = 9;
    // Every path is loaded first and the rounds alternate between them, so that a slow stretch of
    // the machine lands on every path alike.
    let mut session = bundle.session(GRAPH_NAME, &SessionOptions::default().with_threads(2))?;
    session.run(&named(&inputs))?;
    let want = single(&bundle, &inputs)?;
    let mut dits = vec![];
    for sp in [1usize, 2, 3] {
        let threads = (2 / sp).max(1);
        let opts = vec![SessionOptions::default().with_threads(threads); sp];
        let mut dit = ParallelDit::load(&bundle, ParallelPlan { sp, cfg_groups: 1 }, &opts)?;
        let got = dit.run(&named(&inputs))?;
        check_close(
            &format!("SP {sp}"),
            got.as_slice().context("layout")?,
            want.as_slice().context("layout")?,
            Approx::Approximate,
        )?;
        dit.reset_timings();
        dits.push((sp, threads, dit, vec![]));
    }
    let mut single_times = vec![];
    for _ in 0..rounds {
        let s = Instant::now();
        session.run(&named(&inputs))?;
        single_times.push(s.elapsed().as_secs_f64());
        for (_, _, dit, times) in &mut dits {
            let s = Instant::now();
            dit.run(&named(&inputs))?;
            times.push(s.elapsed().as_secs_f64());
        }
    }
    let single_s = median(single_times.clone());
    println!(
        "| path | ranks | wall ms (median of {rounds}) | vs single | median of the per-round ratios | rank 0 compute ms | rank 0 exchange ms |"
    );
    println!("|---|---|---|---|---|---|---|");
    println!("| single `transformer` graph | 1 | {:.0} | 1.00 | | | |", single_s * 1e3);
    let mut json = vec![serde_json::json!({"path": "single", "ranks": 1, "wall_s": single_s})];
    for (sp, threads, dit, times) in dits {
        // a round's two runs are adjacent in time: their ratio is the steadier one on a shared machine
        let round_ratio = median(times.iter().zip(&single_times).map(|(t, s)| t / s).collect());
        let wall = median(times);
        let (totals, calls) = dit.timing_totals();
        let per = |m: &std::collections::BTreeMap<String, f64>| m.values().sum::<f64>() * 1e3 / calls as f64;
        println!(
            "| segmented, --sp {sp} ({threads} thread(s) per rank) | {sp} | {:.0} | {:.2} | {round_ratio:.2} | {:.0} | {:.1} |",
            wall * 1e3,
            wall / single_s,
            per(&totals[0].compute),
            per(&totals[0].exchange)
        );
        let segs: Vec<_> = totals
            .iter()
            .map(|t| serde_json::json!({"compute_s_per_call": t.compute.iter().map(|(k, v)| (k.clone(), v / calls as f64)).collect::<std::collections::BTreeMap<_, _>>(), "exchange_s_per_call": t.exchange.iter().map(|(k, v)| (k.clone(), v / calls as f64)).collect::<std::collections::BTreeMap<_, _>>()}))
            .collect();
        json.push(serde_json::json!({"path": "segmented", "sp": sp, "threads_per_rank": threads, "wall_s": wall, "ratio_to_single": wall / single_s, "median_round_ratio": round_ratio, "ranks": segs}));
    }
    println!(
        "BENCH_JSON {}",
        serde_json::json!({"geometry": "hidden 2304, 24x96 heads, 2 layers, 1280 tokens, ort-cpu, 2 threads", "rounds": rounds, "results": json})
    );
    Ok(())
}

/// The environment variable that makes [`release_geometry_rank_memory`] a child: the JSON of the
/// [`ProbeSpec`] it measures.
const PROBE_ENV: &str = "OSP_SP_RANK_PROBE";

/// What one child process of [`release_geometry_rank_memory`] loads and runs.
struct ProbeSpec {
    bundle: std::path::PathBuf,
    /// `None`: the single `transformer` graph; `Some(n)`: rank 0 of `--sp n` alone.
    sp: Option<usize>,
    threads: usize,
    runs: usize,
    /// Latent frames, height and width of the call.
    latent: [usize; 3],
}

impl ProbeSpec {
    fn to_json(&self) -> String {
        serde_json::json!({"bundle": self.bundle, "sp": self.sp, "threads": self.threads, "runs": self.runs, "latent": self.latent})
            .to_string()
    }

    fn from_json(s: &str) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_str(s)?;
        let n = |k: &str| v[k].as_u64().map(|n| n as usize).with_context(|| format!("{PROBE_ENV}: `{k}` in {s}"));
        Ok(Self {
            bundle: v["bundle"].as_str().with_context(|| format!("{PROBE_ENV}: `bundle` in {s}"))?.into(),
            sp: if v["sp"].is_null() { None } else { Some(n("sp")?) },
            threads: n("threads")?,
            runs: n("runs")?,
            latent: serde_json::from_value(v["latent"].clone())
                .with_context(|| format!("{PROBE_ENV}: `latent` in {s}"))?,
        })
    }
}

/// A release-geometry call of the memory probe on a `[t, h, w]` latent (8 frames: every degree 1-4
/// splits them, SP 3 pads them to 9), 64 text tokens (20 real).
fn release_memory_call([t, h, w]: [usize; 3]) -> Vec<Tensor> {
    let mut rng = StdRng::seed_from_u64(2);
    let mut normal = |shape: &[usize]| ArrayD::from_shape_fn(IxDyn(shape), |_| rng.sample::<f32, _>(StandardNormal));
    vec![
        normal(&[1, 8, t, h, w]).into(),
        ArrayD::from_elem(IxDyn(&[1]), 999.0f32).into(),
        normal(&[1, 1, 64, 4096]).into(),
        ArrayD::from_shape_fn(IxDyn(&[1, 1, 64]), |ix| if ix[2] < 20 { 1.0f32 } else { 0.0 }).into(),
    ]
}

/// The child: loads what `spec` names, measures the process's resident memory before and after
/// the load (freed heap trimmed), resets the peak, runs `spec.runs` calls and reads the peak of the runs. Prints one
/// `RANK_MEMORY {json}` line. A probed rank's output is never seen: `RankProbe::run` returns
/// timings only.
fn rank_memory_child(spec: &ProbeSpec) -> Result<()> {
    use osp_runtime::mem;
    let inputs = release_memory_call(spec.latent);
    let opts = SessionOptions::default().with_threads(spec.threads);
    let bundle = Bundle::open(&spec.bundle)?;
    let before = mem::usage().context("/proc/self/status")?;
    let mut run: Box<dyn FnMut() -> Result<f64>> = match spec.sp {
        None => {
            let mut s = bundle.session(GRAPH_NAME, &opts)?;
            let inputs = inputs.clone();
            Box::new(move || {
                let started = Instant::now();
                s.run(&named(&inputs))?;
                Ok(started.elapsed().as_secs_f64())
            })
        }
        Some(sp) => {
            let mut probe = RankProbe::load(&bundle, ParallelPlan { sp, cfg_groups: 1 }, 0, &opts)?;
            let inputs = inputs.clone();
            Box::new(move || Ok(probe.run(&named(&inputs))?.compute.values().sum()))
        }
    };
    // freed heap pages go back to the system, so that the loaded RSS is the memory the load keeps
    mem::release_free_heap();
    let loaded = mem::usage().context("/proc/self/status")?;
    ensure!(mem::reset_peak(), "the peak resident size cannot be reset (/proc/self/clear_refs)");
    let mut compute_s = vec![];
    for _ in 0..spec.runs {
        compute_s.push(run()?);
    }
    let ran = mem::usage().context("/proc/self/status")?;
    println!(
        "RANK_MEMORY {}",
        serde_json::json!({
            "sp": spec.sp, "threads": spec.threads, "runs": spec.runs, "latent": spec.latent,
            "rss_before_load": before.rss, "rss_after_load": loaded.rss, "peak_during_load": loaded.peak,
            "anon_after_load": loaded.anon, "file_after_load": loaded.file,
            "peak_during_runs": ran.peak, "rss_after_runs": ran.rss, "compute_s": compute_s,
        })
    );
    Ok(())
}

/// Per-rank memory at release geometry (hidden 2304 = 24 heads x 96, 2 layers, seeded random
/// weights, 1280 and 5120 tokens; ort-cpu, 2 threads for the one rank each process runs): ranks are threads of one process, so each
/// measurement is a child process of its own (this test binary re-run with [`PROBE_ENV`]) that
/// loads and runs one rank alone (`RankProbe`: rank 0 of `--sp n`, the peers' shards zeros,
/// every shape and allocation the real rank's), or the single graph. Prints markdown rows (MiB)
/// and a `BENCH_JSON` line.
#[test]
#[ignore = "benchmark (0.9 GB of weights, 10 child processes, ~5 min on 2 cores): on a quiet machine before changing the segments or the executor, `cargo test --release -p osp-tests --test dit_parallel release_geometry_rank_memory -- --ignored --nocapture` (README, docs/benchmarks.md)"]
fn release_geometry_rank_memory() -> Result<()> {
    if let Ok(spec) = std::env::var(PROBE_ENV) {
        return rank_memory_child(&ProbeSpec::from_json(&spec)?);
    }
    let tmp = tempfile::tempdir()?;
    {
        let config = OpenSoraT2V_v1_3Config { num_layers: 2, ..OpenSoraT2V_v1_3Config::v1_3_2b_122() };
        let w = DitWeights::random(&config, 0)?;
        export(tmp.path(), &config, &w, AttentionKind::OnnxAttention)?;
    }
    let weight_bytes: u64 = Bundle::open(tmp.path())?.manifest().data_files.values().sum();
    let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
    println!("weights (external data): {:.0} MiB", mib(weight_bytes));
    let mut rows = vec![];
    // 1280 tokens (8 x 10 x 16 patches; weights dominate) and 5120 tokens (8 x 20 x 32; the
    // attention scores of the full-attention layer dominate)
    for (latent, runs) in [([8, 20, 32], 2), ([8, 40, 64], 1)] {
        let tokens = latent[0] * latent[1] * latent[2] / 4;
        println!("\n{tokens} tokens (latent {latent:?}), {runs} call(s) measured:\n");
        println!("| path | RSS after load | peak during load | peak during runs | runs' peak above the loaded RSS | compute s per call |");
        println!("|---|---|---|---|---|---|");
        for sp in [None, Some(1), Some(2), Some(3), Some(4)] {
            let spec = ProbeSpec { bundle: tmp.path().to_path_buf(), sp, threads: 2, runs, latent };
            let out = std::process::Command::new(std::env::current_exe()?)
                .args(["--exact", "release_geometry_rank_memory", "--ignored", "--nocapture", "--test-threads", "1"])
                .env(PROBE_ENV, spec.to_json())
                .output()?;
            let stdout = String::from_utf8_lossy(&out.stdout);
            ensure!(out.status.success(), "child {:?}: {stdout}{}", sp, String::from_utf8_lossy(&out.stderr));
            // libtest may print `test <name> ... ` in front of the line
            let line = stdout
                .lines()
                .find_map(|l| l.split_once("RANK_MEMORY ").map(|(_, json)| json))
                .with_context(|| format!("no RANK_MEMORY line from child {sp:?}: {stdout}"))?;
            let r: serde_json::Value = serde_json::from_str(line)?;
            let get = |k: &str| r[k].as_u64().with_context(|| format!("{k} in {line}"));
            let (loaded, load_peak, run_peak) =
                (get("rss_after_load")?, get("peak_during_load")?, get("peak_during_runs")?);
            let compute = r["compute_s"].as_array().and_then(|v| v.last()).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
            let path = match sp {
                None => "single `transformer` graph".to_string(),
                Some(n) => format!("rank 0 of --sp {n}"),
            };
            println!(
                "| {path} | {:.0} | {:.0} | {:.0} | {:.0} | {compute:.2} |",
                mib(loaded),
                mib(load_peak),
                mib(run_peak),
                mib(run_peak.saturating_sub(loaded))
            );
            rows.push(r);
        }
    }
    println!(
        "BENCH_JSON {}",
        serde_json::json!({"geometry": "hidden 2304, 24x96 heads, 2 layers, 1280 and 5120 tokens (latent 8 x 20 x 32, 8 x 40 x 64), ort-cpu, 2 threads per probed rank", "weight_bytes": weight_bytes, "results": rows})
    );
    Ok(())
}
