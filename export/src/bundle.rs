//! Writes a bundle directory: `<graph>.onnx` per graph, large initializers in `<graph>.onnx.data`
//! (ONNX external data, 64-byte aligned offsets), and `manifest.json`.
//!
//! Everything goes into `<out>.partial-<pid>` first and is renamed to `<out>` by
//! [`BundleWriter::finish`]; an existing bundle at `<out>` is replaced only then. Initializers are
//! streamed to disk one by one, so the writer holds no second copy of the weights.

use std::collections::BTreeMap;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use osp_graphs::{AttentionKind, BundleManifest, GraphSpec, ModelSpec, Provenance, MANIFEST_FILE};
use prost::Message;
use sha2::{Digest, Sha256};
use tracing::info;

use crate::error::{Error, Result};
use crate::graph::OnnxGraph;
use crate::onnx;

/// Alignment of every external tensor's offset in a `.onnx.data` file.
pub const EXTERNAL_DATA_ALIGNMENT: u64 = 64;
/// Default size above which an initializer moves to the external-data file.
pub const DEFAULT_EXTERNAL_DATA_THRESHOLD: usize = 1024;

/// `<path>.partial-<pid>`: the temporary name a file or directory is written under.
pub fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".partial-{}", std::process::id()));
    path.with_file_name(name)
}

/// Provenance for a bundle exported from `source` (its file name and SHA-256), or from no file.
pub fn provenance(source: Option<&Path>) -> Result<Provenance> {
    let mut p = Provenance { exporter: crate::exporter_id(), ..Default::default() };
    if let Some(path) = source {
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        p.source = Some(
            path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string()),
        );
        p.source_sha256 = Some(hex::encode(hasher.finalize()));
    }
    Ok(p)
}

/// Builds one bundle directory; see the module docs.
pub struct BundleWriter {
    out: PathBuf,
    tmp: PathBuf,
    manifest: BundleManifest,
    threshold: usize,
    finished: bool,
}

impl BundleWriter {
    /// Starts a bundle for `out`. Initializers larger than `external_data_threshold_bytes` go to
    /// external data.
    pub fn create(
        out: &Path,
        model: ModelSpec,
        provenance: Provenance,
        external_data_threshold_bytes: usize,
    ) -> Result<Self> {
        if out.file_name().is_none() {
            return Err(Error::Config(format!("bundle path {} must name a directory", out.display())));
        }
        if out.exists() && !is_replaceable(out) {
            return Err(Error::Config(format!(
                "{} exists and is not a bundle (no {MANIFEST_FILE}); refusing to replace it",
                out.display()
            )));
        }
        let tmp = partial_path(out);
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        Ok(Self {
            out: out.to_path_buf(),
            tmp,
            manifest: BundleManifest::new(model, provenance),
            threshold: external_data_threshold_bytes,
            finished: false,
        })
    }

    /// The directory files are being written to.
    pub fn staging_dir(&self) -> &Path {
        &self.tmp
    }

