//! WFVAE (`WFVAEModel_D8_4x8x8`), the wavelet-flow causal video autoencoder of Open-Sora-Plan v1.3.
//!
//! Upstream: <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/causalvideovae/model/vae/modeling_wfvae.py>
//! (modules in `.../model/modules/*.py`). Paper: <https://arxiv.org/abs/2411.17459>.
//! Struct fields are named like the PyTorch attributes, so Burn paths are the checkpoint keys.
//!
//! Run: `osp-train forward wfvae-encode --config config.json --weights vae.ckpt --inputs x.safetensors --out o.safetensors`

mod attn_block_3d_fix;
mod cache;
mod causal_conv3d;
mod config;
mod conv2d;
mod decoder;
mod downsample;
mod encoder;
mod layer;
mod model;
mod normalize;
mod ops;
mod resnet_block_2d;
mod resnet_block_3d;
mod spatial2x_time2x_3d_downsample;
mod spatial2x_time2x_3d_upsample;
mod upsample;
pub mod wavelet;

pub use attn_block_3d_fix::AttnBlock3DFix;
pub use cache::{DecoderCache, EncoderCache, TemporalCache};
pub use causal_conv3d::CausalConv3d;
pub use config::WFVAEModelConfig;
pub use conv2d::Conv2d;
pub use decoder::{Decoder, DecoderTrunk};
pub use downsample::Downsample;
pub use encoder::Encoder;
pub use layer::Layer;
pub use model::{Posterior, WFVAEModel};
pub use normalize::LayerNorm;
pub use resnet_block_2d::ResnetBlock2D;
pub use resnet_block_3d::ResnetBlock3D;
pub use spatial2x_time2x_3d_downsample::Spatial2xTime2x3DDownsample;
pub use spatial2x_time2x_3d_upsample::Spatial2xTime2x3DUpsample;
pub use upsample::Upsample;
pub use wavelet::{
    HaarWaveletTransform2D, HaarWaveletTransform3D, InverseHaarWaveletTransform2D, InverseHaarWaveletTransform3D,
};
