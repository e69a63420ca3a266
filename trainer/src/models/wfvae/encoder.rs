//! WFVAE `Encoder`: 3-D Haar input, two downsampling stages fed by the energy-flow pyramid
//! (`connect_l1`, `connect_l2`), attention mid block, `[mean | logvar]` output.
//!
//! Upstream: <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/causalvideovae/model/vae/modeling_wfvae.py#L34-L150>

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::cache::TemporalCache;
use super::layer::{sequential, sequential_cached, Layer};
use super::ops::nonlinearity;
use super::{
    AttnBlock3DFix, CausalConv3d, Conv2d, Downsample, HaarWaveletTransform2D, HaarWaveletTransform3D, LayerNorm,
    ResnetBlock2D, ResnetBlock3D, Spatial2xTime2x3DDownsample, WFVAEModelConfig,
};

#[derive(Module, Debug)]
pub struct Encoder<B: Backend> {
    pub down1: Vec<Layer<B>>,
    pub down2: Vec<Layer<B>>,
    pub connect_l1: Conv2d<B>,
    pub connect_l2: Conv2d<B>,
    pub mid: Vec<Layer<B>>,
    pub norm_out: LayerNorm<B>,
    pub conv_out: CausalConv3d<B>,
    pub wavelet_transform_in: HaarWaveletTransform3D<B>,
    pub wavelet_transform_l1: HaarWaveletTransform2D<B>,
    pub wavelet_transform_l2: HaarWaveletTransform3D<B>,
}

impl<B: Backend> Encoder<B> {
    pub fn new(config: &WFVAEModelConfig, device: &B::Device) -> Self {
        let c = config.base_channels;
        let e = config.encoder_energy_flow_hidden_size;
        let nr = config.encoder_num_resblocks;
        let mut down1 = vec![Layer::Conv2d(Conv2d::new([24, c], 3, 1, 1, device))];
        down1.extend((0..nr).map(|_| Layer::ResnetBlock2D(ResnetBlock2D::new(c, c, device))));
        down1.push(Layer::Downsample(Downsample::new(c, c, device)));
        let mut down2 = vec![Layer::Conv2d(Conv2d::new([c + e, 2 * c], 3, 1, 1, device))];
        down2.extend((0..nr).map(|_| Layer::ResnetBlock3D(ResnetBlock3D::new(2 * c, 2 * c, device))));
        down2.push(Layer::Spatial2xTime2x3DDownsample(Spatial2xTime2x3DDownsample::new(2 * c, 2 * c, device)));
        let mut mid = vec![Layer::ResnetBlock3D(ResnetBlock3D::new(2 * c + e, 4 * c, device))];
        if config.use_attention {
            mid.push(Layer::AttnBlock3DFix(AttnBlock3DFix::new(4 * c, device)));
        }
        mid.push(Layer::ResnetBlock3D(ResnetBlock3D::new(4 * c, 4 * c, device)));
        Encoder {
            down1,
            down2,
            // 12 = 4 bands of the 2-D Haar over the 3 LLL channels ("Downsample" l1 block)
            connect_l1: Conv2d::new([12, e], 3, 1, 1, device),
            connect_l2: Conv2d::new([24, e], 3, 1, 1, device),
            mid,
            norm_out: LayerNorm::new(4 * c, device),
            conv_out: CausalConv3d::new([4 * c, 2 * config.latent_dim], 3, 1, 1, true, device),
            wavelet_transform_in: HaarWaveletTransform3D::new(device),
            wavelet_transform_l1: HaarWaveletTransform2D::new(device),
            wavelet_transform_l2: HaarWaveletTransform3D::new(device),
        }
    }

    /// Video `[b, 3, t, h, w]` -> `[b, 2*latent, (t-1)/4 + 1, h/8, w/8]` (`[mean | logvar]`, unclamped).
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        self.forward_with_coeffs(x).0
    }

    /// [`Self::forward`] plus the energy-flow wavelet coefficients `(l1_coeffs, l2_coeffs)`, as
    /// upstream `Encoder.forward` returns them: `l1_coeffs` `[b, 12, (t+1)/2, h/4, w/4]` (2-D Haar
    /// of the input's LLL band), `l2_coeffs` `[b, 24, (t-1)/4 + 1, h/8, w/8]` (3-D Haar of its LL band).
    pub fn forward_with_coeffs(&self, x: Tensor<B, 5>) -> (Tensor<B, 5>, (Tensor<B, 5>, Tensor<B, 5>)) {
        let coeffs = self.wavelet_transform_in.forward(x);
        let l1_coeffs = self.wavelet_transform_l1.forward(coeffs.clone().narrow(1, 0, 3));
        let l1 = self.connect_l1.forward(l1_coeffs.clone());
        let l2_coeffs = self.wavelet_transform_l2.forward(l1_coeffs.clone().narrow(1, 0, 3));
        let l2 = self.connect_l2.forward(l2_coeffs.clone());
        let h = sequential(&self.down1, coeffs);
        let h = sequential(&self.down2, Tensor::cat(vec![h, l1], 1));
        let h = sequential(&self.mid, Tensor::cat(vec![h, l2], 1));
        (self.conv_out.forward(nonlinearity(self.norm_out.forward(h))), (l1_coeffs, l2_coeffs))
    }

    /// One temporal chunk (the first chunk 1 frame, later chunks multiples of 4 frames).
    pub fn forward_cached(&self, x: Tensor<B, 5>, cache: &mut TemporalCache<B>) -> Tensor<B, 5> {
        let coeffs = self.wavelet_transform_in.forward_cached(x, "encoder.wavelet_transform_in", cache);
        let l1_coeffs = self.wavelet_transform_l1.forward(coeffs.clone().narrow(1, 0, 3));
        let l1 = self.connect_l1.forward(l1_coeffs.clone());
        let l2_coeffs =
            self.wavelet_transform_l2.forward_cached(l1_coeffs.narrow(1, 0, 3), "encoder.wavelet_transform_l2", cache);
        let l2 = self.connect_l2.forward(l2_coeffs);
        let h = sequential_cached(&self.down1, coeffs, "encoder.down1", cache);
        let h = sequential_cached(&self.down2, Tensor::cat(vec![h, l1], 1), "encoder.down2", cache);
        let h = sequential_cached(&self.mid, Tensor::cat(vec![h, l2], 1), "encoder.mid", cache);
        self.conv_out.forward_cached(nonlinearity(self.norm_out.forward(h)), "encoder.conv_out", cache)
    }
}
