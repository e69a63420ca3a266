//! Per-backend run code: tensor conversion in and out of each engine. Sessions themselves are
//! built in `session.rs`.

pub mod ort;
#[cfg(feature = "tract")]
pub mod tract;
