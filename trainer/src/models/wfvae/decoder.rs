//! WFVAE `Decoder`: mirror of the encoder; its extra `E` channels predict the low-frequency
//! wavelet coefficients (`connect_l2`, `connect_l1`) that are added one level up.
//!
//! Upstream: <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/causalvideovae/model/vae/modeling_wfvae.py#L153-L313>

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::cache::TemporalCache;
use super::layer::{sequential, sequential_cached, Layer};
use super::ops::{frames, nonlinearity};
use super::{
    AttnBlock3DFix, CausalConv3d, Conv2d, InverseHaarWaveletTransform2D, InverseHaarWaveletTransform3D, LayerNorm,
    ResnetBlock3D, Spatial2xTime2x3DUpsample, Upsample, WFVAEModelConfig,
};

/// Cache key of the energy-flow frames that wait for the (one frame delayed) main path.
const L2_PENDING: &str = "decoder.inverse_wavelet_transform_l2.pending";

/// The decoder up to its last layer (see [`Decoder::forward_trunk`]).
#[derive(Debug, Clone)]
pub struct DecoderTrunk<B: Backend> {
    /// Input of `conv_out`: `[b, base_channels, 2t - 1, 4h, 4w]` (after `norm_out` and SiLU).
    pub hidden: Tensor<B, 5>,
    /// Inverse 2-D Haar of `l1_coeffs`, added to the first 3 output channels of `conv_out`.
    pub l1: Tensor<B, 5>,
    /// Predicted level-1 coefficients (after the in-place `+ l2`), `[b, 12, 2t - 1, 4h, 4w]`.
    pub l1_coeffs: Tensor<B, 5>,
    /// Predicted level-2 coefficients, `[b, 24, t, h, w]`.
    pub l2_coeffs: Tensor<B, 5>,
}

#[derive(Module, Debug)]
pub struct Decoder<B: Backend> {
    pub conv_in: CausalConv3d<B>,
    pub mid: Vec<Layer<B>>,
    pub up2: Vec<Layer<B>>,
    pub up1: Vec<Layer<B>>,
    pub layer: Vec<Layer<B>>,
    pub connect_l1: Vec<Layer<B>>,
    pub connect_l2: Vec<Layer<B>>,
    pub norm_out: LayerNorm<B>,
    pub conv_out: Conv2d<B>,
    pub inverse_wavelet_transform_out: InverseHaarWaveletTransform3D<B>,
    pub inverse_wavelet_transform_l1: InverseHaarWaveletTransform2D<B>,
    pub inverse_wavelet_transform_l2: InverseHaarWaveletTransform3D<B>,
    /// `energy_flow_hidden_size`: the trailing channels that carry the energy flow.
    #[module(skip)]
    energy_flow_hidden_size: usize,
}

impl<B: Backend> Decoder<B> {
    pub fn new(config: &WFVAEModelConfig, device: &B::Device) -> Self {
        let c = config.base_channels;
        let e = config.decoder_energy_flow_hidden_size;
        let nr = config.decoder_num_resblocks;
        let res = |i: usize, o: usize| Layer::ResnetBlock3D(ResnetBlock3D::new(i, o, device));
        let mut mid = vec![res(4 * c, 4 * c)];
        if config.use_attention {
            mid.push(Layer::AttnBlock3DFix(AttnBlock3DFix::new(4 * c, device)));
        }
        mid.push(res(4 * c, 4 * c + e));
        let mut up2: Vec<_> = (0..nr).map(|_| res(4 * c, 4 * c)).collect();
        up2.push(Layer::Spatial2xTime2x3DUpsample(Spatial2xTime2x3DUpsample::new(4 * c, 4 * c, device)));
        up2.push(res(4 * c, 4 * c + e));
        let mut up1: Vec<_> = (0..nr).map(|i| res(if i == 0 { 4 * c } else { 2 * c }, 2 * c)).collect();
        up1.push(Layer::Upsample(Upsample::new(2 * c, 2 * c, device)));
        up1.push(res(2 * c, 2 * c));
        let layer = vec![res(2 * c, c), res(c, c)];
        let connect = |out: usize| {
            let mut v: Vec<_> = (0..config.connect_res_layer_num).map(|_| res(e, e)).collect();
            v.push(Layer::Conv2d(Conv2d::new([e, out], 3, 1, 1, device)));
            v
        };
        Decoder {
            conv_in: CausalConv3d::new([config.latent_dim, 4 * c], 3, 1, 1, true, device),
            mid,
            up2,
            up1,
            layer,
            // 12 = 4 bands of the inverse 2-D Haar over 3 channels ("Upsample" l1 block)
            connect_l1: connect(12),
            connect_l2: connect(24),
            norm_out: LayerNorm::new(c, device),
            conv_out: Conv2d::new([c, 24], 3, 1, 1, device),
            inverse_wavelet_transform_out: InverseHaarWaveletTransform3D::new(device),
            inverse_wavelet_transform_l1: InverseHaarWaveletTransform2D::new(device),
            inverse_wavelet_transform_l2: InverseHaarWaveletTransform3D::new(device),
            energy_flow_hidden_size: e,
        }
    }

