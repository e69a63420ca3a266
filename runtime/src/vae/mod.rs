//! The video VAE stage: a bundle's `encoder` graph (`x` `[b, 3, t, h, w]` f32 in `[-1, 1]` ->
//! `mean`, `logvar` `[b, c, t', h / 8, w / 8]`) and its decoders: the whole-clip `decoder` graph
//! (`z` -> `sample` `[b, 3, t, h, w]`) and, when the bundle has them, the streaming decoder graphs
//! ([`streaming`]). [`Vae::decode`] is the one entry point for decoding; [`DecodeOptions`] picks
//! temporal chunking (the streaming graphs) and spatial tiling ([`tiling`]), alone or combined.
//!
//! Decoding goes one way: the tiler drives a [`LatentDecoder`] (the whole-clip graph, or the
//! streaming graphs in chunks) tile by tile, and the decoder hands each chunk of frames to the
//! [`FrameSink`] it is given (the tiler's blend of that tile, or [`Collect`] for one array). The
//! decoder metadata is read once per bundle ([`osp_graphs::VaeGraphs`]).
//!
//! Combined, every spatial tile is streamed through time and each chunk of frames is blended
//! straight into the output: peak memory is one tile's causal state and one chunk's activations,
//! plus the output video itself. Chunking is exact (the streamed
//! frames equal the whole-clip decoder's); tiling is approximate near tile borders (a blend).
//!
//! Streaming decodes fix glibc's mmap threshold for the process ([`crate::mem::pin_mmap_threshold`])
//! and give freed heap pages back after each call, so that later tiles peak no higher than the
//! first.
//!
//! Sessions load on first use, so a decode-only caller never loads the encoder, and the whole-clip
//! and streaming decoders are only loaded when asked for.
//!
//! Reconstruction uses the posterior mean. Upstream `rec_video.py` draws `.sample()` from the
//! posterior and applies WFVAE's latent `shift`/`scale` on encode and its inverse on decode; the
//! two cancel, and the mean makes the reconstruction deterministic.
//!
//! ```no_run
//! # fn main() -> osp_runtime::Result<()> {
//! use osp_runtime::vae::{DecodeOptions, TilingConfig, Vae};
//! use osp_runtime::{Bundle, SessionOptions};
//! let bundle = Bundle::open("bundles/wfvae")?;
//! let mut vae = Vae::load(&bundle, &SessionOptions::default())?;
//! let z = ndarray::Array5::<f32>::zeros((1, 8, 5, 32, 32));
//! let opts = DecodeOptions { chunk: vae.default_chunk(), tiling: Some(TilingConfig::default()) };
//! let video = vae.decode(z.view(), &opts)?; // [1, 3, 17, 256, 256]
//! # Ok(())
//! # }
//! ```

pub mod streaming;
pub mod tiling;

use std::collections::BTreeMap;

use ndarray::{Array4, Array5, ArrayD, ArrayView5, Axis, Ix5, Slice};
use osp_graphs::config::StreamProtocol;
use osp_graphs::{ModelSpec, VaeGraphs};

use crate::error::{Error, Result};
use crate::session::{Bundle, GraphSession, SessionOptions};
use crate::tensor::Tensor;
pub use streaming::StreamingDecoder;
pub use tiling::{
    decode_tiled, decode_tiled_frames, decode_tiled_frames_parallel, decode_tiled_parallel, decode_tiled_with,
    TilingConfig,
};

/// Graph and I/O names a VAE bundle provides.
pub const ENCODER_GRAPH: &str = "encoder";
pub const DECODER_GRAPH: &str = osp_graphs::vae::DECODER_GRAPH;
pub const ENCODER_INPUT: &str = "x";
pub const ENCODER_MEAN: &str = "mean";
pub const DECODER_INPUT: &str = "z";
pub const DECODER_OUTPUT: &str = "sample";

/// Stage names of the decoder's non-finite checks ([`crate::finite`]); the output is checked per
/// graph call (one tile, or one streamed chunk of a tile), so its index is within that call.
const INPUT_STAGE: &str = "latents given to the VAE decoder";
const OUTPUT_STAGE: &str = "VAE decoder output";

