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

/// How the WFVAE's video values and convolutions are laid out. `Conv3d`, `Folded` and
/// `WinogradF2` agree to `Approx::Close`; `WinogradF4` is approximate (`Approx::Approximate`).
/// Graph inputs, outputs and the streaming `cache_in/out` state are `[b, c, t, h, w]` in every
/// form, and every graph's manifest metadata records the form (`video_conv`).
///
/// `Folded` runs ONNX Runtime's blocked-channel (NCHWc) 2-D convolution kernels instead of its
/// 5-D im2col path, with no layout transposes around the convolutions. It is opt-in: ORT keeps an
/// NCHWc copy of every convolution weight per session beside the shared weight buffer, and the
/// concatenated taps are `kt` times a convolution's input, so the release decode peaked at about
/// 2.4x the RSS of `Conv3d`, and on a quiet 2-core Intel machine it decoded no faster (1.01x,
/// docs/benchmarks.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VideoConv {
    /// Video values `[b, c, t, h, w]`, every convolution one 5-D `Conv`.
    #[default]
    Conv3d,
    /// Video values `[b, t, c, h, w]` (the frames folded into the batch: one reshape from
    /// `[b*t, c, h, w]`); a convolution with `kt` time taps is one 4-D `Conv` on the `kt` shifted
    /// frame slices concatenated on the channel axis, `[b*t, kt*c, h, w]`, with the weight
    /// `[o, c, kt, k, k]` stored as `[o, kt*c, k, k]`. Per-frame ops run as they are; only ops
    /// that mix time (causal padding, time interpolation, the 3-D Haar transforms) slice or
    /// reshape the frame axis.
    Folded,
    /// `Conv3d`, with every 3x3 stride-1 spatial convolution (3x3x3 causal or per-frame 3x3)
    /// written as Winograd `F(2x2, 3x3)`: 16 products per 2 x 2 output pixels instead of 36, the
    /// kernel transformed at export (weights 16/9 their size). It rounds like a direct
    /// convolution. f32 only.
    WinogradF2,
    /// The same with `F(4x4, 3x3)`: 36 products per 4 x 4 pixels instead of 144, weights 4x their
    /// size. Approximate: the transforms (entries up to 8 and down to 1/24) amplify rounding, 7x
    /// the direct convolution's on the release decoder (docs/benchmarks.md). f32 only.
    WinogradF4,
}

impl VideoConv {
    pub fn name(self) -> &'static str {
        match self {
            VideoConv::Conv3d => "conv3d",
            VideoConv::Folded => "folded",
            VideoConv::WinogradF2 => "winograd-f2",
            VideoConv::WinogradF4 => "winograd-f4",
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
/// | DiT skiparse key-padding bias | the attention's bias input | with `--attention auto\|ms`: one more q/k/v channel per head, a bias-free call (`GraphBuilder::attention_key_bias_channel`); other forms: the bias input |
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
