//! `Attention` (diffusers `Attention` subclass of the v1.3 DiT): `to_q`, `to_k`, `to_v` and
//! `to_out = [Linear, Dropout]`, computed by [`OpenSoraAttnProcessor2_0`].
//!
//! Upstream: <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/diffusion/opensora_v1_3/modules.py#L30-L39>
//! (diffusers 0.30.2 `models/attention_processor.py::Attention` for the projections).

use burn::module::Module;
use burn::nn::{Dropout, DropoutConfig, Linear, LinearConfig};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::attn_processor::OpenSoraAttnProcessor2_0;
use super::rope3d::RopeTables;
use crate::models::autocast::{self, ComputeDType};

/// An entry of `to_out` (`nn.ModuleList([Linear, Dropout])`); variant names are skipped in
/// paths, so the projection is `to_out.0`.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum ToOut<B: Backend> {
    Linear(Linear<B>),
    Dropout(Dropout),
}

impl<B: Backend> ToOut<B> {
    fn forward(&self, x: Tensor<B, 3>, compute: ComputeDType) -> Tensor<B, 3> {
        match self {
            ToOut::Linear(m) => autocast::linear(m, x, compute),
            ToOut::Dropout(m) => m.forward(x),
        }
    }
}

/// Multi-head attention with biasable projections.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    pub to_q: Linear<B>,
    pub to_k: Linear<B>,
    pub to_v: Linear<B>,
    pub to_out: Vec<ToOut<B>>,
    #[module(skip)]
    pub heads: usize,
    #[module(skip)]
    pub processor: OpenSoraAttnProcessor2_0,
}

/// Constructor arguments of [`Attention`] (the subset of diffusers' `Attention.__init__` used).
#[derive(Debug, Clone, Copy)]
pub struct AttentionConfig {
    pub query_dim: usize,
    /// Input width of `to_k`/`to_v` (`cross_attention_dim`, or `query_dim` for self-attention).
    pub kv_dim: usize,
    pub heads: usize,
    pub dim_head: usize,
    pub dropout: f64,
    pub bias: bool,
    pub out_bias: bool,
    pub processor: OpenSoraAttnProcessor2_0,
}

impl AttentionConfig {
    pub fn init<B: Backend>(&self, device: &B::Device) -> Attention<B> {
        let inner = self.heads * self.dim_head;
        let lin = |i: usize, o: usize, bias: bool| LinearConfig::new(i, o).with_bias(bias).init(device);
        Attention {
            to_q: lin(self.query_dim, inner, self.bias),
            to_k: lin(self.kv_dim, inner, self.bias),
            to_v: lin(self.kv_dim, inner, self.bias),
            to_out: vec![
                ToOut::Linear(lin(inner, self.query_dim, self.out_bias)),
                ToOut::Dropout(DropoutConfig::new(self.dropout).init()),
            ],
            heads: self.heads,
            processor: self.processor,
        }
    }
}

impl<B: Backend> Attention<B> {
    fn out(&self, x: Tensor<B, 3>, compute: ComputeDType) -> Tensor<B, 3> {
        self.to_out.iter().fold(x, |h, m| m.forward(h, compute))
    }

    /// Self-attention of tokens `[b, n, d]` (order t, h, w) with key bias `[b, n]`; projections
    /// and attention matmuls under autocast `compute`.
    pub fn forward_self(
        &self,
        x: Tensor<B, 3>,
        bias: Tensor<B, 2>,
        rope: &RopeTables<B>,
        compute: ComputeDType,
    ) -> Tensor<B, 3> {
        let q = autocast::linear(&self.to_q, x.clone(), compute);
        let k = autocast::linear(&self.to_k, x.clone(), compute);
        let v = autocast::linear(&self.to_v, x, compute);
        self.out(self.processor.self_attention(q, k, v, bias, self.heads, rope, compute), compute)
    }

    /// Cross-attention of tokens `[b, n, d]` to the caption `[b, l, d_cross]` with key bias `[b, l]`.
    pub fn forward_cross(
        &self,
        x: Tensor<B, 3>,
        context: Tensor<B, 3>,
        bias: Tensor<B, 2>,
        compute: ComputeDType,
    ) -> Tensor<B, 3> {
        let q = autocast::linear(&self.to_q, x, compute);
        let k = autocast::linear(&self.to_k, context.clone(), compute);
        let v = autocast::linear(&self.to_v, context, compute);
        self.out(self.processor.cross_attention(q, k, v, bias, self.heads, compute), compute)
    }
}
