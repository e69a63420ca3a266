//! `NLayerDiscriminator3D`: the 3-D PatchGAN discriminator of the WFVAE GAN loss, with upstream
//! `weights_init` (conv weights N(0, 0.02), BatchNorm weight N(1, 0.02) and bias 0).
//!
//! Upstream: <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/causalvideovae/model/losses/discriminator.py>
//! (pix2pix `NLayerDiscriminator` lifted to `Conv3d`). `main` mirrors the `nn.Sequential`: entries
//! without parameters (LeakyReLU) keep their index, so keys are `main.{0,2,3,5,6,...}.*` as upstream.
//!
//! Differences that cannot be mirrored (also in [`crate::remap`]): BatchNorm's
//! `num_batches_tracked` counter is not held (it only matters for `momentum=None`; loading drops
//! it), and Burn updates `running_var` with the biased batch variance where PyTorch uses the
//! unbiased one (running statistics are only read in eval mode, never during training).

use burn::module::{Initializer, Module};
use burn::nn::conv::{Conv3d, Conv3dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, LeakyRelu, LeakyReluConfig, PaddingConfig3d};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{load_module, Checkpoint, LoadOptions, LoadReport};
use crate::error::{Error, Result};

/// Constructor arguments of upstream `NLayerDiscriminator3D` (as `LPIPSWithDiscriminator3D`
/// passes them: `input_nc = disc_in_channels = 3`, `n_layers = disc_num_layers = 4`, `ndf = 64`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NLayerDiscriminator3DConfig {
    /// Channels of the input video.
    pub input_nc: usize,
    /// Filters of the first conv; later convs use `ndf * min(2^n, 8)`.
    pub ndf: usize,
    /// Number of strided conv blocks.
    pub n_layers: usize,
}

impl Default for NLayerDiscriminator3DConfig {
    // https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/causalvideovae/model/losses/perceptual_loss.py#L66-L67
    fn default() -> Self {
        NLayerDiscriminator3DConfig { input_nc: 3, ndf: 64, n_layers: 4 }
    }
}

/// One entry of `main` (variant names are skipped in parameter paths).
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum DiscriminatorLayer<B: Backend> {
    Conv3d(Conv3d<B>),
    BatchNorm3d(BatchNorm<B>),
    LeakyReLU(LeakyRelu),
}

impl<B: Backend> DiscriminatorLayer<B> {
    fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        match self {
            DiscriminatorLayer::Conv3d(m) => crate::models::conv3d::forward(m, x),
            DiscriminatorLayer::BatchNorm3d(m) => m.forward(x),
            DiscriminatorLayer::LeakyReLU(m) => m.forward(x),
        }
    }
}

/// 3-D PatchGAN: video `[b, c, t, h, w]` -> logits `[b, 1, t', h', w']`.
#[derive(Module, Debug)]
pub struct NLayerDiscriminator3D<B: Backend> {
    pub main: Vec<DiscriminatorLayer<B>>,
}

/// `nn.Conv3d(k=3, padding=1)` with upstream `weights_init`: weight N(0, 0.02); the bias (first and
/// last conv only) keeps PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
fn conv3d<B: Backend>(channels: [usize; 2], stride: [usize; 3], bias: bool, device: &B::Device) -> Conv3d<B> {
    let mut conv = Conv3dConfig::new(channels, [3, 3, 3])
        .with_stride(stride)
        .with_padding(PaddingConfig3d::Explicit(1, 1, 1))
        .with_bias(bias)
        .with_initializer(Initializer::Normal { mean: 0.0, std: 0.02 })
        .init::<B>(device);
    if bias {
        let bound = 1.0 / ((channels[0] * 27) as f64).sqrt();
        conv.bias = Some(Initializer::Uniform { min: -bound, max: bound }.init([channels[1]], device));
    }
    conv
}

/// `nn.BatchNorm3d` with upstream `weights_init`: weight N(1, 0.02), bias 0 (eps 1e-5, momentum 0.1).
fn batch_norm<B: Backend>(channels: usize, device: &B::Device) -> BatchNorm<B> {
    let mut bn = BatchNormConfig::new(channels).init::<B>(device);
    bn.gamma = Initializer::Normal { mean: 1.0, std: 0.02 }.init([channels], device);
    bn
}

