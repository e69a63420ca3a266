//! Options every model export takes.

use std::path::PathBuf;

use osp_graphs::{AttentionKind, Precision};

use crate::bundle::DEFAULT_EXTERNAL_DATA_THRESHOLD;

/// How to export a model.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportOptions {
    pub attention: AttentionKind,
    pub precision: Precision,
    /// Initializers larger than this many bytes go to the `.onnx.data` file.
    pub external_data_threshold_bytes: usize,
    /// The checkpoint the weights were read from (recorded with its SHA-256 in the manifest).
    pub source: Option<PathBuf>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            attention: AttentionKind::OnnxAttention,
            precision: Precision::F32,
            external_data_threshold_bytes: DEFAULT_EXTERNAL_DATA_THRESHOLD,
            source: None,
        }
    }
}
