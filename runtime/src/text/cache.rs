//! The content-addressed text-embedding cache: one safetensors file per (tokenizer, weights,
//! graph, `max_len`, text) key (see [`super::TextEncoder::cache_key`]), at
//! `<dir>/<key[0..2]>/<key>.safetensors`, holding `prompt_embeds` f32 `[l, d]`,
//! `prompt_attention_mask` i64 `[l]`, and the entry's proof of identity: `cache_key` u8 (the
//! key's ASCII bytes) and `cache_sha256` u8 `[32]` (SHA-256 over the key, `l`, `d` and both
//! tensors' little-endian bytes, see [`entry_digest`]).
//!
//! Entries are written under a temporary name and renamed into place, so readers never see a
//! partial entry. An entry is used only when it names the requested key and its tensors hash to
//! its digest: an unreadable, corrupted, swapped (another key's entry copied over this one) or
//! mismatched entry is a miss with a warning, recomputed and rewritten. Entries written before
//! the proof existed (no `cache_key`) are recomputed the same way on first use.

use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::io::{read_safetensors, write_safetensors};
use crate::tensor::Tensor;

/// Environment variable of the cache directory (`--cache-dir`).
pub const CACHE_DIR_ENV: &str = "OSP_TEXT_CACHE";
/// Entry tensor holding the key the entry was written for.
pub const KEY_TENSOR: &str = "cache_key";
/// Entry tensor holding [`entry_digest`].
pub const DIGEST_TENSOR: &str = "cache_sha256";

