//! WFVAE parity with the official PyTorch outputs of `parity/wfvae_tiny` (tiny config, random
//! weights, x of shape [1, 3, 17, 32, 32]), and chunked == whole invariance.
//!
//! Regenerate the fixture: `../shared/reference/generators/parity.py` (see its README).

mod common;

use std::collections::BTreeMap;

use burn::tensor::{Tensor, TensorData};
use common::{assert_matches, assert_same, values, wfvae_tiny_dir, B};
use osp_graphs::Approx;
use osp_trainer::checkpoint::{Checkpoint, LoadOptions};
use osp_trainer::io::{read_tensors, take_tensor};
use osp_trainer::models::wfvae::{WFVAEModel, WFVAEModelConfig};

fn setup() -> (WFVAEModel<B>, BTreeMap<String, TensorData>) {
    let dir = wfvae_tiny_dir();
    let device = Default::default();
    let config = WFVAEModelConfig::from_json_file(dir.join("config.json")).expect("tiny config");
    let mut model = config.init::<B>(&device).expect("valid config");
    let checkpoint = Checkpoint::open(dir.join("weights.safetensors")).expect("tiny weights");
    let report = model.load_official(&checkpoint, LoadOptions::default()).expect("strict load");
    assert!(report.missing.is_empty() && report.unused.is_empty());
    let io = read_tensors(dir.join("io.safetensors")).expect("io fixture");
    (model, io)
}

fn input(io: &BTreeMap<String, TensorData>, name: &str) -> Tensor<B, 5> {
    take_tensor::<B, 5>(io, name, &Default::default()).expect("fixture tensor")
}

#[test]
fn encode_matches_official() {
    let (model, io) = setup();
    let posterior = model.encode(input(&io, "input.x")).unwrap();
    assert_matches(&posterior.mean, &io, "output.mean", Approx::Approximate);
    assert_matches(&posterior.logvar, &io, "output.logvar_clamped", Approx::Approximate);
}

#[test]
fn decode_matches_official() {
    let (model, io) = setup();
    let video = model.decode(input(&io, "output.mean")).unwrap();
    assert_matches(&video, &io, "output.decode_of_mean", Approx::Approximate);
}

#[test]
fn single_frame_image_matches_official() {
    let (model, io) = setup();
    let posterior = model.encode(input(&io, "input.x_image")).unwrap();
    assert_matches(&posterior.mean, &io, "output.mean_image", Approx::Approximate);
    let video = model.decode(input(&io, "output.mean_image")).unwrap();
    assert_matches(&video, &io, "output.decode_image", Approx::Approximate);
    let chunked = model.decode_chunked(input(&io, "output.mean_image"), 2).unwrap();
    assert_same(&chunked, &video, "chunked decode of 1 latent", Approx::Close);
}

#[test]
fn chunked_encode_matches_official_and_whole() {
    let (model, io) = setup();
    let x = input(&io, "input.x");
    let whole = model.encode(x.clone()).unwrap();
    for t_chunk in [8, 4, 16] {
        let chunked = model.encode_chunked(x.clone(), t_chunk).unwrap();
        assert_matches(&chunked.mean, &io, "output.mean_tiled", Approx::Approximate);
        assert_same(&chunked.mean, &whole.mean, &format!("encode mean, t_chunk {t_chunk}"), Approx::Close);
        assert_same(&chunked.logvar, &whole.logvar, &format!("encode logvar, t_chunk {t_chunk}"), Approx::Close);
    }
}

#[test]
fn chunked_decode_odd_latents_equals_whole_and_official() {
    let (model, io) = setup();
    let z = input(&io, "output.mean"); // 5 latents
    let whole = model.decode(z.clone()).unwrap();
    for t_chunk in [2, 3] {
        let chunked = model.decode_chunked(z.clone(), t_chunk).unwrap();
        assert_same(&chunked, &whole, &format!("decode of 5 latents, t_chunk {t_chunk}"), Approx::Close);
    }
    let chunked = model.decode_chunked(z, 2).unwrap();
    assert_matches(&chunked, &io, "output.decode_of_mean_tiled", Approx::Approximate);
}

#[test]
fn chunked_decode_even_latents_is_correct_not_the_official_bug() {
    let (model, io) = setup();
    let z = input(&io, "input.z_even6"); // 6 latents -> 21 frames
    let whole = model.decode(z.clone()).unwrap();
    assert_matches(&whole, &io, "output.decode_even6_full", Approx::Approximate);
    for t_chunk in [2, 1, 4] {
        let chunked = model.decode_chunked(z.clone(), t_chunk).unwrap();
        assert_same(&chunked, &whole, &format!("decode of 6 latents, t_chunk {t_chunk}"), Approx::Close);
    }
    let chunked = model.decode_chunked(z.clone(), 2).unwrap();
    assert_matches(&chunked, &io, "output.decode_even6_full", Approx::Approximate);
    let official_tiled = io["output.decode_even6_official_tiled"].to_vec::<f32>().unwrap();
    let c = Approx::Approximate.compare(&values(&chunked), &official_tiled);
    assert!(c.max_abs > 0.1, "our chunked decode reproduces the official even-length tiling bug: {c}");
    // Two latents crash upstream; here they decode like the whole clip.
    let z2 = z.narrow(2, 0, 2);
    let whole2 = model.decode(z2.clone()).unwrap();
    assert_same(&model.decode_chunked(z2, 2).unwrap(), &whole2, "decode of 2 latents", Approx::Close);
}

#[test]
fn streaming_decode_chunks_have_the_documented_frame_counts() {
    let (model, io) = setup();
    let z = input(&io, "input.z_even6");
    let mut cache = osp_trainer::models::wfvae::DecoderCache::<B>::new();
    let mut counts = Vec::new();
    for (start, len) in [(0, 1), (1, 2), (3, 2), (5, 1)] {
        let last = start + len == 6;
        let chunk = model.decode_chunk(z.clone().narrow(2, start, len), &mut cache, last).unwrap();
        counts.push(chunk.dims()[2]);
    }
    assert_eq!(counts, vec![1, 6, 8, 6]);
    assert_eq!(counts.iter().sum::<usize>(), 4 * 6 - 3);
    assert_eq!(cache.cached_frames(), 0, "a closed stream keeps no pending frames: {:?}", cache.tails.keys());
}

#[test]
fn invalid_inputs_are_typed_errors() {
    let (model, _) = setup();
    let device = Default::default();
    let bad_frames = Tensor::<B, 5>::zeros([1, 3, 4, 32, 32], &device);
    let err = model.encode(bad_frames).unwrap_err().to_string();
    assert!(err.contains("4n+1"), "{err}");
    let bad_size = Tensor::<B, 5>::zeros([1, 3, 5, 20, 32], &device);
    let err = model.encode(bad_size).unwrap_err().to_string();
    assert!(err.contains("multiples of 8"), "{err}");
    let bad_latent = Tensor::<B, 5>::zeros([1, 3, 2, 4, 4], &device);
    let err = model.decode(bad_latent).unwrap_err().to_string();
    assert!(err.contains("channels"), "{err}");
}
