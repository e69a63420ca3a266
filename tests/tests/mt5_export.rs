//! The mT5 text encoder through export -> bundle -> runtime (issue 4): the f32 `text_encoder` graph on
//! every CPU backend against transformers 4.44.2 (`../shared/reference/parity/mt5_tiny/`, made by
//! `../shared/reference/generators/parity.py`), fused vs decomposed attention, the half-precision
//! bundles, the `osp encode-text` / `osp tokenize` / `osp extract-text-embeds` commands and the
//! embedding cache. The real-size xxl export is `#[ignore]`d (see its doc).
//!
//! `cargo test --release -p osp-tests --test mt5_export`

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use ndarray::{ArrayD, IxDyn};
use osp_export::models::mt5::{export_mt5, parameter_shapes, Mt5ExportOptions, Mt5Weights, GRAPH};
use osp_export::ExportOptions;
use osp_graphs::{Approx, AttentionKind, BundleManifest, DType, Precision};
use osp_runtime::session::Backend;
use osp_runtime::text::{EmbeddingCache, TextEncoder, TextPositions};
use osp_runtime::{read_safetensors, Bundle, SessionOptions, Tensor};
use osp_tests::{check_close, cpu_backends, shared_reference};
use osp_trainer::models::mt5::MT5Config;

fn fixture() -> PathBuf {
    shared_reference().join("parity/mt5_tiny")
}

fn config() -> Result<MT5Config> {
    Ok(MT5Config::from_json_file(fixture().join("config.json"))?)
}

fn io() -> Result<BTreeMap<String, Tensor>> {
    Ok(read_safetensors(&fixture().join("io.safetensors"))?)
}

fn export(dir: &Path, attention: AttentionKind, precision: Precision, tokenizer: Option<PathBuf>) -> Result<Bundle> {
    let cfg = config()?;
    let weights = Mt5Weights::load(&cfg, &fixture().join("weights.safetensors"))?;
    let graph = ExportOptions {
        attention,
        precision,
        external_data_threshold_bytes: 1024,
        source: Some(fixture().join("weights.safetensors")),
        ..ExportOptions::default()
    };
    let opts = Mt5ExportOptions { graph, tokenizer };
    export_mt5(&cfg, &weights, &opts, dir).with_context(|| format!("exporting {attention} {precision}"))?;
    Ok(Bundle::open(dir)?)
}

fn ones_like(t: &Tensor) -> Tensor {
    Tensor::I64(ArrayD::from_elem(IxDyn(t.shape()), 1i64))
}

/// `(input_ids, attention_mask, expected last_hidden_state)` for the three fixture calls.
fn cases(io: &BTreeMap<String, Tensor>) -> Vec<(&'static str, Tensor, Tensor, Tensor)> {
    let ids = io["input.input_ids"].clone();
    let long = io["input.input_ids_long"].clone();
    vec![
        ("masked", ids.clone(), io["input.attention_mask"].clone(), io["output.last_hidden_state"].clone()),
        ("unmasked", ids.clone(), ones_like(&ids), io["output.last_hidden_state_no_mask"].clone()),
        ("200 tokens", long.clone(), ones_like(&long), io["output.last_hidden_state_long"].clone()),
    ]
}

fn run(bundle: &Bundle, backend: &Backend, ids: &Tensor, mask: &Tensor) -> Result<Vec<f32>> {
    let mut s = bundle.session(GRAPH, &SessionOptions::new(backend.clone()).with_threads(2))?;
    let out = s.run(&[("input_ids", ids), ("attention_mask", mask)])?;
    let y = out.get("last_hidden_state").context("output last_hidden_state")?;
    ensure!(y.dtype() == DType::F32, "output is {}", y.describe());
    Ok(y.to_f32_vec())
}

