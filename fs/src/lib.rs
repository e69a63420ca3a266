//! How osp writes files: every writer of the workspace (manifests, bundles, checkpoints, videos,
//! caches, dumps) goes through this crate, so an interrupted or failed write never leaves a
//! half-written file under a valid name and never replaces anything but a regular file or a folder.
//!
//! | the target is | a file write ([`write_bytes`], [`write_with`], [`write_via_path`]) | a folder write ([`StagedDir`]) |
//! |---|---|---|
//! | missing, folder exists | temporary sibling, fsync, rename | staging folder, fsync, rename |
//! | a regular file | same, keeping the file's permissions | refused |
//! | a folder | refused | staged, then swapped in (old copy removed) |
//! | a symbolic link | written through to the regular file it points at (atomically, in that file's folder); a link to a device or FIFO streams into it; a dangling link is refused | refused |
//! | a character device or FIFO (`/dev/null`, `/dev/stdout`, a pipe) | streamed into, never renamed over | refused |
//! | a block device, socket | refused | refused |
//! | in a missing folder | refused, naming the folder | refused, naming the folder |
//!
//! Temporaries are named `.<name>.osp-tmp-<pid>-<seq>` next to the target ([`temp_path`]). Error
//! paths remove them; a process killed mid-write leaves them behind, and [`collect_stale`] (called
//! by each command on the folders it writes to) removes those whose process no longer runs. The
//! contract for users is in `docs/RELIABILITY.md`.

mod dir;
mod error;
mod file;
mod stale;

pub use dir::{remove_dir, StagedDir};
pub use error::{Error, Result};
pub use file::{check_file_target, write_bytes, write_via_path, write_with};
#[cfg(feature = "tracing")]
pub use stale::collect_stale_logged;
pub use stale::{collect_stale, is_temporary, temp_path, temporaries, Collected};
