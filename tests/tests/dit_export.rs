//! `osp-export dit` (OpenSoraT2V v1.3) -> bundle -> runtime, against the official PyTorch outputs in
//! `../shared/reference/parity/dit_tiny/` (4 layers: full, full, skiparse single, skiparse group;
//! a 3x4x6 patch grid = 72 tokens, which Skiparse pads to 80, so the padded-key bias is exercised).
//!
//! `cargo test --release -p osp-tests --test dit_export`
//! The release-geometry timing check: `cargo test --release -p osp-tests --test dit_export -- --ignored --nocapture`

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use ndarray::{ArrayD, Axis, IxDyn};
use osp_export::models::opensora_v1_3::{
    export_opensora_t2v, kv_name, DitWeights, CACHED_GRAPH, GRAPH_NAME, TEXT_GRAPH,
};
use osp_export::{ExportOptions, Lowering};
use osp_graphs::{Approx, AttentionKind, BundleManifest, DType, Dim, ModelSpec, Precision};
use osp_runtime::session::Backend;
use osp_runtime::session::GraphSession;
use osp_runtime::{Bundle, SessionOptions, Tensor};
use osp_tests::{check_close, cpu_backends, shared_reference};
use osp_trainer::models::opensora_v1_3::OpenSoraT2V_v1_3Config;
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::StandardNormal;

fn fixture_dir() -> PathBuf {
    shared_reference().join("parity/dit_tiny")
}

fn tiny() -> Result<(OpenSoraT2V_v1_3Config, DitWeights)> {
    let dir = fixture_dir();
    let config = OpenSoraT2V_v1_3Config::from_json_file(dir.join("config.json"))?;
    let weights = DitWeights::load(&config, &dir.join("weights.safetensors"))?;
    Ok((config, weights))
}

/// Every fixture tensor as f32 (the text mask is stored as int64 0/1, which converts exactly).
fn fixture_io() -> Result<BTreeMap<String, ArrayD<f32>>> {
    let path = fixture_dir().join("io.safetensors");
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let d = view.data();
        let values: Vec<f32> = match view.dtype() {
            safetensors::Dtype::F32 => {
                d.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
            }
            safetensors::Dtype::I64 => d
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
                .collect(),
            other => anyhow::bail!("fixture tensor {name}: unexpected dtype {other:?}"),
        };
        out.insert(name, ArrayD::from_shape_vec(IxDyn(view.shape()), values)?);
    }
    Ok(out)
}

fn get<'a>(io: &'a BTreeMap<String, ArrayD<f32>>, name: &str) -> Result<&'a ArrayD<f32>> {
    io.get(name).with_context(|| format!("fixture tensor `{name}`"))
}

fn export(
    dir: &Path,
    config: &OpenSoraT2V_v1_3Config,
    w: &DitWeights,
    attention: AttentionKind,
    precision: Precision,
) -> Result<Bundle> {
    let opts = ExportOptions { attention, precision, external_data_threshold_bytes: 4096, ..ExportOptions::default() };
    export_opensora_t2v(config, w, &opts, dir).with_context(|| format!("exporting {attention} {precision}"))?;
    Ok(Bundle::open(dir)?)
}

/// The DiT inputs by forward-argument name.
struct Call {
    hidden_states: ArrayD<f32>,
    timestep: ArrayD<f32>,
    encoder_hidden_states: ArrayD<f32>,
    encoder_attention_mask: ArrayD<f32>,
}

fn run(bundle: &Bundle, backend: &Backend, call: &Call) -> Result<ArrayD<f32>> {
    let mut session = bundle.session(GRAPH_NAME, &SessionOptions::new(backend.clone()).with_threads(2))?;
    run_in(&mut session, call)
}

fn run_in(session: &mut GraphSession, call: &Call) -> Result<ArrayD<f32>> {
    let tensors = [
        ("hidden_states", Tensor::from(call.hidden_states.clone())),
        ("timestep", Tensor::from(call.timestep.clone())),
        ("encoder_hidden_states", Tensor::from(call.encoder_hidden_states.clone())),
        ("encoder_attention_mask", Tensor::from(call.encoder_attention_mask.clone())),
    ];
    let inputs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
    let out = session.run(&inputs)?;
    let y = out.get("sample").context("graph output `sample`")?;
    let mut want = call.hidden_states.shape().to_vec();
    want[1] = 8;
    ensure!(y.dtype() == DType::F32 && y.shape() == want.as_slice(), "sample is {}", y.describe());
    Ok(ArrayD::from_shape_vec(IxDyn(y.shape()), y.to_f32_vec())?)
}

