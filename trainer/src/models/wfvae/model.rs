//! `WFVAEModel`: encoder + decoder, the diagonal-Gaussian posterior, whole-clip and temporally
//! chunked inference, and strict loading of official checkpoints.
//!
//! Upstream: <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/causalvideovae/model/vae/modeling_wfvae.py#L316-L560>
//!
//! Chunked decoding differs from upstream `tile_decode` on purpose: upstream feeds a look-ahead
//! latent and skips it when a chunk ends at the last latent, which corrupts the last 6 frames for
//! every even latent count (ARCH §1.8). Here every temporal dependency is an explicit cache
//! entry (see [`TemporalCache`]) and the result equals the whole-clip decode for any chunking.

use std::collections::BTreeSet;

use burn::module::Module;
use burn::store::ModuleSnapshot;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::cache::TemporalCache;
use super::ops::frames;
use super::{Decoder, Encoder, WFVAEModelConfig};
use crate::checkpoint::{load_module, Checkpoint, LoadOptions, LoadReport};
use crate::error::{Error, Result};
use crate::remap;

/// The encoder's diagonal Gaussian: `mean` and `logvar` (clamped to [-30, 20]), `[b, latent, t, h, w]`.
#[derive(Debug, Clone)]
pub struct Posterior<B: Backend> {
    pub mean: Tensor<B, 5>,
    pub logvar: Tensor<B, 5>,
}

impl<B: Backend> Posterior<B> {
    /// Splits the encoder output `[mean | logvar]` along channels and clamps `logvar`.
    pub fn from_moments(h: Tensor<B, 5>) -> Self {
        let mut halves = h.chunk(2, 1);
        let logvar = halves.pop().expect("two halves").clamp(-30.0, 20.0);
        let mean = halves.pop().expect("two halves");
        Posterior { mean, logvar }
    }

    /// The mode (`mean`).
    pub fn mode(&self) -> Tensor<B, 5> {
        self.mean.clone()
    }

    /// `std = exp(logvar / 2)`.
    pub fn std(&self) -> Tensor<B, 5> {
        self.logvar.clone().div_scalar(2.0).exp()
    }
}

/// The WFVAE video autoencoder (4x temporal, 8x spatial compression).
#[derive(Module, Debug)]
pub struct WFVAEModel<B: Backend> {
    pub encoder: Encoder<B>,
    pub decoder: Decoder<B>,
    #[module(skip)]
    latent_dim: usize,
}

/// Frames of the first encode chunk (the causal frame 0 alone), as upstream.
const FIRST_CHUNK: usize = 1;

impl<B: Backend> WFVAEModel<B> {
    /// Builds the module tree (use [`WFVAEModelConfig::init`], which validates the config first).
    pub(crate) fn new(config: &WFVAEModelConfig, device: &B::Device) -> Self {
        WFVAEModel {
            encoder: Encoder::new(config, device),
            decoder: Decoder::new(config, device),
            latent_dim: config.latent_dim,
        }
    }

    /// Latent channels.
    pub fn latent_dim(&self) -> usize {
        self.latent_dim
    }

    /// Official names of the built-in, non-trainable Haar kernels (a checkpoint may omit them).
    pub fn fixed_tensor_names(&self) -> BTreeSet<String> {
        self.official_tensors().into_iter().map(|(n, _)| n).filter(|n| n.contains("wavelet_transform")).collect()
    }

    /// Every tensor of the model as `(official name, shape)`, in module order.
    pub fn official_tensors(&self) -> Vec<(String, Vec<usize>)> {
        self.collect(None, Some(remap::burn_to_official()), remap::SKIP_ENUM_VARIANTS)
            .into_iter()
            .map(|s| (s.full_path(), s.shape.to_vec()))
            .collect()
    }

    /// Loads official weights strictly (see [`crate::checkpoint::load_module`]).
    pub fn load_official(&mut self, checkpoint: &Checkpoint, options: LoadOptions) -> Result<LoadReport> {
        let fixed = self.fixed_tensor_names();
        load_module(self, checkpoint, &fixed, options)
    }

    fn check_video(x: &Tensor<B, 5>) -> Result<()> {
        let [_, c, t, h, w] = x.dims();
        if c != 3 {
            return Err(Error::input("x", format!("must have 3 channels [b, 3, t, h, w], found shape {:?}", x.dims())));
        }
        if t % 4 != 1 {
            return Err(Error::input("x", format!("frame count must be 4n+1 (1, 5, 9, ...), found {t}")));
        }
        if h % 8 != 0 || w % 8 != 0 || h == 0 || w == 0 {
            return Err(Error::input("x", format!("height and width must be positive multiples of 8, found {h}x{w}")));
        }
        Ok(())
    }

