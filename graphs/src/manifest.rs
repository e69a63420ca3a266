//! The bundle manifest (`manifest.json`) and per-graph I/O specs.
//!
//! ```json
//! { "format_version": 1,
//!   "model": { "kind": "transformer_block", "config": { ... } },
//!   "graphs": { "block": { "file": "block.onnx", "external_data": ["block.onnx.data"],
//!                           "inputs": [ { "name": "hidden_states", "dtype": "f32", "dims": ["b", "n", 64] } ],
//!                           "outputs": [ ... ], "attention": "onnx_attention", "precision": "f32", "opset": 23 } },
//!   "provenance": { "exporter": "osp-export 0.1.0", "source_sha256": "..." } }
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::ModelSpec;
use crate::error::{Error, Result};

/// The manifest format this build reads and writes.
pub const FORMAT_VERSION: u32 = 1;
/// File name of the manifest inside a bundle directory.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Element type of a graph input or output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    F16,
    Bf16,
    F64,
    I64,
    I32,
    I8,
    U8,
    Bool,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F64 | DType::I64 => 8,
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::Bf16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::Bf16 | DType::F64)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
            DType::F64 => "f64",
            DType::I64 => "i64",
            DType::I32 => "i32",
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::Bool => "bool",
        };
        f.write_str(s)
    }
}

/// One axis of a tensor spec: a fixed size, or a named symbol that must take the same value
/// wherever it appears among one call's inputs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Dim {
    Fixed(usize),
    Symbolic(String),
}

impl Dim {
    pub fn sym(name: impl Into<String>) -> Self {
        Dim::Symbolic(name.into())
    }
}

impl From<usize> for Dim {
    fn from(v: usize) -> Self {
        Dim::Fixed(v)
    }
}

impl From<&str> for Dim {
    fn from(v: &str) -> Self {
        Dim::Symbolic(v.to_string())
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Fixed(v) => write!(f, "{v}"),
            Dim::Symbolic(s) => f.write_str(s),
        }
    }
}

/// A named graph input or output. Names follow the PyTorch `forward` arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DType,
    pub dims: Vec<Dim>,
}

impl TensorSpec {
    pub fn new(name: impl Into<String>, dtype: DType, dims: impl IntoIterator<Item = Dim>) -> Self {
        Self { name: name.into(), dtype, dims: dims.into_iter().collect() }
    }

    /// `[b, 3, t, h, w]`-style rendering for messages.
    pub fn dims_string(&self) -> String {
        let parts: Vec<String> = self.dims.iter().map(|d| d.to_string()).collect();
        format!("[{}]", parts.join(", "))
    }

    /// The concrete shape under `bindings`, or `None` if a symbol is unbound.
    pub fn resolve(&self, bindings: &SymbolBindings) -> Option<Vec<usize>> {
        self.dims
            .iter()
            .map(|d| match d {
                Dim::Fixed(v) => Some(*v),
                Dim::Symbolic(s) => bindings.get(s).copied(),
            })
            .collect()
    }
}

/// How attention is expressed inside a graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttentionKind {
    /// The standard ONNX `Attention` operator (opset 23).
    OnnxAttention,
    /// The `com.microsoft` `MultiHeadAttention` contrib operator (ONNX Runtime's fused kernels).
    MsMultiHeadAttention,
    /// MatMul / Softmax / MatMul, for backends with neither fused form.
    Decomposed,
    /// Chosen per call: `com.microsoft` `MultiHeadAttention` where the call has no bias (ONNX
    /// Runtime's CPU flash kernel, memory linear in the sequence; tract lowers it to its flash SDPA),
    /// ONNX `Attention` where it has one.
    Auto,
    /// The graph has no attention.
    None,
}

impl AttentionKind {
    /// Every form an exporter writes attention in (all but [`AttentionKind::None`]).
    pub const FORMS: [AttentionKind; 4] = [
        AttentionKind::OnnxAttention,
        AttentionKind::MsMultiHeadAttention,
        AttentionKind::Decomposed,
        AttentionKind::Auto,
    ];
}

