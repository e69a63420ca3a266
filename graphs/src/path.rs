//! What a path names on disk, for errors that must say why a file the user named cannot be used:
//! a missing file, a folder, a FIFO, a dangling symbolic link and a symbolic link loop each get
//! their own words instead of one "does not exist". Every existence check of a user-named input
//! file (bundle graph files, prompt files, videos, libraries) goes through [`require_file`].

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// `ELOOP` (Linux, and the value most Unixes share): too many levels of symbolic links.
const ELOOP: i32 = 40;

/// What a path resolves to (symbolic links followed).
#[derive(Debug)]
pub enum PathKind {
    /// Nothing is there.
    Missing,
    /// A regular file (or a symbolic link to one).
    File,
    /// A folder.
    Dir,
    /// A FIFO (named pipe).
    Fifo,
    /// A Unix socket.
    Socket,
    /// A block or character device.
    Device,
    /// A symbolic link whose target does not exist.
    DanglingSymlink { target: Option<PathBuf> },
    /// A symbolic link loop, or a path through one (`ELOOP`).
    SymlinkLoop,
    /// The path cannot be examined (permissions, a component that is not a folder, ...).
    Inaccessible(io::Error),
}

impl PathKind {
    /// Examines `path`, following symbolic links.
    pub fn of(path: &Path) -> Self {
        match std::fs::metadata(path) {
            Ok(m) => Self::of_type(m.file_type()),
            Err(e) if e.raw_os_error() == Some(ELOOP) => PathKind::SymlinkLoop,
            Err(e) if e.kind() == io::ErrorKind::NotFound => match std::fs::symlink_metadata(path) {
                Ok(m) if m.file_type().is_symlink() => {
                    PathKind::DanglingSymlink { target: std::fs::read_link(path).ok() }
                }
                _ => PathKind::Missing,
            },
            Err(e) => PathKind::Inaccessible(e),
        }
    }

    fn of_type(t: std::fs::FileType) -> Self {
        if t.is_file() {
            return PathKind::File;
        }
        if t.is_dir() {
            return PathKind::Dir;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::FileTypeExt;
            if t.is_fifo() {
                return PathKind::Fifo;
            }
            if t.is_socket() {
                return PathKind::Socket;
            }
            if t.is_block_device() || t.is_char_device() {
                return PathKind::Device;
            }
        }
        PathKind::Inaccessible(io::Error::other("not a regular file, folder or known special file"))
    }
}

impl fmt::Display for PathKind {
    /// The predicate of a sentence about the path: "`x` {kind}".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathKind::Missing => write!(f, "does not exist"),
            PathKind::File => write!(f, "is a regular file"),
            PathKind::Dir => write!(f, "is a folder"),
            PathKind::Fifo => write!(f, "is a FIFO (named pipe)"),
            PathKind::Socket => write!(f, "is a socket"),
            PathKind::Device => write!(f, "is a device"),
            PathKind::DanglingSymlink { target: Some(t) } => {
                write!(f, "is a symbolic link to `{}`, which does not exist", t.display())
            }
            PathKind::DanglingSymlink { target: None } => write!(f, "is a symbolic link whose target does not exist"),
            PathKind::SymlinkLoop => write!(f, "is a symbolic link loop (too many levels of symbolic links)"),
            PathKind::Inaccessible(e) => write!(f, "cannot be examined: {e}"),
        }
    }
}

/// `Ok` when `path` is a regular file (symbolic links followed); otherwise why not, as the
/// predicate of a sentence about the path ("does not exist", "is a folder, not a regular file",
/// "is a FIFO (named pipe), not a regular file", "is a symbolic link loop ...").
pub fn require_file(path: &Path) -> Result<(), String> {
    match PathKind::of(path) {
        PathKind::File => Ok(()),
        k @ (PathKind::Dir | PathKind::Fifo | PathKind::Socket | PathKind::Device) => {
            Err(format!("{k}, not a regular file"))
        }
        k => Err(k.to_string()),
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn each_kind_of_path_gets_its_own_words() {
        let dir = std::env::temp_dir().join(format!("osp-graphs-path-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("file"), b"x").unwrap();
        std::os::unix::fs::symlink("loop_b", dir.join("loop_a")).unwrap();
        std::os::unix::fs::symlink("loop_a", dir.join("loop_b")).unwrap();
        std::os::unix::fs::symlink("gone", dir.join("dangling")).unwrap();
        std::os::unix::fs::symlink("file", dir.join("link")).unwrap();
        let fifo = std::process::Command::new("mkfifo").arg(dir.join("fifo")).status().map(|s| s.success());
        let cases: &[(&str, Option<&str>)] = &[
            ("file", None),
            ("link", None),
            ("missing", Some("does not exist")),
            (".", Some("is a folder, not a regular file")),
            ("loop_a", Some("is a symbolic link loop")),
            ("loop_a/x", Some("is a symbolic link loop")),
            ("dangling", Some("is a symbolic link to `gone`, which does not exist")),
            ("file/x", Some("cannot be examined")),
        ];
        for (name, want) in cases {
            let got = require_file(&dir.join(name));
            match (want, &got) {
                (None, Ok(())) => {}
                (Some(w), Err(e)) => assert!(e.starts_with(w), "{name}: `{e}` should start with `{w}`"),
                _ => panic!("{name}: got {got:?}, wanted {want:?}"),
            }
        }
        if matches!(fifo, Ok(true)) {
            let e = require_file(&dir.join("fifo")).unwrap_err();
            assert_eq!(e, "is a FIFO (named pipe), not a regular file");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
