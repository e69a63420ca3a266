//! `BasicTransformerBlock` of the v1.3 DiT: adaLN-single modulated self-attention (3D RoPE,
//! Skiparse), un-normalised and un-gated cross-attention, modulated feed-forward.
//!
//! Upstream: <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/diffusion/opensora_v1_3/modules.py#L315-L448>
//!
//! ```text
//! shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = scale_shift_table + t6
//! x = x + gate_msa * attn1(norm1(x) * (1 + scale_msa) + shift_msa)
//! x = x + attn2(x, caption)                  # no norm, no gate (norm2 is the FFN norm)
//! x = x + gate_mlp * ff(norm2(x) * (1 + scale_mlp) + shift_mlp)
//! ```

use burn::module::{Module, Param};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig};
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::attention::{Attention, AttentionConfig};
use super::attn_processor::{OpenSoraAttnProcessor2_0, Skiparse};
use super::config::{Dims, OpenSoraT2V_v1_3Config};
use super::feed_forward::FeedForward;
use super::rope3d::RopeTables;
use crate::models::autocast::ComputeDType;

/// One DiT block. `norm1`/`norm2` hold parameters only with `norm_elementwise_affine`.
#[derive(Module, Debug)]
pub struct BasicTransformerBlock<B: Backend> {
    pub norm1: Option<LayerNorm<B>>,
    pub attn1: Attention<B>,
    pub norm2: Option<LayerNorm<B>>,
    pub attn2: Attention<B>,
    pub ff: FeedForward<B>,
    /// `[6, d]`: rows shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp.
    pub scale_shift_table: Param<Tensor<B, 2>>,
    #[module(skip)]
    pub norm_eps: f64,
}

/// Conditioning shared by every block of one forward pass.
#[derive(Debug, Clone)]
pub struct BlockInputs<B: Backend> {
    /// Video key bias `[b, n]` (0 or -10000).
    pub attention_bias: Tensor<B, 2>,
    /// Projected caption `[b, l, d]`.
    pub encoder_hidden_states: Tensor<B, 3>,
    /// Text key bias `[b, l]`.
    pub encoder_attention_bias: Tensor<B, 2>,
    /// adaLN-single modulation `[b, 6, d]`.
    pub timestep: Tensor<B, 3>,
    /// RoPE3D tables of the token grid.
    pub rope: RopeTables<B>,
    /// Autocast dtype of linear layers and attention matmuls (`None`: float32).
    pub compute: ComputeDType,
}

/// LayerNorm over the last axis: biased variance, `eps` inside the square root (torch).
pub(crate) fn layer_norm<B: Backend>(x: Tensor<B, 3>, affine: Option<&LayerNorm<B>>, eps: f64) -> Tensor<B, 3> {
    match affine {
        Some(norm) => norm.forward(x),
        None => {
            let mean = x.clone().mean_dim(2);
            let centered = x - mean;
            let var = centered.clone().square().mean_dim(2);
            centered / (var + eps).sqrt()
        }
    }
}

impl<B: Backend> BasicTransformerBlock<B> {
    pub fn new(config: &OpenSoraT2V_v1_3Config, dims: &Dims, skiparse: Skiparse, device: &B::Device) -> Self {
        let dim = dims.hidden_size;
        let norm = || {
            config.norm_elementwise_affine.then(|| LayerNormConfig::new(dim).with_epsilon(config.norm_eps).init(device))
        };
        let attention = |kv_dim: usize, is_cross_attn: bool| {
            AttentionConfig {
                query_dim: dim,
                kv_dim,
                heads: config.num_attention_heads,
                dim_head: config.attention_head_dim,
                dropout: config.dropout,
                bias: config.attention_bias,
                out_bias: true,
                processor: OpenSoraAttnProcessor2_0 { skiparse, is_cross_attn },
            }
            .init(device)
        };
        BasicTransformerBlock {
            norm1: norm(),
            attn1: attention(dim, false),
            norm2: norm(),
            attn2: attention(dims.cross_attention_dim, true),
            ff: FeedForward::new(dim, config.dropout, &config.activation_fn, true, device),
            // torch.randn(6, dim) / dim**0.5
            scale_shift_table: Initializer::Normal { mean: 0.0, std: 1.0 / (dim as f64).sqrt() }.init([6, dim], device),
            norm_eps: config.norm_eps,
        }
    }

    /// Tokens `[b, n, d]` -> `[b, n, d]`.
    pub fn forward(&self, hidden_states: Tensor<B, 3>, inputs: &BlockInputs<B>) -> Tensor<B, 3> {
        // [b, 6, d]
        let modulation = self.scale_shift_table.val().unsqueeze_dim::<3>(0) + inputs.timestep.clone();
        let row = |i: usize| modulation.clone().narrow(1, i, 1);
        let (shift_msa, scale_msa, gate_msa) = (row(0), row(1), row(2));
        let (shift_mlp, scale_mlp, gate_mlp) = (row(3), row(4), row(5));

        let norm_hidden_states = layer_norm(hidden_states.clone(), self.norm1.as_ref(), self.norm_eps);
        let norm_hidden_states = norm_hidden_states * (scale_msa + 1.0) + shift_msa;
        let attn_output =
            self.attn1.forward_self(norm_hidden_states, inputs.attention_bias.clone(), &inputs.rope, inputs.compute);
        let hidden_states = hidden_states + gate_msa * attn_output;

        let attn_output = self.attn2.forward_cross(
            hidden_states.clone(),
            inputs.encoder_hidden_states.clone(),
            inputs.encoder_attention_bias.clone(),
            inputs.compute,
        );
        let hidden_states = hidden_states + attn_output;

        let norm_hidden_states = layer_norm(hidden_states.clone(), self.norm2.as_ref(), self.norm_eps);
        let norm_hidden_states = norm_hidden_states * (scale_mlp + 1.0) + shift_mlp;
        let ff_output = self.ff.forward(norm_hidden_states, inputs.compute);
        hidden_states + gate_mlp * ff_output
    }
}
