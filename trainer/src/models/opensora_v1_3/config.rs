//! `OpenSoraT2V_v1_3` configuration: the keys of the upstream `config.json` (diffusers
//! `register_to_config` of `OpenSoraT2V_v1_3.__init__`), with the constructor defaults.

use std::path::Path;

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::attn_processor::Skiparse;
use super::OpenSoraT2V_v1_3;
use crate::error::{Error, Result};

/// `sample_size_{t,h,w}`: the release config stores `[h, w]` lists, the constructor types them as
/// ints. Neither affects the weights or the forward pass.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SampleSize {
    Scalar(usize),
    List(Vec<usize>),
}

/// The keys of `OpenSoraT2V_v1_3.__init__`. Missing keys take the upstream constructor defaults;
/// unknown keys (`_class_name`, `_diffusers_version`, `_comment`) are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[allow(non_camel_case_types)]
pub struct OpenSoraT2V_v1_3Config {
    pub num_attention_heads: usize,
    pub attention_head_dim: usize,
    pub in_channels: Option<usize>,
    /// `None` means `in_channels`.
    pub out_channels: Option<usize>,
    pub num_layers: usize,
    pub dropout: f64,
    /// Input width of `attn2.to_k`/`to_v`; `None` means the hidden size.
    pub cross_attention_dim: Option<usize>,
    pub attention_bias: bool,
    pub sample_size_h: Option<SampleSize>,
    pub sample_size_w: Option<SampleSize>,
    pub sample_size_t: Option<SampleSize>,
    pub patch_size: Option<usize>,
    pub patch_size_t: Option<usize>,
    pub activation_fn: String,
    pub only_cross_attention: bool,
    pub double_self_attention: bool,
    /// Only read by diffusers' non-SDPA processors; the OpenSora processor ignores it.
    pub upcast_attention: bool,
    pub norm_elementwise_affine: bool,
    pub norm_eps: f64,
    pub caption_channels: Option<usize>,
    pub interpolation_scale_h: f64,
    pub interpolation_scale_w: f64,
    pub interpolation_scale_t: f64,
    /// Skiparse in layers `1 < i < 30` (see [`OpenSoraT2V_v1_3Config::attention_kind`]).
    pub sparse1d: bool,
    /// Skiparse factor; must be 4 with `sparse1d`. Without `sparse1d` every layer is dense and
    /// the value is unused (upstream would still index its mask table with it).
    pub sparse_n: usize,
}

impl Default for OpenSoraT2V_v1_3Config {
    // https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/diffusion/opensora_v1_3/modeling_opensora.py#L30-L57
    fn default() -> Self {
        OpenSoraT2V_v1_3Config {
            num_attention_heads: 16,
            attention_head_dim: 88,
            in_channels: None,
            out_channels: None,
            num_layers: 1,
            dropout: 0.0,
            cross_attention_dim: None,
            attention_bias: true,
            sample_size_h: None,
            sample_size_w: None,
            sample_size_t: None,
            patch_size: None,
            patch_size_t: None,
            activation_fn: "geglu".into(),
            only_cross_attention: false,
            double_self_attention: false,
            upcast_attention: false,
            norm_elementwise_affine: false,
            norm_eps: 1e-6,
            caption_channels: None,
            interpolation_scale_h: 1.0,
            interpolation_scale_w: 1.0,
            interpolation_scale_t: 1.0,
            sparse1d: false,
            sparse_n: 2,
        }
    }
}

/// Sizes derived from a validated configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    /// `num_attention_heads * attention_head_dim`.
    pub hidden_size: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    pub patch_size: usize,
    pub patch_size_t: usize,
    pub caption_channels: usize,
    pub cross_attention_dim: usize,
}

