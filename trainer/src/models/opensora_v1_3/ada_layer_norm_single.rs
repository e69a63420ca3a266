//! diffusers `AdaLayerNormSingle` (adaLN-single of PixArt-Alpha): one timestep embedding
//! shared by every block, projected to the 6 modulation vectors.
//!
//! diffusers 0.30.2 `models/normalization.py::AdaLayerNormSingle`; used at
//! <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/diffusion/opensora_v1_3/modeling_opensora.py#L112>.
//! Paper: <https://arxiv.org/abs/2310.00426>.

use burn::module::Module;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::combined_timestep_size_embeddings::PixArtAlphaCombinedTimestepSizeEmbeddings;
use crate::models::autocast::{self, ComputeDType};

/// `emb` (timestep embedder) and `linear` (`d -> 6 d`).
#[derive(Module, Debug)]
pub struct AdaLayerNormSingle<B: Backend> {
    pub emb: PixArtAlphaCombinedTimestepSizeEmbeddings<B>,
    pub linear: Linear<B>,
}

impl<B: Backend> AdaLayerNormSingle<B> {
    pub fn new(embedding_dim: usize, device: &B::Device) -> Self {
        AdaLayerNormSingle {
            emb: PixArtAlphaCombinedTimestepSizeEmbeddings::new(embedding_dim, device),
            linear: LinearConfig::new(embedding_dim, 6 * embedding_dim).init(device),
        }
    }

    /// Timestep `[b]` -> (`linear(silu(e))` `[b, 6 d]`, `embedded_timestep` e `[b, d]`), linear
    /// layers under autocast `compute`.
    pub fn forward(&self, timestep: Tensor<B, 1>, compute: ComputeDType) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let embedded_timestep = self.emb.forward(timestep, compute);
        (autocast::linear(&self.linear, silu(embedded_timestep.clone()), compute), embedded_timestep)
    }
}
