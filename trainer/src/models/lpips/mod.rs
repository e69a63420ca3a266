//! LPIPS (learned perceptual image patch similarity) with a VGG16 feature network, as used by the
//! WFVAE perceptual loss and for evaluation.
//!
//! Upstream: <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/causalvideovae/model/losses/lpips.py>
//! (the taming-transformers copy of <https://github.com/richzhang/PerceptualSimilarity>, v0.1 "vgg").
//! Paper: <https://arxiv.org/abs/1801.03924>.
//!
//! `d(x, y) = sum_k mean_hw( w_k · (n(f_k(s(x))) - n(f_k(s(y))))^2 )` with `s` the scaling layer
//! (`(x - shift) / scale`, inputs in [-1, 1]), `f_k` the VGG16 activations `relu1_2, relu2_2,
//! relu3_3, relu4_3, relu5_3`, `n` the unit-norm over channels (`+1e-10`), `w_k` the 1x1 `lin{k}`
//! weights. Upstream holds it in eval mode (`LPIPS().eval()`), so `lin{k}`'s dropout never fires.
//!
//! Weights: no file is downloaded. The backbone comes from a user-given torchvision `vgg16`
//! state dict (`features.{0,2,5,...}.{weight,bias}`; `classifier.*` is ignored), the linear layers
//! from the LPIPS v0.1 file (`lin{k}.model.1.weight`, e.g. `../shared/reference/assets/lpips_v0.1_vgg.*`).
//! The backbone is held flat as torchvision's `features` (`net.features.N`); upstream state dicts
//! name it by slice (`net.slice{1..5}.N`) and are renamed on load ([`crate::remap`]).

use std::collections::BTreeSet;
use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Dropout, DropoutConfig, PaddingConfig2d, Relu};
use burn::store::ModuleSnapshot;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{load_module, Checkpoint, LoadOptions, LoadReport};
use crate::error::{Error, Result};
use crate::remap;

/// `ScalingLayer.shift` (ImageNet mean mapped to [-1, 1]).
pub const SHIFT: [f32; 3] = [-0.030, -0.088, -0.188];
/// `ScalingLayer.scale` (ImageNet std mapped to [-1, 1]).
pub const SCALE: [f32; 3] = [0.458, 0.448, 0.450];
/// Indices in `features` of the ReLUs whose outputs are compared (`relu1_2 ... relu5_3`).
pub const TAPS: [usize; 5] = [3, 8, 15, 22, 29];
/// Entries of torchvision `vgg16.features` that LPIPS runs (the final max-pool, index 30, is not used).
const N_FEATURES: usize = 30;
/// Smallest height and width: the fifth stage sees the input after four 2x2 max-pools.
pub const MIN_SIZE: usize = 16;

/// LPIPS configuration: `chns`, the VGG16 stage widths (upstream `self.chns`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LPIPSConfig {
    pub chns: [usize; 5],
}

impl Default for LPIPSConfig {
    // https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/causalvideovae/model/losses/lpips.py#L15
    fn default() -> Self {
        LPIPSConfig { chns: [64, 128, 256, 512, 512] }
    }
}

/// `ScalingLayer`: fixed buffers `shift`, `scale` `[1, 3, 1, 1]`.
#[derive(Module, Debug)]
pub struct ScalingLayer<B: Backend> {
    pub shift: Param<Tensor<B, 4>>,
    pub scale: Param<Tensor<B, 4>>,
}

impl<B: Backend> ScalingLayer<B> {
    fn new(device: &B::Device) -> Self {
        let buffer = |v: [f32; 3]| {
            Param::from_tensor(Tensor::from_data(TensorData::new(v.to_vec(), [1, 3, 1, 1]), device))
                .set_require_grad(false)
        };
        ScalingLayer { shift: buffer(SHIFT), scale: buffer(SCALE) }
    }

    /// `(x - shift) / scale`, `[n, 3, h, w]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        (x - self.shift.val()) / self.scale.val()
    }
}

/// One entry of torchvision `vgg16.features` (variant names are skipped in parameter paths).
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum VggLayer<B: Backend> {
    Conv2d(Conv2d<B>),
    ReLU(Relu),
    MaxPool2d(MaxPool2d),
}

/// The VGG16 convolutional trunk (torchvision `vgg16().features[:30]`).
#[derive(Module, Debug)]
pub struct Vgg16<B: Backend> {
    pub features: Vec<VggLayer<B>>,
}