impl fmt::Display for AttentionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            AttentionKind::OnnxAttention => "onnx_attention",
            AttentionKind::MsMultiHeadAttention => "ms_multi_head_attention",
            AttentionKind::Decomposed => "decomposed",
            AttentionKind::Auto => "auto",
            AttentionKind::None => "none",
        };
        f.write_str(s)
    }
}

/// Precision of a graph's weights and interior arithmetic. Graph inputs and outputs keep the
/// dtypes their specs name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    F16,
    Bf16,
    /// f32 graph whose linear layers run as int8 weight-and-activation matmuls (ONNX Runtime's
    /// `DynamicQuantizeMatMul`): approximate, opt-in (docs/export.md).
    Int8,
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
        })
    }
}

/// One graph of a bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GraphSpec {
    /// The `.onnx` file, a plain name inside the bundle directory.
    pub file: String,
    /// External-data files the graph's initializers live in (plain names in the bundle directory).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub external_data: Vec<String>,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    pub attention: AttentionKind,
    #[serde(default)]
    pub precision: Precision,
    /// The default-domain opset the graph imports.
    pub opset: u32,
    /// Graph-specific facts the runtime needs (state input/output pairs, tile sizes, ...).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, serde_json::Value>,
}

/// Symbol values bound while checking one call's inputs.
pub type SymbolBindings = BTreeMap<String, usize>;

/// What `GraphSpec::check_inputs` needs to know of a user tensor.
#[derive(Debug, Clone, Copy)]
pub struct InputView<'a> {
    pub name: &'a str,
    pub dtype: DType,
    pub shape: &'a [usize],
}

impl GraphSpec {
    pub fn input(&self, name: &str) -> Option<&TensorSpec> {
        self.inputs.iter().find(|t| t.name == name)
    }

    pub fn output(&self, name: &str) -> Option<&TensorSpec> {
        self.outputs.iter().find(|t| t.name == name)
    }

    fn input_names(&self) -> String {
        self.inputs.iter().map(|t| t.name.as_str()).collect::<Vec<_>>().join(", ")
    }

    /// Checks a call's inputs against the spec: every input present and no other, dtypes equal,
    /// ranks equal, fixed dims equal, and each symbol taking one value across all inputs.
    /// Returns the symbol bindings.
    pub fn check_inputs(&self, graph: &str, inputs: &[InputView<'_>]) -> Result<SymbolBindings> {
        for given in inputs {
            if self.input(given.name).is_none() {
                return Err(Error::UnexpectedInput {
                    graph: graph.to_string(),
                    input: given.name.to_string(),
                    expected: self.input_names(),
                });
            }
        }
        let mut bindings = SymbolBindings::new();
        let mut bound_by: BTreeMap<String, String> = BTreeMap::new();
        for spec in &self.inputs {
            let Some(given) = inputs.iter().find(|i| i.name == spec.name) else {
                return Err(Error::MissingInput {
                    graph: graph.to_string(),
                    input: spec.name.clone(),
                    expected: format!("{} {}", spec.dtype, spec.dims_string()),
                });
            };
            if given.dtype != spec.dtype {
                return Err(Error::DType {
                    graph: graph.to_string(),
                    input: spec.name.clone(),
                    expected: spec.dtype.to_string(),
                    got: given.dtype.to_string(),
                });
            }
            if given.shape.len() != spec.dims.len() {
                return Err(Error::Rank {
                    graph: graph.to_string(),
                    input: spec.name.clone(),
                    expected: spec.dims.len(),
                    dims: spec.dims_string(),
                    got: given.shape.to_vec(),
                });
            }
            for (axis, (dim, &got)) in spec.dims.iter().zip(given.shape).enumerate() {
                let expected = match dim {
                    Dim::Fixed(v) if *v == got => continue,
                    Dim::Fixed(v) => v.to_string(),
                    Dim::Symbolic(s) => match bindings.get(s) {
                        None => {
                            bindings.insert(s.clone(), got);
                            bound_by.insert(s.clone(), spec.name.clone());
                            continue;
                        }
                        Some(&v) if v == got => continue,
                        Some(&v) => format!("{s} = {v} (bound by input `{}`)", bound_by[s]),
                    },
                };
                return Err(Error::Dim {
                    graph: graph.to_string(),
                    input: spec.name.clone(),
                    axis,
                    expected,
                    got,
                    shape: given.shape.to_vec(),
                });
            }
        }
        Ok(bindings)
    }
}

/// Where a bundle came from.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Provenance {
    /// `osp-export <version>`.
    pub exporter: String,
    /// The checkpoint the weights came from (file name or description).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// SHA-256 of the source checkpoint's bytes, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_sha256: Option<String>,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleManifest {
    pub format_version: u32,
    pub model: ModelSpec,
    pub graphs: BTreeMap<String, GraphSpec>,
    pub provenance: Provenance,
    /// Byte length of every external-data file, which several graphs may share (each weight is
    /// stored once per bundle); checked when the bundle is opened, so a truncated or replaced
    /// file is named before any backend reads it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data_files: BTreeMap<String, u64>,
    /// SHA-256 (lowercase hex) of every graph file and external-data file, recorded at export.
    /// Checked only on request (`osp inspect --verify`), since hashing reads every byte; absent
    /// in bundles exported before digests were recorded.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub file_sha256: BTreeMap<String, String>,
}

