//! `osp-graphs`: the light contract shared by `osp-export` (writes bundles) and `osp-runtime` (runs them).
//!
//! A **bundle** is a directory holding `manifest.json`, one `.onnx` file per graph and the graphs'
//! external-data weight files. The manifest names every graph's inputs and outputs with dtype and
//! fixed or symbolic dims, so the runtime checks user tensors before running and never re-derives
//! shapes from model code.
//!
//! Dependencies are serde and thiserror only; nothing here runs a model.

pub mod config;
pub mod dit_parallel;
pub mod error;
pub mod llama;
pub mod manifest;
pub mod path;
pub mod pipeline;
pub mod tolerance;
pub mod vae;

pub use config::ModelSpec;
pub use dit_parallel::DitSegments;
pub use error::{Error, Result};
pub use manifest::{
    AttentionKind, BundleManifest, DType, Dim, GraphSpec, Precision, Provenance, SymbolBindings, TensorSpec,
    FORMAT_VERSION, MANIFEST_FILE,
};
pub use pipeline::{check_components, check_models, PipelineDefaults, PipelineDims, PipelineManifest, PIPELINE_FILE};
pub use tolerance::{Approx, Comparison};
pub use vae::{VaeGraphs, VaeStreaming};
