//! Writing one file: what the target is decides how (see the crate docs for the table).

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::stale::temp_path;

const FILE_RULE: &str =
    "osp replaces regular files (atomically) and streams into character devices and FIFOs, nothing else";

/// How a write to a target path proceeds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// A regular file (`existing`) or nothing at `path`: written to a temporary sibling, then renamed.
    /// `path` is the link target's real path when the given path is a symbolic link.
    Replace { path: PathBuf, existing: Option<std::fs::Permissions> },
    /// A character device or a FIFO (possibly through links): opened for writing and streamed into.
    Stream,
}

/// `path`'s folder (`.` for a bare file name).
pub(crate) fn parent_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Checks that `path`'s folder exists and is a folder.
pub(crate) fn check_parent(path: &Path) -> Result<()> {
    let parent = parent_of(path);
    match std::fs::metadata(&parent) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(Error::ParentNotAFolder { path: path.to_path_buf(), parent }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(Error::MissingParent { path: path.to_path_buf(), parent })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            Err(Error::ParentNotAFolder { path: path.to_path_buf(), parent })
        }
        Err(e) => Err(Error::io("inspecting", parent)(e)),
    }
}

/// What kind of non-regular thing `ft` is, for messages; `None` for streamable kinds.
pub(crate) fn refused_kind(ft: std::fs::FileType) -> Option<&'static str> {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_char_device() || ft.is_fifo() {
        None
    } else if ft.is_dir() {
        Some("a folder")
    } else if ft.is_block_device() {
        Some("a block device")
    } else if ft.is_socket() {
        Some("a socket")
    } else {
        Some("neither a regular file nor a folder")
    }
}

pub(crate) fn classify(path: &Path) -> Result<Target> {
    if path.file_name().is_none() {
        return Err(Error::Unsupported { path: path.to_path_buf(), kind: "not a file name", rule: FILE_RULE });
    }
    let link = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            check_parent(path)?;
            return Ok(Target::Replace { path: path.to_path_buf(), existing: None });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            return Err(Error::ParentNotAFolder { path: path.to_path_buf(), parent: parent_of(path) })
        }
        Err(e) => return Err(Error::io("inspecting", path)(e)),
        Ok(m) => m,
    };
    let meta = if link.file_type().is_symlink() {
        match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let target = std::fs::read_link(path).unwrap_or_default();
                return Err(Error::DanglingLink { path: path.to_path_buf(), target });
            }
            Err(e) => return Err(Error::io("following the link", path)(e)),
        }
    } else {
        link.clone()
    };
    if meta.is_file() {
        let real = if link.file_type().is_symlink() {
            std::fs::canonicalize(path).map_err(Error::io("following the link", path))?
        } else {
            path.to_path_buf()
        };
        return Ok(Target::Replace { path: real, existing: Some(meta.permissions()) });
    }
    match refused_kind(meta.file_type()) {
        None => Ok(Target::Stream),
        Some(kind) => Err(Error::Unsupported { path: path.to_path_buf(), kind, rule: FILE_RULE }),
    }
}

/// Removes a temporary (file or folder) on drop unless disarmed.
pub(crate) struct TempGuard {
    pub(crate) path: PathBuf,
    pub(crate) armed: bool,
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = match std::fs::symlink_metadata(&self.path) {
                Ok(m) if m.is_dir() => std::fs::remove_dir_all(&self.path),
                Ok(_) => std::fs::remove_file(&self.path),
                Err(_) => Ok(()),
            };
        }
    }
}

/// Best-effort fsync of a folder, so a rename inside it is durable.
pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Flushes `tmp` to disk and renames it to `target`.
fn commit(tmp: &Path, target: &Path) -> Result<()> {
    File::open(tmp).and_then(|f| f.sync_all()).map_err(Error::io("flushing", tmp))?;
    std::fs::rename(tmp, target).map_err(Error::io("renaming the finished temporary into place at", target))?;
    sync_dir(&parent_of(target));
    Ok(())
}