fn full_mask_call(io: &BTreeMap<String, ArrayD<f32>>) -> Result<Call> {
    Ok(Call {
        hidden_states: get(io, "input.hidden_states")?.clone(),
        timestep: get(io, "input.timestep")?.clone(),
        encoder_hidden_states: get(io, "input.encoder_hidden_states")?.clone(),
        encoder_attention_mask: get(io, "input.encoder_attention_mask")?.clone(),
    })
}

fn image_call(io: &BTreeMap<String, ArrayD<f32>>) -> Result<Call> {
    Ok(Call {
        hidden_states: get(io, "input.hidden_states_image")?.clone(),
        timestep: get(io, "input.timestep_image")?.clone(),
        ..full_mask_call(io)?
    })
}

/// Row `i` of the text inputs with `hidden_states[0]` at t = 999 (one half of the pipeline's CFG batch).
fn cfg_call(io: &BTreeMap<String, ArrayD<f32>>, text_row: usize) -> Result<Call> {
    let row = |a: &ArrayD<f32>, i: usize| a.index_axis(Axis(0), i).insert_axis(Axis(0)).to_owned();
    Ok(Call {
        hidden_states: row(get(io, "input.hidden_states")?, 0),
        timestep: ArrayD::from_elem(IxDyn(&[1]), 999.0),
        encoder_hidden_states: row(get(io, "input.encoder_hidden_states")?, text_row),
        encoder_attention_mask: row(get(io, "input.encoder_attention_mask")?, text_row),
    })
}

/// MS `MultiHeadAttention` with a bias input is ORT-only (tract parses it only unbiased), and the
/// DiT's cross-attention and skiparse layers always carry one; see `chain.rs::runs_on`.
fn runs_on(form: AttentionKind, backend: &Backend) -> bool {
    !(form == AttentionKind::MsMultiHeadAttention && *backend == Backend::Tract)
}

// `output.sample_padded_mask` is produced with a video `attention_mask` that masks a latent frame.
// The pipeline always passes an all-ones video mask, so the graph has no such input; the Burn model
// (`osp_trainer`, `parity_padded_video_mask`) covers that case.
#[test]
fn f32_graph_matches_the_official_outputs_on_every_cpu_backend() -> Result<()> {
    let (config, w) = tiny()?;
    let io = fixture_io()?;
    let tmp = tempfile::tempdir()?;
    let mut bundles = BTreeMap::new();
    for form in AttentionKind::FORMS {
        bundles.insert(form, export(&tmp.path().join(form.to_string()), &config, &w, form, Precision::F32)?);
    }
    let full = full_mask_call(&io)?;
    let image = image_call(&io)?;
    let (uncond, cond) = (cfg_call(&io, 0)?, cfg_call(&io, 1)?);
    for backend in cpu_backends() {
        let mut by_form = BTreeMap::new();
        for form in AttentionKind::FORMS.into_iter().filter(|f| runs_on(*f, &backend)) {
            let bundle = &bundles[&form];
            let sample = run(bundle, &backend, &full)?;
            let c = check_close(
                &format!("output.sample, {form} on {backend}"),
                sample.as_slice().context("standard layout")?,
                get(&io, "output.sample")?.as_slice().context("standard layout")?,
                Approx::Approximate,
            )?;
            eprintln!("output.sample        {form:>24} on {backend:<8}: {c}");
            let img = run(bundle, &backend, &image)?;
            let c = check_close(
                &format!("output.sample_image, {form} on {backend}"),
                img.as_slice().context("standard layout")?,
                get(&io, "output.sample_image")?.as_slice().context("standard layout")?,
                Approx::Approximate,
            )?;
            eprintln!("output.sample_image  {form:>24} on {backend:<8}: {c}");
            let u = run(bundle, &backend, &uncond)?;
            let t = run(bundle, &backend, &cond)?;
            let guided = &u + &((&t - &u) * 7.5);
            let c = check_close(
                &format!("output.cfg_guided_7p5_sample0, {form} on {backend}"),
                guided.as_slice().context("standard layout")?,
                get(&io, "output.cfg_guided_7p5_sample0")?.as_slice().context("standard layout")?,
                Approx::Approximate,
            )?;
            eprintln!("cfg_guided_7p5       {form:>24} on {backend:<8}: {c}");
            by_form.insert(form, (sample, img));
        }
        // Fused forms are a speed transform of the decomposed one: same arithmetic, reordered.
        let (plain, plain_img) = &by_form[&AttentionKind::Decomposed];
        for (form, (sample, img)) in by_form.iter().filter(|(f, _)| **f != AttentionKind::Decomposed) {
            for (what, a, e) in [("video", sample, plain), ("image", img, plain_img)] {
                check_close(
                    &format!("{what}: {form} vs decomposed on {backend}"),
                    a.as_slice().context("standard layout")?,
                    e.as_slice().context("standard layout")?,
                    Approx::Close,
                )?;
            }
        }
    }
    Ok(())
}

