//! The ONNX Runtime engine: the one place ONNX Runtime sessions are built.
//!
//! A session gets intra-op threads, optimization level 3, the memory-pattern and profiling
//! settings, the bundle's shared weights (CPU only, see [`shared_weights`]), then the execution
//! providers of its backend ([`ep`], TensorRT before CUDA), each registered with
//! `.error_on_failure()`: asking for CUDA or TensorRT never silently runs on the CPU; GPU sessions
//! either log ONNX Runtime's CPU-placement warning (`GpuOptions::allow_cpu_fallback`, the default:
//! the CUDA provider leaves shape computations to the CPU on purpose) or set
//! `session.disable_cpu_ep_fallback`, so a graph with a node no GPU provider takes fails to load. The library
//! itself is found and loaded by [`library`]; [`value`] moves tensors in and out.

pub mod ep;
pub mod library;
pub(crate) mod resident;
pub mod shared_weights;
mod value;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ort::session::builder::{GraphOptimizationLevel, PrepackedWeights};
use ort::session::Session;

use osp_graphs::GraphSpec;

use self::shared_weights::BundleWeights;
use super::{Engine, Value};
use crate::error::{Error, Result};
use crate::session::gpu::TrtGraph;
use crate::session::{Backend, SessionOptions};

/// One ONNX Runtime session.
pub struct OrtEngine {
    session: Session,
    place: resident::Place,
    /// The in-memory external-data files ONNX Runtime reads its initializers from directly
    /// (`use_external_initializer_file_buffers_directly`): they must outlive the session.
    _weights: Vec<Arc<[u8]>>,
}

impl OrtEngine {
    /// Builds a session for the model at `path` on `opts.backend` (an ONNX Runtime backend).
    /// `shared`: the bundle's pool, used by CPU sessions when `opts.share_weights` is set.
    pub(crate) fn load(
        graph: &str,
        spec: &GraphSpec,
        path: &Path,
        opts: &SessionOptions,
        shared: Option<BundleWeights<'_>>,
    ) -> Result<Self> {
        let shared = shared.filter(|_| opts.share_weights && opts.backend == Backend::OrtCpu);
        let data = match &shared {
            Some(bundle) => bundle.data_for(path)?,
            None => Vec::new(),
        };
        let prepacked = shared.map(|bundle| bundle.pool.prepacked_after_init()).transpose()?;
        let session = build_session(graph, spec, path, opts, prepacked, &data)?;
        let place = match opts.backend {
            Backend::OrtCuda { device_id } | Backend::OrtTensorRt { device_id, .. } => resident::Place::Cuda(device_id),
            _ => resident::Place::Cpu,
        };
        Ok(Self { session, place, _weights: data.into_iter().map(|(_, bytes)| bytes).collect() })
    }
}

impl Engine for OrtEngine {
    fn input_names(&self) -> Vec<String> {
        self.session.inputs().iter().map(|o| o.name().to_string()).collect()
    }

    fn output_names(&self) -> Vec<String> {
        self.session.outputs().iter().map(|o| o.name().to_string()).collect()
    }

    fn run(&mut self, graph: &str, inputs: &[(&str, &Value)]) -> Result<BTreeMap<String, Value>> {
        value::run(&mut self.session, graph, inputs)
    }

    fn run_resident(
        &mut self,
        graph: &str,
        inputs: &[(&str, &super::Resident)],
    ) -> Result<BTreeMap<String, super::Resident>> {
        resident::run(&mut self.session, self.place, graph, inputs)
    }

    fn resident_buffer(&self, graph: &str, dtype: osp_graphs::DType, shape: &[usize]) -> Result<super::Resident> {
        resident::alloc(&self.session, self.place, graph, dtype, shape)
    }

    fn end_profiling(&mut self, graph: &str) -> Result<PathBuf> {
        self.session
            .end_profiling()
            .map(PathBuf::from)
            .map_err(|e| Error::Run { graph: graph.to_string(), source: Box::new(e) })
    }
}