#[test]
fn f32_graph_matches_transformers_on_every_cpu_backend() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let bundle = export(&tmp.path().join("b"), AttentionKind::OnnxAttention, Precision::F32, None)?;
    let io = io()?;
    for backend in cpu_backends() {
        for (what, ids, mask, expected) in cases(&io) {
            let got = run(&bundle, &backend, &ids, &mask)?;
            let c = check_close(&format!("{what} on {backend}"), &got, &expected.to_f32_vec(), Approx::Approximate)?;
            eprintln!("{what} on {backend}: {c}");
        }
    }
    Ok(())
}

#[test]
fn fused_and_decomposed_attention_agree() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let onnx = export(&tmp.path().join("onnx"), AttentionKind::OnnxAttention, Precision::F32, None)?;
    let ms = export(&tmp.path().join("ms"), AttentionKind::MsMultiHeadAttention, Precision::F32, None)?;
    let dec = export(&tmp.path().join("dec"), AttentionKind::Decomposed, Precision::F32, None)?;
    let io = io()?;
    for (what, ids, mask, _) in cases(&io) {
        let plain = run(&dec, &Backend::OrtCpu, &ids, &mask)?;
        let fused = run(&onnx, &Backend::OrtCpu, &ids, &mask)?;
        check_close(&format!("{what}: onnx Attention vs decomposed"), &fused, &plain, Approx::Close)?;
        let fused = run(&ms, &Backend::OrtCpu, &ids, &mask)?;
        check_close(&format!("{what}: MultiHeadAttention vs decomposed"), &fused, &plain, Approx::Close)?;
        let tract = run(&dec, &Backend::Tract, &ids, &mask)?;
        check_close(&format!("{what}: decomposed on tract vs ort"), &tract, &plain, Approx::Close)?;
    }
    Ok(())
}

