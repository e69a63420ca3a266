//! Subcommands of `osp-train`.

pub mod forward_dit;
