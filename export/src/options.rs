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
    /// Which op forms the graphs are written with where there is an exact choice.
    pub lowering: Lowering,
}

/// Which op forms the exporter writes where several compute the same function exactly in f32
/// (the same sums in another order: `Approx::Close` between the two):
///
/// | | `Reference` | `Fast` (default) |
/// |---|---|---|
/// | a video convolution that is stride 1 in time (causal `k x k x k`, per-frame `1 x k x k`, `1 x 1 x 1`) | one 5-D `Conv` (ONNX Runtime: im2col + GEMM) | frames folded into the batch: one 4-D `Conv` `[b*t, c, h, w]` per time tap on the frames that tap reads, summed, bias in the first (ONNX Runtime: its blocked-channel NCHWc kernels) |
/// | GELU (tanh approximation) | `Mul`/`Add`/`Tanh` | ONNX `Gelu` (opset 20, `approximate = "tanh"`), kept in f32 |
/// | `nn.Linear` on `[.., in]` with a bias | `MatMul(x, Transpose(W))` + `Add` | `Reshape` to `[-1, in]`, `Gemm(transB = 1)` with the bias, `Reshape` back (no transposed weight copy) |
///
/// `Reference` is the lowering before issue #17, kept for the invariance tests and A/B benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lowering {
    Reference,
    #[default]
    Fast,
}

impl Lowering {
    pub fn name(self) -> &'static str {
        match self {
            Lowering::Reference => "reference",
            Lowering::Fast => "fast",
        }
    }
}

impl std::fmt::Display for Lowering {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            attention: AttentionKind::OnnxAttention,
            precision: Precision::F32,
            external_data_threshold_bytes: DEFAULT_EXTERNAL_DATA_THRESHOLD,
            source: None,
            lowering: Lowering::default(),
        }
    }
}