/// The `Fast` lowering (ONNX `Gelu`, the skiparse padding bias in an extra q/k/v channel) against
/// the `Reference` one (decomposed GELU, the bias input): the same arithmetic reordered, on every
/// CPU backend and attention form. The fixture's 72 and 24 tokens are not multiples of `sparse_n²`
/// = 16, so the skiparse layers have padded keys.
#[test]
fn fast_lowering_equals_reference_lowering() -> Result<()> {
    let (config, w) = tiny()?;
    let io = fixture_io()?;
    let tmp = tempfile::tempdir()?;
    let calls = [full_mask_call(&io)?, image_call(&io)?];
    for form in [AttentionKind::Auto, AttentionKind::OnnxAttention, AttentionKind::Decomposed] {
        let mut bundles = Vec::new();
        for lowering in [Lowering::Fast, Lowering::Reference] {
            let dir = tmp.path().join(format!("{form}-{lowering}"));
            let opts = ExportOptions { attention: form, lowering, ..ExportOptions::default() };
            export_opensora_t2v(&config, &w, &opts, &dir)?;
            bundles.push(Bundle::open(&dir)?);
        }
        for backend in cpu_backends() {
            for (i, call) in calls.iter().enumerate() {
                let fast = run(&bundles[0], &backend, call)?;
                let reference = run(&bundles[1], &backend, call)?;
                let c = check_close(
                    &format!("call {i}, {form} on {backend}: fast vs reference lowering"),
                    fast.as_slice().context("standard layout")?,
                    reference.as_slice().context("standard layout")?,
                    Approx::Close,
                )?;
                eprintln!("fast vs reference, call {i}, {form:>24} on {backend:<8}: {c}");
            }
        }
    }
    Ok(())
}

/// Backends whose CPU kernels run every op of an f16 DiT graph (bf16 numerics are checked on CUDA:
/// ORT's CPU provider has no bf16 elementwise kernels and tract has no bf16).
#[test]
fn half_precision_bundles_track_the_official_outputs() -> Result<()> {
    let (config, w) = tiny()?;
    let io = fixture_io()?;
    let tmp = tempfile::tempdir()?;
    let full = full_mask_call(&io)?;
    let f32_bytes: usize = w.weights().iter().map(|(_, t)| t.numel() * 4).sum();
    for precision in [Precision::F16, Precision::Bf16] {
        let dir = tmp.path().join(precision.to_string());
        let bundle = export(&dir, &config, &w, AttentionKind::Decomposed, precision)?;
        let spec = bundle.manifest().graph(GRAPH_NAME)?;
        assert_eq!(spec.precision, precision);
        assert!(spec.inputs.iter().chain(&spec.outputs).all(|t| t.dtype == DType::F32), "graph I/O stays f32");
        let data: u64 =
            spec.external_data.iter().map(|f| std::fs::metadata(dir.join(f)).map(|m| m.len()).unwrap_or(0)).sum();
        ensure!(
            (data as usize) < f32_bytes * 6 / 10,
            "{precision} external data is {data} bytes, f32 weights {f32_bytes}"
        );
        if precision == Precision::F16 {
            let sample = run(&bundle, &Backend::OrtCpu, &full)?;
            let c = check_close(
                "f16 output.sample on ort-cpu vs the f32 reference",
                sample.as_slice().context("standard layout")?,
                get(&io, "output.sample")?.as_slice().context("standard layout")?,
                Approx::VeryApproximate,
            )?;
            eprintln!("f16 on ort-cpu: {c}");
        }
    }
    Ok(())
}