    /// `(main, energy)`: all channels but the last `E`, and the last `E`.
    fn split_energy(&self, h: Tensor<B, 5>) -> (Tensor<B, 5>, Tensor<B, 5>) {
        let c = h.dims()[1];
        let e = self.energy_flow_hidden_size;
        (h.clone().narrow(1, 0, c - e), h.narrow(1, c - e, e))
    }

    /// `l1_coeffs[:, :3] += l2` (the upstream in-place add).
    fn add_to_first3(x: Tensor<B, 5>, add: Tensor<B, 5>) -> Tensor<B, 5> {
        let c = x.dims()[1];
        let head = x.clone().narrow(1, 0, 3) + add;
        Tensor::cat(vec![head, x.narrow(1, 3, c - 3)], 1)
    }

    /// Latent `[b, latent, t, h, w]` -> video `[b, 3, 4t - 3, 8h, 8w]`.
    pub fn forward(&self, z: Tensor<B, 5>) -> Tensor<B, 5> {
        let parts = self.forward_trunk(z);
        self.forward_head(parts.hidden, parts.l1, self.conv_out.weight.val(), self.conv_out.bias.val())
    }

    /// Everything before the last layer (`conv_out`, upstream `get_last_layer()`), plus the
    /// energy-flow coefficients upstream `Decoder.forward` returns. [`Self::forward_head`] of the
    /// parts with `conv_out`'s own parameters equals [`Self::forward`].
    pub fn forward_trunk(&self, z: Tensor<B, 5>) -> DecoderTrunk<B> {
        let h = sequential(&self.mid, self.conv_in.forward(z));
        let (h, energy) = self.split_energy(h);
        let l2_coeffs = sequential(&self.connect_l2, energy);
        let l2 = self.inverse_wavelet_transform_l2.forward(l2_coeffs.clone(), true);
        let (h, energy) = self.split_energy(sequential(&self.up2, h));
        let l1_coeffs = Self::add_to_first3(sequential(&self.connect_l1, energy), l2);
        let l1 = self.inverse_wavelet_transform_l1.forward(l1_coeffs.clone());
        let h = sequential(&self.layer, sequential(&self.up1, h));
        let hidden = nonlinearity(self.norm_out.forward(h));
        DecoderTrunk { hidden, l1, l1_coeffs, l2_coeffs }
    }

    /// The last layer and the output transform: `IWT3D(conv_out(hidden; weight, bias) + [l1, 0])`.
    /// `weight`/`bias` are passed in so that a trainer can take gradients w.r.t. them alone.
    pub fn forward_head(
        &self,
        hidden: Tensor<B, 5>,
        l1: Tensor<B, 5>,
        weight: Tensor<B, 4>,
        bias: Tensor<B, 1>,
    ) -> Tensor<B, 5> {
        let h = self.conv_out.forward_with(hidden, weight, bias);
        self.inverse_wavelet_transform_out.forward(Self::add_to_first3(h, l1), true)
    }

    /// One temporal chunk of latents; see [`super::WFVAEModel::decode_chunk`].
    pub fn forward_cached(&self, z: Tensor<B, 5>, cache: &mut TemporalCache<B>) -> Tensor<B, 5> {
        let first = cache.is_first();
        let h = self.conv_in.forward_cached(z, "decoder.conv_in", cache);
        let h = sequential_cached(&self.mid, h, "decoder.mid", cache);
        let (h, energy) = self.split_energy(h);
        let l2 = sequential_cached(&self.connect_l2, energy, "decoder.connect_l2", cache);
        let l2 = self.inverse_wavelet_transform_l2.forward(l2, first);
        let l2 = match cache.tails.remove(L2_PENDING) {
            Some(pending) => Tensor::cat(vec![pending, l2], 2),
            None => l2,
        };
        let (h, energy) = self.split_energy(sequential_cached(&self.up2, h, "decoder.up2", cache));
        let l1_coeffs = sequential_cached(&self.connect_l1, energy, "decoder.connect_l1", cache);
        // The time upsampling in `up2` runs one frame behind the energy flow: keep the surplus.
        let (n, available) = (frames(&l1_coeffs), frames(&l2));
        if available > n {
            cache.tails.insert(L2_PENDING.to_string(), l2.clone().narrow(2, n, available - n));
        }
        let l1_coeffs = Self::add_to_first3(l1_coeffs, l2.narrow(2, 0, n));
        let l1 = self.inverse_wavelet_transform_l1.forward(l1_coeffs);
        let h = sequential_cached(&self.up1, h, "decoder.up1", cache);
        let h = sequential_cached(&self.layer, h, "decoder.layer", cache);
        let h = self.conv_out.forward(nonlinearity(self.norm_out.forward(h)));
        self.inverse_wavelet_transform_out.forward(Self::add_to_first3(h, l1), first)
    }
}
