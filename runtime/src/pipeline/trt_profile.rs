//! TensorRT optimisation profiles of one generation request's DiT and VAE graphs: what
//! `osp generate` and `osp bench` give the ort-tensorrt sessions when `--trt-profile` is not set,
//! so that each engine is built once for the request's shapes and filed in the engine cache under
//! a key of that profile (`session::gpu::trt_cache_key`).
//!
//! min = opt = max = the request's value for every dim, except the DiT's text length `l` under
//! [`TextPositions::Real`]: it is the longest real prompt of the CFG batch, known only once the
//! prompts are tokenized, so it spans `1..=max_sequence_length`, optimised for the maximum.
//!
//! | graph | `b` | `t` | `h`, `w` | `l` |
//! |---|---|---|---|---|
//! | `transformer`, `transformer_text`, `transformer_cached` | CFG batch (2 x samples with guidance) | latent frames | latent height, width | text length |
//! | `decoder` (whole clip) | samples | latent frames | tile (or latent) height, width | - |
//! | streaming `decoder_first` / `_step` / `_last` | samples | latents of that call (first chunk, `--stream-chunk`, the remainder) | tile (or latent) height, width | - |
//!
//! The WFVAE decoder states' scaled dims (`2*h`, `4*w`) follow from `h` and `w`
//! (`session::gpu::trt_shapes`). The parallel DiT's segment graphs get one rank's shard
//! ([`segment_profiles`]: `b` = the CFG group's rows, `t` = the rank's latent frames with the
//! padding, `m` = its tokens, `p` = the degree, `hp` = heads per rank). The text encoder gets no
//! derived profile (its engine is built for the first shapes seen).

use std::collections::BTreeMap;

use osp_graphs::vae::DECODER_GRAPH;

use super::{GenerateRequest, PipelineSpec, TRANSFORMER_CACHED_GRAPH, TRANSFORMER_GRAPH, TRANSFORMER_TEXT_GRAPH};
use crate::parallel::ParallelPlan;
use crate::session::ProfileRange;
use crate::text::TextPositions;
use crate::vae::streaming::chunk_plan;
use osp_graphs::DitSegments;

/// `range` with the DiT's text length `l` (see the module docs).
fn with_text(range: ProfileRange, req: &GenerateRequest, positions: TextPositions) -> ProfileRange {
    let l = req.max_sequence_length;
    match positions {
        TextPositions::Padded => range.with("l", l, l, l),
        TextPositions::Real => range.with("l", 1, l, l),
    }
}

/// The profile of every segment graph a rank of `plan` runs for `req`, by graph name (every rank's
/// shard has the same shapes). `Err`: the plan does not split the request's latent frames (the
/// rule, in words).
pub fn segment_profiles(
    protocol: &DitSegments,
    plan: ParallelPlan,
    spec: &PipelineSpec,
    req: &GenerateRequest,
    positions: TextPositions,
) -> Result<BTreeMap<String, ProfileRange>, String> {
    let [n, _, t, h, w] = spec.latent_shape(req);
    let cfg_batch = if req.guidance_scale > 1.0 { 2 * n } else { n };
    let split = protocol.split(plan.sp, t)?;
    let rows = cfg_batch / plan.cfg_groups.max(1);
    let tokens = split.local * (h / protocol.patch_size) * (w / protocol.patch_size);
    let mut range = ProfileRange::default();
    for (sym, v) in [
        ("b", rows),
        ("t", split.local),
        ("h", h),
        ("w", w),
        ("m", tokens),
        ("p", plan.sp),
        ("hp", protocol.heads / plan.sp),
    ] {
        range = range.with(sym, v, v, v);
    }
    let range = with_text(range, req, positions);
    Ok(protocol.graph_names(plan.sp).into_iter().map(|g| (g, range.clone())).collect())
}