#[test]
fn bundle_records_the_dit_contract() -> Result<()> {
    let (config, w) = tiny()?;
    let tmp = tempfile::tempdir()?;
    let src = fixture_dir().join("weights.safetensors");
    let opts = ExportOptions { source: Some(src), ..ExportOptions::default() };
    let dir = tmp.path().join("bundle");
    export_opensora_t2v(&config, &w, &opts, &dir)?;
    let m = BundleManifest::load(&dir)?;
    let ModelSpec::OpenSoraT2V(recorded) = &m.model else { anyhow::bail!("model kind is {}", m.model.kind()) };
    let num_layers = recorded.upstream.get("num_layers").and_then(|v| v.as_u64());
    assert_eq!((num_layers, recorded.sparse_n, recorded.sparse1d), (Some(4), 4, true));
    assert_eq!(m.model.kind(), "opensora_t2v_v1_3");
    assert_eq!(m.provenance.source.as_deref(), Some("weights.safetensors"));
    let g = m.graph(GRAPH_NAME)?;
    let names = |l: &[osp_graphs::TensorSpec]| l.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(&g.inputs), ["hidden_states", "timestep", "encoder_hidden_states", "encoder_attention_mask"]);
    assert_eq!(names(&g.outputs), ["sample"]);
    let s = Dim::sym;
    assert_eq!(g.inputs[0].dims, vec![s("b"), Dim::Fixed(8), s("t"), s("h"), s("w")]);
    assert_eq!(g.inputs[2].dims, vec![s("b"), Dim::Fixed(1), s("l"), Dim::Fixed(32)]);
    assert_eq!(g.outputs[0].dims, g.inputs[0].dims);
    assert_eq!(g.metadata["layer_attention"], serde_json::json!(["full", "full", "single4", "group4"]));
    assert_eq!(g.metadata["patch_size"], serde_json::json!(2));
    Ok(())
}

/// One graph serves every grid: a token count that is a multiple of 16 (no skiparse padding, a
/// zero bias) and one that is not, batch 2 equal to two batches of 1.
#[test]
fn symbolic_shapes_and_batch_rows_are_independent() -> Result<()> {
    let (config, w) = tiny()?;
    let tmp = tempfile::tempdir()?;
    let bundle = export(tmp.path(), &config, &w, AttentionKind::OnnxAttention, Precision::F32)?;
    let mut rng = StdRng::seed_from_u64(5);
    // 2x4x4 = 32 tokens (no padding), 1x3x5 = 15 tokens (padded to 16)
    for (t, h, wd) in [(2, 8, 8), (1, 6, 10)] {
        let l = 7;
        let mut normal =
            |shape: &[usize]| ArrayD::from_shape_fn(IxDyn(shape), |_| rng.sample::<f32, _>(StandardNormal));
        let call = Call {
            hidden_states: normal(&[2, 8, t, h, wd]),
            timestep: ArrayD::from_shape_vec(IxDyn(&[2]), vec![999.0, 20.0])?,
            encoder_hidden_states: normal(&[2, 1, l, 32]),
            encoder_attention_mask: ArrayD::from_shape_fn(
                IxDyn(&[2, 1, l]),
                |ix| if ix[2] < 4 + ix[0] { 1.0 } else { 0.0 },
            ),
        };
        for backend in cpu_backends() {
            let both = run(&bundle, &backend, &call)?;
            ensure!(both.iter().all(|v| v.is_finite()), "non-finite output on {backend}");
            for b in 0..2 {
                let row = |a: &ArrayD<f32>| a.index_axis(Axis(0), b).insert_axis(Axis(0)).to_owned();
                let single = Call {
                    hidden_states: row(&call.hidden_states),
                    timestep: row(&call.timestep),
                    encoder_hidden_states: row(&call.encoder_hidden_states),
                    encoder_attention_mask: row(&call.encoder_attention_mask),
                };
                let one = run(&bundle, &backend, &single)?;
                check_close(
                    &format!("{t}x{h}x{wd} batch row {b} on {backend}"),
                    row(&both).as_slice().context("standard layout")?,
                    one.as_slice().context("standard layout")?,
                    Approx::Close,
                )?;
            }
        }
    }
    Ok(())
}