impl<B: Backend> Vgg16<B> {
    fn new(chns: [usize; 5], device: &B::Device) -> Self {
        let mut features = Vec::with_capacity(N_FEATURES);
        let mut c_in = 3;
        for (stage, (&width, convs)) in chns.iter().zip([2, 2, 3, 3, 3]).enumerate() {
            if stage > 0 {
                features.push(VggLayer::MaxPool2d(MaxPool2dConfig::new([2, 2]).with_strides([2, 2]).init()));
            }
            for _ in 0..convs {
                let conv = Conv2dConfig::new([c_in, width], [3, 3])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .init(device);
                features.push(VggLayer::Conv2d(conv));
                features.push(VggLayer::ReLU(Relu::new()));
                c_in = width;
            }
        }
        debug_assert_eq!(features.len(), N_FEATURES);
        Vgg16 { features }
    }

    /// The five tapped activations `relu1_2 ... relu5_3` of `[n, 3, h, w]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> [Tensor<B, 4>; 5] {
        let mut outs = Vec::with_capacity(5);
        let mut h = x;
        for (i, layer) in self.features.iter().enumerate() {
            h = match layer {
                VggLayer::Conv2d(m) => m.forward(h),
                VggLayer::ReLU(m) => m.forward(h),
                VggLayer::MaxPool2d(m) => m.forward(h),
            };
            if TAPS.contains(&i) {
                outs.push(h.clone());
            }
        }
        outs.try_into().expect("VGG16 should have five taps")
    }
}

/// One entry of `NetLinLayer.model` (`[Dropout, Conv2d]`).
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum LinEntry<B: Backend> {
    Dropout(Dropout),
    Conv2d(Conv2d<B>),
}

/// `NetLinLayer`: `model = [Dropout, Conv2d(c, 1, 1, bias=False)]`, key `model.1.weight`.
#[derive(Module, Debug)]
pub struct NetLinLayer<B: Backend> {
    pub model: Vec<LinEntry<B>>,
}

impl<B: Backend> NetLinLayer<B> {
    /// Random weights are drawn non-negative, as LPIPS training keeps them (`clamp_weights`), so
    /// that an untrained LPIPS is still a (pseudo-)distance.
    fn new(channels: usize, device: &B::Device) -> Self {
        let bound = 1.0 / (channels as f64).sqrt();
        let conv = Conv2dConfig::new([channels, 1], [1, 1])
            .with_bias(false)
            .with_initializer(burn::module::Initializer::Uniform { min: 0.0, max: bound })
            .init(device);
        NetLinLayer { model: vec![LinEntry::Dropout(DropoutConfig::new(0.5).init()), LinEntry::Conv2d(conv)] }
    }

    /// The 1x1 conv alone (eval mode: the dropout is the identity).
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        self.model.iter().fold(x, |h, entry| match entry {
            LinEntry::Dropout(_) => h,
            LinEntry::Conv2d(conv) => conv.forward(h),
        })
    }
}

/// The LPIPS network (upstream class `LPIPS`); all parameters are frozen.
#[derive(Module, Debug)]
pub struct LPIPS<B: Backend> {
    pub scaling_layer: ScalingLayer<B>,
    pub net: Vgg16<B>,
    pub lin0: NetLinLayer<B>,
    pub lin1: NetLinLayer<B>,
    pub lin2: NetLinLayer<B>,
    pub lin3: NetLinLayer<B>,
    pub lin4: NetLinLayer<B>,
}

impl LPIPSConfig {
    /// Builds LPIPS with random weights (load real ones with [`LPIPS::load_pretrained`]); every
    /// parameter is frozen.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<LPIPS<B>> {
        if self.chns.contains(&0) {
            return Err(Error::Config(format!("LPIPS: every `chns` width must be positive, found {:?}", self.chns)));
        }
        let lin = |k: usize| NetLinLayer::new(self.chns[k], device);
        let model = LPIPS {
            scaling_layer: ScalingLayer::new(device),
            net: Vgg16::new(self.chns, device),
            lin0: lin(0),
            lin1: lin(1),
            lin2: lin(2),
            lin3: lin(3),
            lin4: lin(4),
        };
        Ok(model.no_grad())
    }
}

