//! Upstream's data description: a `--data` text file whose lines are `MEDIA_ROOT,ANNOTATION.json`
//! or `MEDIA_ROOT,TEXT_EMBED_ROOT,ANNOTATION.json`, and annotation JSON lists of items with
//! `path` (relative to the media root; `.mp4` etc. is a video, `.jpg`/`.png` an image), `cap`
//! (a string or a list), `resolution {height, width}`, `num_frames`, `fps`, and optional `cut`
//! `[start, end]`, `crop` `[x0, x1, y0, y1]`, `aesthetic`/`aes`.
//! Upstream: `opensora/dataset/t2v_datasets.py` (`define_frame_index`) and `docs/T2V.md` at
//! commit 9fa322fb.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One line of the `--data` file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataSource {
    pub media_root: PathBuf,
    /// The text-embedding cache (`<path without extension>-<caption index>.npz`), 3-item lines only.
    pub text_embed_root: Option<PathBuf>,
    pub annotation: PathBuf,
}

/// Reads a `--data` file. Relative paths are taken relative to the current directory, as upstream.
pub fn read_data_file(path: &Path) -> Result<Vec<DataSource>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let items: Vec<&str> = line.split(',').map(str::trim).collect();
        let source = match items.as_slice() {
            [media, anno] => DataSource { media_root: media.into(), text_embed_root: None, annotation: anno.into() },
            [media, text, anno] => {
                DataSource { media_root: media.into(), text_embed_root: Some(text.into()), annotation: anno.into() }
            }
            _ => {
                return Err(Error::input(
                    format!("{} line {}", path.display(), i + 1),
                    format!(
                        "must hold 2 (MEDIA_ROOT,ANNOTATION.json) or 3 (MEDIA_ROOT,TEXT_EMBED_ROOT,ANNOTATION.json) comma-separated items, found {}",
                        items.len()
                    ),
                ))
            }
        };
        if !source.annotation.to_string_lossy().ends_with(".json") {
            return Err(Error::input(
                format!("{} line {}", path.display(), i + 1),
                format!(
                    "annotation `{}` must be a .json file (upstream's .pkl is not supported)",
                    source.annotation.display()
                ),
            ));
        }
        out.push(source);
    }
    if out.is_empty() {
        return Err(Error::input(path.display().to_string(), "the --data file lists no data source"));
    }
    Ok(out)
}

/// `resolution` of an annotation item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    pub height: usize,
    pub width: usize,
}

/// `cap`: one caption or several (one is picked per use).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Captions {
    One(String),
    Many(Vec<String>),
}

impl Captions {
    pub fn all(&self) -> Vec<String> {
        match self {
            Captions::One(c) => vec![c.clone()],
            Captions::Many(v) => v.clone(),
        }
    }
}

/// One annotation item (unknown keys such as `tech`, `motion` are ignored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnnotationItem {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cap: Option<Captions>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Resolution>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_frames: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fps: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cut: Option<[usize; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crop: Option<[usize; 4]>,
    #[serde(default, alias = "aes", skip_serializing_if = "Option::is_none")]
    pub aesthetic: Option<f64>,
}

/// Whether `path` names an image (one frame) rather than a video, by extension.
pub fn is_image(path: &str) -> bool {
    let ext = path.rsplit('.').next().unwrap_or_default().to_ascii_lowercase();
    matches!(ext.as_str(), "jpg" | "jpeg" | "png" | "webp" | "bmp")
}

/// Reads an annotation JSON list.
pub fn read_annotation(path: &Path) -> Result<Vec<AnnotationItem>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Json { path: path.to_path_buf(), source: e })
}

/// `<path without extension>-<index>.npz`, the text-embedding cache file of caption `index`
/// (the runtime's `osp extract-text-embeds` layout).
pub fn text_embed_file(path: &str, index: usize) -> PathBuf {
    let stem = match path.rfind('.') {
        Some(dot) if !path[dot..].contains('/') => &path[..dot],
        _ => path,
    };
    PathBuf::from(format!("{stem}-{index}.npz"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_lines_and_items_parse() {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data.txt");
        std::fs::write(&data, "media,anno.json\n\nmedia2, emb , b.json\n").expect("write");
        let sources = read_data_file(&data).expect("valid");
        assert_eq!(sources.len(), 2);
        assert_eq!(sources[1].text_embed_root.as_deref(), Some(Path::new("emb")));
        std::fs::write(&data, "a,b,c,d.json\n").expect("write");
        let e = read_data_file(&data).expect_err("4 items");
        assert!(e.to_string().contains("2 (MEDIA_ROOT"), "{e}");

        let anno = dir.path().join("a.json");
        std::fs::write(
            &anno,
            r#"[{"path": "v/x.mp4", "cap": ["a", "b"], "resolution": {"height": 64, "width": 96}, "num_frames": 30, "fps": 24, "aes": 5.0, "tech": 1.0},
                {"path": "i.jpg", "cap": "one"}]"#,
        )
        .expect("write");
        let items = read_annotation(&anno).expect("valid");
        assert_eq!(items[0].cap.as_ref().map(Captions::all), Some(vec!["a".to_string(), "b".to_string()]));
        assert_eq!(items[0].aesthetic, Some(5.0));
        assert!(is_image(&items[1].path) && !is_image(&items[0].path));
        assert_eq!(text_embed_file("v/x.mp4", 1), PathBuf::from("v/x-1.npz"));
        assert_eq!(text_embed_file("a.b/noext", 0), PathBuf::from("a.b/noext-0.npz"));
    }
}
