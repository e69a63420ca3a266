//! Lowering of the WFVAE `Encoder` (whole clip): 3-D Haar input, two downsampling stages fed by
//! the energy-flow pyramid (`connect_l1`, `connect_l2`), attention mid block, `[mean | logvar]`.
//!
//! Upstream: <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/causalvideovae/model/vae/modeling_wfvae.py#L34-L150>

use osp_trainer::models::wfvae::WFVAEModelConfig;

use super::lower::{Lower, V};
use crate::error::Result;

/// Video `[b, 3, t, h, w]` -> moments `[b, 2*latent, (t-1)/4 + 1, h/8, w/8]` (`[mean | logvar]`).
pub fn encoder(l: &mut Lower, cfg: &WFVAEModelConfig, x: &V) -> Result<V> {
    let (c, e, nr) = (cfg.base_channels, cfg.encoder_energy_flow_hidden_size, cfg.encoder_num_resblocks);
    let coeffs = l.haar3d(x)?; // [b, 24, t1, h/2, w/2]
    let lll = l.channels(&coeffs, 0, 3)?;
    let l1_coeffs = l.haar2d(&lll)?; // [b, 12, t1, h/4, w/4]
    let l1 = l.conv2d("encoder.connect_l1", &l1_coeffs, e, 3, 1, (1, 1))?;
    let ll = l.channels(&l1_coeffs, 0, 3)?;
    let l2_coeffs = l.haar3d(&ll)?; // [b, 24, t2, h/8, w/8]
    let l2 = l.conv2d("encoder.connect_l2", &l2_coeffs, e, 3, 1, (1, 1))?;

    let mut h = l.conv2d("encoder.down1.0", &coeffs, c, 3, 1, (1, 1))?;
    for i in 1..=nr {
        h = l.resnet2d(&format!("encoder.down1.{i}"), &h, c)?;
    }
    // Downsample: zero-pad right/bottom by 1, 3x3 stride 2
    h = l.conv2d(&format!("encoder.down1.{}.conv", nr + 1), &h, c, 3, 2, (0, 1))?;
    let h = l.cat(&h, &l1)?;
    let mut h = l.conv2d("encoder.down2.0", &h, 2 * c, 3, 1, (1, 1))?;
    for i in 1..=nr {
        h = l.resnet3d(&format!("encoder.down2.{i}"), &h, 2 * c)?;
    }
    // Spatial2xTime2x3DDownsample: zero-pad right/bottom by 1, causal 3x3x3 stride 2
    h = l.causal_conv(&format!("encoder.down2.{}.conv", nr + 1), &h, 2 * c, 3, 2, (0, 1))?;
    let h = l.cat(&h, &l2)?;
    let mut h = l.resnet3d("encoder.mid.0", &h, 4 * c)?;
    let mut next = 1;
    if cfg.use_attention {
        h = l.attention_block("encoder.mid.1", &h)?;
        next = 2;
    }
    let h = l.resnet3d(&format!("encoder.mid.{next}"), &h, 4 * c)?;
    let h = l.norm("encoder.norm_out", &h)?;
    let h = l.silu(&h)?;
    l.causal_conv("encoder.conv_out", &h, 2 * cfg.latent_dim, 3, 1, (1, 1))
}
