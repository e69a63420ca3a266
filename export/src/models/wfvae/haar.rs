//! The fixed Haar wavelet kernels of WFVAE, built in (ARCH §1.4).
//!
//! Upstream keeps one `[1, 1, 2, 2(, 2)]` kernel per band and applies it channel by channel, with
//! band-major output channels (`channel = band * C + c`). Here the bands of all channels form one
//! dense kernel `[bands * C, C, kt, 2, 2]` with `W[band * C + c, c] = k_band` and zeros elsewhere,
//! so the forward transform is one `Conv` and the inverse (the sum over bands of per-band
//! transposed convolutions) one `ConvTranspose` with the same tensor.
//!
//! Upstream: <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/causalvideovae/model/modules/wavelet.py>

use osp_trainer::models::wfvae::wavelet::{haar2d_kernel_values, haar3d_kernel_values, HAAR2D_BANDS, HAAR3D_BANDS};

use crate::tensor::HostTensor;

fn dense(kernels: &[Vec<f32>], channels: usize, kt: usize) -> HostTensor {
    let per = kernels[0].len();
    let bands = kernels.len();
    let mut w = vec![0.0f32; bands * channels * channels * per];
    for (band, k) in kernels.iter().enumerate() {
        for c in 0..channels {
            let o = band * channels + c;
            let start = (o * channels + c) * per;
            w[start..start + per].copy_from_slice(k);
        }
    }
    HostTensor::from_f32(vec![bands * channels, channels, kt, 2, 2], &w)
        .expect("the dense Haar kernel should match its shape")
}

/// `[8C, C, 2, 2, 2]`: the 3-D transform over `C` channels (forward `Conv`, inverse `ConvTranspose`).
pub(crate) fn dense_3d(channels: usize) -> HostTensor {
    let kernels: Vec<Vec<f32>> = HAAR3D_BANDS.iter().map(|(_, b)| haar3d_kernel_values(*b)).collect();
    dense(&kernels, channels, 2)
}

/// `[4C, C, 1, 2, 2]`: the per-frame 2-D transform over `C` channels.
pub(crate) fn dense_2d(channels: usize) -> HostTensor {
    let kernels: Vec<Vec<f32>> = HAAR2D_BANDS.iter().map(|(_, b)| haar2d_kernel_values(*b)).collect();
    dense(&kernels, channels, 1)
}

/// The built-in value of an official fixed Haar tensor (`...wavelet_transform_in.g_conv.conv.weight`,
/// `...inverse_wavelet_transform_l2.hh`, `...wavelet_transform_l1.ad`), or `None` for other names.
pub(crate) fn official_fixed_tensor(name: &str) -> Option<HostTensor> {
    let parts: Vec<&str> = name.split('.').collect();
    let module = parts.iter().position(|p| p.contains("wavelet_transform"))?;
    let rest = &parts[module + 1..];
    let band = match rest {
        [band] => *band,
        [conv, "conv", "weight"] => conv.strip_suffix("_conv")?,
        _ => return None,
    };
    if let Some((_, bits)) = HAAR3D_BANDS.iter().find(|(n, _)| *n == band) {
        return HostTensor::from_f32(vec![1, 1, 2, 2, 2], &haar3d_kernel_values(*bits)).ok();
    }
    let (_, bits) = HAAR2D_BANDS.iter().find(|(n, _)| *n == band)?;
    HostTensor::from_f32(vec![1, 1, 2, 2], &haar2d_kernel_values(*bits)).ok()
}

#[cfg(test)]
mod tests {
    use osp_trainer::models::wfvae::wavelet::HAAR3D_COEFF;

    use super::*;

    #[test]
    fn dense_kernel_is_band_major() {
        let w = dense_3d(3).to_f32().unwrap();
        // output channel `band * 3 + c` reads input channel `c` only
        let per = 8;
        let at = |o: usize, i: usize| &w[(o * 3 + i) * per..(o * 3 + i + 1) * per];
        assert!(at(3 + 2, 2).iter().all(|v| v.abs() == HAAR3D_COEFF));
        assert!(at(3 + 2, 1).iter().all(|v| *v == 0.0));
        // band `g` (w-sign): k[0][0][1] is negative
        assert_eq!(at(3, 0)[1], -HAAR3D_COEFF);
        assert!(official_fixed_tensor("decoder.inverse_wavelet_transform_l2.gh_v").is_some());
        assert!(official_fixed_tensor("encoder.wavelet_transform_in.h_conv.conv.weight").is_some());
        assert!(official_fixed_tensor("encoder.wavelet_transform_l1.dd").is_some());
        assert!(official_fixed_tensor("encoder.down1.0.weight").is_none());
    }
}
