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
        if AnnotationFormat::of(&source.annotation).is_none() {
            return Err(Error::input(
                format!("{} line {}", path.display(), i + 1),
                format!("annotation `{}` must be a .json or .pkl file", source.annotation.display()),
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

/// How an annotation file is stored, by extension (upstream `define_frame_index`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnnotationFormat {
    Json,
    /// A Python pickle of the same list of dicts (`pickle.dump`, protocols 0-5) holding builtin
    /// types. A pickled class instance (e.g. a numpy scalar) reads as an empty dict, so a field
    /// holding one is an error naming the file and the hint.
    Pickle,
}

impl AnnotationFormat {
    pub fn of(path: &Path) -> Option<Self> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => Some(AnnotationFormat::Json),
            Some("pkl") => Some(AnnotationFormat::Pickle),
            _ => None,
        }
    }
}

/// The largest frame count or frame index an annotation item may give (about 4.6 days at 24 fps);
/// larger values are corrupt metadata (a clip's frame indices are held in memory).
pub const MAX_ANNOTATION_FRAMES: usize = 10_000_000;
/// The largest height, width or crop coordinate an annotation item may give.
pub const MAX_ANNOTATION_SIDE: usize = 1 << 20;

/// Reads an annotation list from a `.json` or `.pkl` file. Frame counts, `cut`, `resolution` and
/// `crop` values past [`MAX_ANNOTATION_FRAMES`] / [`MAX_ANNOTATION_SIDE`] are an error naming the
/// file and the item.
pub fn read_annotation(path: &Path) -> Result<Vec<AnnotationItem>> {
    let items = read_items(path)?;
    for (i, item) in items.iter().enumerate() {
        let frames = item.num_frames.into_iter().chain(item.cut.into_iter().flatten());
        let sides =
            item.resolution.map(|r| [r.height, r.width]).into_iter().flatten().chain(item.crop.into_iter().flatten());
        let bad = if let Some(v) = frames.into_iter().find(|&v| v > MAX_ANNOTATION_FRAMES) {
            Some(format!("frame count or index {v} (`num_frames`, `cut`) exceeds {MAX_ANNOTATION_FRAMES}"))
        } else {
            sides
                .into_iter()
                .find(|&v| v > MAX_ANNOTATION_SIDE)
                .map(|v| format!("size {v} (`resolution`, `crop`) exceeds {MAX_ANNOTATION_SIDE} pixels"))
        };
        if let Some(why) = bad {
            return Err(Error::input(
                format!("{} item {i} (`{}`)", path.display(), item.path),
                format!("{why}; the annotation is corrupt"),
            ));
        }
    }
    Ok(items)
}

fn read_items(path: &Path) -> Result<Vec<AnnotationItem>> {
    let format = AnnotationFormat::of(path)
        .ok_or_else(|| Error::input(path.display().to_string(), "an annotation file must end in .json or .pkl"))?;
    match format {
        AnnotationFormat::Json => {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            serde_json::from_str(&text).map_err(|e| Error::Json { path: path.to_path_buf(), source: e })
        }
        AnnotationFormat::Pickle => {
            let name = path.display().to_string();
            let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            let value = serde_pickle::value_from_slice(&bytes, serde_pickle::DeOptions::new())
                .map_err(|e| Error::input(&name, format!("not a readable pickle: {e}")))?;
            let value = pickle_to_json(value).map_err(|why| Error::input(&name, why))?;
            serde_json::from_value(value).map_err(|e| {
                Error::input(
                    &name,
                    format!(
                        "{e} (a pickled class instance such as a numpy scalar reads as an empty map; store plain Python numbers, strings, lists and dicts)"
                    ),
                )
            })
        }
    }
}

/// The JSON value of a pickled builtin value (tuples and sets become lists; dict keys must be
/// strings).
fn pickle_to_json(value: serde_pickle::Value) -> std::result::Result<serde_json::Value, String> {
    use serde_json::Value as J;
    use serde_pickle::{HashableValue as H, Value as P};
    let list = |items: Vec<P>| items.into_iter().map(pickle_to_json).collect::<std::result::Result<Vec<_>, _>>();
    Ok(match value {
        P::None => J::Null,
        P::Bool(b) => J::Bool(b),
        P::I64(i) => J::from(i),
        P::Int(big) => return Err(format!("integer {big} does not fit in 64 bits")),
        P::F64(f) => serde_json::Number::from_f64(f).map_or(J::Null, J::Number),
        P::String(s) => J::String(s),
        P::Bytes(_) => return Err("holds a bytes value where text or numbers are expected".into()),
        P::List(items) | P::Tuple(items) => J::Array(list(items)?),
        P::Set(items) | P::FrozenSet(items) => J::Array(list(items.into_iter().map(H::into_value).collect())?),
        P::Dict(map) => {
            let mut out = serde_json::Map::new();
            for (k, v) in map {
                match k {
                    H::String(k) => {
                        out.insert(k, pickle_to_json(v)?);
                    }
                    other => return Err(format!("a dict key must be a string, found {other:?}")),
                }
            }
            J::Object(out)
        }
    })
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

    #[test]
    fn pickled_annotations_read_like_their_json() {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/annotations");
        let dir = tempfile::tempdir().expect("temp dir");
        let json = dir.path().join("same.json");
        std::fs::write(
            &json,
            r#"[{"path": "v/clip.mp4", "cap": ["a red circle", "a circle"], "resolution": {"height": 64, "width": 96},
                 "num_frames": 30, "fps": 24, "cut": [2, 30], "aes": 5.5, "tech": 1.0},
                {"path": "img.jpg", "cap": "one caption", "resolution": {"height": 32, "width": 32}}]"#,
        )
        .expect("write");
        let expected = read_annotation(&json).expect("valid json");
        for protocol in [2, 4, 5] {
            let pkl = fixtures.join(format!("items_protocol{protocol}.pkl"));
            assert_eq!(read_annotation(&pkl).expect("valid pickle"), expected, "protocol {protocol}");
        }
        let e = read_annotation(&fixtures.join("class_instance.pkl")).expect_err("a pickled class");
        assert!(e.to_string().contains("class_instance.pkl") && e.to_string().contains("numpy scalar"), "{e}");

        let data = dir.path().join("data.txt");
        std::fs::write(&data, "media,anno.pkl\nmedia,anno.csv\n").expect("write");
        let e = read_data_file(&data).expect_err("csv annotation");
        assert!(e.to_string().contains("line 2") && e.to_string().contains(".json or .pkl"), "{e}");
    }
}
