//! Haar wavelet transforms with fixed kernels: 3-D (causal, `±0.3536`) and 2-D (per frame, `±0.5`),
//! and their inverses (transposed convolutions). Output channels are band-major
//! (`channel = band * C + c`).
//!
//! Upstream: <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/causalvideovae/model/modules/wavelet.py>
//! The kernels are Parameters with `requires_grad=False` (3-D forward) or buffers (others); here
//! they are non-trainable `Param`s built in, so a checkpoint may omit them.

use burn::module::{Module, Param};
use burn::tensor::backend::Backend;
use burn::tensor::module::{conv2d, conv_transpose2d, conv_transpose3d};
use burn::tensor::ops::{ConvOptions, ConvTransposeOptions};
use burn::tensor::{Tensor, TensorData};

use super::cache::TemporalCache;
use super::ops::per_frame;
use super::CausalConv3d;

/// Band names of the 3-D transform in channel order, with their (t, h, w) sign bits.
pub const HAAR3D_BANDS: [(&str, [u8; 3]); 8] = [
    ("h", [0, 0, 0]),
    ("g", [0, 0, 1]),
    ("hh", [0, 1, 0]),
    ("gh", [0, 1, 1]),
    ("h_v", [1, 0, 0]),
    ("g_v", [1, 0, 1]),
    ("hh_v", [1, 1, 0]),
    ("gh_v", [1, 1, 1]),
];

/// Band names of the 2-D transform in channel order, with their (h, w) sign bits.
pub const HAAR2D_BANDS: [(&str, [u8; 2]); 4] = [("aa", [0, 0]), ("ad", [1, 0]), ("da", [0, 1]), ("dd", [1, 1])];

/// The upstream 3-D coefficient (not 1/(2*sqrt 2)).
pub const HAAR3D_COEFF: f32 = 0.3536;
const HAAR2D_COEFF: f32 = 0.5;

fn sign(bits: u32) -> f32 {
    if bits.is_multiple_of(2) {
        1.0
    } else {
        -1.0
    }
}

/// Values of a 3-D band kernel, row-major `[2, 2, 2]`: `k[t][y][x] = 0.3536 * (-1)^(t*bt + y*bh + x*bw)`.
pub fn haar3d_kernel_values(bits: [u8; 3]) -> Vec<f32> {
    let [bt, bh, bw] = bits.map(u32::from);
    let mut values = Vec::with_capacity(8);
    for t in 0..2 {
        for y in 0..2 {
            for x in 0..2 {
                values.push(HAAR3D_COEFF * sign(t * bt + y * bh + x * bw));
            }
        }
    }
    values
}

/// Values of a 2-D band kernel, row-major `[2, 2]`: `k[y][x] = 0.5 * (-1)^(y*bh + x*bw)`.
pub fn haar2d_kernel_values(bits: [u8; 2]) -> Vec<f32> {
    let [bh, bw] = bits.map(u32::from);
    let mut values = Vec::with_capacity(4);
    for y in 0..2 {
        for x in 0..2 {
            values.push(HAAR2D_COEFF * sign(y * bh + x * bw));
        }
    }
    values
}

/// Kernel `[1, 1, 2, 2, 2]` of a 3-D band, non-trainable.
fn haar3d_kernel<B: Backend>(bits: [u8; 3], device: &B::Device) -> Param<Tensor<B, 5>> {
    let values = haar3d_kernel_values(bits);
    Param::from_tensor(Tensor::from_data(TensorData::new(values, [1, 1, 2, 2, 2]), device)).set_require_grad(false)
}

/// Kernel `[1, 1, 2, 2]` of a 2-D band, non-trainable.
fn haar2d_kernel<B: Backend>(bits: [u8; 2], device: &B::Device) -> Param<Tensor<B, 4>> {
    let values = haar2d_kernel_values(bits);
    Param::from_tensor(Tensor::from_data(TensorData::new(values, [1, 1, 2, 2]), device)).set_require_grad(false)
}

fn haar3d_conv<B: Backend>(bits: [u8; 3], device: &B::Device) -> CausalConv3d<B> {
    let mut conv = CausalConv3d::new([1, 1], 2, 2, 0, false, device);
    conv.conv.weight = haar3d_kernel(bits, device);
    conv
}