fn leaky_relu<B: Backend>() -> DiscriminatorLayer<B> {
    DiscriminatorLayer::LeakyReLU(LeakyReluConfig::new().with_negative_slope(0.2).init())
}

impl NLayerDiscriminator3DConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<()> {
        if self.input_nc == 0 || self.ndf == 0 || self.n_layers == 0 {
            return Err(Error::Config(format!(
                "discriminator: `input_nc`, `ndf` and `n_layers` must be positive, found {self:?}"
            )));
        }
        Ok(())
    }

    /// Builds the discriminator with upstream `weights_init`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<NLayerDiscriminator3D<B>> {
        self.validate()?;
        let ndf = self.ndf;
        let mut main =
            vec![DiscriminatorLayer::Conv3d(conv3d([self.input_nc, ndf], [2, 2, 2], true, device)), leaky_relu()];
        let mut nf_mult = 1;
        for n in 1..self.n_layers {
            let nf_mult_prev = nf_mult;
            nf_mult = (1 << n).min(8);
            let stride = [if n == 1 { 2 } else { 1 }, 2, 2];
            main.push(DiscriminatorLayer::Conv3d(conv3d([ndf * nf_mult_prev, ndf * nf_mult], stride, false, device)));
            main.push(DiscriminatorLayer::BatchNorm3d(batch_norm(ndf * nf_mult, device)));
            main.push(leaky_relu());
        }
        let nf_mult_prev = nf_mult;
        let nf_mult = (1usize << self.n_layers.min(3)).min(8);
        main.push(DiscriminatorLayer::Conv3d(conv3d([ndf * nf_mult_prev, ndf * nf_mult], [1, 1, 1], false, device)));
        main.push(DiscriminatorLayer::BatchNorm3d(batch_norm(ndf * nf_mult, device)));
        main.push(leaky_relu());
        main.push(DiscriminatorLayer::Conv3d(conv3d([ndf * nf_mult, 1], [1, 1, 1], true, device)));
        Ok(NLayerDiscriminator3D { main })
    }
}

/// Whether an official key is a BatchNorm step counter that Burn does not hold.
pub(crate) fn is_num_batches_tracked(name: &str) -> bool {
    name.ends_with(".num_batches_tracked") || name == "num_batches_tracked"
}