/// `x / (||x||_channels + 1e-10)` (upstream `normalize_tensor`).
fn normalize_tensor<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let norm = x.clone().square().sum_dim(1).sqrt();
    x / norm.add_scalar(1e-10)
}

/// Upstream LPIPS key -> key of this port: `net.slice{k}.N.*` -> `net.features.N.*`.
pub fn official_to_port_name(name: &str) -> String {
    match name.strip_prefix("net.slice") {
        Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit()) => match rest.split_once('.') {
            Some((_, tail)) => format!("net.features.{tail}"),
            None => name.to_string(),
        },
        _ => name.to_string(),
    }
}

impl<B: Backend> LPIPS<B> {
    /// The five unit-normalised feature maps of images `[n, 3, h, w]` in [-1, 1].
    pub fn features(&self, x: Tensor<B, 4>) -> [Tensor<B, 4>; 5] {
        self.net.forward(self.scaling_layer.forward(x)).map(normalize_tensor)
    }

    /// LPIPS between two feature sets of [`Self::features`]: `[n, 1, 1, 1]`.
    pub fn distance_from_features(&self, f0: &[Tensor<B, 4>; 5], f1: &[Tensor<B, 4>; 5]) -> Tensor<B, 4> {
        let lins = [&self.lin0, &self.lin1, &self.lin2, &self.lin3, &self.lin4];
        let mut total: Option<Tensor<B, 4>> = None;
        for k in 0..5 {
            let diff = (f0[k].clone() - f1[k].clone()).square();
            let res = lins[k].forward(diff).mean_dim(2).mean_dim(3);
            total = Some(match total {
                Some(t) => t + res,
                None => res,
            });
        }
        total.expect("five layers")
    }

    /// Upstream `LPIPS.forward(input, target)`: images `[n, 3, h, w]` in [-1, 1] -> `[n, 1, 1, 1]`.
    /// Differentiable with respect to both inputs on an autodiff backend.
    pub fn forward(&self, input: Tensor<B, 4>, target: Tensor<B, 4>) -> Tensor<B, 4> {
        let f0 = self.features(input);
        let f1 = self.features(target);
        self.distance_from_features(&f0, &f1)
    }

    /// Evaluation API: the LPIPS distance of each image pair, `a`, `b` `[n, 3, h, w]` in [-1, 1]
    /// (convert 8-bit frames with `x / 127.5 - 1`). Checks the inputs; returns `n` values.
    pub fn lpips(&self, a: Tensor<B, 4>, b: Tensor<B, 4>) -> Result<Vec<f32>> {
        let [n, c, h, w] = a.dims();
        if b.dims() != a.dims() {
            return Err(Error::input("b", format!("must have the shape of `a` {:?}, found {:?}", a.dims(), b.dims())));
        }
        if c != 3 {
            return Err(Error::input("a", format!("must be RGB images [n, 3, h, w], found {:?}", a.dims())));
        }
        if h < MIN_SIZE || w < MIN_SIZE || n == 0 {
            return Err(Error::input(
                "a",
                format!("needs at least one image of at least {MIN_SIZE}x{MIN_SIZE} pixels, found {:?}", a.dims()),
            ));
        }
        let d = self.forward(a, b).reshape([n]);
        d.into_data()
            .convert::<f32>()
            .to_vec::<f32>()
            .map_err(|e| Error::input("a", format!("LPIPS result could not be read: {e:?}")))
    }

    /// [`Self::lpips`] of two videos `[b, 3, t, h, w]`, frame by frame: `b * t` values in
    /// `(batch, frame)` order (upstream validation folds time into the batch the same way).
    pub fn lpips_video(&self, a: Tensor<B, 5>, b: Tensor<B, 5>) -> Result<Vec<f32>> {
        if b.dims() != a.dims() {
            return Err(Error::input("b", format!("must have the shape of `a` {:?}, found {:?}", a.dims(), b.dims())));
        }
        self.lpips(frames_as_images(a), frames_as_images(b))
    }

    /// Names of the fixed (non-learned) tensors: the scaling layer buffers.
    pub fn fixed_tensor_names() -> BTreeSet<String> {
        ["scaling_layer.shift", "scaling_layer.scale"].into_iter().map(str::to_string).collect()
    }

