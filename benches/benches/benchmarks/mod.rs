pub mod transformer_block;