/// Where a decoder hands its frames, in order: each chunk `[b, c', tc, h * s, w * s]` of a
/// decode that yields `total` frames in all.
pub trait FrameSink {
    fn frames(&mut self, chunk: ArrayView5<f32>, total: usize) -> Result<()>;
}

/// A decoder of latents `[b, c, t, h, w]` (a whole clip or one spatial tile): the whole-clip
/// `decoder` graph, or the streaming graphs in chunks. The tiler ([`tiling`]) drives it tile by
/// tile; it hands the frames to the sink it is given and knows nothing of tiles.
pub trait LatentDecoder {
    /// Decodes `z`, handing its frames to `sink` in order, in one or more chunks.
    fn decode_into(&mut self, z: ArrayView5<f32>, sink: &mut dyn FrameSink) -> Result<()>;

    /// Decodes `z` into one array.
    fn decode(&mut self, z: ArrayView5<f32>) -> Result<Array5<f32>> {
        let mut whole = Collect::new(DECODER_OUTPUT.into());
        self.decode_into(z, &mut whole)?;
        whole.finish()
    }
}

/// A [`FrameSink`] that copies the chunks into one preallocated array.
pub struct Collect {
    name: String,
    whole: Option<Array5<f32>>,
    next: usize,
}

impl Collect {
    /// Collects the frames of output `name` (named in errors).
    pub fn new(name: String) -> Self {
        Self { name, whole: None, next: 0 }
    }

    /// The collected frames; an error unless every promised frame came.
    pub fn finish(self) -> Result<Array5<f32>> {
        let Some(whole) = self.whole else {
            return Err(Error::Tensor { name: self.name, why: "the decoder produced no frames".into() });
        };
        let total = whole.shape()[2];
        if self.next != total {
            return Err(Error::Tensor {
                name: self.name,
                why: format!("the stream produced {} frames, the protocol promised {total}", self.next),
            });
        }
        Ok(whole)
    }
}

impl FrameSink for Collect {
    fn frames(&mut self, chunk: ArrayView5<f32>, total: usize) -> Result<()> {
        let next = self.next;
        let n = chunk.shape()[2];
        let whole = self.whole.get_or_insert_with(|| {
            let (b, c, _, h, w) = chunk.dim();
            Array5::zeros((b, c, total, h, w))
        });
        let fits = next + n <= whole.shape()[2]
            && chunk.shape().iter().zip(whole.shape()).enumerate().all(|(axis, (x, y))| axis == 2 || x == y);
        if !fits {
            return Err(Error::Tensor {
                name: self.name.clone(),
                why: format!("chunk {:?} at frame {next} does not fit the {:?} output", chunk.shape(), whole.shape()),
            });
        }
        whole.slice_axis_mut(Axis(2), Slice::from(next..next + n)).assign(&chunk);
        self.next += n;
        Ok(())
    }
}

/// How [`Vae::decode`] runs the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DecodeOptions {
    /// Stream the clip through the streaming decoder graphs, this many latent frames per call
    /// after the first (exact; memory bounded in time). `None` runs the whole-clip `decoder` graph.
    pub chunk: Option<usize>,
    /// Decode overlapping spatial tiles and blend them (memory bounded in height and width).
    pub tiling: Option<TilingConfig>,
}

impl DecodeOptions {
    /// The whole-clip decoder on the whole latent (the reference; memory grows with t x h x w).
    pub fn whole() -> Self {
        Self::default()
    }

    /// Streaming in chunks of `chunk` latents inside default-sized tiles: bounded memory.
    pub fn bounded(chunk: usize) -> Self {
        Self { chunk: Some(chunk), tiling: Some(TilingConfig::default()) }
    }
}

/// A VAE bundle's graphs, loaded on first use.
pub struct Vae {
    bundle: Bundle,
    opts: SessionOptions,
    graphs: VaeGraphs,
    /// A wfvae bundle's per-channel latent `scale` and `shift` (its diffusion wrapper's
    /// normalisation); `None` for other bundles.
    norm: Option<(Vec<f32>, Vec<f32>)>,
    encoder: Option<GraphSession>,
    decoder: Option<GraphSession>,
    streaming: Option<StreamingDecoder>,
}

