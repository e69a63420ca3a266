//! Safetensors checkpoints: one file, or shards listed by a `*.safetensors.index.json`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use burn::store::{ModuleStore, SafetensorsStore, TensorSnapshot};

use super::{renamed, Checkpoint};
use crate::error::{Error, Result};

fn snapshots_of(path: &Path) -> Result<BTreeMap<String, TensorSnapshot>> {
    if !path.is_file() {
        return Err(Error::checkpoint(path, "file not found"));
    }
    let mut store = SafetensorsStore::from_file(path);
    let all = store.get_all_snapshots().map_err(|e| Error::checkpoint(path, e.to_string()))?;
    Ok(all.iter().map(|(k, s)| (k.clone(), renamed(s.clone(), k))).collect())
}

pub(super) fn read_single(path: &Path) -> Result<Checkpoint> {
    let tensors = snapshots_of(path)?;
    tracing::info!(path = %path.display(), tensors = tensors.len(), "read safetensors checkpoint");
    Ok(Checkpoint { path: path.to_path_buf(), source: "safetensors".into(), tensors })
}

#[derive(serde::Deserialize)]
struct ShardIndex {
    weight_map: BTreeMap<String, String>,
}

/// Reads every shard named in `weight_map`; each tensor must sit in the shard the index names.
pub(super) fn read_sharded(index_path: &Path) -> Result<Checkpoint> {
    let text = std::fs::read_to_string(index_path).map_err(|e| Error::io(index_path, e))?;
    let index: ShardIndex =
        serde_json::from_str(&text).map_err(|e| Error::Json { path: index_path.to_path_buf(), source: e })?;
    let dir = index_path.parent().unwrap_or_else(|| Path::new("."));
    let shards: BTreeSet<&String> = index.weight_map.values().collect();
    let mut tensors = BTreeMap::new();
    for shard in shards {
        let shard_path = dir.join(shard);
        for (name, snapshot) in snapshots_of(&shard_path)? {
            match index.weight_map.get(&name) {
                Some(listed) if listed == shard => {
                    tensors.insert(name, snapshot);
                }
                Some(listed) => {
                    return Err(Error::checkpoint(
                        index_path,
                        format!("tensor `{name}` found in shard {shard} but the index lists it in {listed}"),
                    ))
                }
                None => {
                    return Err(Error::checkpoint(
                        index_path,
                        format!("tensor `{name}` in shard {shard} is not listed in the index weight_map"),
                    ))
                }
            }
        }
    }
    if let Some(absent) = index.weight_map.keys().find(|k| !tensors.contains_key(*k)) {
        return Err(Error::checkpoint(
            index_path,
            format!("tensor `{absent}` is listed in the index but absent from shard {}", index.weight_map[absent]),
        ));
    }
    tracing::info!(path = %index_path.display(), tensors = tensors.len(), "read sharded safetensors checkpoint");
    Ok(Checkpoint { path: index_path.to_path_buf(), source: "sharded safetensors".into(), tensors })
}
