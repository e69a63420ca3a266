//! WFVAE export (issue 3): the tiny official-weights fixture exported by `osp-export wfvae`, every
//! graph run on every CPU backend against the official PyTorch outputs, and the streaming decoder
//! graphs against the whole-clip decoder for latent lengths 1..=7 (including the even lengths the
//! official `--enable_tiling` path gets wrong).
//!
//! Fixture: `../shared/reference/parity/wfvae_tiny/` (config, official weights, `io.safetensors`
//! with the PyTorch outputs; generator `../shared/reference/generators/`).
//!
//! `cargo test --release -p osp-tests --test wfvae_export`

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{ensure, Context, Result};
use ndarray::{ArrayD, Axis, Slice};
use osp_export::models::wfvae::{
    build_graphs, export_wfvae, load_weights, WFVAEModelConfig, CACHE_IN, CACHE_OUT, DECODER, DECODER_FIRST,
    DECODER_LAST, DECODER_STEP, ENCODER,
};
use osp_export::ExportOptions;
use osp_graphs::config::{StreamProtocol, StreamRole, STREAM_METADATA_KEY};
use osp_graphs::{Approx, AttentionKind, ModelSpec, Precision};
use osp_runtime::session::Backend;
use osp_runtime::vae::streaming::StreamingDecoder;
use osp_runtime::{read_safetensors, Bundle, SessionOptions, Tensor};
use osp_tests::{check_close, cpu_backends, shared_reference};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::StandardNormal;

fn fixture_dir() -> PathBuf {
    shared_reference().join("parity/wfvae_tiny")
}

fn config() -> Result<WFVAEModelConfig> {
    let path = fixture_dir().join("config.json");
    WFVAEModelConfig::from_json_file(&path).with_context(|| format!("reading {}", path.display()))
}

fn io() -> &'static BTreeMap<String, Tensor> {
    static IO: OnceLock<BTreeMap<String, Tensor>> = OnceLock::new();
    IO.get_or_init(|| {
        read_safetensors(&fixture_dir().join("io.safetensors"))
            .expect("the WFVAE fixture io.safetensors should be readable")
    })
}

fn fixture(key: &str) -> Result<&'static Tensor> {
    io().get(key).with_context(|| format!("fixture io.safetensors has no `{key}`"))
}

/// Exports the fixture once per precision into a directory that lives for the whole test binary.
fn bundle(precision: Precision) -> Result<&'static Path> {
    static F32: OnceLock<tempfile::TempDir> = OnceLock::new();
    static F16: OnceLock<tempfile::TempDir> = OnceLock::new();
    let cell = match precision {
        Precision::F16 => &F16,
        _ => &F32,
    };
    if cell.get().is_none() {
        let dir = tempfile::tempdir()?;
        let weights_path = fixture_dir().join("weights.safetensors");
        let weights = load_weights(&weights_path)?;
        let opts = ExportOptions {
            attention: AttentionKind::OnnxAttention,
            precision,
            source: Some(weights_path),
            ..Default::default()
        };
        export_wfvae(&config()?, &weights, &opts, &dir.path().join("wfvae"))?;
        let _ = cell.set(dir);
    }
    Ok(cell.get().expect("the bundle directory was just set").path().join("wfvae").leak())
}

fn opts(backend: &Backend) -> SessionOptions {
    SessionOptions::new(backend.clone()).with_threads(2)
}

fn run1(
    bundle: &Bundle,
    graph: &str,
    backend: &Backend,
    inputs: &[(&str, &Tensor)],
) -> Result<BTreeMap<String, Tensor>> {
    let mut s = bundle.session(graph, &opts(backend))?;
    Ok(s.run(inputs)?)
}

fn compare(what: &str, actual: &Tensor, expected: &Tensor, level: Approx) -> Result<()> {
    ensure!(actual.shape() == expected.shape(), "{what}: shape {:?}, expected {:?}", actual.shape(), expected.shape());
    check_close(what, &actual.to_f32_vec(), &expected.to_f32_vec(), level)?;
    Ok(())
}

