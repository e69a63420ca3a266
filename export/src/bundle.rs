//! Writes a bundle directory: `<graph>.onnx` per graph, large initializers in `<graph>.onnx.data`
//! (ONNX external data, 64-byte aligned offsets), and `manifest.json`.
//!
//! External data is shared across the graphs of a bundle: an initializer with the same name and
//! the same bytes (SHA-256) as one an earlier graph already wrote is not written again; the later
//! graph's tensor proto points into the earlier graph's `.onnx.data` file (so a WFVAE bundle
//! holds the decoder weights once for its four decoder graphs). A graph's manifest entry lists
//! every data file it reads, the manifest's `data_files` records each file's length and
//! `file_sha256` the SHA-256 of every graph and data file (hashed while written, in one pass).
//!
//! Everything goes into a staging folder (`osp_fs::StagedDir`) first and is renamed to `<out>` by
//! [`BundleWriter::finish`]; an existing bundle at `<out>` is replaced only then. Staging folders
//! of killed exports next to `<out>` are removed when a new export starts. Initializers are
//! streamed to disk one by one, so the writer holds no second copy of the weights.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

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
    /// The staging folder (`staged.path()`), removed when the writer is dropped without
    /// [`BundleWriter::finish`].
    tmp: PathBuf,
    staged: osp_fs::StagedDir,
    manifest: BundleManifest,
    threshold: usize,
    /// External initializers written so far: (name, byte length, SHA-256) -> (file, offset).
    written: HashMap<(String, u64, [u8; 32]), (String, u64)>,
    /// Generated initializers written so far, by name and length, with the generator itself: a
    /// later graph whose initializer has the same name, length and the *same* generator (`Arc`
    /// identity; a generator yields the same bytes on every call) points at the written bytes
    /// without running the generator again (an 8B model's weights are not streamed twice).
    generated: Vec<(String, u64, crate::graph::Generator, (String, u64))>,
}

/// The open `.onnx.data` file of the graph being written, with the SHA-256 of its bytes so far.
struct DataFile {
    path: PathBuf,
    writer: BufWriter<std::fs::File>,
    len: u64,
    digest: Sha256,
}

impl DataFile {
    fn io(&self, e: std::io::Error) -> Error {
        Error::io(&self.path, e)
    }

    /// Pads to the alignment; returns the offset the next tensor starts at.
    fn align(&mut self) -> Result<u64> {
        let pad = (EXTERNAL_DATA_ALIGNMENT - self.len % EXTERNAL_DATA_ALIGNMENT) % EXTERNAL_DATA_ALIGNMENT;
        let zeros = vec![0u8; pad as usize];
        self.writer.write_all(&zeros).map_err(|e| self.io(e))?;
        self.digest.update(&zeros);
        self.len += pad;
        Ok(self.len)
    }

    /// Appends `init`'s bytes at the (aligned) end, hashing them; returns (offset, SHA-256).
    fn append(&mut self, init: &crate::graph::Initializer) -> Result<(u64, [u8; 32])> {
        let offset = self.align()?;
        let mut hasher = Sha256::new();
        let w = &mut self.writer;
        let file_digest = &mut self.digest;
        init.write_chunks(&mut |c: &[u8]| {
            hasher.update(c);
            file_digest.update(c);
            w.write_all(c)
        })
        .map_err(|e| Error::io(&self.path, e))?;
        self.len += init.byte_len() as u64;
        Ok((offset, hasher.finalize().into()))
    }

    /// The file's length and digest now, for [`DataFile::truncate`].
    fn mark(&self) -> (u64, Sha256) {
        (self.len, self.digest.clone())
    }

    /// Drops everything after `mark` (a tensor appended by mistake).
    fn truncate(&mut self, (len, digest): (u64, Sha256)) -> Result<()> {
        self.writer.flush().map_err(|e| self.io(e))?;
        let f = self.writer.get_mut();
        f.set_len(len).map_err(|e| Error::io(&self.path, e))?;
        f.seek(SeekFrom::Start(len)).map_err(|e| Error::io(&self.path, e))?;
        self.len = len;
        self.digest = digest;
        Ok(())
    }