fn open_stream(path: &Path) -> Result<File> {
    OpenOptions::new().write(true).open(path).map_err(Error::io("opening for writing", path))
}

/// Checks now, before any work, that a later file write to `path` can proceed: its folder exists
/// and it is missing, a regular file (directly or through a link), a character device or a FIFO.
pub fn check_file_target(path: impl AsRef<Path>) -> Result<()> {
    classify(path.as_ref()).map(|_| ())
}

/// Writes `path` from `bytes`; see [`write_with`].
pub fn write_bytes(path: impl AsRef<Path>, bytes: impl AsRef<[u8]>) -> Result<()> {
    write_with(path, |w| w.write_all(bytes.as_ref()))
}

/// Writes `path` through `write`. A regular file or nothing at `path`: `write` fills a temporary
/// sibling (see [`crate::temp_path`]), which is flushed to disk and renamed over `path` only when
/// `write` succeeded; on any error the temporary is removed and `path` is untouched. A character
/// device or FIFO: `write` streams straight into it. The folder must exist.
pub fn write_with(path: impl AsRef<Path>, write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>) -> Result<()> {
    let path = path.as_ref();
    match classify(path)? {
        Target::Stream => {
            let mut w = BufWriter::new(open_stream(path)?);
            write(&mut w).map_err(Error::io("writing", path))?;
            w.flush().map_err(Error::io("writing", path))
        }
        Target::Replace { path: real, existing } => {
            let tmp = temp_path(&real);
            let file = OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(Error::io("creating a temporary file for", &real))?;
            let mut guard = TempGuard { path: tmp, armed: true };
            if let Some(perm) = existing {
                let _ = file.set_permissions(perm);
            }
            let mut w = BufWriter::new(file);
            write(&mut w).map_err(Error::io("writing", &real))?;
            let file = w.into_inner().map_err(|e| Error::io("writing", &real)(e.into_error()))?;
            file.sync_all().map_err(Error::io("flushing", &real))?;
            drop(file);
            std::fs::rename(&guard.path, &real)
                .map_err(Error::io("renaming the finished temporary into place at", &real))?;
            guard.armed = false;
            sync_dir(&parent_of(&real));
            Ok(())
        }
    }
}

/// Writes `path` through a writer that needs a path of its own (FFmpeg muxers, library `save`
/// functions): `write` gets a fresh path to create, which is then handled as [`write_with`]'s
/// temporary. For a character device or FIFO the temporary lives in the system temporary folder
/// and its bytes are streamed into `path` afterwards. `write` must create a regular file there.
pub fn write_via_path<E: From<Error>>(
    path: impl AsRef<Path>,
    write: impl FnOnce(&Path) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let path = path.as_ref();
    let target = classify(path)?;
    let (tmp, real) = match &target {
        Target::Replace { path: real, .. } => (temp_path(real), real.clone()),
        Target::Stream => (temp_path(&std::env::temp_dir().join("osp-stream")), path.to_path_buf()),
    };
    let guard = TempGuard { path: tmp, armed: true };
    write(&guard.path)?;
    let made = std::fs::symlink_metadata(&guard.path).map_err(Error::io("reading the written temporary of", &real))?;
    if !made.is_file() {
        return Err(Error::Unsupported {
            path: guard.path.clone(),
            kind: "not a regular file after writing",
            rule: "a path writer must create a regular file",
        }
        .into());
    }
    let mut guard = guard;
    match target {
        Target::Replace { existing, .. } => {
            if let Some(perm) = existing {
                let _ = std::fs::set_permissions(&guard.path, perm);
            }
            commit(&guard.path, &real)?;
            guard.armed = false;
        }
        Target::Stream => {
            let mut from = File::open(&guard.path).map_err(Error::io("reading the written temporary of", &real))?;
            let mut to = open_stream(&real)?;
            std::io::copy(&mut from, &mut to).map_err(Error::io("writing", &real))?;
        }
    }
    Ok(())
}
