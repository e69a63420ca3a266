//! Burn ports of the Open-Sora-Plan v1.3 models, one file per upstream class.

pub mod autocast;
pub mod conv3d;
pub mod discriminator;
pub mod lpips;
pub mod mt5;
pub mod opensora_v1_3;
pub mod wfvae;
