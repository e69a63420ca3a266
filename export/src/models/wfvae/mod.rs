//! Lowering of WFVAE (`WFVAEModel`, Open-Sora-Plan v1.3's video autoencoder) into five graphs:
//!
//! | graph | inputs | outputs |
//! |---|---|---|
//! | `encoder` | `x` f32 `[b, 3, t, h, w]` (`t = 4n + 1`, `h`, `w` multiples of 8) | `mean`, `logvar` (clamped to [-30, 20]) `[b, latent, (t-1)/4 + 1, h/8, w/8]` |
//! | `decoder` | `z` `[b, latent, t, h, w]` | `sample` `[b, 3, 4t - 3, 8h, 8w]` |
//! | `decoder_first` | `z` `[b, latent, 1, h, w]` (latent 0) | `sample` (1 frame), `cache_out.*` |
//! | `decoder_step` | `z` `[b, latent, t, h, w]`, `cache_in.*` | `sample` (`4t` frames), `cache_out.*` |
//! | `decoder_last` | `z` `[b, latent, t, h, w]`, `cache_in.*` | `sample` (`4t + 2` frames) |
//!
//! The three streaming graphs decode a few latents at a time with bounded memory; their protocol
//! ([`osp_graphs::config::StreamProtocol`]: graph roles, state pairs, frames per call, frames to
//! drop) is written into each graph's manifest metadata under `stream`. State entries are keyed by
//! the official module path: every causal 3x3x3 convolution of the decoder (`cache_*.<path>`, its
//! last 2 padded input frames), the time interpolation of `up2` (`<path>.interpolation`, the
//! previous frame, and `<path>.interpolation_weight`, see [`decoder`]) and the energy-flow frame
//! that waits for the one-frame-delayed main path
//! (`decoder.inverse_wavelet_transform_l2.pending`). Streaming equals whole-clip decoding for
//! every latent count and chunking, unlike upstream `--enable_tiling`, which corrupts the last 6
//! frames for even latent counts (ARCH §1.8).
//!
//! Weights are read by official name from any checkpoint the trainer reads (`.safetensors`,
//! sharded safetensors, `.ckpt`/`.pt`), strictly ([`WfvaeWeights`]); the Haar kernels are built in.
//!
//! Upstream: <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/causalvideovae/model/vae/modeling_wfvae.py>
//!
//! `osp-export wfvae --config config.json --weights vae.safetensors --out /tmp/wfvae.bundle`

mod decoder;
mod encoder;
mod haar;
mod lower;
mod weights;
mod winograd;

use std::collections::BTreeMap;
use std::path::Path;

use osp_graphs::config::{manifest_view, StatePair, StreamProtocol, StreamRole, WfvaeConfig};
use osp_graphs::{AttentionKind, BundleManifest, DType, Dim, ModelSpec, Precision, TensorSpec};
use osp_trainer::checkpoint::Checkpoint;
use tracing::info;

pub use lower::{CACHE_IN, CACHE_OUT, MAX_LATENT_FRAMES};
pub use osp_trainer::models::wfvae::WFVAEModelConfig;
pub use weights::WfvaeWeights;

use self::lower::{video_dims, CacheEntry, Lower, Mode, V};
use crate::bundle::{provenance, BundleWriter};
use crate::error::{Error, Result};
use crate::graph::OnnxGraph;
use crate::options::{ExportOptions, VideoConv};
use crate::passes;

pub const ENCODER: &str = "encoder";
pub const DECODER: &str = "decoder";
pub const DECODER_FIRST: &str = "decoder_first";
pub const DECODER_STEP: &str = "decoder_step";
pub const DECODER_LAST: &str = "decoder_last";
/// Latents per streamed decoder call unless the caller says otherwise. Upstream `t_chunk_dec` is
/// 2; streaming is exact for every chunk size, and on ort-cpu one latent per call peaks 17% lower
/// at the same CPU time (release WFVAE, 17 frames: 1.37 vs 1.65 GiB at 256x256, 1.24 vs 1.47 GiB
/// at 480x640; `scripts/vae_decode_table.py --chunk`).
pub const DEFAULT_CHUNK_LATENTS: usize = 1;
/// Video frames per latent frame.
const FRAMES_PER_LATENT: usize = 4;
/// Frames of the second streaming call that repeat frame 0 (see [`decoder`]).
const DROP_AFTER_FIRST: usize = 2;

/// One lowered graph with its manifest metadata.
pub struct LoweredGraph {
    pub name: &'static str,
    pub graph: OnnxGraph,
    pub attention: AttentionKind,
    pub metadata: BTreeMap<String, serde_json::Value>,
}