    /// Writes `graph` as `<name>.onnx` (+ `<name>.onnx.data`) and records it in the manifest.
    pub fn add_graph(
        &mut self,
        name: &str,
        graph: &OnnxGraph,
        attention: AttentionKind,
        metadata: BTreeMap<String, serde_json::Value>,
    ) -> Result<&GraphSpec> {
        let plain = !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            && !name.starts_with('.');
        if !plain {
            return Err(Error::Config(format!("graph name `{name}` must be a plain file name ([A-Za-z0-9_.-])")));
        }
        if self.manifest.graphs.contains_key(name) {
            return Err(Error::Config(format!("the bundle already has a graph named `{name}`")));
        }
        graph.check_wiring()?;
        let file = format!("{name}.onnx");
        let data_file = format!("{file}.data");
        let data_path = self.tmp.join(&data_file);
        let mut data: Option<BufWriter<std::fs::File>> = None;
        let mut offset: u64 = 0;
        let mut protos = Vec::with_capacity(graph.initializers.len());
        for init in &graph.initializers {
            if init.byte_len() <= self.threshold {
                protos.push(init.inline_proto()?);
                continue;
            }
            if data.is_none() {
                let f = std::fs::File::create(&data_path).map_err(|e| Error::io(&data_path, e))?;
                data = Some(BufWriter::with_capacity(1 << 22, f));
            }
            let w = data.as_mut().expect("the data file should be open");
            let pad = (EXTERNAL_DATA_ALIGNMENT - offset % EXTERNAL_DATA_ALIGNMENT) % EXTERNAL_DATA_ALIGNMENT;
            w.write_all(&vec![0u8; pad as usize]).map_err(|e| Error::io(&data_path, e))?;
            offset += pad;
            init.write_chunks(&mut |c: &[u8]| w.write_all(c)).map_err(|e| Error::io(&data_path, e))?;
            let length = init.byte_len() as u64;
            let entry = |k: &str, v: String| onnx::StringStringEntryProto { key: Some(k.to_string()), value: Some(v) };
            protos.push(onnx::TensorProto {
                data_location: Some(onnx::tensor_proto::DataLocation::External as i32),
                external_data: vec![
                    entry("location", data_file.clone()),
                    entry("offset", offset.to_string()),
                    entry("length", length.to_string()),
                ],
                ..init.header_proto()
            });
            offset += length;
        }
        if let Some(mut w) = data {
            w.flush().map_err(|e| Error::io(&data_path, e))?;
            w.into_inner()
                .map_err(|e| Error::io(&data_path, e.into_error()))?
                .sync_all()
                .map_err(|e| Error::io(&data_path, e))?;
        }
        let proto = graph.model_proto_with(protos);
        let onnx_path = self.tmp.join(&file);
        let len = proto.encoded_len();
        if len > i32::MAX as usize {
            return Err(Error::Graph {
                graph: name.to_string(),
                message: format!("the protobuf would be {len} bytes (over 2 GiB); lower the external-data threshold"),
            });
        }
        std::fs::write(&onnx_path, proto.encode_to_vec()).map_err(|e| Error::io(&onnx_path, e))?;
        info!(graph = name, nodes = graph.nodes.len(), proto_bytes = len, external_bytes = offset, "wrote graph");
        let spec = GraphSpec {
            file,
            external_data: if offset > 0 { vec![data_file] } else { vec![] },
            inputs: graph.inputs.clone(),
            outputs: graph.outputs.clone(),
            attention,
            precision: graph.precision,
            opset: crate::OPSET as u32,
            metadata,
        };
        Ok(self.manifest.graphs.entry(name.to_string()).or_insert(spec))
    }

    /// Saves the manifest and renames the bundle into place, replacing an existing bundle at `out`.
    pub fn finish(mut self) -> Result<BundleManifest> {
        self.manifest.save(&self.tmp)?;
        if self.out.exists() {
            let old = {
                let mut n = self.out.file_name().map(|n| n.to_os_string()).unwrap_or_default();
                n.push(format!(".old-{}", std::process::id()));
                self.out.with_file_name(n)
            };
            std::fs::rename(&self.out, &old).map_err(|e| Error::io(&self.out, e))?;
            std::fs::rename(&self.tmp, &self.out).map_err(|e| Error::io(&self.out, e))?;
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        } else {
            std::fs::rename(&self.tmp, &self.out).map_err(|e| Error::io(&self.out, e))?;
        }
        self.finished = true;
        info!(bundle = %self.out.display(), graphs = self.manifest.graphs.len(), "bundle written");
        Ok(self.manifest.clone())
    }
}

impl Drop for BundleWriter {
    fn drop(&mut self) {
        if !self.finished {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// An existing directory may be replaced when it is a bundle or empty.
fn is_replaceable(dir: &Path) -> bool {
    dir.is_dir()
        && (dir.join(MANIFEST_FILE).is_file()
            || std::fs::read_dir(dir).map(|mut d| d.next().is_none()).unwrap_or(false))
}
