//! Peak host memory of a generation request, estimated from the bundle manifests before any model
//! loads, so that a request far beyond the host (a height of 100000, 10^6 text tokens) is refused
//! with the estimate instead of dying inside ONNX Runtime with `std::bad_alloc`.
//!
//! The estimate is deliberately upper-ish (f32 activations, every model resident at once); the
//! formulas, with their factors, are in `docs/reliability_checks.md`:
//!
//! - fixed: [`RUNTIME_OVERHEAD`] (ONNX Runtime, FFmpeg, the process) + [`WEIGHT_FACTOR`] x the
//!   weight files of the graphs generation loads;
//! - text encoder (one prompt, `l` tokens): `3 heads l^2` (scores, probabilities, position bias)
//!   + `l (4 d_model + 2 d_ff)` values;
//! - transformer (batch `B` = samples x 2 with guidance, `N` tokens after patching, `s` skiparse
//!   groups or 1): self-attention `2 B heads N^2 / s` (scores, probabilities), cross-attention
//!   `2 B heads N l`, and [`TOKEN_ACTIVATIONS`] x `B N heads d_head` values;
//! - VAE decode: [`VAE_ACTIVATIONS`] x `base_channels` values per output pixel in flight (the
//!   frames of one streamed chunk, the pixels of one tile, or the whole video), plus the video
//!   buffers (f32 unless decoded to uint8 inside streamed tiles, and the uint8 frames); with `W`
//!   tile workers decoding at once ([`VaeWorkers`], `--devices`; at most one per tile), `W` times
//!   the activations, the [`TILES_IN_FLIGHT_PER_WORKER`] x `W` decoded f32 tiles waiting to be
//!   blended, and `W - 1` more sessions' weights unless the workers share one copy;
//!
//! at 4 bytes a value; the peak is the fixed part plus the largest of the three stages.

use std::fmt;

use osp_graphs::{BundleManifest, ModelSpec};

use super::GenerateRequest;

/// Bytes the process needs beside the models: ONNX Runtime, FFmpeg, code and small buffers.
pub const RUNTIME_OVERHEAD: u64 = 256 << 20;
/// Resident bytes per weight-file byte: the mapped file plus ONNX Runtime's own (prepacked)
/// copy of the initializers.
pub const WEIGHT_FACTOR: u64 = 2;
/// Live f32 values per token and hidden unit in one DiT block (q, k, v, attention output,
/// residual, norm, and the 4x feed-forward with its activation).
pub const TOKEN_ACTIVATIONS: u64 = 12;
/// Live f32 values per output pixel and VAE `base_channels` while decoding (measured about 0.75
/// on the release WFVAE, `docs/measurements/wfvae_release_decode.json`).
pub const VAE_ACTIVATIONS: u64 = 1;
/// Decoded f32 tiles per tile worker that may wait to be blended
/// (`vae::tiling::decode_tiled_parallel`'s window).
pub const TILES_IN_FLIGHT_PER_WORKER: u64 = 2;
const F32: u64 = 4;

/// The VAE workers a tiled decode spreads its tiles over (`osp generate --devices`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VaeWorkers {
    /// Workers loaded, at least 1.
    pub count: usize,
    /// Whether their sessions share one copy of the weights (ort-cpu sessions of one bundle with
    /// shared weights, `engine::ort::shared_weights`): an extra worker then adds only what it
    /// decodes.
    pub shared_weights: bool,
}

impl VaeWorkers {
    /// One worker.
    pub const ONE: Self = Self { count: 1, shared_weights: true };
}

/// The model sizes the estimate needs, read from the component manifests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelSizes {
    pub text_heads: usize,
    pub text_d_model: usize,
    pub text_d_ff: usize,
    pub dit_heads: usize,
    pub dit_head_dim: usize,
    /// Skiparse groups of the DiT's sparse attention (1 when dense).
    pub dit_sparse_n: usize,
    /// WFVAE `base_channels` (128 upstream when the config does not say).
    pub vae_base_channels: usize,
    /// Bytes of the files of the graphs generation loads (text encoder, transformer, decoders).
    pub weight_bytes: u64,
    /// The decoder graphs' part of `weight_bytes`: what each further VAE worker's sessions hold.
    pub vae_weight_bytes: u64,
}