impl OpenSoraT2V_v1_3Config {
    /// `OpenSoraT2V_v1_3-2B/122` as the release scripts build it (8-channel WFVAE latents,
    /// `--sparse1d --sparse_n 4`, interpolation scales 1.0), with the 93x352x640 latent sizes.
    // https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/diffusion/opensora_v1_3/modeling_opensora.py#L291-L296
    // https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/train/train_t2v_diffusers.py#L278-L290
    // https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/scripts/text_condition/gpu/train_t2v_v1_3.sh#L23-L59
    pub fn v1_3_2b_122() -> Self {
        OpenSoraT2V_v1_3Config {
            num_attention_heads: 24,
            attention_head_dim: 96,
            in_channels: Some(8),
            out_channels: Some(8),
            num_layers: 32,
            cross_attention_dim: Some(2304),
            sample_size_h: Some(SampleSize::List(vec![44, 80])),
            sample_size_w: Some(SampleSize::List(vec![44, 80])),
            sample_size_t: Some(SampleSize::Scalar(24)),
            patch_size: Some(2),
            patch_size_t: Some(1),
            activation_fn: "gelu-approximate".into(),
            caption_channels: Some(4096),
            sparse1d: true,
            sparse_n: 4,
            ..Self::default()
        }
    }

    /// Reads an upstream `config.json`.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::Json { path: path.to_path_buf(), source: e })
    }

    /// The attention layout of layer `layer`. Upstream hard-codes the skiparse range for the
    /// 32-layer model: layers `1 < i < 30` follow `sparse1d`, odd ones grouped, whatever
    /// `num_layers` is (so a 4-layer model has layers 2 and 3 sparse).
    // https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/diffusion/opensora_v1_3/modeling_opensora.py#L100-L102
    // https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/diffusion/opensora_v1_3/modeling_opensora.py#L193-L196
    pub fn attention_kind(&self, layer: usize) -> Skiparse {
        if self.sparse1d && 1 < layer && layer < 30 {
            if layer % 2 == 1 {
                Skiparse::Group(self.sparse_n)
            } else {
                Skiparse::Single(self.sparse_n)
            }
        } else {
            Skiparse::Full
        }
    }

    /// Checks the configuration against what the upstream forward pass can run, and derives the
    /// sizes.
    pub fn validate(&self) -> Result<Dims> {
        let bad = |msg: String| Err(Error::Config(msg));
        let required = |key: &str, v: Option<usize>| -> Result<usize> {
            match v {
                Some(0) => Err(Error::Config(format!("`{key}` must be positive"))),
                Some(v) => Ok(v),
                None => Err(Error::Config(format!("`{key}` must be set (the upstream default None cannot run)"))),
            }
        };
        if self.num_attention_heads == 0 || self.attention_head_dim == 0 || self.num_layers == 0 {
            return bad("`num_attention_heads`, `attention_head_dim` and `num_layers` must be positive".into());
        }
        // RoPE3D splits each head into three equal [t | y | x] chunks rotated by halves.
        if !self.attention_head_dim.is_multiple_of(6) {
            return bad(format!(
                "`attention_head_dim` = {} must be a multiple of 6: RoPE3D splits it into 3 chunks of even size",
                self.attention_head_dim
            ));
        }
        let hidden_size = self.num_attention_heads * self.attention_head_dim;
        let in_channels = required("in_channels", self.in_channels)?;
        let out_channels = match self.out_channels {
            Some(0) => return bad("`out_channels` must be positive".into()),
            Some(c) => c,
            None => in_channels,
        };
        let patch_size = required("patch_size", self.patch_size)?;
        let patch_size_t = required("patch_size_t", self.patch_size_t)?;
        if patch_size_t != 1 {
            // PatchEmbed2D never patches time, so upstream's token count and its frame count
            // (`(t-1)//patch_size_t+1`) disagree for any other value.
            return bad(format!(
                "`patch_size_t` = {patch_size_t} is not supported: upstream PatchEmbed2D only runs with 1"
            ));
        }
        let caption_channels = required("caption_channels", self.caption_channels)?;
        // caption_projection outputs hidden_size features, which attn2.to_k/to_v consume.
        let cross_attention_dim = self.cross_attention_dim.unwrap_or(hidden_size);
        if cross_attention_dim != hidden_size && !self.double_self_attention {
            return bad(format!(
                "`cross_attention_dim` = {cross_attention_dim} must equal num_attention_heads * attention_head_dim = \
                 {hidden_size}: cross-attention reads the projected caption of that width"
            ));
        }
        if self.only_cross_attention {
            return bad("`only_cross_attention` = true is not supported (the v1.3 release uses false)".into());
        }
        if !matches!(self.activation_fn.as_str(), "gelu" | "gelu-approximate") {
            return bad(format!(
                "`activation_fn` = {:?} is not supported; this port implements \"gelu\" and \"gelu-approximate\" \
                 (the release uses \"gelu-approximate\")",
                self.activation_fn
            ));
        }
        if !(self.dropout >= 0.0 && self.dropout < 1.0) {
            return bad(format!("`dropout` = {} must be in [0, 1)", self.dropout));
        }
        if self.norm_eps.is_nan() || self.norm_eps <= 0.0 {
            return bad(format!("`norm_eps` = {} must be positive", self.norm_eps));
        }
        let scales = [
            ("interpolation_scale_t", self.interpolation_scale_t),
            ("interpolation_scale_h", self.interpolation_scale_h),
            ("interpolation_scale_w", self.interpolation_scale_w),
        ];
        for (key, v) in scales {
            if !(v > 0.0 && v.is_finite()) {
                return bad(format!("`{key}` = {v} must be positive"));
            }
        }
        // Upstream prepares skiparse masks only for n in {1, 4} (modeling_opensora.py#L189).
        if self.sparse1d && self.sparse_n != 4 && self.num_layers > 2 {
            return bad(format!(
                "`sparse_n` = {} is not supported with `sparse1d`: upstream prepares masks for sparse_n = 4 only",
                self.sparse_n
            ));
        }
        Ok(Dims {
            hidden_size,
            in_channels,
            out_channels,
            patch_size,
            patch_size_t,
            caption_channels,
            cross_attention_dim: if self.double_self_attention { hidden_size } else { cross_attention_dim },
        })
    }

    /// Builds the model with freshly (lazily) initialised weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<OpenSoraT2V_v1_3<B>> {
        let dims = self.validate()?;
        Ok(OpenSoraT2V_v1_3::new(self, dims, device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_json_equals_preset() {
        let path =
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/reference/configs/opensora_t2v_v1_3_2b_config.json");
        let config = OpenSoraT2V_v1_3Config::from_json_file(path).expect("release config should parse");
        assert_eq!(config, OpenSoraT2V_v1_3Config::v1_3_2b_122());
        let dims = config.validate().expect("release config should be valid");
        assert_eq!(dims.hidden_size, 2304);
    }

    #[test]
    fn layer_rule_is_hard_coded_for_32_layers() {
        let config = OpenSoraT2V_v1_3Config::v1_3_2b_122();
        let kinds: Vec<Skiparse> = (0..32).map(|i| config.attention_kind(i)).collect();
        assert_eq!(kinds[0], Skiparse::Full);
        assert_eq!(kinds[1], Skiparse::Full);
        assert_eq!(kinds[2], Skiparse::Single(4));
        assert_eq!(kinds[3], Skiparse::Group(4));
        assert_eq!(kinds[28], Skiparse::Single(4));
        assert_eq!(kinds[29], Skiparse::Group(4));
        assert_eq!(kinds[30], Skiparse::Full);
        assert_eq!(kinds[31], Skiparse::Full);
        let dense = OpenSoraT2V_v1_3Config { sparse1d: false, ..config };
        assert!((0..32).all(|i| dense.attention_kind(i) == Skiparse::Full));
    }

    #[test]
    fn invalid_configs_are_typed_errors() {
        let base = OpenSoraT2V_v1_3Config::v1_3_2b_122();
        let cases = [
            OpenSoraT2V_v1_3Config { sparse_n: 2, ..base.clone() },
            OpenSoraT2V_v1_3Config { attention_head_dim: 95, ..base.clone() },
            OpenSoraT2V_v1_3Config { in_channels: None, ..base.clone() },
            OpenSoraT2V_v1_3Config { patch_size_t: Some(2), ..base.clone() },
            OpenSoraT2V_v1_3Config { cross_attention_dim: Some(4096), ..base.clone() },
            OpenSoraT2V_v1_3Config { activation_fn: "geglu".into(), ..base.clone() },
            OpenSoraT2V_v1_3Config { caption_channels: Some(0), ..base.clone() },
        ];
        for c in cases {
            match c.validate() {
                Err(Error::Config(msg)) => assert!(!msg.is_empty()),
                other => panic!("expected a config error for {c:?}, got {other:?}"),
            }
        }
    }
}