/// 3-D causal Haar transform: frame 0 is repeated once in front, then 2x2x2 stride 2 per channel.
/// Keys `<name>.{h,g,hh,gh,h_v,g_v,hh_v,gh_v}_conv.conv.weight`.
#[derive(Module, Debug)]
pub struct HaarWaveletTransform3D<B: Backend> {
    pub h_conv: CausalConv3d<B>,
    pub g_conv: CausalConv3d<B>,
    pub hh_conv: CausalConv3d<B>,
    pub gh_conv: CausalConv3d<B>,
    pub h_v_conv: CausalConv3d<B>,
    pub g_v_conv: CausalConv3d<B>,
    pub hh_v_conv: CausalConv3d<B>,
    pub gh_v_conv: CausalConv3d<B>,
}

impl<B: Backend> HaarWaveletTransform3D<B> {
    pub fn new(device: &B::Device) -> Self {
        let c = |i: usize| haar3d_conv(HAAR3D_BANDS[i].1, device);
        HaarWaveletTransform3D {
            h_conv: c(0),
            g_conv: c(1),
            hh_conv: c(2),
            gh_conv: c(3),
            h_v_conv: c(4),
            g_v_conv: c(5),
            hh_v_conv: c(6),
            gh_v_conv: c(7),
        }
    }

    fn bands(&self) -> [&CausalConv3d<B>; 8] {
        [
            &self.h_conv,
            &self.g_conv,
            &self.hh_conv,
            &self.gh_conv,
            &self.h_v_conv,
            &self.g_v_conv,
            &self.hh_v_conv,
            &self.gh_v_conv,
        ]
    }

    /// Applies the band kernels to an already padded `[b, c, t, h, w]` (t even).
    fn transform(&self, padded: Tensor<B, 5>) -> Tensor<B, 5> {
        let [b, c, t, h, w] = padded.dims();
        let x = padded.reshape([b * c, 1, t, h, w]);
        let outs = self
            .bands()
            .iter()
            .map(|band| {
                let y = band.conv.forward(x.clone());
                let [_, _, t2, h2, w2] = y.dims();
                y.reshape([b, c, t2, h2, w2])
            })
            .collect();
        Tensor::cat(outs, 1)
    }

    /// `[b, c, t, h, w]` (t odd, h and w even) -> `[b, 8c, (t + 1)/2, h/2, w/2]`.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        self.transform(super::ops::replicate_first(x, 1))
    }

    /// One temporal chunk; left-over frames (odd chunk lengths) are cached under `path`.
    pub fn forward_cached(&self, x: Tensor<B, 5>, path: &str, cache: &mut TemporalCache<B>) -> Tensor<B, 5> {
        let padded = cache.causal_window(path, x, 1, 2, 2);
        let t = padded.dims()[2];
        // An odd window leaves its last frame in the cache; only complete pairs are transformed.
        let padded = padded.narrow(2, 0, t - t % 2);
        self.transform(padded)
    }
}

/// Inverse 3-D Haar: per band a stride-2 transposed convolution, summed. Keys
/// `<name>.{h,g,hh,gh,h_v,g_v,hh_v,gh_v}` (buffers).
#[derive(Module, Debug)]
pub struct InverseHaarWaveletTransform3D<B: Backend> {
    pub h: Param<Tensor<B, 5>>,
    pub g: Param<Tensor<B, 5>>,
    pub hh: Param<Tensor<B, 5>>,
    pub gh: Param<Tensor<B, 5>>,
    pub h_v: Param<Tensor<B, 5>>,
    pub g_v: Param<Tensor<B, 5>>,
    pub hh_v: Param<Tensor<B, 5>>,
    pub gh_v: Param<Tensor<B, 5>>,
}

impl<B: Backend> InverseHaarWaveletTransform3D<B> {
    pub fn new(device: &B::Device) -> Self {
        let k = |i: usize| haar3d_kernel(HAAR3D_BANDS[i].1, device);
        InverseHaarWaveletTransform3D {
            h: k(0),
            g: k(1),
            hh: k(2),
            gh: k(3),
            h_v: k(4),
            g_v: k(5),
            hh_v: k(6),
            gh_v: k(7),
        }
    }