impl Vae {
    /// Checks that `bundle` has the `encoder` and `decoder` graphs and reads its decoder metadata
    /// ([`VaeGraphs`]); sessions are created on first use with `opts`.
    pub fn load(bundle: &Bundle, opts: &SessionOptions) -> Result<Self> {
        let graphs = VaeGraphs::read(bundle.manifest())
            .map_err(|e| Error::Graph(e.in_file(bundle.dir().join(osp_graphs::MANIFEST_FILE))))?;
        Self::with_graphs(bundle, graphs, opts)
    }

    /// [`Self::load`] with the decoder metadata already read from `bundle`'s manifest.
    pub fn with_graphs(bundle: &Bundle, graphs: VaeGraphs, opts: &SessionOptions) -> Result<Self> {
        let manifest = bundle.manifest();
        let in_bundle = |e: Error| match e {
            Error::Graph(g) => Error::Graph(g.in_file(bundle.dir().join(osp_graphs::MANIFEST_FILE))),
            other => other,
        };
        manifest.graph(ENCODER_GRAPH).map_err(|e| in_bundle(e.into()))?;
        manifest.graph(DECODER_GRAPH).map_err(|e| in_bundle(e.into()))?;
        let norm = match &manifest.model {
            ModelSpec::Wfvae(c) => {
                Some((c.scale.iter().map(|&v| v as f32).collect(), c.shift.iter().map(|&v| v as f32).collect()))
            }
            _ => None,
        };
        Ok(Self {
            bundle: bundle.clone(),
            opts: opts.clone(),
            graphs,
            norm,
            encoder: None,
            decoder: None,
            streaming: None,
        })
    }

    /// The decoder metadata.
    pub fn graphs(&self) -> &VaeGraphs {
        &self.graphs
    }

    /// The streaming protocol, when the bundle has streaming decoder graphs.
    pub fn streaming_protocol(&self) -> Option<&StreamProtocol> {
        self.graphs.streaming.as_ref().map(|s| s.protocol())
    }

    /// The bundle's recommended streaming chunk (latent frames per call), when it can stream.
    pub fn default_chunk(&self) -> Option<usize> {
        self.streaming_protocol().map(|p| p.default_chunk_latents)
    }

    /// The posterior mean of `x` (`[b, 3, t, h, w]` in `[-1, 1]`).
    pub fn encode(&mut self, x: ArrayView5<f32>) -> Result<Array5<f32>> {
        let _span = tracing::info_span!("vae_encode", shape = ?x.shape()).entered();
        if self.encoder.is_none() {
            self.encoder = Some(self.bundle.session(ENCODER_GRAPH, &self.opts)?);
        }
        let encoder = self.encoder.as_mut().expect("the encoder session was just loaded");
        let input = Tensor::F32(x.to_owned().into_dyn());
        let out = encoder.run(&[(ENCODER_INPUT, &input)])?;
        let mean = take_f32_5d(ENCODER_GRAPH, ENCODER_MEAN, out)?;
        crate::finite::check("VAE encoder output (latent mean)", mean.view().into_dyn())?;
        Ok(mean)
    }

    /// Decodes latents `z` (`[b, c, t, h, w]`) into `[b, 3, frames, h * 8, w * 8]` as `opts`
    /// says: whole or streamed in time, whole or tiled in space (each tile streamed through time).
    pub fn decode(&mut self, z: ArrayView5<f32>, opts: &DecodeOptions) -> Result<Array5<f32>> {
        let _span =
            tracing::info_span!("vae_decode", shape = ?z.shape(), chunk = ?opts.chunk, tiling = ?opts.tiling).entered();
        crate::finite::check(INPUT_STAGE, z.into_dyn())?;
        if opts.chunk.is_some() {
            // The streaming graphs run once per chunk (and tile) with large short-lived
            // intermediates: keep glibc from turning them into heap fragmentation.
            crate::mem::pin_mmap_threshold();
        }
        let mut decoder = self.decoder_for(opts.chunk)?;
        match &opts.tiling {
            // Streamed, each chunk is blended into the output as it comes: no tile is held whole.
            Some(cfg) => decode_tiled_with(z, cfg, decoder.as_mut()),
            None => decoder.decode(z),
        }
    }

