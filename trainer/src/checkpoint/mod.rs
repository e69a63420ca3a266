//! Checkpoints read into an `official name -> tensor` map, and strict loading into Burn modules.
//!
//! Formats: one `.safetensors` file, sharded safetensors through `*.safetensors.index.json`
//! (`weight_map`), and PyTorch zip pickles (`.ckpt`, `.pt`, `.pth`, `.bin`) read directly by
//! burn-store (no Python). Tensor data stays lazy until it is applied.

mod load;
mod pytorch;
mod safetensors;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::store::TensorSnapshot;

use crate::error::{Error, Result};

pub use load::{load_module, LoadOptions, LoadReport};
pub use pytorch::PytorchSelection;

/// Every tensor of a checkpoint under its official (PyTorch) name.
pub struct Checkpoint {
    /// The file the tensors came from (the index file for sharded safetensors).
    pub path: PathBuf,
    /// Which part of the file was taken (e.g. `ema_state_dict` for a training `.ckpt`).
    pub source: String,
    tensors: BTreeMap<String, TensorSnapshot>,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("path", &self.path)
            .field("source", &self.source)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl Checkpoint {
    /// Opens a checkpoint, choosing the reader from the file name:
    /// `*.safetensors.index.json` (sharded), `*.safetensors`, or `.ckpt/.pt/.pth/.bin`
    /// (PyTorch pickle, state dict chosen by [`PytorchSelection::Auto`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name.ends_with(".safetensors.index.json") {
            safetensors::read_sharded(path)
        } else if name.ends_with(".safetensors") {
            safetensors::read_single(path)
        } else if [".ckpt", ".pt", ".pth", ".bin"].iter().any(|e| name.ends_with(e)) {
            pytorch::read(path, &PytorchSelection::Auto)
        } else {
            Err(Error::checkpoint(
                path,
                "unknown checkpoint format: expected *.safetensors, *.safetensors.index.json, *.ckpt, *.pt, *.pth or *.bin",
            ))
        }
    }

    /// Opens a PyTorch pickle checkpoint with an explicit choice of state dict.
    pub fn open_pytorch(path: impl AsRef<Path>, selection: &PytorchSelection) -> Result<Self> {
        pytorch::read(path.as_ref(), selection)
    }

    /// Builds a checkpoint from snapshots already named with official keys.
    pub fn from_snapshots(path: impl Into<PathBuf>, source: impl Into<String>, snapshots: Vec<TensorSnapshot>) -> Self {
        let tensors = snapshots.into_iter().map(|s| (s.full_path(), s)).collect();
        Checkpoint { path: path.into(), source: source.into(), tensors }
    }

    /// The official names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// Whether the checkpoint holds no tensor.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// The lazily loaded tensor stored under `name`.
    pub fn get(&self, name: &str) -> Option<&TensorSnapshot> {
        self.tensors.get(name)
    }

    /// Removes and returns the tensor stored under `name`.
    pub fn remove(&mut self, name: &str) -> Option<TensorSnapshot> {
        self.tensors.remove(name)
    }

    /// Every tensor with its official name, sorted by name.
    pub(crate) fn snapshots(&self) -> impl Iterator<Item = (&String, &TensorSnapshot)> {
        self.tensors.iter()
    }

    /// A copy with every name passed through `rename` (`None` drops the tensor); tensor data
    /// stays lazy. Two names mapped onto one is an error naming both.
    pub fn map_names(&self, rename: impl Fn(&str) -> Option<String>) -> Result<Checkpoint> {
        let mut tensors: BTreeMap<String, TensorSnapshot> = BTreeMap::new();
        let mut origin: BTreeMap<String, &str> = BTreeMap::new();
        for (name, snapshot) in &self.tensors {
            let Some(new) = rename(name) else { continue };
            if let Some(first) = origin.insert(new.clone(), name) {
                return Err(Error::checkpoint(
                    &self.path,
                    format!("tensors `{first}` and `{name}` both map to `{new}`"),
                ));
            }
            tensors.insert(new.clone(), renamed(snapshot.clone(), &new));
        }
        Ok(Checkpoint { path: self.path.clone(), source: self.source.clone(), tensors })
    }

    /// Inserts (or replaces) a tensor under its official name.
    pub fn insert(&mut self, name: impl Into<String>, snapshot: TensorSnapshot) {
        let name = name.into();
        let snapshot = renamed(snapshot, &name);
        self.tensors.insert(name, snapshot);
    }
}

/// The snapshot with its path set to `name` (official dotted key).
pub(crate) fn renamed(mut snapshot: TensorSnapshot, name: &str) -> TensorSnapshot {
    snapshot.path_stack = Some(name.split('.').map(str::to_string).collect());
    snapshot
}
