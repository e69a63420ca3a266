//! Writing a folder (bundles, checkpoints, PNG frame folders) as one unit.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::file::{check_parent, parent_of, refused_kind, sync_dir, TempGuard};
use crate::stale::{old_path, temp_path};

const DIR_RULE: &str = "osp replaces folders only (never through a symbolic link)";

/// A folder filled under a temporary name and renamed to its target by [`StagedDir::commit`].
/// Dropped without a commit, it is removed.
pub struct StagedDir {
    target: PathBuf,
    guard: TempGuard,
}

fn check_target(target: &Path) -> Result<()> {
    match std::fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(m) => Err(Error::Unsupported {
            path: target.to_path_buf(),
            kind: if m.file_type().is_symlink() {
                "a symbolic link"
            } else {
                refused_kind(m.file_type()).unwrap_or("a device or FIFO")
            },
            rule: DIR_RULE,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("inspecting", target)(e)),
    }
}

/// Flushes every file and folder under `dir` to disk.
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(Error::io("listing", dir))? {
        let entry = entry.map_err(Error::io("listing", dir))?;
        let path = entry.path();
        let ft = entry.file_type().map_err(Error::io("inspecting", &path))?;
        if ft.is_dir() {
            sync_tree(&path)?;
        } else if ft.is_file() {
            File::open(&path).and_then(|f| f.sync_all()).map_err(Error::io("flushing", &path))?;
        }
    }
    sync_dir(dir);
    Ok(())
}

impl StagedDir {
    /// Creates the staging folder for `target`, whose folder must exist. `target` may be missing or
    /// a folder (replaced at the commit); anything else is refused now, before anything is written.
    pub fn create(target: impl AsRef<Path>) -> Result<Self> {
        let target = target.as_ref();
        if target.file_name().is_none() {
            return Err(Error::Unsupported { path: target.to_path_buf(), kind: "not a folder name", rule: DIR_RULE });
        }
        check_parent(target)?;
        check_target(target)?;
        let staged = temp_path(target);
        std::fs::create_dir(&staged).map_err(Error::io("creating a staging folder for", target))?;
        Ok(Self { target: target.to_path_buf(), guard: TempGuard { path: staged, armed: true } })
    }

    /// The staging folder to write into.
    pub fn path(&self) -> &Path {
        &self.guard.path
    }

    /// The folder this one becomes.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Flushes the staged tree to disk and renames it to the target. An existing target folder is
    /// first renamed aside (`.<name>.osp-old-<pid>-<seq>`), then removed once the new one is in
    /// place; if the process dies in between, [`crate::collect_stale`] moves it back.
    pub fn commit(mut self) -> Result<PathBuf> {
        let target = self.target.clone();
        check_target(&target)?;
        sync_tree(self.path())?;
        let rename_in =
            |staged: &Path| std::fs::rename(staged, &target).map_err(Error::io("renaming into place", &target));
        if std::fs::symlink_metadata(&target).is_ok() {
            let old = old_path(&target);
            std::fs::rename(&target, &old).map_err(Error::io("moving aside the folder to replace", &target))?;
            if let Err(e) = rename_in(self.path()) {
                let _ = std::fs::rename(&old, &target);
                return Err(e);
            }
            // The new folder is in place; an old copy that cannot be removed now is collected later.
            let _ = std::fs::remove_dir_all(&old);
        } else {
            rename_in(self.path())?;
        }
        self.guard.armed = false;
        sync_dir(&parent_of(&target));
        Ok(target)
    }
}

/// Removes the folder `dir` so that no half-removed copy stays under its name: it is first renamed
/// to a temporary name, which [`crate::collect_stale`] removes if the process dies during removal.
pub fn remove_dir(dir: impl AsRef<Path>) -> Result<()> {
    let dir = dir.as_ref();
    let aside = temp_path(dir);
    std::fs::rename(dir, &aside).map_err(Error::io("moving aside the folder to remove", dir))?;
    std::fs::remove_dir_all(&aside).map_err(Error::io("removing", &aside))
}
