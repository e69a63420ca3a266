//! Options every model export takes.

use std::path::PathBuf;

use osp_graphs::{AttentionKind, Precision};

use crate::bundle::DEFAULT_EXTERNAL_DATA_THRESHOLD;

/// How to export a model.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportOptions {
    /// The attention form asked for; the graphs are written with [`Self::attention_form`].
    pub attention: AttentionKind,
    pub precision: Precision,
    /// Initializers larger than this many bytes go to the `.onnx.data` file.
    pub external_data_threshold_bytes: usize,
    /// The checkpoint the weights were read from (recorded with its SHA-256 in the manifest).
    pub source: Option<PathBuf>,
    /// Which op forms the graphs are written with where there is an exact choice.
    pub lowering: Lowering,
    /// How the WFVAE's video convolutions are written.
    pub video_conv: VideoConv,
}

/// How a WFVAE video convolution that is stride 1 in time (causal `k x k x k`, per-frame `1 x k x k`,
/// `1 x 1 x 1`) is written. Both compute the same sums in another order (`Approx::Close`).
///
/// `FrameTaps` runs ONNX Runtime's blocked-channel (NCHWc) 2-D kernels instead of its 5-D im2col
/// path: 1.57x less convolution time in a profile of the release whole-clip decode, but the tap
/// slices, reorders and sums cost part of it back, and measured on a shared 2-core machine the
/// release decode (5x32x32 latents) gained 1.10x whole / 1.04x streamed at 2.4x / 2.2x the peak
/// RSS (ORT keeps an NCHWc copy of the weights per session, and the per-tap intermediates), so
/// it is opt-in until a quiet-machine run of `scripts/bench_kernels.py` decides (docs/benchmarks.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VideoConv {
    /// One 5-D `Conv`.
    #[default]
    Conv3d,
    /// Frames folded into the batch: one 4-D `Conv` `[b*t, c, h, w]` per time tap on the frames
    /// that tap reads, the taps summed (bias in the first), then back to `[b, o, t, h, w]`.
    FrameTaps,
}

impl VideoConv {
    pub fn name(self) -> &'static str {
        match self {
            VideoConv::Conv3d => "conv3d",
            VideoConv::FrameTaps => "frame-taps",
        }
    }
}

impl std::fmt::Display for VideoConv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Which op forms the exporter writes where several compute the same function exactly in f32
/// (the same sums in another order: `Approx::Close` between the two):
///
/// | | `Reference` | `Fast` (default) |
/// |---|---|---|
/// | GELU (tanh approximation) | `Mul`/`Add`/`Tanh` | ONNX `Gelu` (opset 20, `approximate = "tanh"`), kept in f32 |
/// | DiT skiparse key-padding bias | the attention's bias input | one more q/k/v channel per head, a bias-free call (`GraphBuilder::attention_key_bias_channel`) |
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

impl ExportOptions {
    /// The attention form the graphs are written with: [`Self::attention`], except that
    /// [`AttentionKind::Auto`] becomes [`AttentionKind::OnnxAttention`] at f16/bf16 (the precisions
    /// of GPU bundles: TensorRT has no `MultiHeadAttention` importer, and ONNX Runtime's CPU
    /// `MultiHeadAttention` is f32 only).
    pub fn attention_form(&self) -> AttentionKind {
        match (self.attention, self.precision) {
            (AttentionKind::Auto, Precision::F16 | Precision::Bf16) => AttentionKind::OnnxAttention,
            (kind, _) => kind,
        }
    }
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            attention: AttentionKind::Auto,
            precision: Precision::F32,
            external_data_threshold_bytes: DEFAULT_EXTERNAL_DATA_THRESHOLD,
            source: None,
            lowering: Lowering::default(),
            video_conv: VideoConv::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_attention_is_onnx_attention_at_half_precision_only() {
        let form =
            |attention, precision| ExportOptions { attention, precision, ..ExportOptions::default() }.attention_form();
        assert_eq!(ExportOptions::default().attention, AttentionKind::Auto);
        for p in [Precision::F32, Precision::Int8] {
            assert_eq!(form(AttentionKind::Auto, p), AttentionKind::Auto);
        }
        for p in [Precision::F16, Precision::Bf16] {
            assert_eq!(form(AttentionKind::Auto, p), AttentionKind::OnnxAttention);
            assert_eq!(form(AttentionKind::MsMultiHeadAttention, p), AttentionKind::MsMultiHeadAttention);
            assert_eq!(form(AttentionKind::Decomposed, p), AttentionKind::Decomposed);
        }
    }
}
