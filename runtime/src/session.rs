//! Bundles and graph sessions.
//!
//! `Bundle::open` reads and checks `manifest.json`; `Bundle::session` loads one graph on the chosen
//! backend through the engine seam (`crate::engine`, the one place engines are built).
//! `GraphSession::run` checks the call's inputs against the manifest before running and the
//! outputs against it afterwards ([`check`]), so a wrong tensor fails with its name and the rule
//! it broke.

mod check;
pub mod gpu;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

use osp_graphs::{BundleManifest, GraphSpec};

pub use self::gpu::{ArenaExtend, ConvAlgoSearch, GpuOptions, ProfileRange};
pub use crate::engine::SharedWeights;
use crate::engine::{self, BundleWeights, Engine};
use crate::error::Result;
use crate::tensor::Tensor;

/// Where a graph runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// ONNX Runtime on the CPU.
    OrtCpu,
    /// ONNX Runtime with the CUDA execution provider.
    OrtCuda { device_id: i32 },
    /// ONNX Runtime with TensorRT, then CUDA, registered in that order; engines and the timing
    /// cache are kept under `cache_dir`.
    OrtTensorRt { device_id: i32, cache_dir: PathBuf },
    /// tract, the pure-Rust CPU engine (needs the `tract` feature).
    Tract,
}

/// The backend names, for command-line choices (`ort-cpu`, `ort-cuda`, `ort-tensorrt`, `tract`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum BackendKind {
    OrtCpu,
    OrtCuda,
    OrtTensorrt,
    Tract,
}

impl BackendKind {
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::OrtCpu => "ort-cpu",
            BackendKind::OrtCuda => "ort-cuda",
            BackendKind::OrtTensorrt => "ort-tensorrt",
            BackendKind::Tract => "tract",
        }
    }
}

impl Backend {
    /// Builds a backend from its kind; `device_id` and `cache_dir` apply to the GPU kinds only.
    pub fn from_kind(kind: BackendKind, device_id: i32, cache_dir: Option<PathBuf>) -> Self {
        match kind {
            BackendKind::OrtCpu => Backend::OrtCpu,
            BackendKind::OrtCuda => Backend::OrtCuda { device_id },
            BackendKind::OrtTensorrt => {
                Backend::OrtTensorRt { device_id, cache_dir: cache_dir.unwrap_or_else(default_trt_cache_dir) }
            }
            BackendKind::Tract => Backend::Tract,
        }
    }

    pub fn kind(&self) -> BackendKind {
        match self {
            Backend::OrtCpu => BackendKind::OrtCpu,
            Backend::OrtCuda { .. } => BackendKind::OrtCuda,
            Backend::OrtTensorRt { .. } => BackendKind::OrtTensorrt,
            Backend::Tract => BackendKind::Tract,
        }
    }

    pub fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// Whether this backend is compiled into this build.
    pub fn compiled_in(&self) -> bool {
        match self {
            Backend::OrtCpu => true,
            Backend::OrtCuda { .. } => cfg!(feature = "cuda"),
            Backend::OrtTensorRt { .. } => cfg!(feature = "tensorrt"),
            Backend::Tract => cfg!(feature = "tract"),
        }
    }
}

/// `$XDG_CACHE_HOME/osp/tensorrt`, else `$HOME/.cache/osp/tensorrt`, else `<tmp>/osp-tensorrt`.
pub fn default_trt_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".cache")));
    match base {
        Some(dir) => dir.join("osp").join("tensorrt"),
        None => std::env::temp_dir().join("osp-tensorrt"),
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::OrtCuda { device_id } | Backend::OrtTensorRt { device_id, .. } => {
                write!(f, "{}:{device_id}", self.name())
            }
            _ => f.write_str(self.name()),
        }
    }
}

/// Parses `ort-cpu`, `ort-cuda[:N]`, `ort-tensorrt[:N]` or `tract`.
impl FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (name, device) = match s.split_once(':') {
            Some((n, d)) => (n, Some(d)),
            None => (s, None),
        };
        let kind = <BackendKind as clap::ValueEnum>::from_str(name, true)?;
        let device_id = match device {
            None => 0,
            Some(_) if !matches!(kind, BackendKind::OrtCuda | BackendKind::OrtTensorrt) => {
                return Err(format!("backend `{name}` takes no device id"));
            }
            Some(d) => d.parse::<i32>().map_err(|_| format!("device id `{d}` in `{s}` is not an integer"))?,
        };
        Ok(Backend::from_kind(kind, device_id, None))
    }
}