    /// [`Self::decode`] to uint8 frames, one `[frames, h * 8, w * 8, 3]` array per video of the
    /// batch, quantised as upstream `custom_to_video` from the same f32 values. Streamed inside
    /// tiles, the f32 video is never whole: only one row of tiles is (see
    /// [`tiling::decode_tiled_frames`]); otherwise the f32 decode is converted.
    pub fn decode_frames(&mut self, z: ArrayView5<f32>, opts: &DecodeOptions) -> Result<Vec<Array4<u8>>> {
        if let (Some(cfg), Some(chunk)) = (&opts.tiling, opts.chunk) {
            crate::finite::check(INPUT_STAGE, z.into_dyn())?;
            let _span = tracing::info_span!("vae_decode_frames", shape = ?z.shape(), chunk, tiling = ?cfg).entered();
            crate::mem::pin_mmap_threshold();
            let streaming = self.streaming_decoder()?;
            return decode_tiled_frames(z, cfg, &mut Streamed { streaming, chunk });
        }
        let video = self.decode(z, opts)?;
        (0..video.shape()[0]).map(|i| crate::video::batch_to_u8_frames(video.view(), i)).collect()
    }

    /// `z = latents / scale + shift` per channel (`WFVAEModelWrapper.decode`), in f32: diffusion
    /// latents `[n, c, t, h, w]` as the decoder takes them.
    pub fn unnormalize(&self, latents: &ArrayD<f32>) -> Result<Array5<f32>> {
        let invalid = |rule: String| Error::InvalidInput { name: "latents".into(), rule };
        let Some((scales, shifts)) = &self.norm else {
            return Err(invalid(format!(
                "bundle {} is not a wfvae bundle: it has no latent scale and shift",
                self.bundle.dir().display()
            )));
        };
        let mut z = latents
            .clone()
            .into_dimensionality::<Ix5>()
            .map_err(|_| invalid(format!("must be [n, c, t, h, w], got {:?}", latents.shape())))?;
        if z.shape()[1] != scales.len() {
            return Err(invalid(format!("must have {} channels, got {:?}", scales.len(), z.shape())));
        }
        for (c, mut plane) in z.axis_iter_mut(Axis(1)).enumerate() {
            let (scale, shift) = (scales[c], shifts[c]);
            plane.mapv_inplace(|v| v / scale + shift);
        }
        Ok(z)
    }

    /// Un-normalises ([`Self::unnormalize`]) and decodes diffusion latents `[n, c, t, h, w]` to
    /// video `[n, 3, f, H, W]`.
    pub fn decode_latents(&mut self, latents: &ArrayD<f32>, opts: &DecodeOptions) -> Result<Array5<f32>> {
        let z = self.unnormalize(latents)?;
        self.decode(z.view(), opts)
    }

    /// Loads (once) and borrows the decoder `chunk` asks for.
    fn decoder_for(&mut self, chunk: Option<usize>) -> Result<Box<dyn LatentDecoder + Send + '_>> {
        match chunk {
            None => {
                if self.decoder.is_none() {
                    self.decoder = Some(self.bundle.session(DECODER_GRAPH, &self.opts)?);
                }
                let session = self.decoder.as_mut().expect("the decoder session was just loaded");
                Ok(Box::new(Whole { session }))
            }
            Some(chunk) => Ok(Box::new(Streamed { streaming: self.streaming_decoder()?, chunk })),
        }
    }

    /// Loads (once) and borrows the streaming decoder; an error when the bundle has none.
    fn streaming_decoder(&mut self) -> Result<&mut StreamingDecoder> {
        let Some(streaming) = &self.graphs.streaming else {
            return Err(Error::Graph(osp_graphs::Error::Invalid(format!(
                "bundle {} has no streaming decoder graphs: decode without a chunk size (whole clip) \
                 or re-export the bundle",
                self.bundle.dir().display()
            ))));
        };
        if self.streaming.is_none() {
            self.streaming = Some(StreamingDecoder::new(&self.bundle, streaming.clone(), &self.opts)?);
        }
        Ok(self.streaming.as_mut().expect("the streaming decoder was just loaded"))
    }
}

