//! One lowering file per model.

pub mod big_linear;
pub mod mt5;
pub mod transformer_block;