/// The profile of each DiT and VAE graph `req` runs, by graph name, with the text encoded at
/// `positions`.
pub fn request_profiles(
    spec: &PipelineSpec,
    req: &GenerateRequest,
    positions: TextPositions,
) -> BTreeMap<String, ProfileRange> {
    let [n, _, t, h, w] = spec.latent_shape(req);
    let cfg_batch = if req.guidance_scale > 1.0 { 2 * n } else { n };
    let exact = |range: ProfileRange, sym: &str, v: usize| range.with(sym, v, v, v);
    let dit = with_text(
        exact(exact(exact(exact(ProfileRange::default(), "b", cfg_batch), "t", t), "h", h), "w", w),
        req,
        positions,
    );
    let mut out: BTreeMap<String, ProfileRange> = [TRANSFORMER_GRAPH, TRANSFORMER_TEXT_GRAPH, TRANSFORMER_CACHED_GRAPH]
        .into_iter()
        .map(|g| (g.to_string(), dit.clone()))
        .collect();

    // Every tile has the same size (`TilingConfig::tile_len`).
    let (tile_h, tile_w) = match req.decode.tiling {
        Some(tc) => (tc.tile_len(h), tc.tile_len(w)),
        None => (h, w),
    };
    let vae = |frames: usize| {
        exact(exact(exact(exact(ProfileRange::default(), "b", n), "t", frames), "h", tile_h), "w", tile_w)
    };
    out.insert(DECODER_GRAPH.to_string(), vae(t));
    if let (Some(chunk), Some(streaming)) = (req.decode.chunk, &spec.vae_graphs.streaming) {
        // A clip too short to stream is refused by the decoder itself; it then needs no profile.
        if let Ok(plan) = chunk_plan(t, streaming.protocol().first_chunk_latents, chunk) {
            for (_, len, role) in plan {
                out.insert(streaming.graph(role).to_string(), vae(len));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use osp_graphs::BundleManifest;

    use super::*;
    use crate::session::gpu::{trt_cache_key, TrtGraph};
    use crate::session::GpuOptions;
    use crate::vae::TilingConfig;

    fn default_bundle() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/default")
    }

    /// 17 x 256 x 384 (latents [1, 8, 5, 32, 48]) with guidance, 16 text tokens, streamed 3
    /// latents per call (calls of 1, 3 and 1 latents) in 16 x 16 tiles overlapping by 4 (3 x 4
    /// tiles of 14 x 15 latents).
    fn request(spec: &PipelineSpec) -> GenerateRequest {
        let mut req = spec.default_request(vec!["a cat".into()]).unwrap();
        (req.num_frames, req.height, req.width, req.guidance_scale, req.num_samples_per_prompt) =
            (17, 256, 384, 4.5, 1);
        req.max_sequence_length = 16;
        req.decode =
            crate::vae::DecodeOptions { chunk: Some(3), tiling: Some(TilingConfig { tile_size: 16, overlap: 4 }) };
        req
    }

    /// The engine settings `graph` of `component` gets under `gpu`.
    fn trt(component: &str, graph: &str, gpu: &GpuOptions) -> crate::Result<TrtGraph> {
        let manifest = BundleManifest::load(&default_bundle().join(component)).unwrap();
        TrtGraph::new(graph, &manifest.graphs[graph], gpu)
    }

    fn with_profiles(spec: &PipelineSpec, req: &GenerateRequest, positions: TextPositions) -> GpuOptions {
        GpuOptions { trt_request_profiles: request_profiles(spec, req, positions), ..GpuOptions::default() }
    }

    #[test]
    fn the_dit_and_vae_profiles_are_the_requests_shapes() {
        let spec = PipelineSpec::open(default_bundle()).unwrap();
        let req = request(&spec);
        let padded = with_profiles(&spec, &req, TextPositions::Padded);
        let dit = trt("transformer", TRANSFORMER_GRAPH, &padded).unwrap().shapes.unwrap();
        let want = "hidden_states:2x8x5x32x48,timestep:2,encoder_hidden_states:2x1x16x32,encoder_attention_mask:2x1x16";
        assert_eq!((dit.min.as_str(), dit.opt.as_str(), dit.max.as_str()), (want, want, want));
        // Real-token text: the text length spans 1..=16, optimised for 16.
        let real = trt("transformer", TRANSFORMER_GRAPH, &with_profiles(&spec, &req, TextPositions::Real)).unwrap();
        let real = real.shapes.unwrap();
        assert_eq!(
            real.min,
            "hidden_states:2x8x5x32x48,timestep:2,encoder_hidden_states:2x1x1x32,encoder_attention_mask:2x1x1"
        );
        assert_eq!((real.opt.as_str(), real.max.as_str()), (want, want));
        // No guidance: the batch is the samples.
        let single = GenerateRequest { guidance_scale: 1.0, ..req.clone() };
        let dit = trt("transformer", TRANSFORMER_GRAPH, &with_profiles(&spec, &single, TextPositions::Padded)).unwrap();
        assert!(dit.shapes.unwrap().opt.starts_with("hidden_states:1x8x5x32x48,timestep:1,"));

        // The VAE: one sample, 14 x 15 latent tiles, each streamed call's latents; the states'
        // `2*h` / `4*w` dims follow.
        let vae = |graph: &str| trt("vae", graph, &padded).unwrap().shapes.unwrap();
        assert_eq!(vae("decoder").opt, "z:1x8x5x14x15");
        assert_eq!(vae("decoder_first").opt, "z:1x8x1x14x15");
        let step = vae("decoder_step");
        assert!(step.opt.starts_with("z:1x8x3x14x15,cache_in.decoder.conv_in:1x8x2x14x15,"), "{}", step.opt);
        assert!(step.opt.contains(",cache_in.decoder.inverse_wavelet_transform_l2.pending:1x3x1x28x30,"));
        assert!(step.opt.ends_with(",cache_in.decoder.layer.1.conv2:1x8x2x56x60"), "{}", step.opt);
        assert_eq!((step.min.as_str(), step.max.as_str()), (step.opt.as_str(), step.opt.as_str()));
        assert!(vae("decoder_last").opt.starts_with("z:1x8x1x14x15,"));
        // Untiled and whole: the latent's own size and frames.
        let whole = GenerateRequest { decode: Default::default(), ..req.clone() };
        let whole = with_profiles(&spec, &whole, TextPositions::Padded);
        assert_eq!(trt("vae", "decoder", &whole).unwrap().shapes.unwrap().opt, "z:1x8x5x32x48");
    }

    #[test]
    fn engines_are_keyed_by_the_request_profile_and_an_explicit_profile_wins() {
        let spec = PipelineSpec::open(default_bundle()).unwrap();
        let req = request(&spec);
        let key = |req: &GenerateRequest, graph: &str, component: &str| {
            trt(component, graph, &with_profiles(&spec, req, TextPositions::Padded)).unwrap().cache_key
        };
        let dit = key(&req, TRANSFORMER_GRAPH, "transformer");
        assert_eq!(dit, key(&req, TRANSFORMER_GRAPH, "transformer"), "stable for one request");
        let shapes =
            trt("transformer", TRANSFORMER_GRAPH, &with_profiles(&spec, &req, TextPositions::Padded)).unwrap().shapes;
        assert_eq!(dit, trt_cache_key(TRANSFORMER_GRAPH, osp_graphs::Precision::F32, shapes.as_ref()));
        let static_key = trt("transformer", TRANSFORMER_GRAPH, &GpuOptions::default()).unwrap().cache_key;
        let taller = GenerateRequest { height: 320, ..req.clone() };
        let longer = GenerateRequest { max_sequence_length: 32, ..req.clone() };
        for other in
            [static_key, key(&taller, TRANSFORMER_GRAPH, "transformer"), key(&longer, TRANSFORMER_GRAPH, "transformer")]
        {
            assert_ne!(dit, other);
        }
        // The text length does not reach the VAE; the tile height does.
        assert_eq!(key(&req, "decoder_step", "vae"), key(&longer, "decoder_step", "vae"));
        let tiles = GenerateRequest {
            decode: crate::vae::DecodeOptions {
                tiling: Some(TilingConfig { tile_size: 12, overlap: 4 }),
                ..req.decode
            },
            ..req.clone()
        };
        assert_ne!(key(&req, "decoder_step", "vae"), key(&tiles, "decoder_step", "vae"));

        // `--trt-profile` is used instead of the request's.
        let explicit = GpuOptions {
            trt_profile: Some("b=1:2:4,t=1:5:9,h=8:32:64,w=8:48:64,l=1:16:64".parse().unwrap()),
            ..with_profiles(&spec, &req, TextPositions::Padded)
        };
        let shapes = trt("transformer", TRANSFORMER_GRAPH, &explicit).unwrap().shapes.unwrap();
        assert!(shapes.max.starts_with("hidden_states:4x8x9x64x64,"), "{}", shapes.max);
        // A request profile that misses a graph's symbol is dropped (first-seen shapes); an
        // explicit one that does is an error naming the symbol.
        let mut partial = with_profiles(&spec, &req, TextPositions::Padded);
        for range in partial.trt_request_profiles.values_mut() {
            range.0.remove("l");
        }
        assert_eq!(trt("transformer", TRANSFORMER_GRAPH, &partial).unwrap().shapes, None);
        let explicit = GpuOptions { trt_profile: Some("b=2,t=5,h=32,w=48".parse().unwrap()), ..GpuOptions::default() };
        let e = trt("transformer", TRANSFORMER_GRAPH, &explicit).unwrap_err().to_string();
        assert!(e.contains("`l`"), "{e}");
    }
}