fn check_encoder(bundle: &Bundle, backend: &Backend, level: Approx) -> Result<()> {
    let out = run1(bundle, ENCODER, backend, &[("x", fixture("input.x")?)])?;
    compare(&format!("{backend} encoder mean"), &out["mean"], fixture("output.mean")?, level)?;
    compare(&format!("{backend} encoder logvar"), &out["logvar"], fixture("output.logvar_clamped")?, level)?;
    let out = run1(bundle, ENCODER, backend, &[("x", fixture("input.x_image")?)])?;
    compare(&format!("{backend} encoder image mean"), &out["mean"], fixture("output.mean_image")?, level)
}

fn check_decoder(bundle: &Bundle, backend: &Backend, level: Approx) -> Result<()> {
    for (z, expected) in [
        ("output.mean", "output.decode_of_mean"),
        ("output.mean_image", "output.decode_image"),
        ("input.z_even6", "output.decode_even6_full"),
    ] {
        let out = run1(bundle, DECODER, backend, &[("z", fixture(z)?)])?;
        compare(&format!("{backend} decoder({z})"), &out["sample"], fixture(expected)?, level)?;
    }
    Ok(())
}

#[test]
fn encoder_matches_official_outputs() -> Result<()> {
    let bundle = Bundle::open(bundle(Precision::F32)?)?;
    for backend in cpu_backends() {
        check_encoder(&bundle, &backend, Approx::Approximate)?;
    }
    Ok(())
}

#[test]
fn decoder_matches_official_outputs() -> Result<()> {
    let bundle = Bundle::open(bundle(Precision::F32)?)?;
    for backend in cpu_backends() {
        check_decoder(&bundle, &backend, Approx::Approximate)?;
    }
    Ok(())
}

/// `[1, latent, t, 4, 4]` standard-normal latents, deterministic per `t`.
fn latents(t: usize) -> Tensor {
    let mut rng = StdRng::seed_from_u64(100 + t as u64);
    let values: Vec<f32> = (0..4 * t * 16).map(|_| rng.sample(StandardNormal)).collect();
    Tensor::F32(ArrayD::from_shape_vec(vec![1, 4, t, 4, 4], values).expect("the latent shape should match"))
}

fn frames(t: &Tensor, start: usize, end: usize) -> Tensor {
    match t {
        Tensor::F32(a) => Tensor::F32(a.slice_axis(Axis(2), Slice::from(start..end)).to_owned()),
        other => panic!("expected f32 frames, got {}", other.describe()),
    }
}

#[test]
fn streaming_decode_equals_whole_decode_for_every_length() -> Result<()> {
    let bundle = Bundle::open(bundle(Precision::F32)?)?;
    for backend in cpu_backends() {
        let mut whole = bundle.session(DECODER, &opts(&backend))?;
        let mut stream = StreamingDecoder::load(&bundle, &opts(&backend))?;
        for t in 1..=7 {
            let z = latents(t);
            let expected = whole.run(&[("z", &z)])?.remove("sample").context("sample")?;
            ensure!(expected.shape()[2] == 4 * t - 3, "whole decode of {t} latents");
            for chunk in [1, 2, 3] {
                let streamed = stream.decode(&z, chunk)?;
                compare(
                    &format!("{backend}: {t} latents streamed in chunks of {chunk} vs whole"),
                    &streamed,
                    &expected,
                    Approx::Close,
                )?;
            }
        }
    }
    Ok(())
}

/// The official tiled decode of an even latent count differs from the whole decode in its last 6
/// frames (ARCH §1.8); the streamed decode must equal the whole decode there and so differ from
/// the official tiled output.
#[test]
fn streaming_does_not_reproduce_the_official_even_length_bug() -> Result<()> {
    let bundle = Bundle::open(bundle(Precision::F32)?)?;
    let z = fixture("input.z_even6")?;
    let full = fixture("output.decode_even6_full")?;
    let official = fixture("output.decode_even6_official_tiled")?;
    for backend in cpu_backends() {
        let mut stream = StreamingDecoder::load(&bundle, &opts(&backend))?;
        for chunk in [2, 4] {
            let streamed = stream.decode(z, chunk)?;
            compare(&format!("{backend}: even6 streamed (chunk {chunk})"), &streamed, full, Approx::Approximate)?;
            compare(
                &format!("{backend}: even6 first 15 frames vs official tiled"),
                &frames(&streamed, 0, 15),
                &frames(official, 0, 15),
                Approx::Approximate,
            )?;
            let tail = Approx::Approximate
                .compare(&frames(&streamed, 15, 21).to_f32_vec(), &frames(official, 15, 21).to_f32_vec());
            ensure!(
                tail.max_abs > 0.5,
                "{backend}: the streamed last 6 frames should differ from the official tiled bug, max |diff| {}",
                tail.max_abs
            );
        }
    }
    Ok(())
}

