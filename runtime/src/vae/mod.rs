//! The video VAE stage: a bundle's `encoder` graph (`x` `[b, 3, t, h, w]` f32 in `[-1, 1]` ->
//! `mean`, `logvar` `[b, c, t', h / 8, w / 8]`) and its decoders: the whole-clip `decoder` graph
//! (`z` -> `sample` `[b, 3, t, h, w]`) and, when the bundle has them, the streaming decoder graphs
//! ([`streaming`]). [`Vae::decode`] is the one entry point for decoding; [`DecodeOptions`] picks
//! temporal chunking (the streaming graphs) and spatial tiling ([`tiling`]), alone or combined.
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

use ndarray::{Array4, Array5, ArrayView5, Ix5};
use osp_graphs::config::{StreamProtocol, STREAM_METADATA_KEY};

use crate::error::{Error, Result};
use crate::session::{Bundle, GraphSession, SessionOptions};
use crate::tensor::Tensor;
pub use streaming::StreamingDecoder;
pub use tiling::{decode_tiled, decode_tiled_streamed, decode_tiled_streamed_frames, FrameSink, TilingConfig};

/// Graph and I/O names a VAE bundle provides.
pub const ENCODER_GRAPH: &str = "encoder";
pub const DECODER_GRAPH: &str = "decoder";
pub const ENCODER_INPUT: &str = "x";
pub const ENCODER_MEAN: &str = "mean";
pub const DECODER_INPUT: &str = "z";
pub const DECODER_OUTPUT: &str = "sample";

/// Stage names of the decoder's non-finite checks ([`crate::finite`]); the output is checked per
/// graph call (one tile, or one streamed chunk of a tile), so its index is within that call.
const INPUT_STAGE: &str = "latents given to the VAE decoder";
const OUTPUT_STAGE: &str = "VAE decoder output";

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
    protocol: Option<StreamProtocol>,
    encoder: Option<GraphSession>,
    decoder: Option<GraphSession>,
    streaming: Option<StreamingDecoder>,
}

impl Vae {
    /// Checks that `bundle` has the `encoder` and `decoder` graphs (and reads the streaming
    /// protocol if it has streaming graphs); sessions are created on first use with `opts`.
    pub fn load(bundle: &Bundle, opts: &SessionOptions) -> Result<Self> {
        let manifest = bundle.manifest();
        let in_bundle = |e: Error| match e {
            Error::Graph(g) => Error::Graph(g.in_file(bundle.dir().join(osp_graphs::MANIFEST_FILE))),
            other => other,
        };
        manifest.graph(ENCODER_GRAPH).map_err(|e| in_bundle(e.into()))?;
        manifest.graph(DECODER_GRAPH).map_err(|e| in_bundle(e.into()))?;
        let protocol = match manifest
            .graphs
            .iter()
            .find_map(|(name, g)| g.metadata.get(STREAM_METADATA_KEY).map(|value| (name, value)))
        {
            Some((name, value)) => Some(streaming::parse_protocol(name, value).map_err(in_bundle)?),
            None => None,
        };
        Ok(Self { bundle: bundle.clone(), opts: opts.clone(), protocol, encoder: None, decoder: None, streaming: None })
    }

    /// The streaming protocol, when the bundle has streaming decoder graphs.
    pub fn streaming_protocol(&self) -> Option<&StreamProtocol> {
        self.protocol.as_ref()
    }

    /// The bundle's recommended streaming chunk (latent frames per call), when it can stream.
    pub fn default_chunk(&self) -> Option<usize> {
        self.protocol.as_ref().map(|p| p.default_chunk_latents)
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
        match (&opts.tiling, &mut decoder) {
            (Some(cfg), TileDecoder::Stream(streaming, chunk)) => {
                // Each streamed chunk is blended into the output as it comes: no tile is held whole.
                let frames = streaming.output_frames(z.shape()[2], *chunk)?;
                decode_tiled_streamed(z, cfg, frames, stream_tile(streaming, *chunk))
            }
            (Some(cfg), _) => decode_tiled(z, cfg, |tile| decoder.decode(tile)),
            (None, _) => decoder.decode(z),
        }
    }

