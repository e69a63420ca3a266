//! Typed errors of the osp runtime: library discovery, session creation, input checks, runs,
//! tensor files, sampling schedulers and the video path (decoding, encoding, tiling, metrics).

use std::path::PathBuf;

use osp_graphs::DType;

pub type Result<T> = std::result::Result<T, Error>;

/// How to get an ONNX Runtime library; appended to discovery errors.
pub const ORT_LIBRARY_HELP: &str = "get one by running `scripts/setup.sh` in the osp repository (it installs \
     `.osp/onnxruntime/libonnxruntime.so`), or run `pip download --no-deps onnxruntime==1.32.0`, unzip the wheel \
     and set OSP_ORT_DYLIB to the `onnxruntime/capi/libonnxruntime.so.*` inside it";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no ONNX Runtime library found (searched: {}); {ORT_LIBRARY_HELP}", display_paths(.searched))]
    OrtLibraryNotFound { searched: Vec<PathBuf> },
    #[error("environment variable {var} points at {path}, which {why}; {ORT_LIBRARY_HELP}")]
    OrtLibraryEnvMissing { var: &'static str, path: PathBuf, why: String },
    #[error("loading the ONNX Runtime library {path}: {source}")]
    OrtLibraryLoad {
        path: PathBuf,
        #[source]
        source: ort::LoadDynamicError,
    },
    #[error("creating the ONNX Runtime environment: {0}")]
    OrtEnvironment(#[source] ort::Error),
    #[error("registering the {ep} execution provider failed (no CPU fallback is allowed): {source}")]
    EpRegistration {
        ep: &'static str,
        #[source]
        source: ort::Error,
    },
    #[error("backend `{backend}` is not available: {why}")]
    BackendUnavailable { backend: String, why: String },
    /// A TensorRT optimisation profile that does not fit a graph ([`crate::session::gpu`]).
    #[error("TensorRT profile{}: {why}", .graph.as_ref().map(|g| format!(" of graph `{g}`")).unwrap_or_default())]
    TrtProfile { graph: Option<String>, why: String },
    #[error("configuring the {backend} session for {path}: {source}")]
    SessionConfig {
        backend: String,
        path: PathBuf,
        #[source]
        source: ort::Error,
    },
    #[error(transparent)]
    Graph(#[from] osp_graphs::Error),
    /// Writing a file or folder (see `osp_fs`).
    #[error(transparent)]
    Write(#[from] osp_fs::Error),
    #[error("loading model {path}: {source}")]
    ModelLoad {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("graph `{graph}` file {path}: {why}")]
    GraphFile { graph: String, path: PathBuf, why: String },
    #[error(
        "bundle {bundle}: no digests recorded (its manifest predates `file_sha256`); re-export to enable --verify"
    )]
    NoDigests { bundle: PathBuf },
    #[error("bundle {bundle}: the manifest records no digest for `{file}`; re-export to enable --verify")]
    MissingDigest { bundle: PathBuf, file: String },
    #[error(
        "{path}: SHA-256 is {found}, the manifest records {expected}: the file is corrupt or was replaced; copy or \
         export the bundle again"
    )]
    DigestMismatch { path: PathBuf, expected: String, found: String },
    #[error("graph `{graph}` ({path}) does not match the manifest: {why}")]
    ModelMismatch { graph: String, path: PathBuf, why: String },
    #[error("running graph `{graph}`: {source}")]
    Run {
        graph: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("graph `{graph}` did not produce output `{output}` (produced: {produced})")]
    MissingOutput { graph: String, output: String, produced: String },
    #[error("graph `{graph}` output `{output}`: expected {expected}, got {got}")]
    OutputMismatch { graph: String, output: String, expected: String, got: String },
    #[error("{context}: dtype {dtype} is not supported here")]
    UnsupportedDtype { context: String, dtype: String },
    #[error("tensor `{name}`: {why}")]
    Tensor { name: String, why: String },
    #[error("reading tensors from {path}: {why}")]
    SafetensorsRead { path: PathBuf, why: String },
    #[error("writing tensors to {path}: {why}")]
    SafetensorsWrite { path: PathBuf, why: String },
    #[error("scheduler config `{key}`: {why}")]
    InvalidSchedulerConfig { key: String, why: String },
    #[error("{method}: {steps} sampling steps: {rule}")]
    InvalidSamplingSteps { method: String, steps: usize, rule: String },
    #[error(
        "{method} is an ancestral sampler: step {step} needs a noise tensor (standard normal, the sample's shape)"
    )]
    MissingSchedulerNoise { method: String, step: usize },
    #[error("{method} step: {why}")]
    SchedulerStep { method: String, why: String },
    #[error(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    #[error("text encoder bundle {bundle}: {why}")]
    TextEncoder { bundle: PathBuf, why: String },
    #[error("{name}: {rule}")]
    InvalidInput { name: String, rule: String },
    #[error("annotations {path}: {why}")]
    Annotations { path: PathBuf, why: String },
    #[error("npz file {path}: {why}")]
    Npz { path: PathBuf, why: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("initialising FFmpeg: {0}")]
    FfmpegInit(String),
    #[error("{path}: cannot open video: {why}")]
    VideoOpen { path: PathBuf, why: String },
    #[error("{path}: has no video stream")]
    NoVideoStream { path: PathBuf },
    #[error("{path}: decoding failed: {why}")]
    VideoDecode { path: PathBuf, why: String },
    #[error(
        "{path}: too few frames: {rule}, but only {decoded} decoded{} (the video is too short or truncated)",
        declared_note(*.declared)
    )]
    TooFewFrames { path: PathBuf, needed: usize, decoded: usize, declared: u64, rule: String },
    #[error("{path}: writing video failed: {why}")]
    VideoEncode { path: PathBuf, why: String },
    #[error("{what}: {rule}")]
    VideoArg { what: String, rule: String },
    #[error("spatial tiling: {0}")]
    Tiling(String),
    #[error("{metric}: {why}")]
    Metric { metric: &'static str, why: String },
    /// A NaN or an infinity at a stage boundary ([`crate::finite`]).
    #[error("{0}")]
    NonFinite(Box<crate::finite::NonFinite>),
    /// A request whose estimated peak memory exceeds what the host has ([`crate::pipeline::memory`]).
    #[error("{0}")]
    MemoryEstimate(Box<crate::pipeline::memory::MemoryRefusal>),
    /// A collective operation failed ([`crate::parallel`]).
    #[error(transparent)]
    Collective(#[from] crate::parallel::CollectiveError),
    /// A rank of the parallel DiT failed; every other rank was stopped.
    #[error("rank {rank} (CFG group {cfg_group}, sequence rank {sp_rank}), segment `{segment}`: {source}")]
    Rank {
        rank: usize,
        cfg_group: usize,
        sp_rank: usize,
        segment: String,
        #[source]
        source: Box<Error>,
    },
}

fn declared_note(declared: u64) -> String {
    if declared > 0 {
        format!(" of the {declared} the container declares")
    } else {
        String::new()
    }
}

impl Error {
    pub(crate) fn unsupported(context: impl Into<String>, dtype: DType) -> Self {
        Error::UnsupportedDtype { context: context.into(), dtype: dtype.to_string() }
    }
}

fn display_paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "nothing".to_string();
    }
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}