/// Reads a checkpoint (`.safetensors`, `*.safetensors.index.json`, `.ckpt`, `.pt`, `.pth`, `.bin`).
pub fn load_weights(path: &Path) -> Result<WfvaeWeights> {
    let checkpoint =
        Checkpoint::open(path).map_err(|e| Error::Config(format!("reading WFVAE weights {}: {e}", path.display())))?;
    WfvaeWeights::from_checkpoint(&checkpoint)
}

/// The manifest form of the config: the upstream keys, verbatim.
pub fn manifest_config(cfg: &WFVAEModelConfig) -> Result<WfvaeConfig> {
    manifest_view(cfg).map_err(|e| Error::Config(format!("WFVAE config: {e}")))
}

fn check_config(cfg: &WFVAEModelConfig) -> Result<()> {
    cfg.validate().map_err(|e| Error::Config(format!("WFVAE config: {e}")))
}

fn encoder_graph(
    cfg: &WFVAEModelConfig,
    w: &WfvaeWeights,
    attention: AttentionKind,
    video_conv: VideoConv,
) -> Result<OnnxGraph> {
    let mut l = Lower::new(ENCODER, w, attention, video_conv, Mode::Whole);
    let x = l.b.input(TensorSpec::new(
        "x",
        DType::F32,
        [Dim::sym("b"), Dim::Fixed(3), Dim::sym("t"), Dim::sym("h"), Dim::sym("w")],
    ))?;
    let x = V { v: l.from_bcthw(&x)?, c: 3, s: 8 };
    let moments = encoder::encoder(&mut l, cfg, &x)?;
    let moments = l.to_bcthw(&moments.v)?;
    let latent = cfg.latent_dim as i64;
    let mean = l.b.slice(&moments, &[0], &[latent], &[1], None)?;
    let logvar = l.b.slice(&moments, &[latent], &[2 * latent], &[1], None)?;
    let lo = l.b.scalar(-30.0, DType::F32)?;
    let hi = l.b.scalar(20.0, DType::F32)?;
    let logvar =
        l.b.node("Clip", "", &[Some(&logvar), Some(&lo), Some(&hi)], vec![], &[(DType::F32, Some(5))]).remove(0);
    let dims =
        || vec![Dim::sym("b"), Dim::Fixed(cfg.latent_dim), Dim::sym("(t-1)/4+1"), Dim::sym("h/8"), Dim::sym("w/8")];
    l.b.output(&mean, TensorSpec::new("mean", DType::F32, dims()))?;
    l.b.output(&logvar, TensorSpec::new("logvar", DType::F32, dims()))?;
    l.b.finish()
}

/// One decoder graph and its state entries.
fn decoder_graph(
    name: &str,
    mode: Mode,
    cfg: &WFVAEModelConfig,
    w: &WfvaeWeights,
    attention: AttentionKind,
    video_conv: VideoConv,
) -> Result<(OnnxGraph, Vec<CacheEntry>)> {
    let mut l = Lower::new(name, w, attention, video_conv, mode);
    let t = match mode {
        Mode::First => Dim::Fixed(1),
        _ => Dim::sym("t"),
    };
    let z = l.b.input(TensorSpec::new("z", DType::F32, video_dims(cfg.latent_dim, t, 1)))?;
    let z = V { v: l.from_bcthw(&z)?, c: cfg.latent_dim, s: 1 };
    let video = decoder::decoder(&mut l, cfg, &z)?;
    let sample = l.to_bcthw(&video.v)?;
    let frames = match mode {
        Mode::Whole => Dim::sym("4*t-3"),
        Mode::First => Dim::Fixed(1),
        Mode::Step => Dim::sym("4*t"),
        Mode::Last => Dim::sym("4*t+2"),
    };
    l.b.output(&sample, TensorSpec::new("sample", DType::F32, video_dims(3, frames, 8)))?;
    let caches = std::mem::take(&mut l.caches);
    Ok((l.b.finish()?, caches))
}

fn stream_metadata(role: StreamRole, state: &[CacheEntry]) -> Result<BTreeMap<String, serde_json::Value>> {
    let frames_offset = match role {
        StreamRole::First => 1 - FRAMES_PER_LATENT as i64,
        StreamRole::Step => 0,
        StreamRole::Last => 2,
    };
    let protocol = StreamProtocol {
        role,
        first_graph: DECODER_FIRST.into(),
        step_graph: DECODER_STEP.into(),
        last_graph: DECODER_LAST.into(),
        input: "z".into(),
        output: "sample".into(),
        first_chunk_latents: 1,
        max_chunk_latents: MAX_LATENT_FRAMES,
        default_chunk_latents: DEFAULT_CHUNK_LATENTS,
        frames_per_latent: FRAMES_PER_LATENT,
        frames_offset,
        drop_leading_frames_after_first: DROP_AFTER_FIRST,
        state: state
            .iter()
            .map(|e| StatePair { input: format!("{CACHE_IN}{}", e.key), output: format!("{CACHE_OUT}{}", e.key) })
            .collect(),
    };
    Ok(osp_graphs::vae::stream_metadata(&protocol)?)
}

