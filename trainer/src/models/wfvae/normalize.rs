//! `LayerNorm` over the channel axis of video tensors, eps 1e-6 (upstream `Normalize(..,
//! norm_type="layernorm")`, which wraps `torch.nn.LayerNorm` as `.norm`).
//!
//! Upstream: <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/causalvideovae/model/modules/normalize.py>

use burn::module::Module;
use burn::nn::LayerNormConfig;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// Channel LayerNorm; keys `<name>.norm.{weight,bias}` (Burn `gamma/beta`, see [`crate::remap`]).
#[derive(Module, Debug)]
pub struct LayerNorm<B: Backend> {
    pub norm: burn::nn::LayerNorm<B>,
}

impl<B: Backend> LayerNorm<B> {
    pub fn new(num_channels: usize, device: &B::Device) -> Self {
        LayerNorm { norm: LayerNormConfig::new(num_channels).with_epsilon(1e-6).init(device) }
    }

    /// `[b, c, t, h, w]`, normalised over `c` at every position.
    pub fn forward(&self, x: Tensor<B, 5>) -> Tensor<B, 5> {
        self.norm.forward(x.permute([0, 2, 3, 4, 1])).permute([0, 4, 1, 2, 3])
    }
}
