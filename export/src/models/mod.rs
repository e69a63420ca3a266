//! One lowering file per model.

pub mod big_linear;
pub mod transformer_block;
pub mod wfvae;
