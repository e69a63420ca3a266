//! The one temporary naming convention, and collection of temporaries whose writer has died.
//!
//! A file or folder being written to `<dir>/<name>` lives at `<dir>/.<name>.osp-tmp-<pid>-<seq>`
//! until it is renamed into place; a folder being replaced waits at `<dir>/.<name>.osp-old-<pid>-<seq>`
//! between the two renames of [`crate::StagedDir::commit`]. `<pid>` is the writing process, `<seq>`
//! a per-process counter (two threads never share a name).
//!
//! [`collect_stale`] also recognises the names earlier osp versions used, so their leftovers go too:
//! `<name>.tmp-<pid>` and `.<name>.tmp-<pid>`, `<name>.partial-<pid>`, `<name>.old-<pid>` (a replaced
//! bundle) and `<name>.json.partial` / `<name>.safetensors.partial` (no pid).

use std::ffi::OsStr;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

const TMP_TAG: &str = ".osp-tmp-";
const OLD_TAG: &str = ".osp-old-";

static SEQ: AtomicU64 = AtomicU64::new(0);

fn sibling(target: &Path, tag: &str) -> PathBuf {
    let name = target.file_name().unwrap_or_else(|| OsStr::new("out"));
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!("{tag}{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
    target.with_file_name(tmp)
}

/// `<dir>/.<name>.osp-tmp-<pid>-<seq>`: where `target` is written before it is renamed into place.
pub fn temp_path(target: &Path) -> PathBuf {
    sibling(target, TMP_TAG)
}

/// `<dir>/.<name>.osp-old-<pid>-<seq>`: where a replaced folder waits until the new one is in place.
pub(crate) fn old_path(target: &Path) -> PathBuf {
    sibling(target, OLD_TAG)
}

/// A recognised temporary name: its writer's pid (none for the pid-less legacy `.partial`) and,
/// for a replaced folder, the name it is to be restored to when that name is free.
#[derive(Debug, PartialEq, Eq)]
struct Parsed {
    pid: Option<u32>,
    restore: Option<String>,
}

fn digits(s: &str) -> Option<u32> {
    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok()).flatten()
}

fn parse(name: &str) -> Option<Parsed> {
    for (tag, restores) in [(TMP_TAG, false), (OLD_TAG, true)] {
        if let (true, Some(at)) = (name.starts_with('.'), name.rfind(tag)) {
            let (pid, seq) = name[at + tag.len()..].split_once('-')?;
            let (pid, _) = (digits(pid)?, digits(seq)?);
            let original = name.get(1..at)?;
            return Some(Parsed { pid: Some(pid), restore: restores.then(|| original.to_string()) });
        }
    }
    for (tag, restores) in [(".tmp-", false), (".partial-", false), (".old-", true)] {
        if let Some(at) = name.rfind(tag) {
            if let Some(pid) = digits(&name[at + tag.len()..]) {
                return Some(Parsed { pid: Some(pid), restore: restores.then(|| name[..at].to_string()) });
            }
        }
    }
    (name.ends_with(".json.partial") || name.ends_with(".safetensors.partial"))
        .then_some(Parsed { pid: None, restore: None })
}

/// Whether `name` is a temporary name of osp (this convention or an earlier one), whatever its pid.
pub fn is_temporary(name: &OsStr) -> bool {
    name.to_str().and_then(parse).is_some()
}

/// The temporaries (any convention, live writers included) directly inside `dir`; for tests and checks.
pub fn temporaries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(Error::io("listing", dir))? {
        let entry = entry.map_err(Error::io("listing", dir))?;
        if is_temporary(&entry.file_name()) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Whether process `pid` is running. Without `/proc` nothing can be told and every pid counts as alive.
fn alive(pid: u32) -> bool {
    if pid == std::process::id() || !Path::new("/proc/self").exists() {
        return true;
    }
    Path::new("/proc").join(pid.to_string()).exists()
}

/// One leftover [`collect_stale`] dealt with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Collected {
    /// A temporary file or folder of a dead writer, removed.
    Removed(PathBuf),
    /// A folder that was being replaced when its writer died, before the new one was in place:
    /// moved back to its name.
    Restored { from: PathBuf, to: PathBuf },
}

