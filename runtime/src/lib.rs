//! osp-runtime: the lean executor of exported osp bundles.

pub mod tokenizer;
