//! Finds and loads the ONNX Runtime shared library once per process.
//!
//! `ort` is built with `load-dynamic`: nothing is linked at build time, and without an explicit path
//! `ort` panics inside `EnvironmentBuilder::build`. So the runtime always resolves the path itself,
//! checks that the file exists, and only then calls `ort::init_from`. Search order:
//!
//! 1. `OSP_ORT_DYLIB`, then `ORT_DYLIB_PATH` (a set variable that names a missing file is an error,
//!    never a silent fall-through to the next candidate);
//! 2. `libonnxruntime.so*` in the directory of the running executable;
//! 3. `<ancestor>/.osp/onnxruntime/libonnxruntime.so` for every ancestor of the executable's
//!    directory, then of the current directory (where `scripts/setup.sh` installs it, so
//!    `target/release/osp` and `cargo test` find the repository copy).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::environment::Environment;

use crate::error::{Error, Result};

/// Environment variables naming the library, in priority order.
pub const ENV_VARS: [&str; 2] = ["OSP_ORT_DYLIB", "ORT_DYLIB_PATH"];
/// Where `scripts/setup.sh` installs the library, relative to the repository root.
pub const REPO_RELATIVE: &str = ".osp/onnxruntime/libonnxruntime.so";
const LIB_PREFIX: &str = "libonnxruntime.so";

static ENVIRONMENT: OnceLock<(PathBuf, Environment)> = OnceLock::new();
static INIT_LOCK: Mutex<()> = Mutex::new(());

/// Resolves the library path from the process environment, executable location and current directory.
pub fn find_library() -> Result<PathBuf> {
    let exe_dir = std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf));
    let cwd = std::env::current_dir().ok();
    find_library_with(|var| std::env::var_os(var), exe_dir.as_deref(), cwd.as_deref())
}

/// The search itself, with the environment lookup and directories passed in (testable without
/// touching the process environment).
pub fn find_library_with(
    lookup: impl Fn(&str) -> Option<OsString>,
    exe_dir: Option<&Path>,
    cwd: Option<&Path>,
) -> Result<PathBuf> {
    let mut searched = Vec::new();
    for var in ENV_VARS {
        let Some(value) = lookup(var).filter(|v| !v.is_empty()) else {
            continue;
        };
        let path = PathBuf::from(value);
        return match osp_graphs::path::require_file(&path) {
            Ok(()) => Ok(path),
            Err(why) => Err(Error::OrtLibraryEnvMissing { var, path, why }),
        };
    }
    if let Some(dir) = exe_dir {
        if let Some(found) = library_in_dir(dir) {
            return Ok(found);
        }
        searched.push(dir.join(format!("{LIB_PREFIX}*")));
    }
    for start in exe_dir.into_iter().chain(cwd) {
        for ancestor in start.ancestors() {
            let candidate = ancestor.join(REPO_RELATIVE);
            if candidate.is_file() {
                return Ok(candidate);
            }
            if !searched.contains(&candidate) {
                searched.push(candidate);
            }
        }
    }
    Err(Error::OrtLibraryNotFound { searched })
}

/// `libonnxruntime.so` in `dir`, else the first (by name) `libonnxruntime.so.*` file there.
fn library_in_dir(dir: &Path) -> Option<PathBuf> {
    let plain = dir.join(LIB_PREFIX);
    if plain.is_file() {
        return Some(plain);
    }
    let mut versioned: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&format!("{LIB_PREFIX}.")))
                && p.is_file()
        })
        .collect();
    versioned.sort();
    versioned.into_iter().next()
}

/// The process-wide ONNX Runtime environment, loading the library on first use. Failures are not
/// cached: a later call searches again.
pub fn environment() -> Result<&'static Environment> {
    if let Some((_, env)) = ENVIRONMENT.get() {
        return Ok(env);
    }
    let _guard = INIT_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, env)) = ENVIRONMENT.get() {
        return Ok(env);
    }
    let path = find_library()?;
    let builder = ort::init_from(&path).map_err(|source| Error::OrtLibraryLoad { path: path.clone(), source })?;
    let env = builder.with_name("osp").with_telemetry(false).build().map_err(Error::OrtEnvironment)?;
    tracing::info!(path = %path.display(), build = ort::info(), "loaded ONNX Runtime");
    let (_, env) = ENVIRONMENT.get_or_init(|| (path, env));
    Ok(env)
}

/// The path the library was loaded from, once `environment()` has succeeded.
pub fn loaded_library() -> Option<&'static Path> {
    ENVIRONMENT.get().map(|(p, _)| p.as_path())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<OsString> {
        None
    }

    #[test]
    fn env_var_to_missing_file_is_a_clear_error() {
        let missing = PathBuf::from("/nonexistent/osp/libonnxruntime.so.1.32.0");
        let lookup = |var: &str| (var == "ORT_DYLIB_PATH").then(|| missing.clone().into_os_string());
        let err = find_library_with(lookup, None, None).unwrap_err().to_string();
        assert!(err.contains("ORT_DYLIB_PATH"), "{err}");
        assert!(err.contains("/nonexistent/osp/libonnxruntime.so.1.32.0"), "{err}");
        assert!(err.contains("scripts/setup.sh"), "{err}");
    }

    #[test]
    fn osp_variable_wins_over_ort_variable() {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("libonnxruntime.so.1.32.0");
        std::fs::write(&lib, b"").unwrap();
        let lookup = |var: &str| match var {
            "OSP_ORT_DYLIB" => Some(lib.clone().into_os_string()),
            _ => Some(OsString::from("/nonexistent")),
        };
        assert_eq!(find_library_with(lookup, None, None).unwrap(), lib);
    }

    #[test]
    fn finds_versioned_library_next_to_executable() {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("libonnxruntime.so.1.32.0");
        std::fs::write(&lib, b"").unwrap();
        assert_eq!(find_library_with(no_env, Some(dir.path()), None).unwrap(), lib);
    }

    #[test]
    fn finds_repository_copy_from_a_nested_directory() {
        let root = tempfile::tempdir().unwrap();
        let lib = root.path().join(REPO_RELATIVE);
        std::fs::create_dir_all(lib.parent().unwrap()).unwrap();
        std::fs::write(&lib, b"").unwrap();
        let nested = root.path().join("target/release/deps");
        std::fs::create_dir_all(&nested).unwrap();
        assert_eq!(find_library_with(no_env, Some(&nested), None).unwrap(), lib);
        let elsewhere = tempfile::tempdir().unwrap();
        assert_eq!(find_library_with(no_env, Some(elsewhere.path()), Some(&nested)).unwrap(), lib);
    }

    #[test]
    fn nothing_found_lists_the_searched_paths() {
        let empty = tempfile::tempdir().unwrap();
        let err = find_library_with(no_env, Some(empty.path()), None).unwrap_err();
        let Error::OrtLibraryNotFound { searched } = &err else { panic!("unexpected error {err}") };
        assert!(searched.contains(&empty.path().join(REPO_RELATIVE)), "{searched:?}");
        assert!(err.to_string().contains("pip download --no-deps onnxruntime==1.32.0"), "{err}");
    }
}