    fn check_latent(&self, z: &Tensor<B, 5>) -> Result<()> {
        let [_, c, t, _, _] = z.dims();
        if c != self.latent_dim {
            return Err(Error::input(
                "z",
                format!("must have {} channels, found shape {:?}", self.latent_dim, z.dims()),
            ));
        }
        if t == 0 {
            return Err(Error::input("z", "must have at least one latent frame"));
        }
        Ok(())
    }

    /// Video `[b, 3, 4n+1, h, w]` in [-1, 1] -> posterior over `[b, latent, n+1, h/8, w/8]`.
    pub fn encode(&self, x: Tensor<B, 5>) -> Result<Posterior<B>> {
        Self::check_video(&x)?;
        Ok(Posterior::from_moments(self.encoder.forward(x)))
    }

    /// Encodes one temporal chunk, returning the raw moments `[mean | logvar]` of its latents.
    /// The first chunk must be frame 0 alone; later chunks a positive multiple of 4 frames.
    pub fn encode_chunk(&self, x: Tensor<B, 5>, cache: &mut TemporalCache<B>) -> Result<Tensor<B, 5>> {
        let t = frames(&x);
        let ok = if cache.is_first() { t == FIRST_CHUNK } else { t > 0 && t.is_multiple_of(4) };
        if !ok {
            let rule = if cache.is_first() {
                "the first chunk must be frame 0 alone".to_string()
            } else {
                format!("chunks after the first must hold a positive multiple of 4 frames, found {t}")
            };
            return Err(Error::input("x", rule));
        }
        let h = self.encoder.forward_cached(x, cache);
        cache.chunks_done += 1;
        Ok(h)
    }

    /// Encodes in temporal chunks `[0, 1), [1, 1 + t_chunk), ...` (upstream `t_chunk_enc` = 8);
    /// lossless with respect to [`Self::encode`].
    pub fn encode_chunked(&self, x: Tensor<B, 5>, t_chunk: usize) -> Result<Posterior<B>> {
        Self::check_video(&x)?;
        if t_chunk == 0 || !t_chunk.is_multiple_of(4) {
            return Err(Error::input("t_chunk", format!("must be a positive multiple of 4, found {t_chunk}")));
        }
        let t = frames(&x);
        let mut cache = TemporalCache::new();
        let mut outs = Vec::new();
        let mut start = 0;
        while start < t {
            let len = if start == 0 { FIRST_CHUNK } else { t_chunk.min(t - start) };
            let _span = tracing::trace_span!("wfvae_encode_chunk", start, len).entered();
            outs.push(self.encode_chunk(x.clone().narrow(2, start, len), &mut cache)?);
            start += len;
        }
        Ok(Posterior::from_moments(Tensor::cat(outs, 2)))
    }

    /// Latent `[b, latent, t, h, w]` -> video `[b, 3, 4t - 3, 8h, 8w]`.
    pub fn decode(&self, z: Tensor<B, 5>) -> Result<Tensor<B, 5>> {
        self.check_latent(&z)?;
        Ok(self.decoder.forward(z))
    }

    /// Decodes one temporal chunk of latents with explicit caches; `last` marks the final chunk.
    ///
    /// The time interpolation in `up2` runs one upsampled frame (two video frames) behind, so
    /// for chunks of `n` latents the frame counts are: latent 0 alone -> 1; the first chunk
    /// holding latents after 0 -> `4n - 2`; later chunks -> `4n`; the last chunk 2 more (its
    /// flush). Concatenated, the chunks equal [`Self::decode`]. The last chunk clears the cache.
    pub fn decode_chunk(&self, z: Tensor<B, 5>, cache: &mut TemporalCache<B>, last: bool) -> Result<Tensor<B, 5>> {
        self.check_latent(&z)?;
        cache.closing = last;
        let video = self.decoder.forward_cached(z, cache);
        cache.chunks_done += 1;
        cache.closing = false;
        if last {
            // The clip is complete: nothing of it may leak into a next stream.
            cache.tails.clear();
        }
        Ok(video)
    }

    /// Decodes in latent chunks `[0, 1), [1, 1 + t_chunk), ...` (upstream `t_chunk_dec` = 2);
    /// equal to [`Self::decode`] for every latent count (unlike upstream `tile_decode`).
    pub fn decode_chunked(&self, z: Tensor<B, 5>, t_chunk: usize) -> Result<Tensor<B, 5>> {
        self.check_latent(&z)?;
        if t_chunk == 0 {
            return Err(Error::input("t_chunk", "must be positive"));
        }
        let t = frames(&z);
        let mut cache = TemporalCache::new();
        let mut outs = Vec::new();
        let mut start = 0;
        while start < t {
            let len = if start == 0 { 1 } else { t_chunk.min(t - start) };
            let _span = tracing::trace_span!("wfvae_decode_chunk", start, len).entered();
            outs.push(self.decode_chunk(z.clone().narrow(2, start, len), &mut cache, start + len == t)?);
            start += len;
        }
        Ok(Tensor::cat(outs, 2))
    }
}
