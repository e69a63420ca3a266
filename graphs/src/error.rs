//! Typed errors of the bundle contract.

use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing a file (see `osp_fs`: atomic, never over anything but a regular file).
    #[error(transparent)]
    Write(#[from] osp_fs::Error),
    #[error("parsing {path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: manifest format version {found} is not supported (this build reads version {supported})")]
    FormatVersion { path: PathBuf, found: u32, supported: u32 },
    /// `why` is [`crate::path::require_file`]'s reason ("does not exist", "is a FIFO ...").
    #[error("bundle {bundle}: graph `{graph}` names file `{file}`, which {why}")]
    MissingFile { bundle: PathBuf, graph: String, file: String, why: String },
    #[error(
        "bundle {bundle}: external-data file `{file}` (weights of graphs {graphs}) is {found} bytes, the manifest \
         records {expected}: the file is truncated or was replaced; copy or export the bundle again"
    )]
    DataFileSize { bundle: PathBuf, file: String, graphs: String, expected: u64, found: u64 },
    #[error("bundle {bundle}: graph `{graph}` file `{file}` must be a plain name inside the bundle directory")]
    UnsafeFileName { bundle: PathBuf, graph: String, file: String },
    #[error("bundle has no graph named `{name}` (graphs: {available})")]
    UnknownGraph { name: String, available: String },
    #[error("graph `{graph}`: missing input `{input}` (expected {expected})")]
    MissingInput { graph: String, input: String, expected: String },
    #[error("graph `{graph}`: unexpected input `{input}` (inputs are: {expected})")]
    UnexpectedInput { graph: String, input: String, expected: String },
    #[error("graph `{graph}` input `{input}`: dtype must be {expected}, got {got}")]
    DType { graph: String, input: String, expected: String, got: String },
    #[error("graph `{graph}` input `{input}`: rank must be {expected} (dims {dims}), got shape {got:?}")]
    Rank { graph: String, input: String, expected: usize, dims: String, got: Vec<usize> },
    #[error("graph `{graph}` input `{input}`: dim {axis} must be {expected}, got {got} (shape {shape:?})")]
    Dim { graph: String, input: String, axis: usize, expected: String, got: usize, shape: Vec<usize> },
    #[error("invalid manifest: {0}")]
    Invalid(String),
    #[error("inconsistent pipeline bundle: {0}")]
    Pipeline(String),
    /// One of the errors above, found in the file or bundle `path`.
    #[error("{}: {source}", path.display())]
    In {
        path: PathBuf,
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    /// `self`, naming `path` as where it was found.
    pub fn in_file(self, path: impl Into<PathBuf>) -> Self {
        Error::In { path: path.into(), source: Box::new(self) }
    }
}
