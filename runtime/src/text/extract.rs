//! Caption-embedding extraction for training, as upstream `sample_text_embed.py` does
//! (mindone `examples/opensora_pku/opensora/sample/sample_text_embed.py` at
//! e58ea2ce85e60ff60315b9c94d6cef1f178f5fee, with its `TextDataset`; the PKU-YuanGroup repository
//! at 9fa322f has no such script):
//!
//! - the annotation JSON is a list of objects with `path` (video or image path) and `cap` (one
//!   caption or a list); other keys (`frame_idx`, `resolution`, ...) are ignored;
//! - caption `i` of an item is written to `<out_dir>/<path without extension>-<i>.npz` (the
//!   trainer's `get_text_embed_file_path` reads the same name), sub-folders created;
//! - each file holds `text_emb` f32 `[l, d]` and `mask` u8 `[l]` (`np.savez`).
//!
//! Captions are cleaned as upstream's training cleans them ([`super::clean::clean_caption`])
//! unless the caller turns it off. Differences: files that already exist are skipped (the run is
//! resumable; a cache written with other cleaning must be written to a new folder), and files are
//! written atomically. `path`s must be relative and stay inside the output folder.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};

use super::npz::{write_npz, NpyArray};
use super::TextEncoder;
use crate::error::{Error, Result};

/// One annotation item: a media path and its captions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Annotation {
    pub path: String,
    pub captions: Vec<String>,
}

/// Reads an annotation JSON file (see the module docs).
pub fn read_annotations(file: &Path) -> Result<Vec<Annotation>> {
    let bad = |why: String| Error::Annotations { path: file.to_path_buf(), why };
    let text = std::fs::read_to_string(file).map_err(|source| Error::Io { path: file.to_path_buf(), source })?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let items = value.as_array().ok_or_else(|| bad("must be a JSON list of {\"path\", \"cap\"} objects".into()))?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let path = item
                .get("path")
                .and_then(|p| p.as_str())
                .ok_or_else(|| bad(format!("item {i}: `path` must be a string")))?;
            let captions = match item.get("cap") {
                Some(serde_json::Value::String(s)) => vec![s.clone()],
                Some(serde_json::Value::Array(list)) => list
                    .iter()
                    .map(|c| c.as_str().map(str::to_string))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| bad(format!("item {i}: `cap` list must hold strings")))?,
                _ => return Err(bad(format!("item {i}: `cap` must be a string or a list of strings"))),
            };
            Ok(Annotation { path: path.to_string(), captions })
        })
        .collect()
}

/// `<path without extension>-<index>.npz`, relative; fails for absolute paths or `..`.
pub fn embed_file_name(path: &str, index: usize) -> Result<PathBuf> {
    let p = Path::new(path);
    let plain = !path.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !plain || p.file_name().is_none() {
        return Err(Error::InvalidInput {
            name: format!("annotation path `{path}`"),
            rule: "must be a relative file path without `..` (its embeddings are written under the output folder)"
                .into(),
        });
    }
    let stem = p.with_extension("");
    let mut name = stem.into_os_string();
    name.push(format!("-{index}.npz"));
    Ok(PathBuf::from(name))
}

/// Receives extraction progress (the binary draws a bar or prints JSON lines).
pub trait ExtractProgress {
    /// `total` captions, of which `skipped` already have their file.
    fn start(&mut self, total: usize, skipped: usize);
    /// `n` more captions written.
    fn advance(&mut self, n: usize);
    fn finish(&mut self);
}

/// Progress that goes nowhere.
pub struct NoProgress;

impl ExtractProgress for NoProgress {
    fn start(&mut self, _total: usize, _skipped: usize) {}
    fn advance(&mut self, _n: usize) {}
    fn finish(&mut self) {}
}

/// What an extraction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtractReport {
    /// Captions in the annotations.
    pub total: usize,
    /// Captions whose file existed already (or repeated an earlier item's file name).
    pub skipped: usize,
    /// Files written.
    pub written: usize,
}

