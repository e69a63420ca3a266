//! Typed errors of the trainer library.

use std::path::PathBuf;

/// Every failure the trainer library reports.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model needs a tensor the checkpoint does not hold.
    #[error("tensor `{path}` is required by the model but missing from the checkpoint")]
    MissingTensor { path: String },
    /// The checkpoint holds a tensor the model has no place for.
    #[error("tensor `{path}` in the checkpoint is unexpected: the model has no such parameter")]
    UnexpectedTensor { path: String },
    /// A checkpoint tensor has another shape than the model parameter.
    #[error("tensor `{path}`: the model expects shape {expected:?}, the checkpoint has {found:?}")]
    ShapeMismatch { path: String, expected: Vec<usize>, found: Vec<usize> },
    /// A checkpoint tensor has another dtype than the model parameter (no silent casts).
    #[error("tensor `{path}`: the model expects dtype {expected}, the checkpoint has {found}")]
    DTypeMismatch { path: String, expected: String, found: String },
    /// A fixed (non-trainable, built-in) tensor in the checkpoint differs from the built-in value.
    #[error("fixed tensor `{path}` differs from its built-in value (max abs diff {max_abs:e})")]
    FixedTensorMismatch { path: String, max_abs: f64 },
    /// Several of the problems above at once; every offending name is listed.
    #[error("checkpoint {} does not match the model ({} problems):\n{}", path.display(), problems.len(), list(problems))]
    Incompatible { path: PathBuf, problems: Vec<Error> },
    /// The checkpoint file cannot be read or has an unsupported layout.
    #[error("checkpoint {}: {why}", path.display())]
    Checkpoint { path: PathBuf, why: String },
    /// A model configuration is invalid or unsupported.
    #[error("config: {0}")]
    Config(String),
    /// The backend cannot compute in the requested dtype (e.g. bfloat16 autocast on Burn's CPU
    /// backend).
    #[error("{what} in {dtype} is not supported by the {backend} backend")]
    UnsupportedDType { what: String, dtype: String, backend: String },
    /// A model input violates a rule (shape, frame count, dtype).
    #[error("input `{name}`: {rule}")]
    InvalidInput { name: String, rule: String },
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A shared data format, media file or schedule handled by the runtime library (npz text
    /// cache, video decode/encode, DDPM tables) failed.
    #[error(transparent)]
    Runtime(#[from] osp_runtime::Error),
    /// Writing a file or folder (see `osp_fs`).
    #[error(transparent)]
    Write(#[from] osp_fs::Error),
    /// Burn's collective operations (data-parallel gradient reduction) failed for one replica.
    #[error(
        "data-parallel replica {peer}: Burn collective {operation}{} failed: {why}",
        param.as_ref().map(|p| format!(" of parameter `{p}`")).unwrap_or_default()
    )]
    Collective { peer: u32, operation: String, param: Option<String>, why: String },
    /// A JSON file failed to parse.
    #[error("{}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

fn list(problems: &[Error]) -> String {
    problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n")
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    pub(crate) fn checkpoint(path: impl Into<PathBuf>, why: impl Into<String>) -> Self {
        Error::Checkpoint { path: path.into(), why: why.into() }
    }

    pub(crate) fn input(name: impl Into<String>, rule: impl Into<String>) -> Self {
        Error::InvalidInput { name: name.into(), rule: rule.into() }
    }
}

/// Result alias of the trainer library.
pub type Result<T> = std::result::Result<T, Error>;