    /// `[b, 8c, t, h, w]` -> `[b, c, 2t, 2h, 2w]`, dropping the first frame when `drop_first`
    /// (the whole clip, or the first chunk of a chunked decode): `2t - 1` frames then.
    pub fn forward(&self, x: Tensor<B, 5>, drop_first: bool) -> Tensor<B, 5> {
        let [b, c8, t, h, w] = x.dims();
        let c = c8 / 8;
        let kernels = [&self.h, &self.g, &self.hh, &self.gh, &self.h_v, &self.g_v, &self.hh_v, &self.gh_v];
        let options = ConvTransposeOptions::new([2; 3], [0; 3], [0; 3], [1; 3], 1);
        let out = x
            .chunk(8, 1)
            .into_iter()
            .zip(kernels)
            .map(|(band, k)| conv_transpose3d(band.reshape([b * c, 1, t, h, w]), k.val(), None, options.clone()))
            .reduce(|a, z| a + z)
            .expect("8 bands");
        let out = out.reshape([b, c, 2 * t, 2 * h, 2 * w]);
        if drop_first {
            out.narrow(2, 1, 2 * t - 1)
        } else {
            out
        }
    }
}

/// 2-D Haar per frame, 2x2 stride 2 per channel. Keys `<name>.{aa,ad,da,dd}` (buffers).
#[derive(Module, Debug)]
pub struct HaarWaveletTransform2D<B: Backend> {
    pub aa: Param<Tensor<B, 4>>,
    pub ad: Param<Tensor<B, 4>>,
    pub da: Param<Tensor<B, 4>>,
    pub dd: Param<Tensor<B, 4>>,
}

impl<B: Backend> HaarWaveletTransform2D<B> {
    pub fn new(device: &B::Device) -> Self {
        let k = |i: usize| haar2d_kernel(HAAR2D_BANDS[i].1, device);
        HaarWaveletTransform2D { aa: k(0), ad: k(1), da: k(2), dd: k(3) }
    }

    /// `[b, c, t, h, w]` -> `[b, 4c, t, h/2, w/2]`.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let options = ConvOptions::new([2, 2], [0, 0], [1, 1], 1);
        per_frame(x, |z| {
            let [n, c, h, w] = z.dims();
            let z = z.reshape([n * c, 1, h, w]);
            let outs = [&self.aa, &self.ad, &self.da, &self.dd]
                .into_iter()
                .map(|k| conv2d(z.clone(), k.val(), None, options.clone()).reshape([n, c, h / 2, w / 2]))
                .collect();
            Tensor::cat(outs, 1)
        })
    }
}

/// Inverse 2-D Haar per frame (exact). Keys `<name>.{aa,ad,da,dd}` (buffers).
#[derive(Module, Debug)]
pub struct InverseHaarWaveletTransform2D<B: Backend> {
    pub aa: Param<Tensor<B, 4>>,
    pub ad: Param<Tensor<B, 4>>,
    pub da: Param<Tensor<B, 4>>,
    pub dd: Param<Tensor<B, 4>>,
}

impl<B: Backend> InverseHaarWaveletTransform2D<B> {
    pub fn new(device: &B::Device) -> Self {
        let k = |i: usize| haar2d_kernel(HAAR2D_BANDS[i].1, device);
        InverseHaarWaveletTransform2D { aa: k(0), ad: k(1), da: k(2), dd: k(3) }
    }

    /// `[b, 4c, t, h, w]` -> `[b, c, t, 2h, 2w]`.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        let options = ConvTransposeOptions::new([2, 2], [0, 0], [0, 0], [1, 1], 1);
        per_frame(x, |z| {
            let [n, c4, h, w] = z.dims();
            let c = c4 / 4;
            z.chunk(4, 1)
                .into_iter()
                .zip([&self.aa, &self.ad, &self.da, &self.dd])
                .map(|(band, k)| conv_transpose2d(band.reshape([n * c, 1, h, w]), k.val(), None, options.clone()))
                .reduce(|a, y| a + y)
                .expect("4 bands")
                .reshape([n, c, 2 * h, 2 * w])
        })
    }
}