/// Writes one `.npz` per caption of `annotations` under `out_dir` (see the module docs), encoding
/// `batch_size` captions per run, each cleaned first when `clean`; existing files are skipped.
pub fn extract_text_embeds(
    encoder: &mut TextEncoder,
    annotations: &[Annotation],
    out_dir: &Path,
    max_len: usize,
    batch_size: usize,
    clean: bool,
    progress: &mut dyn ExtractProgress,
) -> Result<ExtractReport> {
    let mut total = 0usize;
    let mut seen = BTreeSet::new();
    let mut jobs: Vec<(PathBuf, String)> = Vec::new();
    for item in annotations {
        for (i, caption) in item.captions.iter().enumerate() {
            total += 1;
            let file = out_dir.join(embed_file_name(&item.path, i)?);
            if seen.insert(file.clone()) && !file.is_file() {
                let text = if clean { super::clean::clean_caption(caption, true) } else { caption.clone() };
                jobs.push((file, text));
            }
        }
    }
    let skipped = total - jobs.len();
    tracing::info!(total, skipped, out_dir = %out_dir.display(), "extracting text embeddings");
    progress.start(total, skipped);
    let d = encoder.d_model();
    let mut collected = std::collections::HashSet::new();
    for chunk in jobs.chunks(batch_size.max(1)) {
        let texts: Vec<&str> = chunk.iter().map(|(_, c)| c.as_str()).collect();
        let out = encoder.encode_allow_empty(&texts, max_len)?;
        let emb = out.embeddings.to_f32_vec();
        let mask = out.mask.to_f32_vec();
        for (j, (file, _)) in chunk.iter().enumerate() {
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent).map_err(|source| Error::Io { path: parent.to_path_buf(), source })?;
                if collected.insert(parent.to_path_buf()) {
                    osp_fs::collect_stale_logged(parent);
                }
            }
            let text_emb = NpyArray::f32(vec![max_len, d], &emb[j * max_len * d..(j + 1) * max_len * d]);
            let m =
                NpyArray::u8(vec![max_len], mask[j * max_len..(j + 1) * max_len].iter().map(|&v| v as u8).collect());
            write_npz(file, &[("mask", &m), ("text_emb", &text_emb)])?;
        }
        progress.advance(chunk.len());
    }
    progress.finish();
    Ok(ExtractReport { total, skipped, written: jobs.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_follow_upstream_and_stay_inside() {
        assert_eq!(embed_file_name("Fish/mixkit-4020.mp4", 0).unwrap(), PathBuf::from("Fish/mixkit-4020-0.npz"));
        assert_eq!(embed_file_name("a/b.c.jpg", 2).unwrap(), PathBuf::from("a/b.c-2.npz"));
        assert_eq!(embed_file_name("noext", 1).unwrap(), PathBuf::from("noext-1.npz"));
        for bad in ["/abs/x.mp4", "../x.mp4", "a/../../x.mp4", ""] {
            let err = embed_file_name(bad, 0).unwrap_err().to_string();
            assert!(err.contains("relative file path"), "{bad}: {err}");
        }
    }

    #[test]
    fn annotations_accept_one_or_many_captions() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.json");
        std::fs::write(
            &f,
            r#"[{"path": "v/a.mp4", "cap": "one", "frame_idx": "0:65"}, {"path": "b.jpg", "cap": ["x", "y"]}]"#,
        )
        .unwrap();
        let a = read_annotations(&f).unwrap();
        assert_eq!(a[0], Annotation { path: "v/a.mp4".into(), captions: vec!["one".into()] });
        assert_eq!(a[1].captions, vec!["x".to_string(), "y".to_string()]);
        std::fs::write(&f, r#"[{"path": "v/a.mp4", "cap": 3}]"#).unwrap();
        let err = read_annotations(&f).unwrap_err().to_string();
        assert!(err.contains("item 0: `cap` must be a string"), "{err}");
        std::fs::write(&f, r#"{"path": "x"}"#).unwrap();
        assert!(read_annotations(&f).unwrap_err().to_string().contains("JSON list"));
    }
}
