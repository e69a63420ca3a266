//! Lowering of `OpenSoraT2V_v1_3` (the Open-Sora-Plan v1.3 DiT) to ONNX, one file per upstream class.
//!
//! Configs and checkpoints are read through `osp_trainer` (`OpenSoraT2V_v1_3Config`, `Checkpoint`);
//! initializers carry the official diffusers names. See [`modeling_opensora`] for the graph contract.
//!
//! Precision: `--precision f16|bf16` runs weights and arithmetic in half precision except the
//! keep-f32 nodes: the timestep sinusoid, the RoPE angle/cos/sin tables, the Skiparse padded-key
//! bias, and the decomposed attention's `Softmax`; `LayerNormalization` keeps its f32 statistics
//! (`stash_type`). Graph I/O stays f32. `--precision int8` (approximate, opt-in) turns the blocks'
//! linear layers into int8 weight-and-activation matmuls (`passes::quantize_int8`).
//!
//! Besides `transformer` the bundle holds `transformer_text` and `transformer_cached`
//! ([`cached_text`]): the per-prompt text half and the per-step rest, cut from the same graph.
//!
//! `osp-export dit --config config.json --weights diffusion_pytorch_model.safetensors.index.json --out dit.bundle`

mod ada_layer_norm_single;
mod attn_processor;
mod basic_transformer_block;
pub mod cached_text;
pub mod modeling_opensora;
mod patch_embed_2d;
mod pixart_alpha_text_projection;
mod rope3d;
pub mod segments;
pub mod weights;

pub use cached_text::{cut_cached_graphs, kv_name, CACHED_GRAPH, TEXT_GRAPH};
pub use modeling_opensora::{build_graph, export_opensora_t2v, input_specs, manifest_config, GRAPH_NAME, INT8_LAYERS};
pub use weights::{expected_shapes, DitWeights};