/// [`Vae::decode`] with the spatial tiles spread over `vaes`, one worker thread each (e.g. one per
/// device: each [`Vae`] loaded with its own [`SessionOptions`], see
/// [`crate::parallel::workers::worker_options`]). Bit-identical to `vaes[0].decode(z, opts)`: the
/// tiles are blended in the same order ([`tiling::decode_tiled_parallel`]). Without tiling, or
/// with one VAE, it is that call. Each worker holds the tile it decodes whole (a streamed tile is
/// collected before blending).
pub fn decode_parallel(vaes: &mut [Vae], z: ArrayView5<f32>, opts: &DecodeOptions) -> Result<Array5<f32>> {
    let Some(cfg) = opts.tiling.filter(|_| vaes.len() > 1) else {
        return first(vaes)?.decode(z, opts);
    };
    let _span =
        tracing::info_span!("vae_decode", shape = ?z.shape(), chunk = ?opts.chunk, tiling = ?cfg, workers = vaes.len())
            .entered();
    crate::finite::check(INPUT_STAGE, z.into_dyn())?;
    if opts.chunk.is_some() {
        crate::mem::pin_mmap_threshold();
    }
    let mut decoders = vaes.iter_mut().map(|v| v.decoder_for(opts.chunk)).collect::<Result<Vec<_>>>()?;
    let mut refs: Vec<_> = decoders.iter_mut().map(|d| d.as_mut()).collect();
    decode_tiled_parallel(z, &cfg, &mut refs)
}

/// [`Vae::decode_frames`] with the spatial tiles spread over `vaes` as in [`decode_parallel`];
/// bit-identical to `vaes[0].decode_frames(z, opts)`.
pub fn decode_frames_parallel(vaes: &mut [Vae], z: ArrayView5<f32>, opts: &DecodeOptions) -> Result<Vec<Array4<u8>>> {
    let (Some(cfg), Some(chunk)) = (opts.tiling, opts.chunk) else {
        let video = decode_parallel(vaes, z, opts)?;
        return (0..video.shape()[0]).map(|i| crate::video::batch_to_u8_frames(video.view(), i)).collect();
    };
    if vaes.len() <= 1 {
        return first(vaes)?.decode_frames(z, opts);
    }
    crate::finite::check(INPUT_STAGE, z.into_dyn())?;
    let _span =
        tracing::info_span!("vae_decode_frames", shape = ?z.shape(), chunk, tiling = ?cfg, workers = vaes.len())
            .entered();
    crate::mem::pin_mmap_threshold();
    let mut decoders = vaes.iter_mut().map(|v| v.decoder_for(Some(chunk))).collect::<Result<Vec<_>>>()?;
    let mut refs: Vec<_> = decoders.iter_mut().map(|d| d.as_mut()).collect();
    decode_tiled_frames_parallel(z, &cfg, &mut refs)
}

fn first(vaes: &mut [Vae]) -> Result<&mut Vae> {
    vaes.first_mut().ok_or_else(|| Error::Tiling("no VAE to decode with (an empty worker list)".into()))
}

/// The whole-clip `decoder` graph: one call per latent (tile), its output checked.
struct Whole<'a> {
    session: &'a mut GraphSession,
}

impl LatentDecoder for Whole<'_> {
    fn decode_into(&mut self, z: ArrayView5<f32>, sink: &mut dyn FrameSink) -> Result<()> {
        let video = self.decode(z)?;
        sink.frames(video.view(), video.shape()[2])
    }

    fn decode(&mut self, z: ArrayView5<f32>) -> Result<Array5<f32>> {
        let input = Tensor::F32(z.to_owned().into_dyn());
        let out = self.session.run(&[(DECODER_INPUT, &input)])?;
        let video = take_f32_5d(DECODER_GRAPH, DECODER_OUTPUT, out)?;
        crate::finite::check(OUTPUT_STAGE, video.view().into_dyn())?;
        Ok(video)
    }
}