impl fmt::Display for Collected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Collected::Removed(p) => write!(f, "removed {}, left by a process that no longer runs", p.display()),
            Collected::Restored { from, to } => write!(
                f,
                "restored {} from {}: its replacement was interrupted before the new one was in place",
                to.display(),
                from.display()
            ),
        }
    }
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Removes the temporaries directly inside `dir` whose writing process no longer runs (a missing
/// `dir` has none). A replaced folder whose new version never arrived is renamed back instead.
/// Temporaries of running processes (this one included) are left alone; a pid taken over by another
/// process only delays the collection.
pub fn collect_stale(dir: &Path) -> Result<Vec<Collected>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
            return Ok(Vec::new())
        }
        Err(e) => return Err(Error::io("listing", dir)(e)),
    };
    let mut out = Vec::new();
    let mut names: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
    names.sort();
    for name in names {
        let Some(parsed) = name.to_str().and_then(parse) else { continue };
        if parsed.pid.is_some_and(alive) {
            continue;
        }
        let path = dir.join(&name);
        if let Some(original) = parsed.restore.filter(|o| !o.is_empty()) {
            let to = dir.join(original);
            if std::fs::symlink_metadata(&to).is_err() {
                std::fs::rename(&path, &to).map_err(Error::io("restoring", &to))?;
                out.push(Collected::Restored { from: path, to });
                continue;
            }
        }
        remove_any(&path).map_err(Error::io("removing the stale temporary", &path))?;
        out.push(Collected::Removed(path));
    }
    Ok(out)
}

/// [`collect_stale`] for a command about to write into `dir`: each removal or restore is logged as a
/// warning, and a failure to collect is logged and otherwise ignored (it never blocks the write).
#[cfg(feature = "tracing")]
pub fn collect_stale_logged(dir: &Path) {
    match collect_stale(dir) {
        Ok(done) => {
            for c in done {
                tracing::warn!("{c}");
            }
        }
        Err(e) => tracing::warn!(error = %e, "could not collect stale temporaries"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_convention() {
        let p = |pid: Option<u32>, restore: Option<&str>| Some(Parsed { pid, restore: restore.map(String::from) });
        assert_eq!(parse(".a.mp4.osp-tmp-12-0"), p(Some(12), None));
        assert_eq!(parse(".checkpoint-5.osp-tmp-7-33"), p(Some(7), None));
        assert_eq!(parse(".my.bundle.osp-old-9-1"), p(Some(9), Some("my.bundle")));
        assert_eq!(parse(".a.mp4.tmp-4411"), p(Some(4411), None));
        assert_eq!(parse(".checkpoint-10.tmp-99"), p(Some(99), None));
        assert_eq!(parse("ab12.tmp-5"), p(Some(5), None));
        assert_eq!(parse("x.npz.partial-77"), p(Some(77), None));
        assert_eq!(parse("e2e.pipeline.old-3"), p(Some(3), Some("e2e.pipeline")));
        assert_eq!(parse("manifest.json.partial"), p(None, None));
        assert_eq!(parse("t.safetensors.partial"), p(None, None));
        for keep in ["a.mp4", ".hidden", "download.partial", "x.tmp-", "x.tmp-1a", ".a.osp-tmp-1", "checkpoint-3", ""] {
            assert_eq!(parse(keep), None, "{keep}");
        }
        let t = temp_path(Path::new("/d/out.mp4"));
        assert!(is_temporary(t.file_name().unwrap()), "{}", t.display());
        assert_eq!(t.parent(), Some(Path::new("/d")));
        assert_ne!(temp_path(Path::new("/d/out.mp4")), temp_path(Path::new("/d/out.mp4")));
    }
}
