//! `FeedForward` (diffusers 0.30.2 `models/attention.py`) with the `GELU` input projection
//! (`models/activations.py`): `net = [GELU(dim -> 4 dim), Dropout, Linear(4 dim -> dim)]`.
//!
//! Used by the v1.3 DiT blocks: <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/diffusion/opensora_v1_3/modules.py#L382-L389>

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::activation::{gelu, gelu_approximate};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::models::autocast::{self, ComputeDType};

/// diffusers `GELU`: a linear projection followed by GELU (tanh approximation when
/// `activation_fn` is `"gelu-approximate"`).
#[derive(Module, Debug)]
#[allow(clippy::upper_case_acronyms)]
pub struct GELU<B: Backend> {
    pub proj: Linear<B>,
    #[module(skip)]
    pub approximate_tanh: bool,
}

impl<B: Backend> GELU<B> {
    /// The projection runs under autocast `compute`, GELU in float32.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>, compute: ComputeDType) -> Tensor<B, D> {
        let h = autocast::linear(&self.proj, x, compute);
        if self.approximate_tanh {
            gelu_approximate(h)
        } else {
            gelu(h)
        }
    }
}

/// An entry of `net`; variant names are skipped in paths (`ff.net.0.proj`, `ff.net.2`).
#[derive(Module, Debug)]
#[allow(clippy::upper_case_acronyms, clippy::large_enum_variant)]
pub enum FeedForwardLayer<B: Backend> {
    GELU(GELU<B>),
    Dropout(Dropout),
    Linear(Linear<B>),
}

/// Position-wise feed-forward network.
#[derive(Module, Debug)]
pub struct FeedForward<B: Backend> {
    pub net: Vec<FeedForwardLayer<B>>,
}

impl<B: Backend> FeedForward<B> {
    /// `dim -> mult * dim -> dim` (mult 4, `final_dropout` false, as the v1.3 blocks build it).
    pub fn new(dim: usize, dropout: f64, activation_fn: &str, bias: bool, device: &B::Device) -> Self {
        let inner = 4 * dim;
        FeedForward {
            net: vec![
                FeedForwardLayer::GELU(GELU {
                    proj: LinearConfig::new(dim, inner).with_bias(bias).init(device),
                    approximate_tanh: activation_fn == "gelu-approximate",
                }),
                FeedForwardLayer::Dropout(DropoutConfig::new(dropout).init()),
                FeedForwardLayer::Linear(LinearConfig::new(inner, dim).with_bias(bias).init(device)),
            ],
        }
    }

    /// `[b, n, d]` -> `[b, n, d]`, linear layers under autocast `compute`.
    pub fn forward(&self, x: Tensor<B, 3>, compute: ComputeDType) -> Tensor<B, 3> {
        self.net.iter().fold(x, |h, layer| match layer {
            FeedForwardLayer::GELU(m) => m.forward(h, compute),
            FeedForwardLayer::Dropout(m) => m.forward(h),
            FeedForwardLayer::Linear(m) => autocast::linear(m, h, compute),
        })
    }
}
