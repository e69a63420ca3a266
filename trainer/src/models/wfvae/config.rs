//! `WFVAEModel` configuration, mirroring the upstream `config.json` keys (typos included:
//! `l1_dowmsample_block`).

use std::path::Path;

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use super::WFVAEModel;
use crate::error::{Error, Result};

/// The keys of the upstream `WFVAEModel.__init__` / `config.json`. Defaults are the upstream
/// constructor defaults; unknown keys (`_class_name`, `_comment`) are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WFVAEModelConfig {
    pub latent_dim: usize,
    pub base_channels: usize,
    pub encoder_num_resblocks: usize,
    pub encoder_energy_flow_hidden_size: usize,
    pub decoder_num_resblocks: usize,
    pub decoder_energy_flow_hidden_size: usize,
    pub attention_type: String,
    pub use_attention: bool,
    pub dropout: f64,
    pub norm_type: String,
    pub t_interpolation: String,
    pub connect_res_layer_num: usize,
    pub scale: Vec<f64>,
    pub shift: Vec<f64>,
    pub l1_dowmsample_block: String,
    pub l1_downsample_wavelet: String,
    pub l2_dowmsample_block: String,
    pub l2_downsample_wavelet: String,
    pub l1_upsample_block: String,
    pub l1_upsample_wavelet: String,
    pub l2_upsample_block: String,
    pub l2_upsample_wavelet: String,
}

impl Default for WFVAEModelConfig {
    // https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/causalvideovae/model/vae/modeling_wfvae.py#L319-L344
    fn default() -> Self {
        WFVAEModelConfig {
            latent_dim: 8,
            base_channels: 128,
            encoder_num_resblocks: 2,
            encoder_energy_flow_hidden_size: 64,
            decoder_num_resblocks: 2,
            decoder_energy_flow_hidden_size: 128,
            attention_type: "AttnBlock3DFix".into(),
            use_attention: true,
            dropout: 0.0,
            norm_type: "groupnorm".into(),
            t_interpolation: "nearest".into(),
            connect_res_layer_num: 1,
            scale: vec![0.18215; 8],
            shift: vec![0.0; 8],
            l1_dowmsample_block: "Downsample".into(),
            l1_downsample_wavelet: "HaarWaveletTransform2D".into(),
            l2_dowmsample_block: "Spatial2xTime2x3DDownsample".into(),
            l2_downsample_wavelet: "HaarWaveletTransform3D".into(),
            l1_upsample_block: "Upsample".into(),
            l1_upsample_wavelet: "InverseHaarWaveletTransform2D".into(),
            l2_upsample_block: "Spatial2xTime2x3DUpsample".into(),
            l2_upsample_wavelet: "InverseHaarWaveletTransform3D".into(),
        }
    }
}

impl WFVAEModelConfig {
    /// The release `WFVAEModel_D8_4x8x8` (Open-Sora-Plan v1.3.0 `vae/config.json`, reconstructed:
    /// latent 8, energy flow 64/128, `connect_res_layer_num` 2, layernorm, trilinear).
    // https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/sample/sample.py
    // (`--ae WFVAEModel_D8_4x8x8`, `ae_channel_config` 8: https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/causalvideovae/__init__.py)
    pub fn d8_4x8x8() -> Self {
        WFVAEModelConfig {
            norm_type: "layernorm".into(),
            t_interpolation: "trilinear".into(),
            connect_res_layer_num: 2,
            ..Self::default()
        }
    }

    /// Reads an upstream `config.json`.
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::Json { path: path.to_path_buf(), source: e })
    }

    /// Checks that the configuration names the blocks this port implements.
    pub fn validate(&self) -> Result<()> {
        let fixed = [
            ("attention_type", &self.attention_type, "AttnBlock3DFix"),
            ("norm_type", &self.norm_type, "layernorm"),
            ("t_interpolation", &self.t_interpolation, "trilinear"),
            ("l1_dowmsample_block", &self.l1_dowmsample_block, "Downsample"),
            ("l1_downsample_wavelet", &self.l1_downsample_wavelet, "HaarWaveletTransform2D"),
            ("l2_dowmsample_block", &self.l2_dowmsample_block, "Spatial2xTime2x3DDownsample"),
            ("l2_downsample_wavelet", &self.l2_downsample_wavelet, "HaarWaveletTransform3D"),
            ("l1_upsample_block", &self.l1_upsample_block, "Upsample"),
            ("l1_upsample_wavelet", &self.l1_upsample_wavelet, "InverseHaarWaveletTransform2D"),
            ("l2_upsample_block", &self.l2_upsample_block, "Spatial2xTime2x3DUpsample"),
            ("l2_upsample_wavelet", &self.l2_upsample_wavelet, "InverseHaarWaveletTransform3D"),
        ];
        for (key, value, supported) in fixed {
            if value != supported {
                return Err(Error::Config(format!(
                    "`{key}` = {value:?} is not supported; this port implements only {supported:?} (the v1.3 release)"
                )));
            }
        }
        let positive = [
            ("latent_dim", self.latent_dim),
            ("base_channels", self.base_channels),
            ("encoder_energy_flow_hidden_size", self.encoder_energy_flow_hidden_size),
            ("decoder_energy_flow_hidden_size", self.decoder_energy_flow_hidden_size),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(Error::Config(format!("`{key}` must be positive")));
            }
        }
        if self.dropout != 0.0 {
            return Err(Error::Config(format!("`dropout` = {} is not supported (inference port: 0.0)", self.dropout)));
        }
        for (key, v) in [("scale", &self.scale), ("shift", &self.shift)] {
            if v.len() != self.latent_dim {
                return Err(Error::Config(format!(
                    "`{key}` has {} values, `latent_dim` is {}",
                    v.len(),
                    self.latent_dim
                )));
            }
        }
        Ok(())
    }

    /// Builds the model with freshly initialised weights (Haar kernels at their fixed values).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<WFVAEModel<B>> {
        self.validate()?;
        Ok(WFVAEModel::new(self, device))
    }
}