/// How to build a graph session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOptions {
    pub backend: Backend,
    /// Intra-op threads; `None` lets the backend choose (all cores).
    pub threads: Option<usize>,
    /// Share prepacked weights between the ONNX Runtime CPU sessions of one bundle (on by
    /// default; other backends ignore it).
    pub share_weights: bool,
    /// ONNX Runtime's memory pattern (on by default; tract ignores it): after a run, ORT plans
    /// one block for all of that input shape's intermediates and allocates it whole on the next
    /// run of the shape. For graphs run many times with large, short-lived intermediates (the
    /// streaming VAE decoder inside tiles) the block comes on top of what the allocator still
    /// holds and raises the peak (measured +280 MB from the second tile on, docs/measurements).
    pub memory_pattern: bool,
    /// ONNX Runtime's profiler: per-node events written to a JSON file whose name starts with
    /// this prefix ([`GraphSession::end_profiling`] ends it and names the file). Off by default;
    /// tract sessions refuse it.
    pub profile: Option<PathBuf>,
    /// CUDA / TensorRT settings (TF32, cuDNN search, arena, CPU fallback, TensorRT profile);
    /// CPU backends ignore them.
    pub gpu: GpuOptions,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            backend: Backend::OrtCpu,
            threads: None,
            share_weights: true,
            memory_pattern: true,
            profile: None,
            gpu: GpuOptions::default(),
        }
    }
}

impl SessionOptions {
    pub fn new(backend: Backend) -> Self {
        Self { backend, ..Self::default() }
    }

    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = Some(threads);
        self
    }

    pub fn with_shared_weights(mut self, share: bool) -> Self {
        self.share_weights = share;
        self
    }

    pub fn with_memory_pattern(mut self, enable: bool) -> Self {
        self.memory_pattern = enable;
        self
    }

    pub fn with_profiling(mut self, prefix: impl Into<PathBuf>) -> Self {
        self.profile = Some(prefix.into());
        self
    }

    pub fn with_gpu(mut self, gpu: GpuOptions) -> Self {
        self.gpu = gpu;
        self
    }
}

/// An exported bundle directory with its checked manifest.
#[derive(Debug, Clone)]
pub struct Bundle {
    dir: PathBuf,
    manifest: BundleManifest,
    weights: Arc<SharedWeights>,
}

impl Bundle {
    /// Reads `<dir>/manifest.json` and checks it and the files it names.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let manifest = BundleManifest::load(&dir)?;
        Ok(Self { dir, manifest, weights: Arc::default() })
    }

    /// The weight pool shared by this bundle's ONNX Runtime CPU sessions.
    pub fn shared_weights(&self) -> &SharedWeights {
        &self.weights
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &BundleManifest {
        &self.manifest
    }

    /// The `.onnx` file of `graph`.
    pub fn graph_path(&self, graph: &str) -> Result<PathBuf> {
        Ok(self.dir.join(&self.manifest.graph(graph)?.file))
    }

    /// Loads `graph` on `opts.backend`.
    pub fn session(&self, graph: &str, opts: &SessionOptions) -> Result<GraphSession> {
        let spec = self.manifest.graph(graph)?.clone();
        let path = self.dir.join(&spec.file);
        let shared = BundleWeights { pool: &self.weights, dir: &self.dir, manifest: &self.manifest };
        GraphSession::load_with(graph, spec, &path, opts, Some(shared))
    }
}

/// One loaded graph, ready to run. `run` takes `&mut self` (ONNX Runtime sessions are not safe to
/// run concurrently): keep one session per worker.
pub struct GraphSession {
    graph: String,
    spec: GraphSpec,
    path: PathBuf,
    backend: Backend,
    engine: Box<dyn Engine>,
}

impl fmt::Debug for GraphSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GraphSession")
            .field("graph", &self.graph)
            .field("path", &self.path)
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

impl GraphSession {
    /// Loads the model at `path`, described by `spec`, on `opts.backend`.
    pub fn load(graph: &str, spec: GraphSpec, path: &Path, opts: &SessionOptions) -> Result<Self> {
        Self::load_with(graph, spec, path, opts, None)
    }

