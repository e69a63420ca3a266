//! `osp-export`: lowers osp models into ONNX bundles.
//!
//! - [`onnx`]: prost types generated from the official `onnx.proto` (onnx 1.23.2, IR 11 / opset 23 used).
//! - [`builder::GraphBuilder`]: a typed builder of ONNX graphs with PyTorch-named layers and three
//!   attention forms ([`osp_graphs::AttentionKind`]).
//! - [`passes`]: graph rewrites (precision casting, pruning, output scheduling), one rule per file, each returning an [`passes::Edit`].
//! - [`bundle::BundleWriter`]: writes a bundle directory (graphs, external data, `manifest.json`) atomically.
//! - [`models`]: one lowering file per model.
//!
//! Example: `osp-export transformer-block --config block.json --seed 0 --out /tmp/block.bundle`,
//! `osp-export dit --config config.json --weights diffusion_pytorch_model.safetensors.index.json --out dit.bundle`.

pub mod builder;
pub mod bundle;
pub mod error;
pub mod graph;
pub mod models;
pub mod options;
pub mod passes;
pub mod tensor;

/// The ONNX protobuf types (package `onnx`), generated at build time.
#[allow(clippy::all, missing_docs)]
pub mod onnx {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

pub use builder::{GraphBuilder, Value};
pub use bundle::BundleWriter;
pub use error::{Error, Result};
pub use graph::OnnxGraph;
pub use models::big_linear::export_big_linear;
pub use models::opensora_v1_3::{export_opensora_t2v, DitWeights};
pub use models::transformer_block::{export_transformer_block, TransformerBlockWeights};
pub use options::{ExportOptions, Lowering, VideoConv};
pub use tensor::{HostTensor, Weights};

/// `osp-export <version>`, recorded in every manifest's provenance.
pub fn exporter_id() -> String {
    format!("osp-export {}", env!("CARGO_PKG_VERSION"))
}

/// The default-domain opset every graph imports.
pub const OPSET: i64 = 23;
/// The IR version that introduced opset 23 (onnx 1.18).
pub const IR_VERSION: i64 = 11;
/// The `com.microsoft` contrib-op domain and the opset imported when a graph uses it.
pub const MS_DOMAIN: &str = "com.microsoft";
pub const MS_OPSET: i64 = 1;