impl ModelSizes {
    /// Sizes from the component manifests in their bundle folders.
    pub fn read(
        (text, text_dir): (&BundleManifest, &std::path::Path),
        (dit, dit_dir): (&BundleManifest, &std::path::Path),
        (vae, vae_dir): (&BundleManifest, &std::path::Path),
    ) -> Self {
        let mut s = Self { dit_sparse_n: 1, vae_base_channels: 128, ..Self::default() };
        if let ModelSpec::Mt5Encoder(c) = &text.model {
            (s.text_heads, s.text_d_model, s.text_d_ff) = (c.num_heads, c.d_model, c.d_ff);
        }
        if let ModelSpec::OpenSoraT2V(c) = &dit.model {
            (s.dit_heads, s.dit_head_dim) = (c.num_attention_heads, c.attention_head_dim);
            s.dit_sparse_n = if c.sparse1d { c.sparse_n.max(1) } else { 1 };
        }
        if let ModelSpec::Wfvae(c) = &vae.model {
            if let Some(b) = c.upstream.get("base_channels").and_then(|v| v.as_u64()) {
                s.vae_base_channels = b as usize;
            }
        }
        let files = |m: &BundleManifest, dir: &std::path::Path, graph: &dyn Fn(&str) -> bool| -> u64 {
            let mut names: Vec<&String> = m
                .graphs
                .iter()
                .filter(|(name, _)| graph(name.as_str()))
                .flat_map(|(_, g)| std::iter::once(&g.file).chain(&g.external_data))
                .collect();
            names.sort();
            names.dedup();
            names.iter().filter_map(|n| std::fs::metadata(dir.join(n)).ok()).map(|m| m.len()).sum()
        };
        s.vae_weight_bytes = files(vae, vae_dir, &|g| g != crate::vae::ENCODER_GRAPH);
        s.weight_bytes = files(text, text_dir, &|g| g == crate::text::GRAPH)
            + files(dit, dit_dir, &|g| g == super::TRANSFORMER_GRAPH)
            + s.vae_weight_bytes;
        s
    }
}

/// The estimate of one request, in bytes per part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// [`RUNTIME_OVERHEAD`] + [`WEIGHT_FACTOR`] x weight files.
    pub fixed: u64,
    pub text_encoder: u64,
    pub transformer: u64,
    /// VAE decoder activations (of every worker decoding at once, with their decoded tiles
    /// waiting to be blended).
    pub vae_decode: u64,
    /// The sessions of the VAE workers beyond the first ([`VaeWorkers`]): host memory on every
    /// backend.
    pub vae_sessions: u64,
    /// VAE workers decoding at once (1 unless a tiled decode is spread over several).
    pub vae_workers: usize,
    /// The decoded video buffers (f32 and uint8) held while decoding.
    pub video: u64,
}

impl MemoryEstimate {
    /// The estimated peak: the fixed part and the largest stage (stages run one after another).
    pub fn peak(&self) -> u64 {
        let vae = self.vae_decode.saturating_add(self.vae_sessions).saturating_add(self.video);
        self.fixed.saturating_add(self.text_encoder.max(self.transformer).max(vae))
    }

    /// The part in host memory when the graphs run on a GPU: the activations are device memory,
    /// which ONNX Runtime's CUDA and TensorRT providers check themselves.
    pub fn host_part_with_gpu(self) -> Self {
        Self { text_encoder: 0, transformer: 0, vae_decode: 0, ..self }
    }
}

impl fmt::Display for MemoryEstimate {
    /// `<peak> of memory (<parts>)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let workers = match (self.vae_workers, self.vae_sessions) {
            (1, _) => String::new(),
            (w, 0) => format!(" on {w} workers"),
            (w, sessions) => format!(" on {w} workers + their sessions {}", gib(sessions)),
        };
        write!(
            f,
            "{} of memory (models and runtime {}, then the largest of text encoder {}, transformer {}, VAE decode \
             {}{workers} + video {})",
            gib(self.peak()),
            gib(self.fixed),
            gib(self.text_encoder),
            gib(self.transformer),
            gib(self.vae_decode),
            gib(self.video)
        )
    }
}

/// `bytes` in GiB with one decimal (or MiB below 1 GiB).
pub fn gib(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{} MiB", bytes.div_ceil(1 << 20))
    }
}

/// Multiplies in u128 and saturates at `u64::MAX` (requests can ask for absurd sizes).
fn product(factors: &[u64]) -> u64 {
    factors.iter().fold(1u128, |acc, &f| acc.saturating_mul(u128::from(f))).min(u128::from(u64::MAX)) as u64
}

