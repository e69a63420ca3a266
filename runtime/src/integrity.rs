//! Bundle integrity checks beyond [`Bundle::open`] (which checks the manifest, that every named
//! file exists, and every external-data file's length; see docs/integrity.md):
//!
//! - [`check_graph`]: decodes a graph's `.onnx` protobuf (every nested message) and checks it
//!   against the manifest: a graph with at least one node, the manifest's inputs and outputs, and
//!   every external initializer inside a data file the manifest lists, within that file's length.
//!   `osp inspect` runs it on every graph.
//! - [`verify_digests`]: streams every graph and data file through SHA-256 and compares it with
//!   the manifest's `file_sha256` (`osp inspect --verify`).
//!
//! `osp inspect bundle/ --verify`

use std::io::Read;
use std::path::Path;
use std::time::Instant;

use prost::Message;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::session::Bundle;

/// ONNX protobuf types generated from the vendored `proto/onnx.proto` (workspace root), decoded only.
#[allow(clippy::all, missing_docs)]
pub(crate) mod onnx_pb {
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

/// Bytes read per step while hashing.
const HASH_CHUNK: usize = 1 << 20;

/// SHA-256 (lowercase hex) of the file at `path`, read in 1 MiB chunks (never whole).
pub fn sha256_file(path: &Path) -> Result<String> {
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_CHUNK];
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// What [`verify_digests`] checked.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifyReport {
    /// Files whose digest matched, with their sizes in bytes.
    pub files: Vec<(String, u64)>,
    /// Bytes hashed.
    pub bytes: u64,
    /// Seconds spent hashing.
    pub seconds: f64,
}

/// Hashes every file listed in the manifest's `file_sha256` and fails on the first mismatch,
/// naming the file. Fails when the manifest records no digests (a bundle exported before they
/// were recorded) or when a graph or data file of the bundle has none.
pub fn verify_digests(bundle: &Bundle) -> Result<VerifyReport> {
    let m = bundle.manifest();
    if m.file_sha256.is_empty() {
        return Err(Error::NoDigests { bundle: bundle.dir().to_path_buf() });
    }
    if let Some(file) = m.files().into_iter().find(|f| !m.file_sha256.contains_key(f)) {
        return Err(Error::MissingDigest { bundle: bundle.dir().to_path_buf(), file });
    }
    let start = Instant::now();
    let mut report = VerifyReport { files: Vec::new(), bytes: 0, seconds: 0.0 };
    for (file, expected) in &m.file_sha256 {
        let path = bundle.dir().join(file);
        let found = sha256_file(&path)?;
        if &found != expected {
            return Err(Error::DigestMismatch { path, expected: expected.clone(), found });
        }
        let len = std::fs::metadata(&path).map_err(|source| Error::Io { path: path.clone(), source })?.len();
        report.bytes += len;
        report.files.push((file.clone(), len));
    }
    report.seconds = start.elapsed().as_secs_f64();
    tracing::info!(
        bundle = %bundle.dir().display(),
        files = report.files.len(),
        bytes = report.bytes,
        seconds = report.seconds,
        "digests verified"
    );
    Ok(report)
}

/// What [`check_graph`] found in a graph file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraphFacts {
    pub nodes: usize,
    pub initializers: usize,
    /// Initializers stored in external-data files.
    pub external: usize,
}

/// Decodes `graph`'s `.onnx` file and checks it against the manifest (see the module docs).
pub fn check_graph(bundle: &Bundle, graph: &str) -> Result<GraphFacts> {
    let spec = bundle.manifest().graph(graph)?;
    let path = bundle.dir().join(&spec.file);
    let bad = |why: String| Error::GraphFile { graph: graph.to_string(), path: path.clone(), why };
    let bytes = std::fs::read(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
    if bytes.is_empty() {
        return Err(bad("the file is empty".into()));
    }
    let model = onnx_pb::ModelProto::decode(bytes.as_slice())
        .map_err(|e| bad(format!("not an ONNX model (truncated or corrupt protobuf: {e})")))?;
    let g = model.graph.as_ref().ok_or_else(|| bad("the model holds no graph".into()))?;
    if g.node.is_empty() {
        return Err(bad("the graph has no nodes".into()));
    }
    let initializer_names: std::collections::BTreeSet<&str> =
        g.initializer.iter().filter_map(|t| t.name.as_deref()).collect();
    let inputs: Vec<&str> =
        g.input.iter().filter_map(|v| v.name.as_deref()).filter(|n| !initializer_names.contains(n)).collect();
    let outputs: Vec<&str> = g.output.iter().filter_map(|v| v.name.as_deref()).collect();
    for (kind, declared, specs) in [("input", &inputs, &spec.inputs), ("output", &outputs, &spec.outputs)] {
        if let Some(t) = specs.iter().find(|t| !declared.contains(&t.name.as_str())) {
            return Err(bad(format!(
                "the manifest's {kind} `{}` is not a graph {kind} (graph {kind}s: {})",
                t.name,
                declared.join(", ")
            )));
        }
    }
    let mut external = 0;
    let data_len = |file: &str| -> Result<u64> {
        let p = bundle.dir().join(file);
        Ok(std::fs::metadata(&p).map_err(|source| Error::Io { path: p.clone(), source })?.len())
    };
    for t in &g.initializer {
        if t.data_location != Some(onnx_pb::tensor_proto::DataLocation::External as i32) {
            continue;
        }
        external += 1;
        let name = t.name.as_deref().unwrap_or("");
        let get = |k: &str| t.external_data.iter().find(|e| e.key.as_deref() == Some(k)).and_then(|e| e.value.clone());
        let location = get("location").ok_or_else(|| bad(format!("initializer `{name}` has no external location")))?;
        if !spec.external_data.contains(&location) {
            return Err(bad(format!(
                "initializer `{name}` reads `{location}`, which the manifest does not list for this graph"
            )));
        }
        let number = |k: &str| -> Result<u64> {
            match get(k) {
                None => Ok(0),
                Some(v) => v.parse().map_err(|_| bad(format!("initializer `{name}`: {k} `{v}` is not a number"))),
            }
        };
        let (offset, length) = (number("offset")?, number("length")?);
        let file_len = data_len(&location)?;
        if offset.checked_add(length).is_none_or(|end| end > file_len) {
            return Err(bad(format!(
                "initializer `{name}` spans bytes {offset}..{} of `{location}`, which holds {file_len}",
                offset.saturating_add(length)
            )));
        }
    }
    Ok(GraphFacts { nodes: g.node.len(), initializers: g.initializer.len(), external })
}