    /// Loads an upstream `LPIPS` state dict strictly (`net.slice{k}.N.*`, `lin{k}.model.1.weight`,
    /// optionally `scaling_layer.*`, which must then equal the built-in buffers).
    pub fn load_official(&mut self, checkpoint: &Checkpoint, options: LoadOptions) -> Result<LoadReport> {
        let renamed = checkpoint.map_names(|n| Some(official_to_port_name(n)))?;
        load_module(self, &renamed, &Self::fixed_tensor_names(), options)
    }

    /// Loads the backbone from a torchvision `vgg16` state dict (`features.N.*`; `classifier.*`
    /// ignored) and the linear layers from an LPIPS v0.1 file (`lin{k}.model.1.weight`), strictly:
    /// any other tensor, a missing one or a shape mismatch is an error naming it.
    pub fn load_pretrained(&mut self, vgg: &Checkpoint, lin: &Checkpoint) -> Result<LoadReport> {
        let mut combined = vgg.map_names(|n| {
            if n.starts_with("classifier.") {
                None
            } else if n.starts_with("features.") {
                Some(format!("net.{n}"))
            } else {
                Some(format!("<vgg file>.{n}"))
            }
        })?;
        let lin =
            lin.map_names(
                |n| if n.starts_with("lin") { Some(n.to_string()) } else { Some(format!("<lin file>.{n}")) },
            )?;
        for name in lin.names().map(str::to_string).collect::<Vec<_>>() {
            let snapshot = lin.get(&name).expect("name listed by the checkpoint").clone();
            combined.insert(name, snapshot);
        }
        combined.source = format!("{} + {}", vgg.path.display(), lin.path.display());
        load_module(self, &combined, &Self::fixed_tensor_names(), LoadOptions::default())
    }

    /// Builds LPIPS from a torchvision `vgg16` file and an LPIPS v0.1 linear-weights file (any
    /// format [`Checkpoint::open`] reads).
    pub fn from_files(vgg: impl AsRef<Path>, lin: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let mut model = LPIPSConfig::default().init::<B>(device)?;
        model.load_pretrained(&Checkpoint::open(vgg)?, &Checkpoint::open(lin)?)?;
        Ok(model)
    }

    /// Every tensor as `(official name, shape)` with this port's backbone names (`net.features.N`).
    pub fn official_tensors(&self) -> Vec<(String, Vec<usize>)> {
        self.collect(None, Some(remap::burn_to_official()), remap::SKIP_ENUM_VARIANTS)
            .into_iter()
            .map(|s| (s.full_path(), s.shape.to_vec()))
            .collect()
    }
}

/// `[b, c, t, h, w]` -> `[b * t, c, h, w]` (upstream `rearrange(x, "b c t h w -> (b t) c h w")`).
pub fn frames_as_images<B: Backend>(x: Tensor<B, 5>) -> Tensor<B, 4> {
    let [b, c, t, h, w] = x.dims();
    x.permute([0, 2, 1, 3, 4]).reshape([b * t, c, h, w])
}

