//! Burn ports of the Open-Sora-Plan v1.3 models, one file per upstream class.

pub mod mt5;