/// The streaming graphs in chunks of `chunk` latents: each chunk is checked as it is handed on;
/// decoded into one array, the whole output is checked once.
struct Streamed<'a> {
    streaming: &'a mut StreamingDecoder,
    chunk: usize,
}

/// Checks each chunk before handing it on.
struct Checked<'a>(&'a mut dyn FrameSink);

impl FrameSink for Checked<'_> {
    fn frames(&mut self, chunk: ArrayView5<f32>, total: usize) -> Result<()> {
        crate::finite::check(OUTPUT_STAGE, chunk.into_dyn())?;
        self.0.frames(chunk, total)
    }
}

impl LatentDecoder for Streamed<'_> {
    fn decode_into(&mut self, z: ArrayView5<f32>, sink: &mut dyn FrameSink) -> Result<()> {
        self.streaming.stream(z, self.chunk, &mut Checked(sink))?;
        Ok(())
    }

    fn decode(&mut self, z: ArrayView5<f32>) -> Result<Array5<f32>> {
        let video = self.streaming.decode_array(z, self.chunk)?;
        crate::finite::check(OUTPUT_STAGE, video.view().into_dyn())?;
        Ok(video)
    }
}

fn take_f32_5d(graph: &str, name: &str, mut out: BTreeMap<String, Tensor>) -> Result<Array5<f32>> {
    let produced = out.keys().cloned().collect::<Vec<_>>().join(", ");
    let tensor = out.remove(name).ok_or_else(|| Error::MissingOutput {
        graph: graph.to_string(),
        output: name.to_string(),
        produced,
    })?;
    let described = tensor.describe();
    let mismatch = |expected: &str| Error::OutputMismatch {
        graph: graph.to_string(),
        output: name.to_string(),
        expected: expected.to_string(),
        got: described.clone(),
    };
    match tensor {
        Tensor::F32(a) => a.into_dimensionality::<Ix5>().map_err(|_| mismatch("a 5-D tensor")),
        _ => Err(mismatch("f32")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands the frames of `video` over in chunks of `sizes` frames, promising `total`.
    struct Chunks {
        video: Array5<f32>,
        sizes: Vec<usize>,
        total: usize,
    }

    impl LatentDecoder for Chunks {
        fn decode_into(&mut self, _: ArrayView5<f32>, sink: &mut dyn FrameSink) -> Result<()> {
            let mut t0 = 0;
            for &n in &self.sizes {
                sink.frames(self.video.slice_axis(Axis(2), Slice::from(t0..t0 + n)), self.total)?;
                t0 += n;
            }
            Ok(())
        }
    }

    #[test]
    fn collected_chunks_equal_the_whole_and_bad_streams_are_errors() {
        let video =
            Array5::from_shape_fn((2, 3, 7, 2, 3), |(b, c, t, y, x)| (b * 97 + c * 31 + t * 7 + y * 3 + x) as f32);
        let z = Array5::<f32>::zeros((2, 1, 2, 1, 1));
        let mut d = Chunks { video: video.clone(), sizes: vec![1, 4, 2], total: 7 };
        assert_eq!(d.decode(z.view()).unwrap(), video);
        // Fewer frames than promised, more than promised, and none at all.
        let mut d = Chunks { video: video.clone(), sizes: vec![1, 4], total: 7 };
        let e = d.decode(z.view()).unwrap_err().to_string();
        assert!(e.contains("produced 5 frames, the protocol promised 7"), "{e}");
        let mut d = Chunks { video: video.clone(), sizes: vec![4, 3], total: 6 };
        let e = d.decode(z.view()).unwrap_err().to_string();
        assert!(e.contains("at frame 4 does not fit"), "{e}");
        let mut d = Chunks { video, sizes: vec![], total: 7 };
        let e = d.decode(z.view()).unwrap_err().to_string();
        assert!(e.contains("no frames"), "{e}");
    }
}
