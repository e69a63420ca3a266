//! Typed errors of the exporter.

use std::path::PathBuf;

use osp_graphs::DType;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: safetensors: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Manifest(#[from] osp_graphs::Error),
    /// Writing a file or folder (see `osp_fs`).
    #[error(transparent)]
    Write(#[from] osp_fs::Error),
    /// A model config or checkpoint read through `osp_trainer`.
    #[error(transparent)]
    Trainer(#[from] osp_trainer::Error),
    #[error("weights: missing tensor `{key}` (expected shape {expected:?})")]
    MissingTensor { key: String, expected: Vec<usize> },
    #[error("weights: unexpected tensor(s) {keys:?} (the model has no such parameter)")]
    UnexpectedTensors { keys: Vec<String> },
    #[error("weights: tensor `{key}` must have shape {expected:?}, got {got:?}")]
    Shape { key: String, expected: Vec<usize>, got: Vec<usize> },
    #[error("weights: tensor `{key}` must be {expected}, got {got}")]
    TensorDType { key: String, expected: DType, got: DType },
    #[error("tensor `{name}`: {len} data bytes do not hold shape {shape:?} of {dtype} ({expected} bytes)")]
    DataLength { name: String, dtype: DType, shape: Vec<usize>, len: usize, expected: usize },
    #[error("graph builder: {op}: {message}")]
    Builder { op: String, message: String },
    #[error("graph `{graph}`: {message}")]
    Graph { graph: String, message: String },
    #[error("invalid config: {0}")]
    Config(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    pub(crate) fn builder(op: &str, message: impl Into<String>) -> Self {
        Error::Builder { op: op.to_string(), message: message.into() }
    }
}