    /// [`Self::decode`] to uint8 frames, one `[frames, h * 8, w * 8, 3]` array per video of the
    /// batch, quantised as upstream `custom_to_video` from the same f32 values. Streamed inside
    /// tiles, the f32 video is never whole: only one row of tiles is (see
    /// [`tiling::decode_tiled_streamed_frames`]); otherwise the f32 decode is converted.
    pub fn decode_frames(&mut self, z: ArrayView5<f32>, opts: &DecodeOptions) -> Result<Vec<Array4<u8>>> {
        if let (Some(cfg), Some(chunk)) = (&opts.tiling, opts.chunk) {
            crate::finite::check(INPUT_STAGE, z.into_dyn())?;
            let _span = tracing::info_span!("vae_decode_frames", shape = ?z.shape(), chunk, tiling = ?cfg).entered();
            crate::mem::pin_mmap_threshold();
            let streaming = self.streaming_decoder()?;
            let frames = streaming.output_frames(z.shape()[2], chunk)?;
            return decode_tiled_streamed_frames(z, cfg, frames, stream_tile(streaming, chunk));
        }
        let video = self.decode(z, opts)?;
        (0..video.shape()[0]).map(|i| crate::video::batch_to_u8_frames(video.view(), i)).collect()
    }

    /// Loads (once) and borrows the decoder `chunk` asks for.
    fn decoder_for(&mut self, chunk: Option<usize>) -> Result<TileDecoder<'_>> {
        match chunk {
            None => {
                if self.decoder.is_none() {
                    self.decoder = Some(self.bundle.session(DECODER_GRAPH, &self.opts)?);
                }
                Ok(TileDecoder::Whole(self.decoder.as_mut().expect("the decoder session was just loaded")))
            }
            Some(chunk) => Ok(TileDecoder::Stream(self.streaming_decoder()?, chunk)),
        }
    }

    /// Loads (once) and borrows the streaming decoder; an error when the bundle has none.
    fn streaming_decoder(&mut self) -> Result<&mut StreamingDecoder> {
        if self.protocol.is_none() {
            return Err(Error::Graph(osp_graphs::Error::Invalid(format!(
                "bundle {} has no streaming decoder graphs: decode without a chunk size (whole clip) \
                 or re-export the bundle",
                self.bundle.dir().display()
            ))));
        }
        if self.streaming.is_none() {
            self.streaming = Some(StreamingDecoder::load(&self.bundle, &self.opts)?);
        }
        Ok(self.streaming.as_mut().expect("the streaming decoder was just loaded"))
    }
}

/// Streams one latent tile through `streaming` in chunks of `chunk`, handing each chunk of
/// frames to the tiling's sink.
fn stream_tile<'a>(
    streaming: &'a mut StreamingDecoder,
    chunk: usize,
) -> impl FnMut(ArrayView5<f32>, &mut FrameSink<'_>) -> Result<()> + 'a {
    move |tile, sink| {
        let output = streaming.protocol().output.clone();
        let input = Tensor::F32(tile.to_owned().into_dyn());
        streaming.decode_with(&input, chunk, |frames| match frames {
            Tensor::F32(a) => {
                let a = a.into_dimensionality::<Ix5>().map_err(|_| Error::Tensor {
                    name: output.clone(),
                    why: "streamed frames must be [b, c, t, h, w]".into(),
                })?;
                crate::finite::check(OUTPUT_STAGE, a.view().into_dyn())?;
                sink(a.view())
            }
            other => Err(Error::unsupported(format!("streamed `{output}`"), other.dtype())),
        })?;
        Ok(())
    }
}

/// The decoder one latent (tile) goes through.
enum TileDecoder<'a> {
    Whole(&'a mut GraphSession),
    Stream(&'a mut StreamingDecoder, usize),
}

impl TileDecoder<'_> {
    fn decode(&mut self, z: ArrayView5<f32>) -> Result<Array5<f32>> {
        let input = Tensor::F32(z.to_owned().into_dyn());
        let video = match self {
            TileDecoder::Whole(session) => {
                let out = session.run(&[(DECODER_INPUT, &input)])?;
                take_f32_5d(DECODER_GRAPH, DECODER_OUTPUT, out)
            }
            TileDecoder::Stream(streaming, chunk) => {
                let name = streaming.protocol().output.clone();
                let frames = streaming.decode(&input, *chunk)?;
                let graph = streaming.protocol().step_graph.clone();
                take_f32_5d(&graph, &name, BTreeMap::from([(name.clone(), frames)]))
            }
        }?;
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