#[cfg(test)]
// The f64 reference indexes like the formulas it checks.
#[allow(clippy::needless_range_loop)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::tensor::Distribution;
    use osp_graphs::Approx;

    type B = NdArray<f32>;

    const TINY: [usize; 5] = [4, 8, 8, 16, 16];

    fn vec_of<const D: usize>(t: Tensor<B, D>) -> Vec<f64> {
        t.into_data().convert::<f64>().to_vec::<f64>().unwrap()
    }

    /// Plain-f64 feature map `[c][h][w]` of one image.
    type Map = Vec<Vec<Vec<f64>>>;

    fn conv3x3(x: &Map, w: &[f64], b: &[f64]) -> Map {
        let (c_in, h, wd) = (x.len(), x[0].len(), x[0][0].len());
        let c_out = b.len();
        let mut y = vec![vec![vec![0.0; wd]; h]; c_out];
        for o in 0..c_out {
            for i in 0..h {
                for j in 0..wd {
                    let mut acc = b[o];
                    for c in 0..c_in {
                        for di in 0..3 {
                            for dj in 0..3 {
                                let (ii, jj) = (i as isize + di as isize - 1, j as isize + dj as isize - 1);
                                if ii >= 0 && jj >= 0 && (ii as usize) < h && (jj as usize) < wd {
                                    acc += w[((o * c_in + c) * 3 + di) * 3 + dj] * x[c][ii as usize][jj as usize];
                                }
                            }
                        }
                    }
                    y[o][i][j] = acc.max(0.0); // every VGG conv is followed by a ReLU
                }
            }
        }
        y
    }

    fn maxpool2(x: &Map) -> Map {
        x.iter()
            .map(|ch| {
                (0..ch.len() / 2)
                    .map(|i| {
                        (0..ch[0].len() / 2)
                            .map(|j| {
                                ch[2 * i][2 * j]
                                    .max(ch[2 * i][2 * j + 1])
                                    .max(ch[2 * i + 1][2 * j])
                                    .max(ch[2 * i + 1][2 * j + 1])
                            })
                            .collect()
                    })
                    .collect()
            })
            .collect()
    }

    /// LPIPS of one image pair, written from the formula in the module doc.
    fn reference(model: &LPIPS<B>, a: &Map, b: &Map) -> f64 {
        let convs: Vec<(Vec<f64>, Vec<f64>)> = model
            .net
            .features
            .iter()
            .filter_map(|l| match l {
                VggLayer::Conv2d(c) => Some((vec_of(c.weight.val()), vec_of(c.bias.as_ref().unwrap().val()))),
                _ => None,
            })
            .collect();
        let lins: Vec<Vec<f64>> = [&model.lin0, &model.lin1, &model.lin2, &model.lin3, &model.lin4]
            .iter()
            .map(|l| match &l.model[1] {
                LinEntry::Conv2d(c) => vec_of(c.weight.val()),
                LinEntry::Dropout(_) => unreachable!("model.1 is the conv"),
            })
            .collect();
        let taps = |img: &Map| -> Vec<Map> {
            let mut h: Map = img
                .iter()
                .enumerate()
                .map(|(c, ch)| {
                    ch.iter().map(|row| row.iter().map(|v| (v - SHIFT[c] as f64) / SCALE[c] as f64).collect()).collect()
                })
                .collect();
            let mut outs = Vec::new();
            let mut k = 0;
            for (stage, convs_in_stage) in [2, 2, 3, 3, 3].into_iter().enumerate() {
                if stage > 0 {
                    h = maxpool2(&h);
                }
                for _ in 0..convs_in_stage {
                    h = conv3x3(&h, &convs[k].0, &convs[k].1);
                    k += 1;
                }
                outs.push(h.clone());
            }
            outs
        };
        let normalize = |m: &Map| -> Map {
            let (c, h, w) = (m.len(), m[0].len(), m[0][0].len());
            let mut out = m.clone();
            for i in 0..h {
                for j in 0..w {
                    let norm = (0..c).map(|k| m[k][i][j] * m[k][i][j]).sum::<f64>().sqrt() + 1e-10;
                    for k in 0..c {
                        out[k][i][j] = m[k][i][j] / norm;
                    }
                }
            }
            out
        };
        let (fa, fb) = (taps(a), taps(b));
        let mut total = 0.0;
        for k in 0..5 {
            let (na, nb) = (normalize(&fa[k]), normalize(&fb[k]));
            let (c, h, w) = (na.len(), na[0].len(), na[0][0].len());
            let mut sum = 0.0;
            for i in 0..h {
                for j in 0..w {
                    sum += (0..c).map(|ch| lins[k][ch] * (na[ch][i][j] - nb[ch][i][j]).powi(2)).sum::<f64>();
                }
            }
            total += sum / (h * w) as f64;
        }
        total
    }

    fn image_maps(x: &Tensor<B, 4>) -> Vec<Map> {
        let [n, c, h, w] = x.dims();
        let v = vec_of(x.clone());
        (0..n)
            .map(|i| {
                (0..c)
                    .map(|k| (0..h).map(|y| (0..w).map(|z| v[((i * c + k) * h + y) * w + z]).collect()).collect())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn matches_an_independent_f64_reference() {
        let device = Default::default();
        let model = LPIPSConfig { chns: TINY }.init::<B>(&device).unwrap();
        let a = Tensor::<B, 4>::random([2, 3, 16, 16], Distribution::Uniform(-1.0, 1.0), &device);
        let b = Tensor::<B, 4>::random([2, 3, 16, 16], Distribution::Uniform(-1.0, 1.0), &device);
        let ours = model.lpips(a.clone(), b.clone()).unwrap();
        let (ma, mb) = (image_maps(&a), image_maps(&b));
        let want: Vec<f64> = (0..2).map(|i| reference(&model, &ma[i], &mb[i])).collect();
        assert!(want.iter().all(|v| *v > 0.0), "{want:?}");
        let c = Approx::Approximate.compare(&ours, &want);
        assert!(c.ok(), "LPIPS vs f64 reference: {c} ({ours:?} vs {want:?})");
    }

    #[test]
    fn identical_inputs_give_zero_and_the_distance_is_symmetric() {
        let device = Default::default();
        let model = LPIPSConfig { chns: TINY }.init::<B>(&device).unwrap();
        let a = Tensor::<B, 4>::random([3, 3, 16, 24], Distribution::Uniform(-1.0, 1.0), &device);
        let b = Tensor::<B, 4>::random([3, 3, 16, 24], Distribution::Uniform(-1.0, 1.0), &device);
        assert_eq!(model.lpips(a.clone(), a.clone()).unwrap(), vec![0.0; 3]);
        let ab = model.lpips(a.clone(), b.clone()).unwrap();
        assert_eq!(ab, model.lpips(b, a).unwrap());
        assert!(ab.iter().all(|v| *v > 0.0));
    }

    #[test]
    fn video_api_folds_frames_into_the_batch() {
        let device = Default::default();
        let model = LPIPSConfig { chns: TINY }.init::<B>(&device).unwrap();
        let a = Tensor::<B, 5>::random([2, 3, 3, 16, 16], Distribution::Uniform(-1.0, 1.0), &device);
        let b = Tensor::<B, 5>::random([2, 3, 3, 16, 16], Distribution::Uniform(-1.0, 1.0), &device);
        let per_frame = model.lpips_video(a.clone(), b.clone()).unwrap();
        assert_eq!(per_frame.len(), 6);
        // (batch 1, frame 2) is the 6th value.
        let single = model
            .lpips(a.narrow(0, 1, 1).narrow(2, 2, 1).squeeze_dim(2), b.narrow(0, 1, 1).narrow(2, 2, 1).squeeze_dim(2))
            .unwrap();
        let c = Approx::Close.compare(&per_frame[5..], &single);
        assert!(c.ok(), "{c}");
    }

    #[test]
    fn bad_inputs_are_named() {
        let device = Default::default();
        let model = LPIPSConfig { chns: TINY }.init::<B>(&device).unwrap();
        let small = Tensor::<B, 4>::zeros([1, 3, 8, 8], &device);
        let err = model.lpips(small.clone(), small).unwrap_err();
        assert!(err.to_string().contains("at least 16x16"), "{err}");
        let a = Tensor::<B, 4>::zeros([1, 3, 16, 16], &device);
        let err = model.lpips(a.clone(), Tensor::zeros([1, 3, 16, 32], &device)).unwrap_err();
        assert!(matches!(&err, Error::InvalidInput { name, .. } if name == "b"), "{err}");
        let gray = Tensor::<B, 4>::zeros([1, 1, 16, 16], &device);
        assert!(model.lpips(gray.clone(), gray).is_err());
    }

    #[test]
    fn upstream_slice_names_map_to_features() {
        assert_eq!(official_to_port_name("net.slice1.0.weight"), "net.features.0.weight");
        assert_eq!(official_to_port_name("net.slice5.28.bias"), "net.features.28.bias");
        assert_eq!(official_to_port_name("lin0.model.1.weight"), "lin0.model.1.weight");
        assert_eq!(official_to_port_name("scaling_layer.shift"), "scaling_layer.shift");
    }

    #[test]
    fn layout_is_torchvision_vgg16() {
        let model = LPIPSConfig::default().init::<B>(&Default::default()).unwrap();
        let names = model.official_tensors();
        let conv_idx = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28];
        for i in conv_idx {
            assert!(names.iter().any(|(n, _)| n == &format!("net.features.{i}.weight")), "features.{i}");
        }
        let get = |n: &str| names.iter().find(|(k, _)| k == n).map(|(_, s)| s.clone());
        assert_eq!(get("net.features.28.weight"), Some(vec![512, 512, 3, 3]));
        assert_eq!(get("lin2.model.1.weight"), Some(vec![1, 256, 1, 1]));
        assert_eq!(get("scaling_layer.shift"), Some(vec![1, 3, 1, 1]));
        // 13 convs x 2 + 5 lins + 2 buffers.
        assert_eq!(names.len(), 26 + 5 + 2);
    }
}
