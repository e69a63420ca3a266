//! What the ONNX Runtime CPU sessions of one bundle share.
//!
//! They share one prepacked-weights container (`CreateSessionWithPrepackedWeightsContainer`), so
//! a kernel's prepacked copy of a weight that several graphs hold (the streaming decoder graphs)
//! is made once, and one in-memory copy of each external-data file that several graphs reference
//! (`decoder.onnx.data` for the WFVAE decoders), handed to each session with
//! `AddExternalInitializersFromMemory` and
//! `session.use_external_initializer_file_buffers_directly = 1` so that ORT reads the weights
//! from that buffer instead of copying them. Without sharing, each session memory-maps the file
//! on its own and its pages are resident once per mapping (3 x 440 MB for the streaming WFVAE
//! decoder); without the config entry ORT copies the buffer per session (both measured, see
//! docs/measurements). Other backends share nothing.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use ort::session::builder::PrepackedWeights;
use osp_graphs::BundleManifest;

use crate::error::{Error, Result};

/// One prepacked-weights container, created with the first session, and one in-memory copy of
/// each external-data file that several of the bundle's graphs reference, read when the first of
/// them loads. Clones of a [`Bundle`](crate::Bundle) share one pool.
#[derive(Default)]
pub struct SharedWeights {
    prepacked: OnceLock<PrepackedWeights>,
    /// How many of the bundle's graphs reference each external-data file.
    references: OnceLock<BTreeMap<String, usize>>,
    /// The shared external-data files read so far.
    data: Mutex<BTreeMap<String, Arc<[u8]>>>,
}

/// A bundle's pool with the bundle it belongs to: the directory and manifest that name the
/// graphs and external-data files.
#[derive(Clone, Copy)]
pub struct BundleWeights<'a> {
    pub pool: &'a SharedWeights,
    pub dir: &'a Path,
    pub manifest: &'a BundleManifest,
}

impl fmt::Debug for SharedWeights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedWeights").field("prepacked", &self.prepacked.get().is_some()).finish()
    }
}

impl SharedWeights {
    /// Whether a session has used the pool yet.
    pub fn in_use(&self) -> bool {
        self.prepacked.get().is_some()
    }

    /// The external-data files this pool has read into memory, by name.
    pub fn shared_files(&self) -> Vec<String> {
        self.data.lock().map(|d| d.keys().cloned().collect()).unwrap_or_default()
    }

    /// The shared prepacked-weights container, after loading ONNX Runtime (creating one needs it).
    pub(super) fn prepacked_after_init(&self) -> Result<&PrepackedWeights> {
        super::library::environment()?;
        Ok(self.prepacked.get_or_init(PrepackedWeights::new))
    }
}

impl BundleWeights<'_> {
    /// The in-memory external-data files for the graph at `model`: when it references a file that
    /// other graphs of the bundle reference too, every file it references (the shared ones from
    /// the pool); else none (its files stay memory-mapped).
    pub(super) fn data_for(&self, model: &Path) -> Result<Vec<(String, Arc<[u8]>)>> {
        let Self { pool, dir, manifest } = *self;
        if manifest.data_files.is_empty() {
            return Ok(Vec::new());
        }
        let read = |path: &Path| std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source });
        let references = match pool.references.get() {
            Some(r) => r,
            None => {
                let mut counts = BTreeMap::new();
                for spec in manifest.graphs.values() {
                    let bytes = read(&dir.join(&spec.file))?;
                    for name in manifest.data_files.keys() {
                        if references_data_file(&bytes, name) {
                            *counts.entry(name.clone()).or_insert(0usize) += 1;
                        }
                    }
                }
                pool.references.get_or_init(|| counts)
            }
        };
        let bytes = read(model)?;
        let used: Vec<(&String, usize)> =
            references.iter().filter(|(name, _)| references_data_file(&bytes, name)).map(|(n, &c)| (n, c)).collect();
        // ORT wants every external file of a model from memory once one is: a file only this
        // graph uses is read for it alone.
        if used.iter().all(|&(_, count)| count < 2) {
            return Ok(Vec::new());
        }
        let mut data = Vec::new();
        for (name, count) in used {
            if count < 2 {
                data.push((name.clone(), read_shared(&dir.join(name))?));
                continue;
            }
            let mut files = pool.data.lock().map_err(|_| Error::Io {
                path: dir.join(name),
                source: std::io::Error::other("a thread panicked while reading the shared weights"),
            })?;
            let file = match files.get(name) {
                Some(file) => file.clone(),
                None => {
                    let file = read_shared(&dir.join(name))?;
                    tracing::debug!(file = %name, bytes = file.len(), "external data read once for the bundle's sessions");
                    files.insert(name.clone(), file.clone());
                    file
                }
            };
            data.push((name.clone(), file));
        }
        Ok(data)
    }
}

/// The bytes of the file at `path`, read straight into a shared buffer (no second copy of a
/// weight file while it loads).
fn read_shared(path: &Path) -> Result<Arc<[u8]>> {
    use std::io::Read;
    let io = |source| Error::Io { path: path.to_path_buf(), source };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let len = usize::try_from(file.metadata().map_err(io)?.len())
        .map_err(|_| io(std::io::Error::other("the file does not fit in memory")))?;
    let mut buf = Arc::<[u8]>::new_uninit_slice(len);
    let slots = Arc::get_mut(&mut buf).expect("a buffer just created has one owner");
    slots.fill(std::mem::MaybeUninit::new(0));
    // SAFETY: every byte was initialised by the fill above.
    let mut buf = unsafe { buf.assume_init() };
    file.read_exact(Arc::get_mut(&mut buf).expect("a buffer just created has one owner")).map_err(io)?;
    Ok(buf)
}

/// Whether the serialized ONNX model `model` names `file` as an initializer's external-data
/// `location`: the entry's value is stored as protobuf field 2 (tag byte 0x12) followed by its
/// length, then the name, so `file` is not matched inside a longer name.
fn references_data_file(model: &[u8], file: &str) -> bool {
    let name = file.as_bytes();
    let mut needle = vec![0x12];
    let mut len = name.len();
    while len >= 0x80 {
        needle.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    needle.push(len as u8);
    needle.extend_from_slice(name);
    model.windows(needle.len()).any(|w| w == needle.as_slice())
}
