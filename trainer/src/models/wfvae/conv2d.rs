//! `Conv2d` applied frame by frame to video tensors (upstream `modules/conv.py::Conv2d`,
//! which folds time into the batch).
//!
//! Upstream: <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/causalvideovae/model/modules/conv.py>

use burn::module::Module;
use burn::nn::conv::Conv2dConfig;
use burn::nn::PaddingConfig2d;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::ops::per_frame;

/// Per-frame 2-D convolution; keys `<name>.{weight,bias}`.
#[derive(Module, Debug)]
pub struct Conv2d<B: Backend> {
    pub weight: burn::module::Param<Tensor<B, 4>>,
    pub bias: burn::module::Param<Tensor<B, 1>>,
    #[module(skip)]
    stride: usize,
    #[module(skip)]
    padding: usize,
}

impl<B: Backend> Conv2d<B> {
    /// Square kernel `k`, `stride`, symmetric zero `padding`, with bias.
    pub fn new(channels: [usize; 2], k: usize, stride: usize, padding: usize, device: &B::Device) -> Self {
        let conv = Conv2dConfig::new(channels, [k, k])
            .with_stride([stride, stride])
            .with_padding(PaddingConfig2d::Explicit(padding, padding, padding, padding))
            .init::<B>(device);
        let bias = conv.bias.expect("Conv2dConfig has bias enabled by default");
        Conv2d { weight: conv.weight, bias, stride, padding }
    }

    /// `[n, c, h, w]` -> `[n, c', h', w']`.
    pub fn forward_image(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let options = burn::tensor::ops::ConvOptions::new([self.stride; 2], [self.padding; 2], [1, 1], 1);
        burn::tensor::module::conv2d(x, self.weight.val(), Some(self.bias.val()), options)
    }

    /// `[b, c, t, h, w]` -> `[b, c', t, h', w']`, every frame independently.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        per_frame(x, |x| self.forward_image(x))
    }

    /// [`Self::forward`] with this layer's stride and padding but the given `weight` `[c', c, k, k]`
    /// and `bias` `[c']` (e.g. detached copies for a gradient w.r.t. the last layer alone).
    pub fn forward_with(&self, x: Tensor<B, 5>, weight: Tensor<B, 4>, bias: Tensor<B, 1>) -> Tensor<B, 5> {
        let options = burn::tensor::ops::ConvOptions::new([self.stride; 2], [self.padding; 2], [1, 1], 1);
        per_frame(x, |x| burn::tensor::module::conv2d(x, weight, Some(bias), options))
    }
}
