//! The video VAE stage: a bundle's `encoder` graph (`x` `[b, 3, t, h, w]` f32 in `[-1, 1]` ->
//! `mean`, `logvar` `[b, c, t', h / 8, w / 8]`) and `decoder` graph (`z` -> `sample`
//! `[b, 3, t, h, w]`), with optional spatial tiling of the decoding ([`tiling`]).
//!
//! Reconstruction uses the posterior mean. Upstream `rec_video.py` draws `.sample()` from the
//! posterior and applies WFVAE's latent `shift`/`scale` on encode and its inverse on decode; the
//! two cancel, and the mean makes the reconstruction deterministic.

pub mod streaming;
pub mod tiling;

use std::collections::BTreeMap;

use ndarray::{Array5, ArrayView5, Ix5};

use crate::error::{Error, Result};
use crate::session::{Bundle, GraphSession, SessionOptions};
use crate::tensor::Tensor;
pub use tiling::{decode_tiled, TilingConfig};

/// Graph and I/O names a VAE bundle provides.
pub const ENCODER_GRAPH: &str = "encoder";
pub const DECODER_GRAPH: &str = "decoder";
pub const ENCODER_INPUT: &str = "x";
pub const ENCODER_MEAN: &str = "mean";
pub const DECODER_INPUT: &str = "z";
pub const DECODER_OUTPUT: &str = "sample";

/// Loaded encoder and decoder sessions of a VAE bundle.
pub struct Vae {
    encoder: GraphSession,
    decoder: GraphSession,
}

impl Vae {
    pub fn load(bundle: &Bundle, opts: &SessionOptions) -> Result<Self> {
        Ok(Self { encoder: bundle.session(ENCODER_GRAPH, opts)?, decoder: bundle.session(DECODER_GRAPH, opts)? })
    }

    /// The posterior mean of `x` (`[b, 3, t, h, w]` in `[-1, 1]`).
    pub fn encode(&mut self, x: ArrayView5<f32>) -> Result<Array5<f32>> {
        let _span = tracing::info_span!("vae_encode", shape = ?x.shape()).entered();
        let input = Tensor::F32(x.to_owned().into_dyn());
        let out = self.encoder.run(&[(ENCODER_INPUT, &input)])?;
        take_f32_5d(ENCODER_GRAPH, ENCODER_MEAN, out)
    }

    /// Decodes latents `z` whole, or tile by tile when `tiling` is given.
    pub fn decode(&mut self, z: ArrayView5<f32>, tiling: Option<&TilingConfig>) -> Result<Array5<f32>> {
        let _span = tracing::info_span!("vae_decode", shape = ?z.shape()).entered();
        let decoder = &mut self.decoder;
        let mut run = |tile: ArrayView5<f32>| -> Result<Array5<f32>> {
            let input = Tensor::F32(tile.to_owned().into_dyn());
            let out = decoder.run(&[(DECODER_INPUT, &input)])?;
            take_f32_5d(DECODER_GRAPH, DECODER_OUTPUT, out)
        };
        match tiling {
            Some(cfg) => decode_tiled(z, cfg, run),
            None => run(z),
        }
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
