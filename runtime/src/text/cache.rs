//! The content-addressed text-embedding cache: one safetensors file per (tokenizer, weights,
//! graph, `max_len`, text) key (see [`super::TextEncoder::cache_key`]), at
//! `<dir>/<key[0..2]>/<key>.safetensors`, holding `prompt_embeds` f32 `[l, d]` and
//! `prompt_attention_mask` i64 `[l]`.
//!
//! Entries are written under a temporary name and renamed into place, so readers never see a
//! partial entry; an unreadable or mismatched entry is a miss (with a warning) and is rewritten.

use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};

use crate::error::{Error, Result};
use crate::io::{read_safetensors, write_safetensors};
use crate::tensor::Tensor;

/// Environment variable of the cache directory (`--cache-dir`).
pub const CACHE_DIR_ENV: &str = "OSP_TEXT_CACHE";

/// A directory of cached text embeddings.
#[derive(Debug, Clone)]
pub struct EmbeddingCache {
    dir: PathBuf,
}

/// `$XDG_CACHE_HOME/osp/text` or `~/.cache/osp/text`.
pub fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".cache")));
    match base {
        Some(dir) => dir.join("osp").join("text"),
        None => std::env::temp_dir().join("osp-text"),
    }
}

impl EmbeddingCache {
    /// Uses (and creates) `dir`, removing temporaries that killed writers left in it.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io { path: dir.clone(), source })?;
        osp_fs::collect_stale_logged(&dir);
        for sub in std::fs::read_dir(&dir).into_iter().flatten().flatten().filter(|e| e.path().is_dir()) {
            osp_fs::collect_stale_logged(&sub.path());
        }
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where `key`'s entry lives.
    pub fn entry_path(&self, key: &str) -> PathBuf {
        self.dir.join(&key[..2.min(key.len())]).join(format!("{key}.safetensors"))
    }

    /// The cached `[l * d]` embedding of `key`, if present and consistent with `mask` and `d`.
    pub fn get(&self, key: &str, mask: &[i64], d: usize) -> Option<Vec<f32>> {
        let path = self.entry_path(key);
        if !path.is_file() {
            tracing::debug!(key, "text cache miss");
            return None;
        }
        let entry = match read_safetensors(&path) {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable text cache entry; recomputing");
                return None;
            }
        };
        let l = mask.len();
        let (Some(Tensor::F32(emb)), Some(Tensor::I64(m))) =
            (entry.get("prompt_embeds"), entry.get("prompt_attention_mask"))
        else {
            tracing::warn!(path = %path.display(), "text cache entry lacks its tensors; recomputing");
            return None;
        };
        if emb.shape() != [l, d] || m.shape() != [l] || m.iter().copied().ne(mask.iter().copied()) {
            tracing::warn!(path = %path.display(), "text cache entry does not match the request; recomputing");
            return None;
        }
        tracing::debug!(key, "text cache hit");
        Some(emb.iter().copied().collect())
    }

    /// Stores `emb` (`[l * d]`) and `mask` (`[l]`) under `key`, atomically.
    pub fn put(&self, key: &str, emb: &[f32], mask: &[i64], d: usize) -> Result<()> {
        let path = self.entry_path(key);
        let parent = path.parent().expect("an entry path should have a parent");
        std::fs::create_dir_all(parent).map_err(|source| Error::Io { path: parent.to_path_buf(), source })?;
        let l = mask.len();
        let shaped = |e: ndarray::ShapeError| Error::Tensor { name: "prompt_embeds".into(), why: e.to_string() };
        let emb = Tensor::F32(ArrayD::from_shape_vec(IxDyn(&[l, d]), emb.to_vec()).map_err(shaped)?);
        let mask = Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[l]), mask.to_vec()).map_err(shaped)?);
        write_safetensors(&path, [("prompt_embeds", &emb), ("prompt_attention_mask", &mask)])
    }
}
