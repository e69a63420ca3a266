//! Bundles and graph sessions: the one place where backend sessions are built.
//!
//! `Bundle::open` reads and checks `manifest.json`; `Bundle::session` loads one graph on the chosen
//! backend. `GraphSession::run` checks the call's inputs against the manifest before running and
//! the outputs against it afterwards, so a wrong tensor fails with its name and the rule it broke.
//! ONNX Runtime execution providers are registered with `.error_on_failure()`: asking for CUDA or
//! TensorRT never silently runs on the CPU.
//!
//! Weight sharing: the ONNX Runtime CPU sessions of one bundle share one prepacked-weights
//! container (`CreateSessionWithPrepackedWeightsContainer`), so a kernel's prepacked copy of a
//! weight that several graphs hold (the streaming decoder graphs) is made once, and one in-memory
//! copy of each external-data file that several graphs reference (`decoder.onnx.data` for the
//! WFVAE decoders), handed to each session with `AddExternalInitializersFromMemory` and
//! `session.use_external_initializer_file_buffers_directly = 1` so that ORT reads the weights
//! from that buffer instead of copying them. Without sharing, each session memory-maps the file
//! on its own and its pages are resident once per mapping (3 x 440 MB for the streaming WFVAE
//! decoder); without the config entry ORT copies the buffer per session (both measured, see
//! docs/measurements). tract sessions share nothing.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use ort::session::builder::{GraphOptimizationLevel, PrepackedWeights};
use ort::session::Session;
use osp_graphs::{BundleManifest, Dim, GraphSpec, SymbolBindings};

use crate::backend;
use crate::error::{Error, Result};
use crate::tensor::{input_view, Tensor};

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
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self { backend: Backend::OrtCpu, threads: None, share_weights: true, memory_pattern: true, profile: None }
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
}

/// What the ONNX Runtime CPU sessions of one bundle share: one prepacked-weights container,
/// created with the first session, and one in-memory copy of each external-data file that
/// several of the bundle's graphs reference, read when the first of them loads. Clones of a
/// [`Bundle`] share one pool.
#[derive(Default)]
pub struct SharedWeights {
    prepacked: OnceLock<PrepackedWeights>,
    /// How many of the bundle's graphs reference each external-data file.
    references: OnceLock<BTreeMap<String, usize>>,
    /// The shared external-data files read so far.
    data: Mutex<BTreeMap<String, Arc<[u8]>>>,
}

impl fmt::Debug for SharedWeights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedWeights").field("prepacked", &self.prepacked.get().is_some()).finish()
    }
}

impl SharedWeights {
    /// Whether a session has used the pool yet.
    pub fn in_use(&self) -> bool {
        self.prepacked.get().is_some()
    }

    /// The external-data files this pool has read into memory, by name.
    pub fn shared_files(&self) -> Vec<String> {
        self.data.lock().map(|d| d.keys().cloned().collect()).unwrap_or_default()
    }