impl BundleManifest {
    pub fn new(model: ModelSpec, provenance: Provenance) -> Self {
        Self {
            format_version: FORMAT_VERSION,
            model,
            graphs: BTreeMap::new(),
            provenance,
            data_files: BTreeMap::new(),
            file_sha256: BTreeMap::new(),
        }
    }

    pub fn graph(&self, name: &str) -> Result<&GraphSpec> {
        self.graphs.get(name).ok_or_else(|| Error::UnknownGraph {
            name: name.to_string(),
            available: self.graphs.keys().cloned().collect::<Vec<_>>().join(", "),
        })
    }

    /// Reads `<dir>/manifest.json`, checks the format version and the manifest's own consistency
    /// (plain file names, unique I/O names), and that every file it names exists.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| Error::Json { path: path.clone(), source })?;
        let found = value.get("format_version").and_then(|v| v.as_u64()).map_or(0, |v| u32::try_from(v).unwrap_or(0));
        if found != FORMAT_VERSION {
            return Err(Error::FormatVersion { path, found, supported: FORMAT_VERSION });
        }
        let manifest: Self =
            serde_json::from_value(value).map_err(|source| Error::Json { path: path.clone(), source })?;
        manifest.validate().map_err(|e| e.in_file(&path))?;
        manifest.check_files(dir)?;
        Ok(manifest)
    }

    /// Checks the manifest's own consistency.
    pub fn validate(&self) -> Result<()> {
        if self.graphs.is_empty() {
            return Err(Error::Invalid("a bundle needs at least one graph".into()));
        }
        for (name, g) in &self.graphs {
            for list in [&g.inputs, &g.outputs] {
                let mut seen = std::collections::BTreeSet::new();
                for t in list {
                    if !seen.insert(&t.name) {
                        return Err(Error::Invalid(format!("graph `{name}`: I/O name `{}` appears twice", t.name)));
                    }
                }
            }
            if g.outputs.is_empty() {
                return Err(Error::Invalid(format!("graph `{name}` has no outputs")));
            }
        }
        if let ModelSpec::LlamaCausalLm(c) = &self.model {
            c.validate()?;
        }
        for (file, digest) in &self.file_sha256 {
            let named = self.data_files.contains_key(file)
                || self.graphs.values().any(|g| &g.file == file || g.external_data.contains(file));
            if !named {
                return Err(Error::Invalid(format!(
                    "`file_sha256` lists `{file}`, which is neither a graph file nor an external-data file"
                )));
            }
            if !is_sha256_hex(digest) {
                return Err(Error::Invalid(format!(
                    "`file_sha256` of `{file}` must be 64 lowercase hex digits, got `{digest}`"
                )));
            }
        }
        Ok(())
    }

    /// Every file the bundle holds besides the manifest: graph files, then external-data files.
    pub fn files(&self) -> Vec<String> {
        let mut out: Vec<String> = self.graphs.values().map(|g| g.file.clone()).collect();
        for g in self.graphs.values() {
            for f in &g.external_data {
                if !out.contains(f) {
                    out.push(f.clone());
                }
            }
        }
        out
    }

    /// Checks that every graph file and external-data file exists in `dir` and is a plain name,
    /// and that every external-data file has the length recorded in `data_files`.
    pub fn check_files(&self, dir: &Path) -> Result<()> {
        for (name, g) in &self.graphs {
            for file in std::iter::once(&g.file).chain(&g.external_data) {
                let plain = Path::new(file).file_name().map(|f| f == file.as_str()).unwrap_or(false);
                if !plain || file == ".." || file == "." {
                    return Err(Error::UnsafeFileName {
                        bundle: dir.to_path_buf(),
                        graph: name.clone(),
                        file: file.clone(),
                    });
                }
                if let Err(why) = crate::path::require_file(&dir.join(file)) {
                    return Err(Error::MissingFile {
                        bundle: dir.to_path_buf(),
                        graph: name.clone(),
                        file: file.clone(),
                        why,
                    });
                }
            }
        }
        if let ModelSpec::LlamaCausalLm(c) = &self.model {
            for file in c.files.keys() {
                crate::path::require_file(&dir.join(file)).map_err(|why| Error::MissingFile {
                    bundle: dir.to_path_buf(),
                    graph: "(model files)".to_string(),
                    file: file.clone(),
                    why,
                })?;
            }
        }
        for (file, &expected) in &self.data_files {
            let graph = || {
                self.graphs
                    .iter()
                    .filter(|(_, g)| g.external_data.contains(file))
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let plain = Path::new(file).file_name().map(|f| f == file.as_str()).unwrap_or(false);
            if !plain || file == ".." || file == "." {
                return Err(Error::UnsafeFileName { bundle: dir.to_path_buf(), graph: graph(), file: file.clone() });
            }
            let path = dir.join(file);
            crate::path::require_file(&path).map_err(|why| Error::MissingFile {
                bundle: dir.to_path_buf(),
                graph: graph(),
                file: file.clone(),
                why,
            })?;
            let found = std::fs::metadata(&path).map_err(|source| Error::Io { path: path.clone(), source })?.len();
            if found != expected {
                return Err(Error::DataFileSize {
                    bundle: dir.to_path_buf(),
                    file: file.clone(),
                    graphs: graph(),
                    expected,
                    found,
                });
            }
        }
        Ok(())
    }

    /// Writes `<dir>/manifest.json` atomically (`osp_fs::write_bytes`).
    pub fn save(&self, dir: &Path) -> Result<PathBuf> {
        self.validate()?;
        let path = dir.join(MANIFEST_FILE);
        let text = serde_json::to_string_pretty(self).map_err(|source| Error::Json { path: path.clone(), source })?;
        osp_fs::write_bytes(&path, text + "\n")?;
        Ok(path)
    }
}