/// The estimate for `req` with `sizes`, latents `[n, c, t, h, w]`, the VAE's compression and the
/// VAE `workers` a tiled decode is spread over.
pub fn estimate(
    sizes: &ModelSizes,
    req: &GenerateRequest,
    latent: [usize; 5],
    (patch_t, patch): (usize, usize),
    vae_spatial: usize,
    workers: VaeWorkers,
) -> MemoryEstimate {
    let u = |v: usize| v as u64;
    let [n, _, t, h, w] = latent.map(u);
    let l = u(req.max_sequence_length);

    let fixed = RUNTIME_OVERHEAD.saturating_add(sizes.weight_bytes.saturating_mul(WEIGHT_FACTOR));

    let heads = u(sizes.text_heads);
    let per_token = product(&[4, u(sizes.text_d_model)]).saturating_add(product(&[2, u(sizes.text_d_ff)]));
    let text_encoder = product(&[3, heads, l, l, F32]).saturating_add(product(&[l, per_token, F32]));

    let batch = product(&[n, if req.guidance_scale > 1.0 { 2 } else { 1 }]);
    let tokens = product(&[t.div_ceil(u(patch_t.max(1))), h / u(patch.max(1)), w / u(patch.max(1))]);
    let heads = u(sizes.dit_heads);
    let hidden = product(&[heads, u(sizes.dit_head_dim)]);
    let transformer = (product(&[2, batch, heads, tokens, tokens, F32]) / u(sizes.dit_sparse_n.max(1)))
        .saturating_add(product(&[2, batch, heads, tokens, l, F32]))
        .saturating_add(product(&[TOKEN_ACTIVATIONS, batch, tokens, hidden, F32]));

    let (frames, height, width) = (u(req.num_frames), product(&[h, u(vae_spatial)]), product(&[w, u(vae_spatial)]));
    let frames_in_flight = match req.decode.chunk {
        // One chunk of `chunk` latents gives 4 frames each; the causal caches hold about one more latent.
        Some(chunk) => frames.min(product(&[4, u(chunk).saturating_add(1)])),
        None => frames,
    };
    let tile = req.decode.tiling.map(|tc| product(&[u(tc.tile_size), u(vae_spatial)]));
    let (tile_h, tile_w) = match tile {
        Some(px) => (height.min(px), width.min(px)),
        None => (height, width),
    };
    let activations = product(&[VAE_ACTIVATIONS, n, u(sizes.vae_base_channels), frames_in_flight, tile_h, tile_w, F32]);
    // `vae::decode_parallel`: one worker per tile at most; with several, each decodes whole tiles
    // (a streamed tile is collected before it is blended), and a window of them waits.
    let tiles = req.decode.tiling.map_or(1, |tc| tc.tile_count(latent[3], latent[4]));
    let concurrent = workers.count.clamp(1, tiles.max(1));
    let vae_decode = if concurrent > 1 {
        let waiting = product(&[TILES_IN_FLIGHT_PER_WORKER, u(concurrent), n, 3, frames, tile_h, tile_w, F32]);
        product(&[u(concurrent), activations]).saturating_add(waiting)
    } else {
        activations
    };
    let vae_sessions =
        if workers.shared_weights { 0 } else { product(&[u(concurrent - 1), WEIGHT_FACTOR, sizes.vae_weight_bytes]) };
    let uint8_video = product(&[n, frames, height, width, 3]);
    let streamed_to_uint8 = req.decode.chunk.is_some() && req.decode.tiling.is_some() && !req.keep_decoded;
    // Streamed inside tiles, only one row of tiles is ever f32; otherwise the whole f32 video is.
    let f32_rows = if streamed_to_uint8 { tile_h } else { height };
    let f32_video = product(&[n, 3, frames, f32_rows, width, F32]);
    let video = uint8_video.saturating_add(f32_video);

    MemoryEstimate { fixed, text_encoder, transformer, vae_decode, vae_sessions, vae_workers: concurrent, video }
}

/// A request refused because its estimate exceeds the host's memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryRefusal {
    pub estimate: MemoryEstimate,
    /// Bytes the host can give this process.
    pub available: u64,
    /// Where `available` comes from (`MemAvailable`, the cgroup limit).
    pub source: String,
}

impl fmt::Display for MemoryRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fewer_devices = match self.estimate.vae_workers {
            1 => String::new(),
            w => format!(", spread the VAE tiles over fewer --devices (now {w} workers)"),
        };
        write!(
            f,
            "this request needs an estimated {}, but the host has {} available ({}); lower \
             --height/--width/--num_frames/--max_sequence_length/--num_samples_per_prompt, decode with \
             --stream-chunk and --spatial-tiling{fewer_devices}, or pass --skip-memory-check to run anyway (the estimate is \
             explained in docs/reliability_checks.md)",
            self.estimate,
            gib(self.available),
            self.source
        )
    }
}