    fn load_with(
        graph: &str,
        spec: GraphSpec,
        path: &Path,
        opts: &SessionOptions,
        shared: Option<BundleWeights<'_>>,
    ) -> Result<Self> {
        let _span = tracing::info_span!("load_graph", graph, backend = %opts.backend).entered();
        let start = Instant::now();
        if spec.precision == osp_graphs::Precision::Int8 && opts.backend == Backend::Tract {
            return Err(crate::error::Error::BackendUnavailable {
                backend: opts.backend.to_string(),
                why: format!(
                    "graph `{graph}` is int8 (ONNX Runtime's DynamicQuantizeMatMul), which runs on ONNX Runtime only; \
                     use an ort backend or an f32 bundle"
                ),
            });
        }
        let engine = engine::load(graph, &spec, path, opts, shared)?;
        check::model_io(graph, path, &spec, &engine.input_names(), &engine.output_names())?;
        tracing::info!(
            graph,
            path = %path.display(),
            backend = %opts.backend,
            threads = ?opts.threads,
            ms = start.elapsed().as_millis() as u64,
            "graph loaded"
        );
        Ok(Self { graph: graph.to_string(), spec, path: path.to_path_buf(), backend: opts.backend.clone(), engine })
    }

    pub fn spec(&self) -> &GraphSpec {
        &self.spec
    }

    /// Ends ONNX Runtime's profiler (see [`SessionOptions::profile`]) and returns the path of its
    /// JSON file.
    pub fn end_profiling(&mut self) -> Result<PathBuf> {
        self.engine.end_profiling(&self.graph)
    }

    pub fn name(&self) -> &str {
        &self.graph
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// [`Self::run`] on values in the engine's memory; the outputs stay there (IoBinding on ONNX
    /// Runtime, bound to the session's device).
    pub fn run_resident(
        &mut self,
        inputs: &[(&str, &crate::engine::Resident)],
    ) -> Result<BTreeMap<String, crate::engine::Resident>> {
        let _span = tracing::info_span!("graph_run", graph = %self.graph, backend = %self.backend).entered();
        let bindings = check::resident_inputs(&self.graph, &self.spec, inputs)?;
        let outputs = self.engine.run_resident(&self.graph, inputs)?;
        check::outputs(&self.graph, &self.spec, &bindings, &outputs)?;
        Ok(outputs)
    }

    /// A tensor in the session's device memory for a collective to fill.
    pub fn resident_buffer(&self, dtype: osp_graphs::DType, shape: &[usize]) -> Result<crate::engine::Resident> {
        self.engine.resident_buffer(&self.graph, dtype, shape)
    }

    /// Checks `inputs` against the manifest, runs the graph, and checks that every manifest output
    /// was produced with its dtype and (where the input bindings determine them) dims.
    pub fn run(&mut self, inputs: &[(&str, &Tensor)]) -> Result<BTreeMap<String, Tensor>> {
        let _span = tracing::info_span!("graph_run", graph = %self.graph, backend = %self.backend).entered();
        let bindings = check::inputs(&self.graph, &self.spec, inputs)?;
        let start = Instant::now();
        let outputs = self.engine.run(&self.graph, inputs)?;
        tracing::debug!(graph = %self.graph, us = start.elapsed().as_micros() as u64, "graph ran");
        check::outputs(&self.graph, &self.spec, &bindings, &outputs)?;
        Ok(outputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_names_parse_and_print() {
        assert_eq!("ort-cpu".parse::<Backend>().unwrap(), Backend::OrtCpu);
        assert_eq!("tract".parse::<Backend>().unwrap(), Backend::Tract);
        assert_eq!("ort-cuda:1".parse::<Backend>().unwrap(), Backend::OrtCuda { device_id: 1 });
        assert_eq!(Backend::OrtCuda { device_id: 1 }.to_string(), "ort-cuda:1");
        assert!(matches!("ort-tensorrt".parse::<Backend>().unwrap(), Backend::OrtTensorRt { device_id: 0, .. }));
        assert!("tract:1".parse::<Backend>().unwrap_err().contains("takes no device id"));
        assert!("ort-cuda:x".parse::<Backend>().is_err());
        assert!("cuda".parse::<Backend>().is_err());
    }
}