    /// The in-memory external-data files for the graph at `model`: when it references a file that
    /// other graphs of `bundle` reference too, every file it references (the shared ones from the
    /// pool); else none (its files stay memory-mapped).
    fn data_for(&self, bundle: &Bundle, model: &Path) -> Result<Vec<(String, Arc<[u8]>)>> {
        if bundle.manifest.data_files.is_empty() {
            return Ok(Vec::new());
        }
        let read = |path: &Path| std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source });
        let references = match self.references.get() {
            Some(r) => r,
            None => {
                let mut counts = BTreeMap::new();
                for spec in bundle.manifest.graphs.values() {
                    let bytes = read(&bundle.dir.join(&spec.file))?;
                    for name in bundle.manifest.data_files.keys() {
                        if references_data_file(&bytes, name) {
                            *counts.entry(name.clone()).or_insert(0usize) += 1;
                        }
                    }
                }
                self.references.get_or_init(|| counts)
            }
        };
        let bytes = read(model)?;
        let used: Vec<(&String, usize)> =
            references.iter().filter(|(name, _)| references_data_file(&bytes, name)).map(|(n, &c)| (n, c)).collect();
        // ORT wants every external file of a model from memory once one is: a file only this
        // graph uses is read for it alone.
        if used.iter().all(|&(_, count)| count < 2) {
            return Ok(Vec::new());
        }
        let mut data = Vec::new();
        for (name, count) in used {
            if count < 2 {
                data.push((name.clone(), read_shared(&bundle.dir.join(name))?));
                continue;
            }
            let mut files = self.data.lock().map_err(|_| Error::Io {
                path: bundle.dir.join(name),
                source: std::io::Error::other("a thread panicked while reading the shared weights"),
            })?;
            let file = match files.get(name) {
                Some(file) => file.clone(),
                None => {
                    let file = read_shared(&bundle.dir.join(name))?;
                    tracing::debug!(file = %name, bytes = file.len(), "external data read once for the bundle's sessions");
                    files.insert(name.clone(), file.clone());
                    file
                }
            };
            data.push((name.clone(), file));
        }
        Ok(data)
    }

    /// The shared prepacked-weights container, after loading ONNX Runtime (creating one needs it).
    fn prepacked_after_init(&self) -> Result<&PrepackedWeights> {
        crate::ort_lib::environment()?;
        Ok(self.prepacked.get_or_init(PrepackedWeights::new))
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
        let shared = (opts.share_weights && opts.backend == Backend::OrtCpu).then_some(&*self.weights);
        let data = match shared {
            Some(pool) => pool.data_for(self, &path)?,
            None => Vec::new(),
        };
        GraphSession::load_with(graph, spec, &path, opts, shared, &data)
    }
}

enum Inner {
    Ort(Box<Session>),
    #[cfg(feature = "tract")]
    Tract(Box<backend::tract::TractGraph>),
}

/// One loaded graph, ready to run. `run` takes `&mut self` (ONNX Runtime sessions are not safe to
/// run concurrently): keep one session per worker.
pub struct GraphSession {
    graph: String,
    spec: GraphSpec,
    path: PathBuf,
    backend: Backend,
    inner: Inner,
    /// The in-memory external-data files ONNX Runtime reads its initializers from directly
    /// (`use_external_initializer_file_buffers_directly`): they must outlive the session.
    _weights: Vec<Arc<[u8]>>,
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
        Self::load_with(graph, spec, path, opts, None, &[])
    }

    fn load_with(
        graph: &str,
        spec: GraphSpec,
        path: &Path,
        opts: &SessionOptions,
        shared: Option<&SharedWeights>,
        data: &[(String, Arc<[u8]>)],
    ) -> Result<Self> {
        let _span = tracing::info_span!("load_graph", graph, backend = %opts.backend).entered();
        let start = Instant::now();
        let inner = match &opts.backend {
            Backend::Tract => load_tract(graph, path, opts)?,
            ort_backend => {
                let prepacked = shared.map(SharedWeights::prepacked_after_init).transpose()?;
                Inner::Ort(Box::new(build_ort_session(graph, path, ort_backend, opts, prepacked, data)?))
            }
        };
        let (inputs, outputs) = match &inner {
            Inner::Ort(s) => (
                s.inputs().iter().map(|o| o.name().to_string()).collect::<Vec<_>>(),
                s.outputs().iter().map(|o| o.name().to_string()).collect::<Vec<_>>(),
            ),
            #[cfg(feature = "tract")]
            Inner::Tract(t) => (t.input_names().to_vec(), t.output_names().to_vec()),
        };
        check_model_io(graph, path, &spec, &inputs, &outputs)?;
        tracing::info!(
            graph,
            path = %path.display(),
            backend = %opts.backend,
            threads = ?opts.threads,
            ms = start.elapsed().as_millis() as u64,
            "graph loaded"
        );
        Ok(Self {
            graph: graph.to_string(),
            spec,
            path: path.to_path_buf(),
            backend: opts.backend.clone(),
            inner,
            _weights: data.iter().map(|(_, bytes)| bytes.clone()).collect(),
        })
    }

    pub fn spec(&self) -> &GraphSpec {
        &self.spec
    }

    /// Ends ONNX Runtime's profiler (see [`SessionOptions::profile`]) and returns the path of its
    /// JSON file.
    pub fn end_profiling(&mut self) -> Result<PathBuf> {
        match &mut self.inner {
            Inner::Ort(session) => session
                .end_profiling()
                .map(PathBuf::from)
                .map_err(|e| Error::Run { graph: self.graph.clone(), source: Box::new(e) }),
            #[cfg(feature = "tract")]
            Inner::Tract(_) => Err(tract_profiling(&self.graph)),
        }
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

    /// Checks `inputs` against the manifest, runs the graph, and checks that every manifest output
    /// was produced with its dtype and (where the input bindings determine them) dims.
    pub fn run(&mut self, inputs: &[(&str, &Tensor)]) -> Result<BTreeMap<String, Tensor>> {
        let _span = tracing::info_span!("graph_run", graph = %self.graph, backend = %self.backend).entered();
        let views: Vec<_> = inputs.iter().map(|(name, t)| input_view(name, t)).collect();
        let bindings = self.spec.check_inputs(&self.graph, &views)?;
        let start = Instant::now();
        let outputs = match &mut self.inner {
            Inner::Ort(session) => backend::ort::run(session, &self.graph, inputs)?,
            #[cfg(feature = "tract")]
            Inner::Tract(t) => t.run(&self.graph, inputs)?,
        };
        tracing::debug!(graph = %self.graph, us = start.elapsed().as_micros() as u64, "graph ran");
        check_outputs(&self.graph, &self.spec, &bindings, &outputs)?;
        Ok(outputs)
    }
}

