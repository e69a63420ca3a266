//! Lowering of `OpenSoraT2V_v1_3` (the Open-Sora-Plan v1.3 DiT) to ONNX, one file per upstream class.
//!
//! Configs and checkpoints are read through `osp_trainer` (`OpenSoraT2V_v1_3Config`, `Checkpoint`);
//! initializers carry the official diffusers names. See [`modeling_opensora`] for the graph contract.
//!
//! Precision: `--precision f16|bf16` runs weights and arithmetic in half precision except the
//! keep-f32 nodes: the timestep sinusoid, the RoPE angle/cos/sin tables, the Skiparse padded-key
//! bias, and the decomposed attention's `Softmax`; `LayerNormalization` keeps its f32 statistics
//! (`stash_type`). Graph I/O stays f32.
//!
//! `osp-export dit --config config.json --weights diffusion_pytorch_model.safetensors.index.json --out dit.bundle`

mod ada_layer_norm_single;
mod attn_processor;
mod basic_transformer_block;
pub mod modeling_opensora;
mod patch_embed_2d;
mod pixart_alpha_text_projection;
mod rope3d;
pub mod segments;
pub mod weights;

pub use modeling_opensora::{build_graph, export_opensora_t2v, input_specs, manifest_config, GRAPH_NAME};
pub use weights::{expected_shapes, DitWeights};