    /// Flushes and syncs the file; returns its length and SHA-256 (hex).
    fn finish(self) -> Result<(u64, String)> {
        let path = self.path;
        let f = self.writer.into_inner().map_err(|e| Error::io(&path, e.into_error()))?;
        f.sync_all().map_err(|e| Error::io(&path, e))?;
        Ok((self.len, hex::encode(self.digest.finalize())))
    }
}

fn sha256_of(init: &crate::graph::Initializer) -> std::io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    init.write_chunks(&mut |c: &[u8]| {
        hasher.update(c);
        Ok(())
    })?;
    Ok(hasher.finalize().into())
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
        if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            osp_fs::collect_stale_logged(parent);
        }
        let staged = osp_fs::StagedDir::create(out)?;
        Ok(Self {
            out: out.to_path_buf(),
            tmp: staged.path().to_path_buf(),
            staged,
            manifest: BundleManifest::new(model, provenance),
            threshold: external_data_threshold_bytes,
            written: HashMap::new(),
            generated: Vec::new(),
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
        let mut data: Option<DataFile> = None;
        // Data files this graph reads, in order of first use.
        let mut reads: Vec<String> = Vec::new();
        let (mut new_bytes, mut shared_bytes) = (0u64, 0u64);
        let mut protos = Vec::with_capacity(graph.initializers.len());
        for init in &graph.initializers {
            if init.byte_len() <= self.threshold {
                protos.push(init.inline_proto()?);
                continue;
            }
            let length = init.byte_len() as u64;
            let maybe_shared = self.written.keys().any(|(n, l, _)| n == &init.name && *l == length);
            let known = |hash: [u8; 32]| self.written.get(&(init.name.clone(), length, hash)).cloned();
            let graph_err = |e: std::io::Error| Error::Graph { graph: name.to_string(), message: e.to_string() };
            let shared = match &init.data {
                // Host bytes are hashed in memory first, so a shared tensor is never written twice.
                crate::graph::TensorData::Host(_) if maybe_shared => known(sha256_of(init).map_err(graph_err)?),
                crate::graph::TensorData::Generated(g) => self
                    .generated
                    .iter()
                    .find(|(n, l, written, _)| n == &init.name && *l == length && Arc::ptr_eq(written, g))
                    .map(|(.., at)| at.clone()),
                crate::graph::TensorData::Host(_) => None,
            };
            let (location, offset) = match shared {
                Some(found) => {
                    shared_bytes += length;
                    found
                }
                None => {
                    if data.is_none() {
                        let path = self.tmp.join(&data_file);
                        let f = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
                        data = Some(DataFile {
                            path,
                            writer: BufWriter::with_capacity(1 << 22, f),
                            len: 0,
                            digest: Sha256::new(),
                        });
                    }
                    let d = data.as_mut().expect("the data file should be open");
                    let before = d.mark();
                    // Generated bytes are hashed while written (one pass); a duplicate is cut off again.
                    let (offset, hash) = d.append(init)?;
                    match known(hash) {
                        Some(found) => {
                            d.truncate(before)?;
                            shared_bytes += length;
                            found
                        }
                        None => {
                            new_bytes += length;
                            self.written.insert((init.name.clone(), length, hash), (data_file.clone(), offset));
                            if let crate::graph::TensorData::Generated(g) = &init.data {
                                let at = (data_file.clone(), offset);
                                self.generated.push((init.name.clone(), length, Arc::clone(g), at));
                            }
                            (data_file.clone(), offset)
                        }
                    }
                }
            };
            if !reads.contains(&location) {
                reads.push(location.clone());
            }
            let entry = |k: &str, v: String| onnx::StringStringEntryProto { key: Some(k.to_string()), value: Some(v) };
            protos.push(onnx::TensorProto {
                data_location: Some(onnx::tensor_proto::DataLocation::External as i32),
                external_data: vec![
                    entry("location", location),
                    entry("offset", offset.to_string()),
                    entry("length", length.to_string()),
                ],
                ..init.header_proto()
            });
        }
        if let Some(d) = data {
            let (len, digest) = d.finish()?;
            if len > 0 {
                self.manifest.data_files.insert(data_file.clone(), len);
                self.manifest.file_sha256.insert(data_file.clone(), digest);
            } else {
                // Every tensor was shared: drop the empty file.
                let path = self.tmp.join(&data_file);
                std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
            }
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
        let encoded = proto.encode_to_vec();
        self.manifest.file_sha256.insert(file.clone(), hex::encode(Sha256::digest(&encoded)));
        std::fs::write(&onnx_path, encoded).map_err(|e| Error::io(&onnx_path, e))?;
        info!(graph = name, nodes = graph.nodes.len(), proto_bytes = len, new_bytes, shared_bytes, "wrote graph");
        let spec = GraphSpec {
            file,
            external_data: reads,
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
    pub fn finish(self) -> Result<BundleManifest> {
        self.manifest.save(&self.tmp)?;
        self.staged.commit()?;
        info!(bundle = %self.out.display(), graphs = self.manifest.graphs.len(), "bundle written");
        Ok(self.manifest)
    }
}

/// An existing directory may be replaced when it is a bundle or empty.
fn is_replaceable(dir: &Path) -> bool {
    dir.is_dir()
        && (dir.join(MANIFEST_FILE).is_file()
            || std::fs::read_dir(dir).map(|mut d| d.next().is_none()).unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use osp_graphs::config::LinearConfig;
    use osp_graphs::{DType, Dim, TensorSpec};

    use super::*;
    use crate::builder::GraphBuilder;
    use crate::tensor::HostTensor;

    /// `y = (x w^T) g^T` with `w` `[32, 16]` from host bytes and `g` `[16, 32]` generated.
    fn graph(name: &str, w_values: &[f32], g_seed: u8) -> OnnxGraph {
        let mut b = GraphBuilder::new(name);
        let x = b.input(TensorSpec::new("x", DType::F32, [Dim::sym("b"), Dim::Fixed(16)])).unwrap();
        let w = b.initializer("w", &HostTensor::from_f32(vec![32, 16], w_values).unwrap()).unwrap();
        let generator: crate::graph::Generator = Arc::new(move |sink| {
            let bytes: Vec<u8> = (0..16 * 32).flat_map(|i| ((i as f32) * 0.01 + g_seed as f32).to_le_bytes()).collect();
            sink(&bytes[..1000])?;
            sink(&bytes[1000..])
        });
        let g = b.generated_initializer("g", DType::F32, vec![16, 32], generator).unwrap();
        let h = b.linear(&x, &w, None).unwrap();
        let y = b.linear(&h, &g, None).unwrap();
        b.output(&y, TensorSpec::new("y", DType::F32, [Dim::sym("b"), Dim::Fixed(16)])).unwrap();
        b.finish().unwrap()
    }

    fn locations(path: &Path) -> Vec<(String, String, u64)> {
        let model = onnx::ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap();
        let graph = model.graph.unwrap();
        graph
            .initializer
            .iter()
            .map(|t| {
                let get = |k: &str| {
                    t.external_data.iter().find(|e| e.key.as_deref() == Some(k)).unwrap().value.clone().unwrap()
                };
                (t.name.clone().unwrap(), get("location"), get("offset").parse().unwrap())
            })
            .collect()
    }

    /// The same generator in two graphs is written once and run once: the second graph points at
    /// the first one's bytes without streaming them again.
    #[test]
    fn a_shared_generator_is_streamed_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let tmp = tempfile::tempdir().unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&calls);
        let generator: crate::graph::Generator = Arc::new(move |sink| {
            counted.fetch_add(1, Ordering::SeqCst);
            sink(&vec![7u8; 16 * 32 * 4])
        });
        let graph = |name: &str| {
            let mut b = GraphBuilder::new(name);
            let x = b.input(TensorSpec::new("x", DType::F32, [Dim::sym("b"), Dim::Fixed(32)])).unwrap();
            let g = b.generated_initializer("g", DType::F32, vec![16, 32], Arc::clone(&generator)).unwrap();
            let y = b.linear(&x, &g, None).unwrap();
            b.output(&y, TensorSpec::new("y", DType::F32, [Dim::sym("b"), Dim::Fixed(16)])).unwrap();
            b.finish().unwrap()
        };
        let model = ModelSpec::Linear(LinearConfig { in_features: 32, out_features: 16 });
        let mut writer = BundleWriter::create(&tmp.path().join("b"), model, provenance(None).unwrap(), 1024).unwrap();
        writer.add_graph("first", &graph("first"), AttentionKind::None, BTreeMap::new()).unwrap();
        writer.add_graph("second", &graph("second"), AttentionKind::None, BTreeMap::new()).unwrap();
        let m = writer.finish().unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(m.data_files, BTreeMap::from([("first.onnx.data".to_string(), 2048)]));
        assert_eq!(m.graphs["second"].external_data, ["first.onnx.data"]);
    }

    #[test]
    fn equal_initializers_are_written_once_per_bundle() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("bundle");
        let w: Vec<f32> = (0..512).map(|i| i as f32 * 0.5).collect();
        let w_other: Vec<f32> = (0..512).map(|i| i as f32 * -0.5).collect();
        let model = ModelSpec::Linear(LinearConfig { in_features: 16, out_features: 16 });
        let mut writer = BundleWriter::create(&out, model, provenance(None).unwrap(), 1024).unwrap();
        for (name, values, seed) in [("a", &w, 1), ("b", &w, 1), ("c", &w_other, 1), ("d", &w, 2)] {
            writer.add_graph(name, &graph(name, values, seed), AttentionKind::None, BTreeMap::new()).unwrap();
        }
        let m = writer.finish().unwrap();
        // `a` writes both tensors; `b` shares both (no file of its own); `c` has its own `w`
        // (same name, other bytes) and shares `g`; `d` shares `w` and has its own `g`.
        let expected_files = BTreeMap::from([
            ("a.onnx.data".to_string(), 64 * 32 + 2048),
            ("c.onnx.data".to_string(), 2048),
            ("d.onnx.data".to_string(), 2048),
        ]);
        assert_eq!(m.data_files, expected_files);
        for (file, len) in &expected_files {
            assert_eq!(std::fs::metadata(out.join(file)).unwrap().len(), *len, "{file}");
        }
        // Every graph and data file has the digest of the bytes on disk (the truncated
        // duplicates of `c` and `d` rolled back out of their files' digests).
        let files: Vec<String> = ["a.onnx", "b.onnx", "c.onnx", "d.onnx"]
            .into_iter()
            .map(String::from)
            .chain(expected_files.keys().cloned())
            .collect();
        assert_eq!(
            m.file_sha256.keys().cloned().collect::<std::collections::BTreeSet<_>>(),
            files.iter().cloned().collect()
        );
        for file in &files {
            let on_disk = hex::encode(Sha256::digest(std::fs::read(out.join(file)).unwrap()));
            assert_eq!(m.file_sha256[file], on_disk, "{file}");
        }
        assert!(!out.join("b.onnx.data").exists());
        assert_eq!(m.graphs["a"].external_data, ["a.onnx.data"]);
        assert_eq!(m.graphs["b"].external_data, ["a.onnx.data"]);
        assert_eq!(m.graphs["c"].external_data, ["c.onnx.data", "a.onnx.data"]);
        assert_eq!(m.graphs["d"].external_data, ["a.onnx.data", "d.onnx.data"]);
        let a = locations(&out.join("a.onnx"));
        assert_eq!(a, [("w".into(), "a.onnx.data".into(), 0), ("g".into(), "a.onnx.data".into(), 2048)]);
        assert_eq!(locations(&out.join("b.onnx")), a);
        assert_eq!(locations(&out.join("c.onnx"))[0], ("w".into(), "c.onnx.data".into(), 0));
        assert_eq!(locations(&out.join("d.onnx"))[1], ("g".into(), "d.onnx.data".into(), 0));
        // The bytes each graph points at are its own tensors' bytes.
        let data = std::fs::read(out.join("a.onnx.data")).unwrap();
        assert_eq!(&data[..4], &0.0f32.to_le_bytes());
        assert_eq!(&data[2048..2052], &1.0f32.to_le_bytes());
        let data = std::fs::read(out.join("d.onnx.data")).unwrap();
        assert_eq!(&data[..4], &2.0f32.to_le_bytes());
    }
}