#[test]
fn manifest_records_the_streaming_protocol() -> Result<()> {
    let bundle = Bundle::open(bundle(Precision::F32)?)?;
    let m = bundle.manifest();
    let names: Vec<&str> = m.graphs.keys().map(String::as_str).collect();
    assert_eq!(names, [DECODER, DECODER_FIRST, DECODER_LAST, DECODER_STEP, ENCODER]);
    let ModelSpec::Wfvae(cfg) = &m.model else {
        anyhow::bail!("model spec is {}, expected wfvae", m.model.kind());
    };
    assert_eq!(cfg.latent_dim, 4);
    assert_eq!(cfg.scale, [0.7, 0.9, 1.1, 1.3]);
    assert_eq!(cfg.upstream["base_channels"], 16);
    for (graph, role) in
        [(DECODER_FIRST, StreamRole::First), (DECODER_STEP, StreamRole::Step), (DECODER_LAST, StreamRole::Last)]
    {
        let g = m.graph(graph)?;
        let p: StreamProtocol = serde_json::from_value(g.metadata[STREAM_METADATA_KEY].clone())?;
        assert_eq!(p.role, role);
        assert!(!p.state.is_empty());
        for pair in &p.state {
            assert!(pair.input.starts_with(CACHE_IN) && pair.output.starts_with(CACHE_OUT));
            let has_in = g.input(&pair.input).is_some();
            let has_out = g.output(&pair.output).is_some();
            assert_eq!(has_in, role != StreamRole::First, "{graph} {}", pair.input);
            assert_eq!(has_out, role != StreamRole::Last, "{graph} {}", pair.output);
        }
        // one conv cache per causal 3x3x3 conv, named by its official path
        assert!(p.state.iter().any(|s| s.input == "cache_in.decoder.up2.2.conv"));
        assert!(p.state.iter().any(|s| s.input == "cache_in.decoder.inverse_wavelet_transform_l2.pending"));
    }
    Ok(())
}

#[test]
fn weights_load_strictly() -> Result<()> {
    let cfg = config()?;
    let dir = tempfile::tempdir()?;
    let mut w = osp_export::Weights::load_safetensors(&fixture_dir().join("weights.safetensors"))?;
    let removed = w.remove("decoder.up1.2.conv.weight").context("fixture key")?;
    let missing = dir.path().join("missing.safetensors");
    w.save_safetensors(&missing)?;
    let err = match build_graphs(&cfg, &load_weights(&missing)?, AttentionKind::OnnxAttention) {
        Ok(_) => anyhow::bail!("a checkpoint without decoder.up1.2.conv.weight was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("missing tensor `decoder.up1.2.conv.weight`"), "{err}");
    w.insert("decoder.up1.2.conv.weight", removed);
    w.insert("decoder.extra.weight", osp_export::HostTensor::from_f32(vec![1], &[0.0])?);
    let extra = dir.path().join("extra.safetensors");
    w.save_safetensors(&extra)?;
    let err = match build_graphs(&cfg, &load_weights(&extra)?, AttentionKind::OnnxAttention) {
        Ok(_) => anyhow::bail!("a checkpoint with an unknown tensor was accepted"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("decoder.extra.weight"), "{err}");
    Ok(())
}

/// f16 weights and arithmetic (I/O f32), on ONNX Runtime's CPU kernels.
#[test]
fn f16_export_matches_on_ort_cpu() -> Result<()> {
    let bundle = Bundle::open(bundle(Precision::F16)?)?;
    for g in bundle.manifest().graphs.values() {
        assert_eq!(g.precision, Precision::F16);
    }
    check_encoder(&bundle, &Backend::OrtCpu, Approx::VeryApproximate)?;
    check_decoder(&bundle, &Backend::OrtCpu, Approx::VeryApproximate)
}
