//! One lowering file per model.

pub mod big_linear;
pub mod llama;
pub mod mt5;
pub mod opensora_v1_3;
pub mod pipeline;
pub mod transformer_block;
pub mod wfvae;