impl<B: Backend> NLayerDiscriminator3D<B> {
    /// Video `[b, c, t, h, w]` -> patch logits `[b, 1, t', h', w']`. BatchNorm uses batch
    /// statistics (and updates its running ones) on an autodiff backend, running statistics otherwise.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        self.main.iter().fold(x, |h, layer| layer.forward(h))
    }

    /// Checks that a video of shape `[b, c, t, h, w]` gives every BatchNorm more than one value per
    /// channel (PyTorch refuses such a batch in training; here it would silently zero the output).
    pub fn check_input(&self, dims: [usize; 5]) -> Result<()> {
        let [b, _, mut t, mut h, mut w] = dims;
        for layer in &self.main {
            match layer {
                DiscriminatorLayer::Conv3d(conv) => {
                    let [st, sh, sw] = conv.stride;
                    let out = |n: usize, s: usize| (n + 2).saturating_sub(3) / s + 1;
                    (t, h, w) = (out(t, st), out(h, sh), out(w, sw));
                }
                DiscriminatorLayer::BatchNorm3d(_) if b * t * h * w < 2 => {
                    return Err(Error::input(
                        "x",
                        format!(
                            "the discriminator's BatchNorm needs more than one value per channel: shape {dims:?} \
                             reaches [{b}, _, {t}, {h}, {w}]; use a larger batch, clip or frame size"
                        ),
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Loads an official `NLayerDiscriminator3D` state dict strictly (keys `main.*`);
    /// `num_batches_tracked` counters are dropped (see the module doc).
    pub fn load_official(&mut self, checkpoint: &Checkpoint, options: LoadOptions) -> Result<LoadReport> {
        let mut checkpoint = checkpoint.map_names(|n| (!is_num_batches_tracked(n)).then(|| n.to_string()))?;
        checkpoint.source.push_str(" (num_batches_tracked dropped)");
        load_module(self, &checkpoint, &Default::default(), options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::store::ModuleSnapshot;

    type B = NdArray<f32>;

    #[test]
    fn upstream_layout_and_output_shape() {
        let device = Default::default();
        let d = NLayerDiscriminator3DConfig::default().init::<B>(&device).unwrap();
        let names: Vec<(String, Vec<usize>)> = d
            .collect(None, Some(crate::remap::burn_to_official()), crate::remap::SKIP_ENUM_VARIANTS)
            .into_iter()
            .map(|s| (s.full_path(), s.shape.to_vec()))
            .collect();
        let get = |n: &str| names.iter().find(|(k, _)| k == n).map(|(_, s)| s.clone());
        // The official layout (input_nc 3, ndf 64, n_layers 4): ARCH §5.1.
        assert_eq!(get("main.0.weight"), Some(vec![64, 3, 3, 3, 3]));
        assert_eq!(get("main.0.bias"), Some(vec![64]));
        assert_eq!(get("main.2.weight"), Some(vec![128, 64, 3, 3, 3]));
        assert_eq!(get("main.2.bias"), None);
        assert_eq!(get("main.3.weight"), Some(vec![128]));
        assert_eq!(get("main.3.running_var"), Some(vec![128]));
        assert_eq!(get("main.5.weight"), Some(vec![256, 128, 3, 3, 3]));
        assert_eq!(get("main.8.weight"), Some(vec![512, 256, 3, 3, 3]));
        assert_eq!(get("main.11.weight"), Some(vec![512, 512, 3, 3, 3]));
        assert_eq!(get("main.12.bias"), Some(vec![512]));
        assert_eq!(get("main.14.weight"), Some(vec![1, 512, 3, 3, 3]));
        assert_eq!(get("main.14.bias"), Some(vec![1]));
        // 6 convs (2 with bias) + 4 BatchNorms with 4 tensors each.
        assert_eq!(names.len(), 6 + 2 + 4 * 4);

        let small = NLayerDiscriminator3DConfig { input_nc: 3, ndf: 4, n_layers: 4 }.init::<B>(&device).unwrap();
        let x = Tensor::<B, 5>::zeros([2, 3, 9, 32, 32], &device);
        // t: 9 -s2-> 5 -s2-> 3 -> 3 -> 3 -> 3 -> 3; h: 32 -> 16 -> 8 -> 4 -> 2 -> 2 -> 2.
        assert_eq!(small.forward(x).dims(), [2, 1, 3, 2, 2]);
    }

    #[test]
    fn init_statistics_follow_weights_init() {
        let device = Default::default();
        let d = NLayerDiscriminator3DConfig::default().init::<B>(&device).unwrap();
        let DiscriminatorLayer::Conv3d(conv) = &d.main[11] else { panic!("main.11 should be a conv") };
        let w = conv.weight.val().into_data().to_vec::<f32>().unwrap();
        let n = w.len() as f64;
        let mean = w.iter().map(|&v| v as f64).sum::<f64>() / n;
        let std = (w.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!(mean.abs() < 1e-3 && (std - 0.02).abs() < 1e-3, "conv weight N(0, 0.02): mean {mean}, std {std}");
        let DiscriminatorLayer::BatchNorm3d(bn) = &d.main[3] else { panic!("main.3 should be a BatchNorm") };
        let g = bn.gamma.val().into_data().to_vec::<f32>().unwrap();
        let gm = g.iter().map(|&v| v as f64).sum::<f64>() / g.len() as f64;
        assert!((gm - 1.0).abs() < 0.01, "BatchNorm weight N(1, 0.02): mean {gm}");
        assert!(bn.beta.val().into_data().to_vec::<f32>().unwrap().iter().all(|&v| v == 0.0));
    }

    #[test]
    fn batches_too_small_for_batch_norm_are_rejected() {
        let d =
            NLayerDiscriminator3DConfig { input_nc: 3, ndf: 2, n_layers: 4 }.init::<B>(&Default::default()).unwrap();
        // One 16x16 frame reaches 1x1x1 before the last BatchNorm.
        let err = d.check_input([1, 3, 1, 16, 16]).unwrap_err();
        assert!(err.to_string().contains("more than one value per channel"), "{err}");
        assert!(d.check_input([2, 3, 1, 16, 16]).is_ok());
        assert!(d.check_input([1, 3, 5, 32, 32]).is_ok());
    }

    #[test]
    fn zero_layers_is_rejected() {
        let err = NLayerDiscriminator3DConfig { n_layers: 0, ..Default::default() }.init::<B>(&Default::default());
        assert!(matches!(err, Err(Error::Config(_))));
    }
}
