//! diffusers `PixArtAlphaCombinedTimestepSizeEmbeddings` with `use_additional_conditions=False`
//! (the only form `AdaLayerNormSingle` builds for the v1.3 DiT): the timestep embedding alone.
//!
//! diffusers 0.30.2 `models/embeddings.py::PixArtAlphaCombinedTimestepSizeEmbeddings`.

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::timestep_embedding::{TimestepEmbedding, Timesteps};
use crate::models::autocast::ComputeDType;

/// Timestep -> `[b, d]` conditioning embedding.
#[derive(Module, Debug)]
pub struct PixArtAlphaCombinedTimestepSizeEmbeddings<B: Backend> {
    pub timestep_embedder: TimestepEmbedding<B>,
    #[module(skip)]
    pub time_proj: Timesteps,
}

impl<B: Backend> PixArtAlphaCombinedTimestepSizeEmbeddings<B> {
    pub fn new(embedding_dim: usize, device: &B::Device) -> Self {
        PixArtAlphaCombinedTimestepSizeEmbeddings {
            timestep_embedder: TimestepEmbedding::new(256, embedding_dim, device),
            time_proj: Timesteps { num_channels: 256, flip_sin_to_cos: true, downscale_freq_shift: 0.0 },
        }
    }

    /// `[b]` -> `[b, d]`; the sinusoids in float32, the MLP under autocast `compute`.
    pub fn forward(&self, timestep: Tensor<B, 1>, compute: ComputeDType) -> Tensor<B, 2> {
        self.timestep_embedder.forward(self.time_proj.forward(timestep), compute)
    }
}
