//! mT5 encoder (`MT5EncoderModel`, google/mt5-xxl), the text encoder of Open-Sora-Plan v1.3.
//!
//! Upstream: transformers 4.44.2 `models/t5/modeling_t5.py` and `models/mt5/modeling_mt5.py`
//! (<https://github.com/huggingface/transformers/tree/v4.44.2/src/transformers/models>); paper
//! <https://arxiv.org/abs/2010.11934>. Struct fields are named like the PyTorch attributes
//! (`encoder.block.0.layer.0.SelfAttention.q.weight`), so Burn paths are the checkpoint keys;
//! `encoder.embed_tokens.weight` is tied to `shared.weight` (see `remap`).
//!
//! Run: `osp-train forward mt5 --config config.json --weights model.safetensors --inputs ids.safetensors --out o.safetensors`

mod config;
mod mt5_encoder_model;
mod t5_attention;
mod t5_block;
mod t5_dense_gated_act_dense;
mod t5_layer_ff;
mod t5_layer_norm;
mod t5_layer_self_attention;
mod t5_stack;

use std::rc::Rc;

use burn::module::{Module, ModuleVisitor, Param};
use burn::store::{TensorSnapshot, TensorSnapshotError};
use burn::tensor::backend::Backend;
use burn::tensor::{Element, Tensor};

pub use config::MT5Config;
pub use mt5_encoder_model::{MT5EncoderModel, SHARED, TIED_EMBED_TOKENS};
pub use t5_attention::{relative_position_bucket, T5Attention};
pub use t5_block::{T5Block, T5BlockLayer};
pub use t5_dense_gated_act_dense::{gelu_new, T5DenseGatedActDense};
pub use t5_layer_ff::T5LayerFF;
pub use t5_layer_norm::T5LayerNorm;
pub use t5_layer_self_attention::T5LayerSelfAttention;
pub use t5_stack::T5Stack;

use crate::remap;

/// Official names and shapes of `module`'s float parameters, sorted, without reading or
/// allocating any parameter (lazy shapes). Paths, enum-variant skipping and the Burn -> PyTorch
/// adapter are the ones [`crate::checkpoint::load_module`] uses, so a real-size model can be
/// checked against a manifest without its weights.
pub fn official_specs<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, Vec<usize>)> {
    let mut specs = LazySpecs { path: Vec::new(), containers: Vec::new(), snapshots: Vec::new() };
    module.visit(&mut specs);
    let adapter = remap::burn_to_official();
    let mut out: Vec<(String, Vec<usize>)> = specs
        .snapshots
        .iter()
        .map(|s| {
            let s = adapter.adapt(s);
            (s.full_path(), s.shape.to_vec())
        })
        .collect();
    out.sort();
    out
}

struct LazySpecs {
    path: Vec<String>,
    containers: Vec<String>,
    snapshots: Vec<TensorSnapshot>,
}

impl<B: Backend> ModuleVisitor<B> for LazySpecs {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.containers.push(container_type.to_string());
        if !(remap::SKIP_ENUM_VARIANTS && container_type.starts_with("Enum:")) {
            self.path.push(name.to_string());
        }
    }

    fn exit_module(&mut self, _name: &str, container_type: &str) {
        self.containers.pop();
        if !(remap::SKIP_ENUM_VARIANTS && container_type.starts_with("Enum:")) {
            self.path.pop();
        }
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let no_data = Rc::new(|| Err(TensorSnapshotError::DataError("shape-only snapshot".into())));
        self.snapshots.push(TensorSnapshot::from_closure(
            no_data,
            <B::FloatElem as Element>::dtype(),
            param.lazy_shape(),
            self.path.clone(),
            self.containers.clone(),
            param.id,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::NdArray;
    use burn::store::ModuleSnapshot;

    type B = NdArray<f32>;

    fn manifest() -> (serde_json::Value, MT5Config) {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/reference/manifests/mt5_xxl_encoder.json");
        let text = std::fs::read_to_string(path).expect("manifest should exist");
        let manifest: serde_json::Value = serde_json::from_str(&text).expect("manifest should be JSON");
        let config: MT5Config = serde_json::from_value(manifest["config"].clone()).expect("config should parse");
        (manifest, config)
    }

    fn manifest_specs(manifest: &serde_json::Value) -> Vec<(String, Vec<usize>)> {
        let mut specs: Vec<(String, Vec<usize>)> = manifest["tensors"]
            .as_array()
            .expect("tensors should be a list")
            .iter()
            .map(|t| {
                let name = t["name"].as_str().expect("name").to_string();
                (name, serde_json::from_value(t["shape"].clone()).expect("shape"))
            })
            .collect();
        specs.sort();
        specs
    }

    /// The model's names plus the tied alias, as the manifest (a PyTorch `state_dict`) lists them.
    fn with_tied(mut specs: Vec<(String, Vec<usize>)>) -> Vec<(String, Vec<usize>)> {
        let shared = specs.iter().find(|(n, _)| n == SHARED).expect("shared.weight should exist").1.clone();
        specs.push((TIED_EMBED_TOKENS.to_string(), shared));
        specs.sort();
        specs
    }

    #[test]
    fn mt5_xxl_has_the_220_manifest_names_and_shapes_without_allocating() {
        let (manifest, config) = manifest();
        assert_eq!(config, MT5Config::mt5_xxl());
        let model = config.init::<B>(&Default::default()).unwrap();
        let specs = with_tied(official_specs(&model));
        let want = manifest_specs(&manifest);
        assert_eq!(want.len(), 220);
        assert_eq!(specs, want);
        let params: usize = official_specs(&model).iter().map(|(_, s)| s.iter().product::<usize>()).sum();
        assert_eq!(params as u64, manifest["total_params"].as_u64().unwrap());
    }

    #[test]
    fn lazy_specs_equal_the_loading_path_names() {
        let (_, xxl) = manifest();
        let config = MT5Config { vocab_size: 50, d_model: 16, d_kv: 4, d_ff: 24, num_layers: 3, num_heads: 4, ..xxl };
        let model = config.init::<B>(&Default::default()).unwrap();
        let lazy = official_specs(&model);
        let mut collected: Vec<(String, Vec<usize>)> = model
            .collect(None, Some(remap::burn_to_official()), remap::SKIP_ENUM_VARIANTS)
            .into_iter()
            .map(|s| (s.full_path(), s.shape.to_vec()))
            .collect();
        collected.sort();
        assert_eq!(lazy, collected);
        // 3 layers x 9 + relative bias + final norm + shared.
        assert_eq!(lazy.len(), 3 * 9 + 3);
        assert!(lazy.iter().any(|(n, s)| n == "encoder.block.0.layer.1.DenseReluDense.wo.weight" && s == &[16, 24]));
        assert!(lazy.iter().any(|(n, _)| n == "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"));
        assert!(!lazy.iter().any(|(n, _)| n == "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"));
    }

    #[test]
    fn bad_configs_are_rejected() {
        let ok = MT5Config::mt5_xxl();
        for (config, needle) in [
            (MT5Config { num_heads: 0, ..ok.clone() }, "num_heads"),
            (MT5Config { feed_forward_proj: "relu".into(), ..ok.clone() }, "feed_forward_proj"),
            (MT5Config { relative_attention_num_buckets: 7, ..ok.clone() }, "relative_attention_num_buckets"),
            (MT5Config { relative_attention_max_distance: 4, ..ok.clone() }, "relative_attention_max_distance"),
        ] {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }
}