/// SHA-256 over an entry's key, shape and values: what `cache_sha256` must hold.
pub fn entry_digest(key: &str, emb: &[f32], mask: &[i64], d: usize) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"osp-text-cache-entry-v2\0");
    h.update((key.len() as u64).to_le_bytes());
    h.update(key.as_bytes());
    h.update((mask.len() as u64).to_le_bytes());
    h.update((d as u64).to_le_bytes());
    if cfg!(target_endian = "little") {
        h.update(bytemuck::cast_slice::<f32, u8>(emb));
        h.update(bytemuck::cast_slice::<i64, u8>(mask));
    } else {
        emb.iter().for_each(|v| h.update(v.to_le_bytes()));
        mask.iter().for_each(|m| h.update(m.to_le_bytes()));
    }
    h.finalize().into()
}

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
    /// Uses (and creates) `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|source| Error::Io { path: dir.clone(), source })?;
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
        let (Some(Tensor::F32(emb_t)), Some(Tensor::I64(m))) =
            (entry.get("prompt_embeds"), entry.get("prompt_attention_mask"))
        else {
            tracing::warn!(path = %path.display(), "text cache entry lacks its tensors; recomputing");
            return None;
        };
        let (Some(Tensor::U8(stored_key)), Some(Tensor::U8(stored_digest))) =
            (entry.get(KEY_TENSOR), entry.get(DIGEST_TENSOR))
        else {
            tracing::warn!(
                path = %path.display(),
                "text cache entry has no key and digest (written by an older osp); recomputing"
            );
            return None;
        };
        if stored_key.iter().copied().ne(key.bytes()) {
            tracing::warn!(
                path = %path.display(),
                stored_key = %String::from_utf8_lossy(&stored_key.iter().copied().collect::<Vec<u8>>()),
                "text cache entry belongs to another key (copied or swapped); recomputing"
            );
            return None;
        }
        let stored_d = emb_t.shape().get(1).copied().unwrap_or(0);
        let (Some(emb), Some(stored_mask)) = (emb_t.as_slice(), m.as_slice()) else {
            tracing::warn!(path = %path.display(), "text cache entry is not contiguous; recomputing");
            return None;
        };
        if stored_digest.iter().copied().ne(entry_digest(key, emb, stored_mask, stored_d)) {
            tracing::warn!(path = %path.display(), "text cache entry fails its SHA-256 (corrupted); recomputing");
            return None;
        }
        if emb_t.shape() != [l, d] || m.shape() != [l] || stored_mask != mask {
            tracing::warn!(path = %path.display(), "text cache entry does not match the request; recomputing");
            return None;
        }
        tracing::debug!(key, "text cache hit");
        Some(emb.to_vec())
    }

    /// Stores `emb` (`[l * d]`) and `mask` (`[l]`) under `key`, atomically.
    pub fn put(&self, key: &str, emb: &[f32], mask: &[i64], d: usize) -> Result<()> {
        let path = self.entry_path(key);
        let parent = path.parent().expect("an entry path should have a parent");
        std::fs::create_dir_all(parent).map_err(|source| Error::Io { path: parent.to_path_buf(), source })?;
        let l = mask.len();
        let digest = entry_digest(key, emb, mask, d);
        let shaped = |e: ndarray::ShapeError| Error::Tensor { name: "prompt_embeds".into(), why: e.to_string() };
        let emb = Tensor::F32(ArrayD::from_shape_vec(IxDyn(&[l, d]), emb.to_vec()).map_err(shaped)?);
        let mask = Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[l]), mask.to_vec()).map_err(shaped)?);
        let key_bytes =
            Tensor::U8(ArrayD::from_shape_vec(IxDyn(&[key.len()]), key.as_bytes().to_vec()).map_err(shaped)?);
        let digest = Tensor::U8(ArrayD::from_shape_vec(IxDyn(&[32]), digest.to_vec()).map_err(shaped)?);
        // A per-process name, so concurrent writers of one key never share a temporary file.
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        write_safetensors(
            &tmp,
            [
                ("prompt_embeds", &emb),
                ("prompt_attention_mask", &mask),
                (KEY_TENSOR, &key_bytes),
                (DIGEST_TENSOR, &digest),
            ],
        )?;
        std::fs::rename(&tmp, &path).map_err(|source| Error::Io { path: path.clone(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupted_swapped_and_old_entries_are_misses() {
        let dir = tempfile::tempdir().unwrap();
        let cache = EmbeddingCache::new(dir.path()).unwrap();
        let (d, mask) = (3, [1i64, 1, 0]);
        let emb_a: Vec<f32> = (0..9).map(|i| i as f32 * 0.25).collect();
        let emb_b: Vec<f32> = (0..9).map(|i| -(i as f32)).collect();
        let (a, b) = ("aa11", "bb22");
        let write_both = || {
            cache.put(a, &emb_a, &mask, d).unwrap();
            cache.put(b, &emb_b, &mask, d).unwrap();
        };
        write_both();
        assert_eq!(cache.get(a, &mask, d), Some(emb_a.clone()));
        assert_eq!(cache.get(b, &mask, d), Some(emb_b.clone()));

        type Damage = Box<dyn Fn(&Path, &Path)>;
        let cases: Vec<(&str, Damage)> = vec![
            (
                "XOR-ed bytes in the embedding",
                Box::new(|pa: &Path, _: &Path| {
                    let mut bytes = std::fs::read(pa).unwrap();
                    let values: Vec<u8> = [1.25f32, 1.5].iter().flat_map(|v| v.to_le_bytes()).collect();
                    let at = bytes.windows(8).position(|w| w == values.as_slice()).expect("values in the file");
                    for x in &mut bytes[at..at + 4] {
                        *x ^= 0x5a;
                    }
                    std::fs::write(pa, bytes).unwrap();
                }),
            ),
            (
                "another key's entry copied over it",
                Box::new(|pa: &Path, pb: &Path| std::fs::copy(pb, pa).map(|_| ()).unwrap()),
            ),
            (
                "an entry of the older format (no key, no digest)",
                Box::new(|pa: &Path, _: &Path| {
                    let emb = Tensor::F32(ArrayD::from_shape_vec(IxDyn(&[3, 3]), vec![9.0; 9]).unwrap());
                    let m = Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[3]), vec![1, 1, 0]).unwrap());
                    write_safetensors(pa, [("prompt_embeds", &emb), ("prompt_attention_mask", &m)]).unwrap();
                }),
            ),
            (
                "a truncated entry",
                Box::new(|pa: &Path, _: &Path| {
                    let bytes = std::fs::read(pa).unwrap();
                    std::fs::write(pa, &bytes[..bytes.len() / 2]).unwrap();
                }),
            ),
        ];
        for (what, damage) in cases {
            write_both();
            damage(&cache.entry_path(a), &cache.entry_path(b));
            assert_eq!(cache.get(a, &mask, d), None, "{what}");
            assert_eq!(cache.get(b, &mask, d), Some(emb_b.clone()), "{what}: the other entry is untouched");
        }
        write_both();
        assert_eq!(cache.get(a, &[1, 0, 0], d), None, "another mask");
        assert_eq!(cache.get(a, &mask, 9), None, "another width");
        assert_eq!(cache.get(a, &mask, d), Some(emb_a));
    }
}