/// Lowers all five graphs (f32, before precision passes) with the default [`VideoConv`] and
/// checks that every checkpoint tensor was used.
pub fn build_graphs(cfg: &WFVAEModelConfig, w: &WfvaeWeights, attention: AttentionKind) -> Result<Vec<LoweredGraph>> {
    build_graphs_with(cfg, w, attention, VideoConv::default())
}

/// [`build_graphs`] with the video convolutions written as `video_conv` says.
pub fn build_graphs_with(
    cfg: &WFVAEModelConfig,
    w: &WfvaeWeights,
    attention: AttentionKind,
    video_conv: VideoConv,
) -> Result<Vec<LoweredGraph>> {
    check_config(cfg)?;
    let mut out = Vec::new();
    let whole = |name: &'static str, graph: OnnxGraph, metadata| LoweredGraph { name, graph, attention, metadata };
    let enc = encoder_graph(cfg, w, attention, video_conv)?;
    out.push(whole(ENCODER, enc, BTreeMap::new()));
    let (dec, _) = decoder_graph(DECODER, Mode::Whole, cfg, w, attention, video_conv)?;
    let meta = osp_graphs::vae::decoder_metadata(MAX_LATENT_FRAMES);
    out.push(whole(DECODER, dec, meta));
    let mut state: Option<Vec<CacheEntry>> = None;
    for (name, mode, role) in [
        (DECODER_FIRST, Mode::First, StreamRole::First),
        (DECODER_STEP, Mode::Step, StreamRole::Step),
        (DECODER_LAST, Mode::Last, StreamRole::Last),
    ] {
        let (graph, caches) = decoder_graph(name, mode, cfg, w, attention, video_conv)?;
        if let Some(prev) = &state {
            let keys = |v: &[CacheEntry]| v.iter().map(|e| e.key.clone()).collect::<Vec<_>>();
            if keys(prev) != keys(&caches) {
                return Err(Error::Graph {
                    graph: name.to_string(),
                    message: "streaming graphs disagree on their state entries".into(),
                });
            }
        }
        let metadata = stream_metadata(role, &caches)?;
        state = Some(caches);
        out.push(whole(name, graph, metadata));
    }
    w.check_all_used()?;
    for g in &mut out {
        g.metadata.insert(osp_graphs::vae::VIDEO_CONV_KEY.to_string(), serde_json::Value::from(video_conv.name()));
    }
    Ok(out)
}

/// Fails on export options the WFVAE cannot be written with: a Winograd `--video-conv` is an f32
/// form (its transforms amplify rounding), so not at f16 or bf16. Exporters that write the WFVAE
/// after other models call it first.
pub fn check_options(opts: &ExportOptions) -> Result<()> {
    if winograd::Tile::of(opts.video_conv).is_some() && matches!(opts.precision, Precision::F16 | Precision::Bf16) {
        return Err(Error::Config(format!(
            "--video-conv {} is an f32 form (its transforms amplify rounding) and cannot be exported at --precision {}; \
             export half precision with --video-conv conv3d",
            opts.video_conv, opts.precision
        )));
    }
    Ok(())
}

/// Exports the five graphs as a bundle at `out`.
pub fn export_wfvae(
    cfg: &WFVAEModelConfig,
    weights: &WfvaeWeights,
    opts: &ExportOptions,
    out: &Path,
) -> Result<BundleManifest> {
    check_options(opts)?;
    let model = ModelSpec::Wfvae(manifest_config(cfg)?);
    let graphs = build_graphs_with(cfg, weights, opts.attention_form(), opts.video_conv)?;
    let prov = provenance(opts.source.as_deref())?;
    let mut writer = BundleWriter::create(out, model, prov, opts.external_data_threshold_bytes)?;
    for mut g in graphs {
        passes::optimize(&mut g.graph, opts.precision)?;
        writer.add_graph(g.name, &g.graph, g.attention, g.metadata)?;
    }
    let manifest = writer.finish()?;
    info!(bundle = %out.display(), attention = %opts.attention_form(), precision = %opts.precision, video_conv = %opts.video_conv, "exported WFVAE");
    Ok(manifest)
}