#[test]
fn strict_weights_name_the_offending_tensor() -> Result<()> {
    let (config, w) = tiny()?;
    let mut missing = w.weights().clone();
    missing.remove("transformer_blocks.3.attn2.to_v.bias");
    let err = DitWeights::from_weights(&config, missing).expect_err("a missing tensor must be refused").to_string();
    assert!(err.contains("transformer_blocks.3.attn2.to_v.bias"), "{err}");
    let mut extra = w.weights().clone();
    extra.insert("norm_out.weight", osp_export::HostTensor::from_f32(vec![48], &[1.0; 48])?);
    let err = DitWeights::from_weights(&config, extra).expect_err("an extra tensor must be refused").to_string();
    assert!(err.contains("norm_out.weight"), "{err}");
    Ok(())
}

/// The release geometry (hidden 2304 = 24 heads x 96, caption 4096, FFN 9216) with 2 layers and
/// random weights, one forward at 1280 tokens (t=5, 32x32 latent pixels -> 5x16x16 patches) and at
/// 4096 tokens (t=4, 64x64 -> 4x32x32), fused vs decomposed, on ort-cpu and tract. Prints seconds per
/// forward. Takes several minutes.
#[test]
#[ignore = "heavy (0.9 GB of weights, ~7 min on 2 cores): before changing the DiT lowering run `cargo test --release -p osp-tests --test dit_export -- --ignored --nocapture`"]
fn release_geometry_two_layers_timing() -> Result<()> {
    let config = OpenSoraT2V_v1_3Config { num_layers: 2, ..OpenSoraT2V_v1_3Config::v1_3_2b_122() };
    let w = DitWeights::random(&config, 0)?;
    let tmp = tempfile::tempdir()?;
    let mut rng = StdRng::seed_from_u64(1);
    let mut normal = |shape: &[usize]| ArrayD::from_shape_fn(IxDyn(shape), |_| rng.sample::<f32, _>(StandardNormal));
    let (pt, p) = (config.patch_size_t.context("patch_size_t")?, config.patch_size.context("patch_size")?);
    let geometries = [[5usize, 32, 32], [4, 64, 64]];
    let calls: Vec<(usize, Call)> = geometries
        .iter()
        .map(|&[t, lh, lw]| {
            let call = Call {
                hidden_states: normal(&[1, 8, t, lh, lw]),
                timestep: ArrayD::from_elem(IxDyn(&[1]), 999.0),
                encoder_hidden_states: normal(&[1, 1, 64, 4096]),
                encoder_attention_mask: ArrayD::from_shape_fn(
                    IxDyn(&[1, 1, 64]),
                    |ix| if ix[2] < 20 { 1.0 } else { 0.0 },
                ),
            };
            ((t / pt) * (lh / p) * (lw / p), call)
        })
        .collect();
    let mut outputs = BTreeMap::new();
    for form in [AttentionKind::OnnxAttention, AttentionKind::Decomposed] {
        let started = Instant::now();
        let bundle = export(&tmp.path().join(form.to_string()), &config, &w, form, Precision::F32)?;
        eprintln!("export {form}: {:.1} s", started.elapsed().as_secs_f64());
        for backend in cpu_backends() {
            let started = Instant::now();
            let mut session = bundle.session(GRAPH_NAME, &SessionOptions::new(backend.clone()).with_threads(2))?;
            let load = started.elapsed().as_secs_f64();
            for (tokens, call) in &calls {
                // the first run warms up (tract plans, ORT allocates); the second is timed
                run_in(&mut session, call)?;
                let (started, cpu_started) = (Instant::now(), process_cpu_secs()?);
                let y = run_in(&mut session, call)?;
                let secs = started.elapsed().as_secs_f64();
                let cpu = process_cpu_secs()? - cpu_started;
                eprintln!(
                    "forward {form:>16} on {backend:<8} ({tokens} tokens, 2 layers, 2 threads): {secs:.2} s wall, \
                     {cpu:.2} CPU s (session load {load:.1} s)"
                );
                ensure!(y.iter().all(|v| v.is_finite()), "non-finite output");
                outputs.insert((*tokens, form, backend.name()), y);
            }
        }
    }
    for ((tokens, form, backend), y) in &outputs {
        let reference = &outputs[&(*tokens, AttentionKind::Decomposed, "ort-cpu")];
        check_close(
            &format!("{form} on {backend} vs decomposed on ort-cpu at {tokens} tokens"),
            y.as_slice().context("standard layout")?,
            reference.as_slice().context("standard layout")?,
            Approx::Approximate,
        )?;
    }
    Ok(())
}