#[test]
fn half_precision_bundles_run_on_ort_cpu() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let io = io()?;
    for precision in [Precision::F16, Precision::Bf16] {
        let bundle = export(&tmp.path().join(precision.to_string()), AttentionKind::Decomposed, precision, None)?;
        let spec = bundle.manifest().graph(GRAPH)?;
        ensure!(spec.precision == precision, "manifest precision {}", spec.precision);
        ensure!(spec.inputs[0].dtype == DType::I64 && spec.outputs[0].dtype == DType::F32);
        let (_, ids, mask, expected) = cases(&io).remove(0);
        match run(&bundle, &Backend::OrtCpu, &ids, &mask) {
            Ok(got) => {
                let c = check_close(
                    &format!("{precision} on ort-cpu"),
                    &got,
                    &expected.to_f32_vec(),
                    Approx::VeryApproximate,
                )?;
                eprintln!("{precision} on ort-cpu: {c}");
            }
            // ONNX Runtime's CPU provider has no kernels for some bf16 ops; the bundle targets GPUs.
            Err(e) if precision == Precision::Bf16 && e.to_string().contains("Could not find an implementation") => {
                eprintln!("bf16 on ort-cpu does not run here: {e}");
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[test]
fn repeated_prompts_are_served_from_the_cache() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let tok = shared_reference().join("assets/t5_v1_1_tokenizer.json");
    let cfg = MT5Config { vocab_size: 32128, d_model: 8, d_kv: 4, d_ff: 16, num_layers: 1, num_heads: 2, ..config()? };
    let opts = Mt5ExportOptions { tokenizer: Some(tok), ..Mt5ExportOptions::default() };
    export_mt5(&cfg, &Mt5Weights::Random { seed: 9 }, &opts, &tmp.path().join("b"))?;
    let bundle = Bundle::open(tmp.path().join("b"))?;
    let cache = EmbeddingCache::new(tmp.path().join("cache"))?;
    let sopts = SessionOptions::default().with_threads(2);
    let mut enc = TextEncoder::open(&bundle, &sopts, None)?.with_cache(cache.clone());
    let first = enc.encode(&["a cat", "a dog"], 12)?;
    ensure!(enc.encoder_runs() == 1, "one run for two new prompts, got {}", enc.encoder_runs());
    let again = enc.encode(&["a dog", "a cat", "a dog"], 12)?;
    ensure!(enc.encoder_runs() == 1, "repeated prompts re-ran the encoder");
    let e = first.embeddings.to_f32_vec();
    let a = again.embeddings.to_f32_vec();
    ensure!(a[..96] == e[96..] && a[96..192] == e[..96], "cached rows differ from computed ones");

    // A fresh encoder (another process) over the same directory hits as well; another length misses.
    let mut fresh = TextEncoder::open(&bundle, &sopts, None)?.with_cache(cache);
    fresh.encode(&["a cat"], 12)?;
    ensure!(fresh.encoder_runs() == 0 && fresh.cache_hits() == 1);
    fresh.encode(&["a cat"], 13)?;
    ensure!(fresh.encoder_runs() == 1, "max length is part of the key");
    ensure!(fresh.cache_key("a cat", 12) != fresh.cache_key("a cat ", 12));
    Ok(())
}

/// [`TextPositions::Real`] is exact: encoding only the real tokens (the batch's longest) gives the
/// padded run's states at every real position within `Close`, whatever else is in the batch; the
/// rest of a shorter row is zero and masked. Real-token cache entries live under their own keys.
#[test]
fn real_positions_equal_the_padded_run() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let tok = shared_reference().join("assets/t5_v1_1_tokenizer.json");
    let cfg = MT5Config { vocab_size: 32128, d_model: 16, d_kv: 8, d_ff: 32, num_layers: 2, num_heads: 2, ..config()? };
    let opts = Mt5ExportOptions { tokenizer: Some(tok), ..Mt5ExportOptions::default() };
    export_mt5(&cfg, &Mt5Weights::Random { seed: 3 }, &opts, &tmp.path().join("b"))?;
    let bundle = Bundle::open(tmp.path().join("b"))?;
    let sopts = SessionOptions::default().with_threads(2);
    let cache = EmbeddingCache::new(tmp.path().join("cache"))?;
    let mut enc = TextEncoder::open(&bundle, &sopts, None)?.with_cache(cache);
    let d = cfg.d_model;
    let max_len = 40;
    let texts = ["a cat", "", "a red fox jumps over the sleeping dog while the sun sets behind the hills"];
    let padded = enc.encode_allow_empty(&texts, max_len)?;
    let real = enc.encode_positions(&texts, max_len, true, TextPositions::Real)?;
    let (Tensor::I64(pm), Tensor::I64(rm)) = (&padded.mask, &real.mask) else { anyhow::bail!("mask dtype") };
    let lens: Vec<usize> = pm.outer_iter().map(|m| m.iter().filter(|&&v| v == 1).count()).collect();
    let l = *lens.iter().max().context("three texts")?;
    ensure!(lens[1] == 1 && l < max_len && l > lens[0], "real lengths {lens:?}");
    ensure!(real.embeddings.shape() == [3, l, d] && rm.shape() == [3, l], "real shape {:?}", real.embeddings.shape());
    let (pe, re) = (padded.embeddings.to_f32_vec(), real.embeddings.to_f32_vec());
    for (i, &li) in lens.iter().enumerate() {
        let want: Vec<i64> = (0..l).map(|j| i64::from(j < li)).collect();
        ensure!(rm.outer_iter().nth(i).context("row")?.iter().copied().eq(want), "row {i} mask");
        let got = &re[i * l * d..][..li * d];
        check_close(
            &format!("row {i}: real vs padded positions"),
            got,
            &pe[i * max_len * d..][..li * d],
            Approx::Close,
        )?;
        ensure!(re[i * l * d..][li * d..l * d].iter().all(|&v| v == 0.0), "row {i}: the rest is zero");
        // Alone (L = its own length), through the cache of the batched run.
        let runs = enc.encoder_runs();
        let alone = enc.encode_positions(&texts[i..=i], max_len, true, TextPositions::Real)?;
        ensure!(enc.encoder_runs() == runs, "row {i}: a real-token repeat is a cache hit");
        ensure!(alone.embeddings.to_f32_vec() == got, "row {i}: cached row differs");
    }
    // Without a cache: each text alone on its own length equals its row in the batch.
    let mut fresh = TextEncoder::open(&bundle, &sopts, None)?;
    for (i, &li) in lens.iter().enumerate() {
        let alone = fresh.encode_positions(&texts[i..=i], max_len, true, TextPositions::Real)?;
        ensure!(alone.embeddings.shape() == [1, li, d]);
        check_close(
            &format!("row {i} alone vs batched"),
            &alone.embeddings.to_f32_vec(),
            &re[i * l * d..][..li * d],
            Approx::Close,
        )?;
    }
    ensure!(enc.real_cache_key("a cat", max_len) != enc.cache_key("a cat", max_len), "keys are apart");
    Ok(())
}

/// The release config (google/mt5-xxl, 5.66 B parameters) with random weights streamed into the bundle:
/// 22.6 GB of f32 external data written without holding the weights in memory. Checks the manifest, the
/// file sizes and every external tensor's location against the parameter list.
///
/// `cargo test --release -p osp-tests --test mt5_export -- --ignored --nocapture` (needs ~23 GB of disk).
#[test]
#[ignore = "heavy: writes a 22.6 GB bundle (mt5-xxl, random f32 weights); run by hand before changing the mT5 lowering (README)"]
fn xxl_export_streams_a_valid_bundle() -> Result<()> {
    use osp_export::onnx;
    use prost::Message;

    let tmp = tempfile::tempdir_in(osp_tests::repo_root().join("..").canonicalize()?)?;
    let dir = tmp.path().join("mt5-xxl");
    let cfg = MT5Config::mt5_xxl();
    let t = Instant::now();
    let manifest = export_mt5(&cfg, &Mt5Weights::Random { seed: 0 }, &Mt5ExportOptions::default(), &dir)?;
    let secs = t.elapsed().as_secs_f64();
    let loaded = BundleManifest::load(&dir)?;
    ensure!(loaded == manifest);
    let g = loaded.graph(GRAPH)?;
    ensure!(g.external_data == vec![format!("{GRAPH}.onnx.data")], "{:?}", g.external_data);
    let data_len = std::fs::metadata(dir.join(&g.external_data[0]))?.len();
    let proto = onnx::ModelProto::decode(std::fs::read(dir.join(&g.file))?.as_slice())?;
    let inits = proto.graph.context("model has a graph")?.initializer;
    let shapes: BTreeMap<String, Vec<usize>> = parameter_shapes(&cfg).into_iter().collect();
    let mut params = 0u64;
    let mut end = 0u64;
    for init in inits.iter().filter(|i| !i.external_data.is_empty()) {
        let name = init.name.clone().unwrap_or_default();
        let entry =
            |k: &str| init.external_data.iter().find(|e| e.key.as_deref() == Some(k)).and_then(|e| e.value.clone());
        let offset: u64 = entry("offset").context("offset")?.parse()?;
        let length: u64 = entry("length").context("length")?.parse()?;
        let shape = shapes.get(&name).with_context(|| format!("external tensor `{name}` is not a parameter"))?;
        let numel: u64 = shape.iter().map(|&d| d as u64).product();
        ensure!(init.dims == shape.iter().map(|&d| d as i64).collect::<Vec<_>>(), "{name} dims");
        ensure!(length == 4 * numel && offset.is_multiple_of(64) && offset + length <= data_len, "{name} location");
        params += numel;
        end = end.max(offset + length);
    }
    ensure!(end == data_len, "the data file ends with the last tensor");
    let inline: u64 = shapes.values().map(|s| s.iter().map(|&d| d as u64).product::<u64>()).sum::<u64>() - params;
    ensure!(params + inline == 5_655_173_120 && inline == 0, "external {params} + inline {inline} parameters");
    eprintln!(
        "mt5-xxl f32 export: {secs:.0} s, {:.2} GB external data, {} tensors",
        data_len as f64 / 1e9,
        shapes.len()
    );
    Ok(())
}
