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
pub mod resident;
#[cfg(feature = "tract")]
pub mod tract;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::session::{Backend, SessionOptions};
use crate::tensor::Tensor;

pub use self::ort::shared_weights::{BundleWeights, SharedWeights};
pub use self::resident::Resident;

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

    /// Runs on values in the engine's memory and keeps the outputs there ([`Resident`]). The
    /// default goes through host tensors (engines without device memory).
    fn run_resident(&mut self, graph: &str, inputs: &[(&str, &Resident)]) -> Result<BTreeMap<String, Resident>> {
        let hosts = inputs.iter().map(|(n, r)| Ok((*n, r.to_host(n)?))).collect::<Result<Vec<_>>>()?;
        let refs: Vec<(&str, &Value)> = hosts.iter().map(|(n, t)| (*n, t)).collect();
        Ok(self.run(graph, &refs)?.into_iter().map(|(k, v)| (k, Resident::host(v))).collect())
    }

    /// A tensor of `dtype` and `shape` in the engine's memory for a collective to fill.
    fn resident_buffer(&self, _graph: &str, dtype: osp_graphs::DType, shape: &[usize]) -> Result<Resident> {
        Ok(Resident::host(Value::zeros(dtype, shape)?))
    }
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