/// Whether `s` is a SHA-256 digest in lowercase hex.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TransformerBlockConfig;

    fn spec() -> GraphSpec {
        GraphSpec {
            file: "g.onnx".into(),
            external_data: vec![],
            inputs: vec![
                TensorSpec::new("x", DType::F32, [Dim::sym("b"), Dim::Fixed(3), Dim::sym("t")]),
                TensorSpec::new("mask", DType::I64, [Dim::sym("b"), Dim::sym("t")]),
            ],
            outputs: vec![TensorSpec::new("y", DType::F32, [Dim::sym("b"), Dim::sym("t")])],
            attention: AttentionKind::None,
            precision: Precision::F32,
            opset: 23,
            metadata: BTreeMap::new(),
        }
    }

    fn view<'a>(name: &'a str, dtype: DType, shape: &'a [usize]) -> InputView<'a> {
        InputView { name, dtype, shape }
    }

    #[test]
    fn binds_symbols_consistently() {
        let b =
            spec().check_inputs("g", &[view("x", DType::F32, &[2, 3, 5]), view("mask", DType::I64, &[2, 5])]).unwrap();
        assert_eq!(b["b"], 2);
        assert_eq!(b["t"], 5);
        assert_eq!(spec().outputs[0].resolve(&b), Some(vec![2, 5]));
    }

    #[test]
    fn rejects_each_kind_of_mismatch() {
        let s = spec();
        let cases: Vec<(Vec<InputView>, &str)> = vec![
            (vec![view("x", DType::F32, &[2, 3, 5])], "missing input `mask`"),
            (vec![view("x", DType::F16, &[2, 3, 5]), view("mask", DType::I64, &[2, 5])], "dtype must be f32, got f16"),
            (vec![view("x", DType::F32, &[2, 3]), view("mask", DType::I64, &[2, 5])], "rank must be 3"),
            (vec![view("x", DType::F32, &[2, 4, 5]), view("mask", DType::I64, &[2, 5])], "dim 1 must be 3, got 4"),
            (
                vec![view("x", DType::F32, &[2, 3, 5]), view("mask", DType::I64, &[2, 6])],
                "dim 1 must be t = 5 (bound by input `x`), got 6",
            ),
            (
                vec![view("x", DType::F32, &[2, 3, 5]), view("mask", DType::I64, &[2, 5]), view("z", DType::F32, &[1])],
                "unexpected input `z`",
            ),
        ];
        for (inputs, want) in cases {
            let err = s.check_inputs("g", &inputs).unwrap_err().to_string();
            assert!(err.contains(want), "`{err}` should contain `{want}`");
        }
    }

    #[test]
    fn manifest_round_trip_and_file_checks() {
        let dir = std::env::temp_dir().join(format!("osp-graphs-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = TransformerBlockConfig {
            hidden_size: 8,
            num_attention_heads: 2,
            attention_head_dim: 4,
            ff_inner_dim: 16,
            norm_eps: 1e-6,
            attention_mask: true,
        };
        let mut m = BundleManifest::new(ModelSpec::TransformerBlock(cfg), Provenance::default());
        m.graphs.insert("g".into(), spec());
        m.save(&dir).unwrap();
        let err = BundleManifest::load(&dir).unwrap_err().to_string();
        assert!(err.contains("names file `g.onnx`, which does not exist"), "{err}");
        std::fs::write(dir.join("g.onnx"), b"x").unwrap();
        assert_eq!(BundleManifest::load(&dir).unwrap(), m);
        assert!(m.graph("nope").unwrap_err().to_string().contains("no graph named `nope` (graphs: g)"));

        let mut bad = m.clone();
        bad.graphs.get_mut("g").unwrap().file = "../g.onnx".into();
        let err = bad.check_files(&dir).unwrap_err().to_string();
        assert!(err.contains("must be a plain name"), "{err}");

        let cases: [(&str, &str, &str); 3] = [
            ("g.onnx", "ab", "must be 64 lowercase hex digits"),
            ("g.onnx", &"A".repeat(64), "must be 64 lowercase hex digits"),
            ("other.bin", &"a".repeat(64), "neither a graph file nor an external-data file"),
        ];
        for (file, digest, want) in cases {
            let mut bad = m.clone();
            bad.file_sha256.insert(file.into(), digest.into());
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains(want), "{file} {digest}: {err}");
        }
        let mut good = m.clone();
        good.file_sha256.insert("g.onnx".into(), "0123456789abcdef".repeat(4));
        good.validate().unwrap();
        assert_eq!(good.files(), ["g.onnx"]);

        let text = std::fs::read_to_string(dir.join(MANIFEST_FILE))
            .unwrap()
            .replace("\"format_version\": 1", "\"format_version\": 99");
        std::fs::write(dir.join(MANIFEST_FILE), text).unwrap();
        let err = BundleManifest::load(&dir).unwrap_err().to_string();
        assert!(err.contains("format version 99 is not supported"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