/// User + system CPU seconds of this process so far (`/proc/self/stat` fields 14 and 15), which
/// stays meaningful when other jobs share the cores and inflate wall time.
fn process_cpu_secs() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // the command name (field 2) may contain spaces; the fields after it start past the last ')'
    let rest = stat.rsplit_once(')').context("/proc/self/stat has no ')'")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> { Ok(fields.get(i).context("/proc/self/stat is short")?.parse::<f64>()?) };
    // fields[0] is field 3 (state), so utime (14) and stime (15) are at 11 and 12; USER_HZ is 100 on Linux
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// Runs `transformer_text` then `transformer_cached` on `call`.
fn run_cached(bundle: &Bundle, backend: &Backend, call: &Call) -> Result<ArrayD<f32>> {
    let opts = SessionOptions::new(backend.clone()).with_threads(2);
    let mut text = bundle.session(TEXT_GRAPH, &opts)?;
    let states = Tensor::from(call.encoder_hidden_states.clone());
    let kv = text.run(&[("encoder_hidden_states", &states)])?;
    let mut cached = bundle.session(CACHED_GRAPH, &opts)?;
    let tensors = [
        ("hidden_states", Tensor::from(call.hidden_states.clone())),
        ("timestep", Tensor::from(call.timestep.clone())),
        ("encoder_attention_mask", Tensor::from(call.encoder_attention_mask.clone())),
    ];
    let mut inputs: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
    inputs.extend(kv.iter().map(|(n, t)| (n.as_str(), t)));
    let out = cached.run(&inputs)?;
    let y = out.get("sample").context("graph output `sample`")?;
    Ok(ArrayD::from_shape_vec(IxDyn(y.shape()), y.to_f32_vec())?)
}

/// The cached-text pair (`transformer_text` once per prompt, `transformer_cached` per step) is the
/// `transformer` graph cut in two: same outputs within `Close` on every form and backend, for a
/// CFG-like batch whose rows have different masks; and reading only the longest real text length
/// (the runtime's real-token mode) gives the same outputs as the padded text.
#[test]
fn cached_text_pair_equals_the_transformer() -> Result<()> {
    let (config, w) = tiny()?;
    let io = fixture_io()?;
    let tmp = tempfile::tempdir()?;
    let (uncond, cond) = (cfg_call(&io, 0)?, cfg_call(&io, 1)?);
    let cat = |a: &ArrayD<f32>, b: &ArrayD<f32>| ndarray::concatenate(Axis(0), &[a.view(), b.view()]);
    let batch = Call {
        hidden_states: cat(&uncond.hidden_states, &cond.hidden_states)?,
        timestep: ArrayD::from_shape_vec(IxDyn(&[2]), vec![999.0, 500.0])?,
        encoder_hidden_states: cat(&uncond.encoder_hidden_states, &cond.encoder_hidden_states)?,
        encoder_attention_mask: cat(&uncond.encoder_attention_mask, &cond.encoder_attention_mask)?,
    };
    let mask = &batch.encoder_attention_mask;
    let l = mask.shape()[2];
    let real = (0..l).rev().find(|&j| (0..2).any(|b| mask[[b, 0, j]] != 0.0)).map(|j| j + 1).context("a real token")?;
    ensure!(real < l, "the fixture's text mask should pad (real {real} of {l})");
    let trimmed = Call {
        encoder_hidden_states: batch.encoder_hidden_states.slice_axis(Axis(2), (0..real).into()).to_owned(),
        encoder_attention_mask: mask.slice_axis(Axis(2), (0..real).into()).to_owned(),
        hidden_states: batch.hidden_states.clone(),
        timestep: batch.timestep.clone(),
    };
    for form in AttentionKind::FORMS {
        let bundle = export(&tmp.path().join(form.to_string()), &config, &w, form, Precision::F32)?;
        let m = bundle.manifest();
        let text = m.graph(TEXT_GRAPH)?;
        let names = |l: &[osp_graphs::TensorSpec]| l.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&text.inputs), ["encoder_hidden_states"]);
        let kv: Vec<String> = (0..config.num_layers).flat_map(|i| [kv_name(i, "key"), kv_name(i, "value")]).collect();
        assert_eq!(names(&text.outputs), kv);
        let cached = m.graph(CACHED_GRAPH)?;
        let want: Vec<String> =
            ["hidden_states", "timestep", "encoder_attention_mask"].iter().map(|s| s.to_string()).chain(kv).collect();
        assert_eq!(names(&cached.inputs), want);
        for backend in cpu_backends().into_iter().filter(|b| runs_on(form, b)) {
            let plain = run(&bundle, &backend, &batch)?;
            let split = run_cached(&bundle, &backend, &batch)?;
            let what = format!("{form} on {backend}");
            let flat = |a: &ArrayD<f32>| a.iter().copied().collect::<Vec<_>>();
            let c = check_close(
                &format!("cached pair vs transformer, {what}"),
                &flat(&split),
                &flat(&plain),
                Approx::Close,
            )?;
            eprintln!("cached pair vs transformer, {what}: {c}");
            let short = run(&bundle, &backend, &trimmed)?;
            check_close(&format!("{real} of {l} text tokens, {what}"), &flat(&short), &flat(&plain), Approx::Close)?;
            let short = run_cached(&bundle, &backend, &trimmed)?;
            check_close(&format!("cached pair on {real} tokens, {what}"), &flat(&short), &flat(&plain), Approx::Close)?;
        }
    }
    Ok(())
}

