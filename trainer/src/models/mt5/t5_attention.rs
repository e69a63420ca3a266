//! `T5Attention` (encoder self-attention): no `1/sqrt(d_kv)` scaling, an additive bucketed
//! relative-position bias that only the first layer owns and every layer reuses, and the padding
//! mask folded into that bias.
//!
//! Upstream: <https://github.com/huggingface/transformers/blob/v4.44.2/src/transformers/models/t5/modeling_t5.py#L345-L567>

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig, Linear, LinearConfig};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::MT5Config;

#[derive(Module, Debug)]
pub struct T5Attention<B: Backend> {
    pub q: Linear<B>,
    pub k: Linear<B>,
    pub v: Linear<B>,
    pub o: Linear<B>,
    /// `[num_buckets, n_heads]`, only in the first layer (`has_relative_attention_bias`).
    pub relative_attention_bias: Option<Embedding<B>>,
    pub n_heads: usize,
    pub key_value_proj_dim: usize,
    pub relative_attention_num_buckets: usize,
    pub relative_attention_max_distance: usize,
}

impl<B: Backend> T5Attention<B> {
    pub fn new(config: &MT5Config, has_relative_attention_bias: bool, device: &B::Device) -> Self {
        let inner_dim = config.num_heads * config.d_kv;
        let linear = |i, o| LinearConfig::new(i, o).with_bias(false).init(device);
        T5Attention {
            q: linear(config.d_model, inner_dim),
            k: linear(config.d_model, inner_dim),
            v: linear(config.d_model, inner_dim),
            o: linear(inner_dim, config.d_model),
            relative_attention_bias: has_relative_attention_bias
                .then(|| EmbeddingConfig::new(config.relative_attention_num_buckets, config.num_heads).init(device)),
            n_heads: config.num_heads,
            key_value_proj_dim: config.d_kv,
            relative_attention_num_buckets: config.relative_attention_num_buckets,
            relative_attention_max_distance: config.relative_attention_max_distance,
        }
    }

    /// The relative-position bias `[1, h, q_len, k_len]`; `None` for layers without the table.
    pub fn compute_bias(&self, query_length: usize, key_length: usize) -> Option<Tensor<B, 4>> {
        let table = self.relative_attention_bias.as_ref()?;
        let device = table.weight.device();
        let mut buckets = Vec::with_capacity(query_length * key_length);
        for context in 0..query_length as i64 {
            for memory in 0..key_length as i64 {
                buckets.push(relative_position_bucket(
                    memory - context,
                    self.relative_attention_num_buckets,
                    self.relative_attention_max_distance,
                ));
            }
        }
        let buckets = Tensor::<B, 2, Int>::from_data(TensorData::new(buckets, [query_length, key_length]), &device);
        let values = table.forward(buckets); // [q, k, h]
        Some(values.permute([2, 0, 1]).unsqueeze::<4>()) // [1, h, q, k]
    }

    /// `hidden_states` `[b, n, d]`, `position_bias` `[b or 1, h, n, n]` (mask included) -> `[b, n, d]`.
    pub fn forward(&self, hidden_states: Tensor<B, 3>, position_bias: Tensor<B, 4>) -> Tensor<B, 3> {
        let [b, n, _] = hidden_states.dims();
        let (h, dk) = (self.n_heads, self.key_value_proj_dim);
        let shape = |x: Tensor<B, 3>| x.reshape([b, n, h, dk]).swap_dims(1, 2); // [b, h, n, dk]
        let q = shape(self.q.forward(hidden_states.clone()));
        let k = shape(self.k.forward(hidden_states.clone()));
        let v = shape(self.v.forward(hidden_states));
        let scores = q.matmul(k.swap_dims(2, 3)) + position_bias; // [b, h, n, n]
        let weights = softmax(scores, 3);
        let out = weights.matmul(v).swap_dims(1, 2).reshape([b, n, h * dk]); // [b, n, h*dk]
        self.o.forward(out)
    }
}

/// T5's bidirectional bucket of `relative_position = key_pos - query_pos`: half the buckets for
/// each sign; within a half, exact buckets for distances below `num_buckets / 4` and
/// log-spaced ones up to `max_distance`, the last bucket taking everything beyond. The log
/// branch runs in f32 like upstream (`torch.log` on a float32 tensor, truncated to long).
pub fn relative_position_bucket(relative_position: i64, num_buckets: usize, max_distance: usize) -> i64 {
    let num_buckets = (num_buckets / 2) as i64;
    let mut bucket = if relative_position > 0 { num_buckets } else { 0 };
    let distance = relative_position.abs();
    let max_exact = num_buckets / 2;
    if distance < max_exact {
        bucket += distance;
    } else {
        let scale = (max_distance as f64 / max_exact as f64).ln() as f32;
        let large = (distance as f32 / max_exact as f32).ln() / scale * (num_buckets - max_exact) as f32;
        bucket += (max_exact + large as i64).min(num_buckets - 1);
    }
    bucket
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_transformers() {
        // transformers 4.44.2 (values worked out from its formula; the 200-token parity case covers the log range):
        // T5Attention._relative_position_bucket(torch.tensor([-200,-128,-100,-20,-8,-7,-1,0,1,7,8,20,100,128,200]), True, 32, 128)
        let rel = [-200, -128, -100, -20, -8, -7, -1, 0, 1, 7, 8, 20, 100, 128, 200];
        let want = [15, 15, 15, 10, 8, 7, 1, 0, 17, 23, 24, 26, 31, 31, 31];
        let got: Vec<i64> = rel.iter().map(|&r| relative_position_bucket(r, 32, 128)).collect();
        assert_eq!(got, want);
    }
}