#[cfg(feature = "tract")]
fn tract_profiling(graph: &str) -> Error {
    Error::BackendUnavailable {
        backend: "tract".into(),
        why: format!("graph `{graph}`: profiling is an ONNX Runtime feature; use an ort backend to profile"),
    }
}

#[cfg(feature = "tract")]
fn load_tract(graph: &str, path: &Path, opts: &SessionOptions) -> Result<Inner> {
    if opts.profile.is_some() {
        return Err(tract_profiling(graph));
    }
    Ok(Inner::Tract(Box::new(backend::tract::TractGraph::load(graph, path, opts.threads)?)))
}

#[cfg(not(feature = "tract"))]
fn load_tract(_graph: &str, _path: &Path, _opts: &SessionOptions) -> Result<Inner> {
    Err(Error::BackendUnavailable {
        backend: "tract".into(),
        why: "osp-runtime was built without the `tract` feature (rebuild with `--features tract`)".into(),
    })
}

/// Builds an ONNX Runtime session: intra-op threads, optimization level 3, the memory pattern
/// setting, then the execution providers of `backend` (TensorRT before CUDA), each failing
/// loudly. `prepacked` is a container shared with other sessions.
fn build_ort_session(
    graph: &str,
    path: &Path,
    backend: &Backend,
    opts: &SessionOptions,
    prepacked: Option<&PrepackedWeights>,
    data: &[(String, Arc<[u8]>)],
) -> Result<Session> {
    let SessionOptions { threads, memory_pattern, ref profile, .. } = *opts;
    // The provider list is resolved first: a backend compiled out is reported before the library
    // is even looked for.
    let eps = match backend {
        Backend::OrtCpu => vec![crate::ep::cpu::dispatch()],
        Backend::OrtCuda { device_id } => vec![crate::ep::cuda::dispatch(*device_id)?],
        Backend::OrtTensorRt { device_id, cache_dir } => {
            vec![crate::ep::tensorrt::dispatch(*device_id, cache_dir, graph)?, crate::ep::cuda::dispatch(*device_id)?]
        }
        Backend::Tract => unreachable!("tract sessions are not built by ONNX Runtime"),
    };
    let env = crate::ort_lib::environment()?;
    let config =
        |source: ort::Error| Error::SessionConfig { backend: backend.to_string(), path: path.to_path_buf(), source };
    let mut builder = Session::builder(env).map_err(config)?;
    if let Some(n) = threads {
        builder = builder.with_intra_threads(n).map_err(|e| config(e.into()))?;
    }
    builder = builder.with_optimization_level(GraphOptimizationLevel::Level3).map_err(|e| config(e.into()))?;
    if !memory_pattern {
        builder = builder.with_memory_pattern(false).map_err(|e| config(e.into()))?;
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

/// The bytes of the file at `path`, read straight into a shared buffer (no second copy of a
/// weight file while it loads).
fn read_shared(path: &Path) -> Result<Arc<[u8]>> {
    use std::io::Read;
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let len = usize::try_from(file.metadata().map_err(io)?.len())
        .map_err(|_| io(std::io::Error::other("the file does not fit in memory")))?;
    let mut buf = Arc::<[u8]>::new_uninit_slice(len);
    let slots = Arc::get_mut(&mut buf).expect("a buffer just created has one owner");
    slots.fill(std::mem::MaybeUninit::new(0));
    // SAFETY: every byte was initialised by the fill above.
    let mut buf = unsafe { buf.assume_init() };
    file.read_exact(Arc::get_mut(&mut buf).expect("a buffer just created has one owner")).map_err(io)?;
    Ok(buf)
}

/// Whether the serialized ONNX model `model` names `file` as an initializer's external-data
/// `location`: the entry's value is stored as protobuf field 2 (tag byte 0x12) followed by its
/// length, then the name, so `file` is not matched inside a longer name.
fn references_data_file(model: &[u8], file: &str) -> bool {
    let name = file.as_bytes();
    let mut needle = vec![0x12];
    let mut len = name.len();
    while len >= 0x80 {
        needle.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    needle.push(len as u8);
    needle.extend_from_slice(name);
    model.windows(needle.len()).any(|w| w == needle.as_slice())
}

/// The model's own input and output names must match the manifest's.
fn check_model_io(graph: &str, path: &Path, spec: &GraphSpec, inputs: &[String], outputs: &[String]) -> Result<()> {
    let mismatch = |why: String| Error::ModelMismatch { graph: graph.to_string(), path: path.to_path_buf(), why };
    for (kind, model_names, spec_names) in [
        ("input", inputs, spec.inputs.iter().map(|t| t.name.as_str()).collect::<Vec<_>>()),
        ("output", outputs, spec.outputs.iter().map(|t| t.name.as_str()).collect::<Vec<_>>()),
    ] {
        for name in &spec_names {
            if !model_names.iter().any(|m| m == name) {
                return Err(mismatch(format!(
                    "the manifest names {kind} `{name}`, which the model lacks (model {kind}s: {})",
                    model_names.join(", ")
                )));
            }
        }
        if kind == "input" {
            if let Some(extra) = model_names.iter().find(|m| !spec_names.contains(&m.as_str())) {
                return Err(mismatch(format!("the model has input `{extra}`, which the manifest does not name")));
            }
        }
    }
    Ok(())
}

fn check_outputs(
    graph: &str,
    spec: &GraphSpec,
    bindings: &SymbolBindings,
    outputs: &BTreeMap<String, Tensor>,
) -> Result<()> {
    for out in &spec.outputs {
        let Some(t) = outputs.get(&out.name) else {
            return Err(Error::MissingOutput {
                graph: graph.to_string(),
                output: out.name.clone(),
                produced: outputs.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        };
        let mismatch = |expected: String| Error::OutputMismatch {
            graph: graph.to_string(),
            output: out.name.clone(),
            expected,
            got: t.describe(),
        };
        if t.dtype() != out.dtype || t.shape().len() != out.dims.len() {
            return Err(mismatch(format!("{} {}", out.dtype, out.dims_string())));
        }
        for (axis, (dim, &got)) in out.dims.iter().zip(t.shape()).enumerate() {
            let want = match dim {
                Dim::Fixed(v) => Some(*v),
                Dim::Symbolic(s) => bindings.get(s).copied(),
            };
            if let Some(want) = want.filter(|&w| w != got) {
                return Err(mismatch(format!("{} {} (dim {axis} = {want})", out.dtype, out.dims_string())));
            }
        }
    }
    Ok(())
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
