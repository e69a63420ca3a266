//! The engines that run one graph, behind one seam.
//!
//! An [`Engine`] is one loaded model on one backend: ONNX Runtime ([`ort`]: session building,
//! execution providers, library loading, the weights a bundle's sessions share) or tract
//! ([`tract`], the `tract` feature). [`load`] is the only place an engine is chosen and built;
//! `session.rs` wraps an engine in a [`GraphSession`](crate::GraphSession), which checks every
//! call against the manifest, so engines see inputs that are already checked and never see the
//! manifest.
//!
//! The seam speaks [`Value`]s, not engine types: the device an engine runs on comes from its
//! [`Backend`](crate::Backend) (a CUDA or TensorRT device id), and what crosses the seam is a
//! host [`Tensor`] today.

pub mod ort;
#[cfg(feature = "tract")]
pub mod tract;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::session::{Backend, SessionOptions};
use crate::tensor::Tensor;

pub use self::ort::shared_weights::{BundleWeights, SharedWeights};

/// What an engine takes and returns: a tensor in host memory.
pub type Value = Tensor;

/// One model loaded on one backend. `run` takes `&mut self`: an engine is not run concurrently.
pub trait Engine: Send {
    /// The model's input names, in model order.
    fn input_names(&self) -> Vec<String>;

    /// The model's output names, in model order.
    fn output_names(&self) -> Vec<String>;

    /// Runs on `inputs` (every model input, already checked against the manifest; any order)
    /// and returns every model output by name. `graph` names the graph in errors.
    fn run(&mut self, graph: &str, inputs: &[(&str, &Value)]) -> Result<BTreeMap<String, Value>>;

    /// Ends the profiler started by [`SessionOptions::profile`] and returns its file.
    fn end_profiling(&mut self, graph: &str) -> Result<PathBuf>;
}

/// Loads the model at `path` on `opts.backend`. `shared`: the bundle's weight pool, which the
/// ONNX Runtime CPU engine uses when `opts.share_weights` is set.
pub(crate) fn load(
    graph: &str,
    spec: &osp_graphs::GraphSpec,
    path: &Path,
    opts: &SessionOptions,
    shared: Option<BundleWeights<'_>>,
) -> Result<Box<dyn Engine>> {
    match opts.backend {
        Backend::Tract => load_tract(graph, path, opts),
        _ => Ok(Box::new(ort::OrtEngine::load(graph, spec, path, opts, shared)?)),
    }
}

#[cfg(feature = "tract")]
fn load_tract(graph: &str, path: &Path, opts: &SessionOptions) -> Result<Box<dyn Engine>> {
    if opts.profile.is_some() {
        return Err(tract::profiling_refused(graph));
    }
    Ok(Box::new(tract::TractGraph::load(graph, path, opts.threads)?))
}

#[cfg(not(feature = "tract"))]
fn load_tract(_graph: &str, _path: &Path, _opts: &SessionOptions) -> Result<Box<dyn Engine>> {
    Err(crate::error::Error::BackendUnavailable {
        backend: "tract".into(),
        why: "osp-runtime was built without the `tract` feature (rebuild with `--features tract`)".into(),
    })
}