/// `--precision int8` (approximate, opt-in): every block linear becomes a `DynamicQuantizeMatMul`
/// with int8 weights, the manifest says `int8`, the bundle is smaller, and the output tracks the
/// f32 graph (printed; bounded by cosine similarity, the e2e-style level).
#[test]
fn int8_bundle_tracks_the_f32_graph() -> Result<()> {
    let (config, w) = tiny()?;
    let io = fixture_io()?;
    let tmp = tempfile::tempdir()?;
    let call = full_mask_call(&io)?;
    let f32_bundle = export(&tmp.path().join("f32"), &config, &w, AttentionKind::OnnxAttention, Precision::F32)?;
    let dir = tmp.path().join("int8");
    let bundle = export(&dir, &config, &w, AttentionKind::OnnxAttention, Precision::Int8)?;
    for graph in [GRAPH_NAME, TEXT_GRAPH, CACHED_GRAPH] {
        assert_eq!(bundle.manifest().graph(graph)?.precision, Precision::Int8, "{graph}");
    }
    let onnx = std::fs::read(dir.join(&bundle.manifest().graph(GRAPH_NAME)?.file))?;
    let ops = onnx.windows(21).filter(|w| w == b"DynamicQuantizeMatMul").count();
    // q, k, v, out of both attentions and the two feed-forward linears, per block
    ensure!(ops == 10 * config.num_layers, "{ops} DynamicQuantizeMatMul nodes");
    let want = run(&f32_bundle, &Backend::OrtCpu, &call)?;
    let got = run(&bundle, &Backend::OrtCpu, &call)?;
    let split = run_cached(&bundle, &Backend::OrtCpu, &call)?;
    let flat = |a: &ArrayD<f32>| a.iter().copied().collect::<Vec<_>>();
    let c = Approx::Approximate.compare(&flat(&got), &flat(&want));
    eprintln!("int8 vs f32 transformer on ort-cpu: {c}");
    check_close("int8 vs f32 transformer", &flat(&got), &flat(&want), Approx::Cosine(0.999))?;
    check_close("int8 cached pair vs int8 transformer", &flat(&split), &flat(&got), Approx::Close)?;
    let err = bundle.session(GRAPH_NAME, &SessionOptions::new(Backend::Tract)).err().context("int8 on tract")?;
    ensure!(err.to_string().contains("ONNX Runtime only"), "{err}");
    Ok(())
}
