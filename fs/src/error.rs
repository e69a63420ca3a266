//! Typed errors of the write helpers; every variant names the path it is about.

use std::path::PathBuf;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot write {path}: the folder {parent} does not exist")]
    MissingParent { path: PathBuf, parent: PathBuf },
    #[error("cannot write {path}: {parent} is not a folder")]
    ParentNotAFolder { path: PathBuf, parent: PathBuf },
    #[error("cannot write {path}: it is {kind}; {rule}")]
    Unsupported { path: PathBuf, kind: &'static str, rule: &'static str },
    #[error("cannot write {path}: it is a symbolic link to {target}, which does not exist")]
    DanglingLink { path: PathBuf, target: PathBuf },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { action, path, source }
    }
}
