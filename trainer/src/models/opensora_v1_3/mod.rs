//! `OpenSoraT2V_v1_3` (`OpenSoraT2V_v1_3-2B/122`), the diffusion transformer of Open-Sora-Plan
//! v1.3: patch embedding, 32 adaLN-single blocks with 3D RoPE and Skiparse attention,
//! cross-attention to mT5 states, unpatchify to a v-prediction.
//!
//! Upstream: <https://github.com/PKU-YuanGroup/Open-Sora-Plan/tree/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/diffusion/opensora_v1_3>
//! (diffusers 0.30.2 for `Attention`, `FeedForward`, `AdaLayerNormSingle`,
//! `PixArtAlphaTextProjection`). Report: <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/docs/Report-v1.3.0.md>.
//! Struct fields are named like the PyTorch attributes, so Burn paths are the diffusers keys.
//!
//! Run: `osp-train forward dit --config config.json --weights diffusion_pytorch_model.safetensors.index.json --inputs in.safetensors --out out.safetensors`

mod ada_layer_norm_single;
mod attention;
mod attn_processor;
mod basic_transformer_block;
mod combined_timestep_size_embeddings;
mod config;
mod feed_forward;
mod modeling_opensora;
mod official_shapes;
mod patch_embed_2d;
mod pixart_alpha_text_projection;
mod rope3d;
mod timestep_embedding;

pub use ada_layer_norm_single::AdaLayerNormSingle;
pub use attention::{Attention, AttentionConfig, ToOut};
pub use attn_processor::{OpenSoraAttnProcessor2_0, Skiparse, MASK_BIAS, PAD_BIAS};
pub use basic_transformer_block::{BasicTransformerBlock, BlockInputs};
pub use combined_timestep_size_embeddings::PixArtAlphaCombinedTimestepSizeEmbeddings;
pub use config::{Dims, OpenSoraT2V_v1_3Config, SampleSize};
pub use feed_forward::{FeedForward, FeedForwardLayer, GELU};
pub use modeling_opensora::{ForwardTrace, OpenSoraT2V_v1_3};
pub use official_shapes::official_shapes;
pub use patch_embed_2d::PatchEmbed2D;
pub use pixart_alpha_text_projection::PixArtAlphaTextProjection;
pub use rope3d::{RoPE3D, RopeTables};
pub use timestep_embedding::{TimestepEmbedding, Timesteps};