/// `Err(Error::MemoryEstimate)` when `estimate` exceeds what `host` has.
pub fn check(estimate: &MemoryEstimate, host: &crate::mem::HostMemory) -> crate::Result<()> {
    if estimate.peak() <= host.available {
        return Ok(());
    }
    Err(crate::Error::MemoryEstimate(Box::new(MemoryRefusal {
        estimate: *estimate,
        available: host.available,
        source: host.source.clone(),
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::DecodeOptions;
    use crate::scheduler::SampleMethod;
    use crate::vae::TilingConfig;

    /// The default bundle's sizes (`assets/default`) with 1000 bytes of weights.
    fn sizes() -> ModelSizes {
        ModelSizes {
            text_heads: 4,
            text_d_model: 32,
            text_d_ff: 64,
            dit_heads: 4,
            dit_head_dim: 24,
            dit_sparse_n: 1,
            vae_base_channels: 8,
            weight_bytes: 1000,
            vae_weight_bytes: 300,
        }
    }

    /// 9 x 32 x 32, one sample, guidance 4, 16 tokens: latents [1, 8, 3, 4, 4].
    fn request() -> GenerateRequest {
        GenerateRequest {
            prompts: vec!["a".into()],
            prompt_template: None,
            negative_prompt: String::new(),
            num_frames: 9,
            height: 32,
            width: 32,
            num_sampling_steps: 2,
            guidance_scale: 4.0,
            guidance_rescale: 0.0,
            sample_method: SampleMethod::EulerAncestralDiscrete,
            num_samples_per_prompt: 1,
            max_sequence_length: 16,
            decode: DecodeOptions::default(),
            recorded_schedule: None,
            prediction_type: None,
            rescale_betas_zero_snr: false,
            keep_decoded: false,
        }
    }

    fn latent(req: &GenerateRequest) -> [usize; 5] {
        [req.num_samples_per_prompt, 8, (req.num_frames - 1) / 4 + 1, req.height / 8, req.width / 8]
    }

    #[test]
    fn the_estimate_follows_the_documented_formulas() {
        let req = request();
        let e = estimate(&sizes(), &req, latent(&req), (1, 2), 8, VaeWorkers::ONE);
        // fixed: overhead + 2 x 1000; text: 3 * 4 * 16^2 * 4 + 16 * (4 * 32 + 2 * 64) * 4.
        assert_eq!(e.fixed, (256 << 20) + 2000);
        assert_eq!(e.text_encoder, 12_288 + 16_384);
        // B = 2 (guidance), N = 3 * 2 * 2 = 12 tokens, hidden 96: 2*2*4*12^2*4 + 2*2*4*12*16*4 + 12*2*12*96*4.
        assert_eq!(e.transformer, 9_216 + 12_288 + 110_592);
        // 8 channels x 9 x 32 x 32 pixels x 4 bytes; video: uint8 + f32.
        assert_eq!(e.vae_decode, 294_912);
        assert_eq!(e.video, 27_648 + 110_592);
        assert_eq!(e.peak(), e.fixed + 294_912 + 138_240);

        type Case<'a> = (&'a str, GenerateRequest, &'a dyn Fn(&MemoryEstimate) -> bool);
        let cases: &[Case] = &[
            (
                "streaming holds 8 frames of 9",
                GenerateRequest { decode: DecodeOptions { chunk: Some(1), tiling: None }, ..request() },
                &|x| x.vae_decode == 294_912 / 9 * 8 && x.video == e.video,
            ),
            (
                "streamed 2x2 tiles hold 16 x 16 pixels and one f32 tile row",
                GenerateRequest {
                    decode: DecodeOptions { chunk: Some(1), tiling: Some(TilingConfig { tile_size: 2, overlap: 1 }) },
                    ..request()
                },
                &|x| x.vae_decode == 8 * 8 * 16 * 16 * 4 && x.video == 27_648 + 3 * 9 * 16 * 32 * 4,
            ),
            ("no guidance halves the transformer", GenerateRequest { guidance_scale: 1.0, ..request() }, &|x| {
                2 * x.transformer == e.transformer
            }),
            (
                "twice the tokens of text quadruple the text attention",
                GenerateRequest { max_sequence_length: 32, ..request() },
                &|x| x.text_encoder == 4 * 12_288 + 2 * 16_384,
            ),
            (
                "absurd sizes saturate instead of overflowing",
                GenerateRequest { height: usize::MAX / 2, width: usize::MAX / 2, ..request() },
                &|x| x.peak() == u64::MAX,
            ),
        ];
        for (what, req, ok) in cases {
            let x = estimate(&sizes(), req, latent(req), (1, 2), 8, VaeWorkers::ONE);
            assert!(ok(&x), "{what}: {x:?}");
        }
        let sparse =
            estimate(&ModelSizes { dit_sparse_n: 4, ..sizes() }, &req, latent(&req), (1, 2), 8, VaeWorkers::ONE);
        assert_eq!(sparse.transformer, 9_216 / 4 + 12_288 + 110_592);
        let gpu = e.host_part_with_gpu();
        assert_eq!(gpu.peak(), e.fixed + e.video);
    }

    /// 9 x 256 x 256 (latents 32 x 32) in 4 x 4 tiles of 8 x 8 latents, streamed one latent per call.
    fn tiled() -> GenerateRequest {
        let tiling = Some(TilingConfig { tile_size: 8, overlap: 0 });
        GenerateRequest { height: 256, width: 256, decode: DecodeOptions { chunk: Some(1), tiling }, ..request() }
    }

    #[test]
    fn concurrent_vae_workers_add_their_tiles_and_sessions() {
        let req = tiled();
        // 512 VAE channels: the VAE decode is the largest stage.
        let big_vae = ModelSizes { vae_base_channels: 512, ..sizes() };
        let at = |count, shared_weights| {
            estimate(&big_vae, &req, latent(&req), (1, 2), 8, VaeWorkers { count, shared_weights })
        };
        let one = at(1, false);
        // One tile in flight: 512 channels x 8 frames (4 x (chunk + 1)) x 64 x 64 pixels x 4 bytes.
        let tile = 512 * 8 * 64 * 64 * 4;
        assert!(one.vae_decode > one.transformer.max(one.text_encoder));
        assert_eq!((one.vae_decode, one.vae_sessions, one.vae_workers), (tile, 0, 1));
        // Each further worker: its tile's activations, two decoded f32 tiles (3 x 9 x 64 x 64)
        // waiting, and its own session weights (2 x 300 bytes) unless they are shared.
        let waiting = 2 * 3 * 9 * 64 * 64 * 4;
        for w in [2u64, 4, 16] {
            let e = at(w as usize, false);
            assert_eq!(e.vae_decode, w * tile + w * waiting, "{w} workers");
            assert_eq!(e.vae_sessions, (w - 1) * 600, "{w} workers");
            assert_eq!(e.vae_workers, w as usize);
            assert_eq!(at(w as usize, true).vae_sessions, 0, "{w} workers sharing weights");
        }
        assert!(at(2, false).peak() > one.peak() && at(4, false).peak() > at(2, false).peak());
        // No more workers decode at once than there are tiles (16), nor with an untiled decode.
        assert_eq!(at(64, false), at(16, false));
        let untiled = GenerateRequest { decode: DecodeOptions { chunk: Some(1), tiling: None }, ..tiled() };
        let e =
            estimate(&sizes(), &untiled, latent(&untiled), (1, 2), 8, VaeWorkers { count: 4, shared_weights: false });
        assert_eq!((e.vae_workers, e.vae_sessions), (1, 0));
        // On a GPU the activations are device memory; the further sessions' host copies still count.
        let gpu = at(4, false).host_part_with_gpu();
        assert_eq!(gpu.peak(), gpu.fixed + 3 * 600 + gpu.video);

        let host = crate::mem::HostMemory { available: at(2, false).peak(), source: "test".into() };
        check(&at(2, false), &host).unwrap();
        let msg = check(&at(4, false), &host).unwrap_err().to_string();
        assert!(msg.contains("on 4 workers + their sessions"), "{msg}");
        assert!(msg.contains("spread the VAE tiles over fewer --devices (now 4 workers)"), "{msg}");
        let msg = check(&at(1, false), &crate::mem::HostMemory { available: 0, source: "test".into() })
            .unwrap_err()
            .to_string();
        assert!(!msg.contains("--devices") && !msg.contains("workers"), "{msg}");
    }

    #[test]
    fn a_refusal_names_the_estimate_and_the_host() {
        let req = request();
        let e = estimate(&sizes(), &req, latent(&req), (1, 2), 8, VaeWorkers::ONE);
        let host = |available| crate::mem::HostMemory { available, source: "test".into() };
        check(&e, &host(e.peak())).unwrap();
        let msg = check(&e, &host(e.peak() - 1)).unwrap_err().to_string();
        assert!(
            msg.starts_with("this request needs an estimated 257 MiB of memory (models and runtime 257 MiB"),
            "{msg}"
        );
        assert!(
            msg.contains("but the host has 257 MiB available (test)") && msg.contains("--skip-memory-check"),
            "{msg}"
        );
    }
}