/// Builds an ONNX Runtime session: intra-op threads, optimization level 3, the memory pattern
/// setting, then the execution providers of `opts.backend` (TensorRT before CUDA), each failing
/// loudly. `prepacked` is a container shared with other sessions; `data` are external-data files
/// held in memory, read in place.
fn build_session(
    graph: &str,
    spec: &GraphSpec,
    path: &Path,
    opts: &SessionOptions,
    prepacked: Option<&PrepackedWeights>,
    data: &[(String, Arc<[u8]>)],
) -> Result<Session> {
    let SessionOptions { ref backend, threads, memory_pattern, ref profile, ref gpu, .. } = *opts;
    // The provider list is resolved first: a backend compiled out is reported before the library
    // is even looked for.
    let eps = match backend {
        Backend::OrtCpu => vec![ep::cpu::dispatch()],
        Backend::OrtCuda { device_id } => vec![ep::cuda::dispatch(*device_id, gpu)?],
        Backend::OrtTensorRt { device_id, cache_dir } => {
            let trt = TrtGraph::new(graph, spec, gpu)?;
            vec![ep::tensorrt::dispatch(*device_id, cache_dir, &trt)?, ep::cuda::dispatch(*device_id, gpu)?]
        }
        Backend::Tract => unreachable!("tract sessions are not built by ONNX Runtime"),
    };
    let env = library::environment()?;
    let config =
        |source: ort::Error| Error::SessionConfig { backend: backend.to_string(), path: path.to_path_buf(), source };
    let mut builder = Session::builder(env).map_err(config)?;
    if let Some(n) = threads {
        builder = builder.with_intra_threads(n).map_err(|e| config(e.into()))?;
    }
    builder = builder.with_optimization_level(GraphOptimizationLevel::Level3).map_err(|e| config(e.into()))?;
    // Each session has its own intra-op pool, and several sessions run back to back (the DiT's
    // segments, the streaming decoder graphs): a pool that keeps spinning after its `Run` returns
    // takes cores from the next session's pool. Spinning still runs inside a `Run`.
    builder = builder.with_config_entry("session.force_spinning_stop", "1").map_err(|e| config(e.into()))?;
    if !memory_pattern {
        builder = builder.with_memory_pattern(false).map_err(|e| config(e.into()))?;
    }
    if *backend != Backend::OrtCpu {
        builder = if gpu.allow_cpu_fallback {
            // ONNX Runtime's placement warning ("Some nodes were not assigned to the preferred
            // execution providers") is below the environment's default level: raise this session's.
            builder.with_log_level(ort::logging::LogLevel::Warning).map_err(|e| config(e.into()))?
        } else {
            builder.with_disable_cpu_fallback().map_err(|e| config(e.into()))?
        };
    }
    if let Some(prefix) = profile {
        builder = builder.with_profiling(prefix).map_err(|e| config(e.into()))?;
    }
    if !data.is_empty() {
        builder = builder
            .with_config_entry("session.use_external_initializer_file_buffers_directly", "1")
            .map_err(|e| config(e.into()))?;
    }
    for (name, bytes) in data {
        builder =
            builder.with_external_initializer_file_in_memory(name, bytes.clone()).map_err(|e| config(e.into()))?;
    }
    if let Some(prepacked) = prepacked {
        builder = builder.with_prepacked_weights(prepacked).map_err(|e| config(e.into()))?;
    }
    for ep in eps {
        let name = ep.name();
        builder =
            builder.with_execution_providers([ep]).map_err(|e| Error::EpRegistration { ep: name, source: e.into() })?;
        tracing::info!(graph, ep = name, "execution provider registered");
    }
    builder
        .commit_from_file(path)
        .map_err(|source| Error::ModelLoad { path: path.to_path_buf(), source: Box::new(source) })
}
