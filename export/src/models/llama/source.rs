//! A Hugging Face Llama folder read for export: `config.json`, `generation_config.json`, the
//! tokenizer files, and the weights (`model.safetensors` or shards through
//! `model.safetensors.index.json`), checked strictly from the safetensors headers alone. Tensor
//! data is read only while the bundle is written, one tensor at a time, by positioned reads.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use osp_graphs::llama::{
    GenerationConfig, LlamaConfig, CONFIG_FILE, COPIED_FILES, GENERATION_CONFIG_FILE, TOKENIZER_FILE,
};
use osp_graphs::DType;

use crate::error::{Error, Result};
use crate::graph::Generator;
use crate::tensor::{convert_float_bytes, read_safetensors_header, SafetensorsEntry};

/// The single-file weights of a Hugging Face folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The shard index of a sharded Hugging Face folder.
pub const WEIGHTS_INDEX_FILE: &str = "model.safetensors.index.json";
/// Bytes read per chunk while streaming a tensor.
const CHUNK_BYTES: usize = 1 << 22;

/// Every parameter of `LlamaForCausalLM` with its PyTorch shape, in module order
/// (`lm_head.weight` is absent when the embedding is tied).
pub fn parameter_shapes(cfg: &LlamaConfig) -> Vec<(String, Vec<usize>)> {
    let (h, i, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim());
    let (q, kv) = (cfg.num_attention_heads * hd, cfg.num_key_value_heads() * hd);
    let mut out = vec![("model.embed_tokens.weight".to_string(), vec![cfg.vocab_size, h])];
    for l in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{l}");
        for (name, shape) in [
            ("self_attn.q_proj.weight", vec![q, h]),
            ("self_attn.k_proj.weight", vec![kv, h]),
            ("self_attn.v_proj.weight", vec![kv, h]),
            ("self_attn.o_proj.weight", vec![h, q]),
            ("mlp.gate_proj.weight", vec![i, h]),
            ("mlp.up_proj.weight", vec![i, h]),
            ("mlp.down_proj.weight", vec![h, i]),
            ("input_layernorm.weight", vec![h]),
            ("post_attention_layernorm.weight", vec![h]),
        ] {
            out.push((format!("{p}.{name}"), shape));
        }
    }
    out.push(("model.norm.weight".to_string(), vec![h]));
    if !cfg.tie_word_embeddings() {
        out.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, h]));
    }
    out
}

/// One checked tensor of the source folder: where its bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceTensor {
    pub file: Arc<PathBuf>,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub offset: u64,
}

impl SourceTensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Streams the tensor's values converted to `to` (f32, f16 or bf16) in chunks.
    pub fn for_each_chunk(&self, to: DType, sink: &mut dyn FnMut(&[u8]) -> std::io::Result<()>) -> std::io::Result<()> {
        let mut file = std::fs::File::open(self.file.as_ref())?;
        file.seek(SeekFrom::Start(self.offset))?;
        let elem = self.dtype.size();
        let mut left = self.numel() * elem;
        let mut buf = vec![0u8; CHUNK_BYTES.min(left)];
        let mut converted = Vec::new();
        while left > 0 {
            let n = left.min(buf.len());
            file.read_exact(&mut buf[..n])?;
            if self.dtype == to {
                sink(&buf[..n])?;
            } else {
                converted.clear();
                convert_float_bytes(self.dtype, to, &buf[..n], &mut converted)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
                sink(&converted)?;
            }
            left -= n;
        }
        Ok(())
    }

    /// A generator of the tensor's bytes as `to`.
    pub fn generator(self: &Arc<Self>, to: DType) -> Generator {
        let this = Arc::clone(self);
        Arc::new(move |sink| this.for_each_chunk(to, sink))
    }

    /// Rows of a 2-D tensor as f32, `rows_per_call` at a time: `f(first_row, values)`.
    pub fn for_each_rows_f32(
        &self,
        rows_per_call: usize,
        f: &mut dyn FnMut(usize, &[f32]) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let [rows, cols] = self.shape[..] else {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "row reads need a 2-D tensor"));
        };
        let mut file = std::fs::File::open(self.file.as_ref())?;
        file.seek(SeekFrom::Start(self.offset))?;
        let elem = self.dtype.size();
        let mut buf = vec![0u8; rows_per_call.min(rows) * cols * elem];
        let mut converted = Vec::new();
        let mut values = Vec::new();
        let mut row = 0;
        while row < rows {
            let n = rows_per_call.min(rows - row);
            let bytes = &mut buf[..n * cols * elem];
            file.read_exact(bytes)?;
            converted.clear();
            let f32_bytes: &[u8] = if self.dtype == DType::F32 {
                bytes
            } else {
                convert_float_bytes(self.dtype, DType::F32, bytes, &mut converted)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
                &converted
            };
            values.clear();
            values.extend(f32_bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])));
            f(row, &values)?;
            row += n;
        }
        Ok(())
    }
}

/// A Hugging Face Llama folder, checked: configs parsed, every weight present once with its exact
/// shape and a float dtype, nothing else.
#[derive(Debug, Clone)]
pub struct LlamaSource {
    pub dir: PathBuf,
    pub config: LlamaConfig,
    pub generation_config: GenerationConfig,
    /// PyTorch key -> where its bytes are.
    pub tensors: BTreeMap<String, Arc<SourceTensor>>,
    /// The weight files read (the index file first when sharded).
    pub weight_files: Vec<PathBuf>,
}

/// Reads `path` as JSON into `T` (a `Deserialize` type named at the call).
macro_rules! read_json {
    ($path:expr) => {{
        let path: &Path = $path;
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|source| Error::Json { path: path.to_path_buf(), source })?
    }};
}

impl LlamaSource {
    /// Reads `dir`'s configs and weight headers and checks them strictly; reads no tensor data.
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::Config(format!("--model-dir {} is not a directory", dir.display())));
        }
        for required in [CONFIG_FILE, GENERATION_CONFIG_FILE, TOKENIZER_FILE] {
            if !dir.join(required).is_file() {
                return Err(Error::Config(format!(
                    "{}: the Hugging Face folder has no `{required}` (needed: {CONFIG_FILE}, {GENERATION_CONFIG_FILE}, \
                     {TOKENIZER_FILE}, and {WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE})",
                    dir.display()
                )));
            }
        }
        let config: LlamaConfig = read_json!(&dir.join(CONFIG_FILE));
        check_architecture(&config).map_err(|m| Error::Config(format!("{}: {m}", dir.join(CONFIG_FILE).display())))?;
        config.validate()?;
        let generation_config: GenerationConfig = read_json!(&dir.join(GENERATION_CONFIG_FILE));

        let (entries, weight_files) = if dir.join(WEIGHTS_INDEX_FILE).is_file() {
            read_sharded(&dir.join(WEIGHTS_INDEX_FILE))?
        } else if dir.join(WEIGHTS_FILE).is_file() {
            let path = Arc::new(dir.join(WEIGHTS_FILE));
            let entries = read_safetensors_header(&path)?.into_iter().map(|e| (Arc::clone(&path), e)).collect();
            (entries, vec![path.as_ref().clone()])
        } else {
            return Err(Error::Config(format!(
                "{}: no weights (`{WEIGHTS_FILE}` or `{WEIGHTS_INDEX_FILE}`)",
                dir.display()
            )));
        };
        let tensors = check_weights(&config, entries)?;
        Ok(Self { dir: dir.to_path_buf(), config, generation_config, tensors, weight_files })
    }

    /// The Hugging Face files ([`COPIED_FILES`]) the folder has.
    pub fn copied_files(&self) -> Vec<(&'static str, PathBuf)> {
        COPIED_FILES.iter().map(|&n| (n, self.dir.join(n))).filter(|(_, p)| p.is_file()).collect()
    }

    pub fn tensor(&self, key: &str) -> &Arc<SourceTensor> {
        &self.tensors[key]
    }

    /// Parameters of the checked weights.
    pub fn parameter_count(&self) -> u64 {
        self.tensors.values().map(|t| t.numel() as u64).sum()
    }
}

/// The `config.json` keys the graphs do not implement must hold the values they assume.
fn check_architecture(cfg: &LlamaConfig) -> std::result::Result<(), String> {
    let get = |k: &str| cfg.upstream.get(k);
    if let Some(v) = get("model_type").filter(|v| v.as_str() != Some("llama")) {
        return Err(format!("`model_type` must be \"llama\", got {v}"));
    }
    if let Some(v) = get("hidden_act").filter(|v| v.as_str() != Some("silu")) {
        return Err(format!("`hidden_act` must be \"silu\" (LlamaMLP's SiLU), got {v}"));
    }
    for key in ["attention_bias", "mlp_bias"] {
        if let Some(v) = get(key).filter(|v| v.as_bool() != Some(false)) {
            return Err(format!("`{key}` must be false (the graphs have no projection biases), got {v}"));
        }
    }
    if let Some(rs) = &cfg.rope_scaling {
        if rs.rope_type != "llama3" && rs.rope_type != "default" {
            return Err(format!(
                "`rope_scaling.rope_type` \"{}\" is not supported (supported: llama3, default)",
                rs.rope_type
            ));
        }
    }
    Ok(())
}

type Located = Vec<(Arc<PathBuf>, SafetensorsEntry)>;

fn read_sharded(index_path: &Path) -> Result<(Located, Vec<PathBuf>)> {
    let index: serde_json::Value = read_json!(index_path);
    let weight_map: BTreeMap<String, String> =
        index.get("weight_map").cloned().and_then(|m| serde_json::from_value(m).ok()).ok_or_else(|| {
            Error::Config(format!("{}: `weight_map` must map tensor names to shard files", index_path.display()))
        })?;
    let dir = index_path.parent().unwrap_or_else(|| Path::new("."));
    let shards: BTreeSet<&String> = weight_map.values().collect();
    let mut entries = Vec::new();
    let mut files = vec![index_path.to_path_buf()];
    for shard in shards {
        let plain = Path::new(shard).file_name().is_some_and(|f| f == shard.as_str());
        if !plain {
            return Err(Error::Config(format!(
                "{}: shard `{shard}` must be a plain file name in the folder",
                index_path.display()
            )));
        }
        let path = Arc::new(dir.join(shard));
        for e in read_safetensors_header(&path)? {
            match weight_map.get(&e.name) {
                Some(listed) if listed == shard => entries.push((Arc::clone(&path), e)),
                Some(listed) => {
                    return Err(Error::Config(format!(
                        "{}: tensor `{}` is in shard {shard} but the index lists it in {listed}",
                        index_path.display(),
                        e.name
                    )))
                }
                None => {
                    return Err(Error::Config(format!(
                        "{}: tensor `{}` in shard {shard} is not listed in the index's weight_map",
                        index_path.display(),
                        e.name
                    )))
                }
            }
        }
        files.push(path.as_ref().clone());
    }
    let found: BTreeSet<&str> = entries.iter().map(|(_, e)| e.name.as_str()).collect();
    if let Some((absent, shard)) = weight_map.iter().find(|(k, _)| !found.contains(k.as_str())) {
        return Err(Error::Config(format!(
            "{}: tensor `{absent}` is listed in the index but absent from shard {shard}",
            index_path.display()
        )));
    }
    Ok((entries, files))
}

/// Strict: every parameter of [`parameter_shapes`] once, with its shape and a float dtype; no other.
fn check_weights(cfg: &LlamaConfig, entries: Located) -> Result<BTreeMap<String, Arc<SourceTensor>>> {
    let mut found: BTreeMap<String, Arc<SourceTensor>> = BTreeMap::new();
    for (file, e) in entries {
        if found.contains_key(&e.name) {
            return Err(Error::Config(format!("weights: tensor `{}` appears in two files", e.name)));
        }
        let t = SourceTensor { file, dtype: e.dtype, shape: e.shape, offset: e.offset };
        found.insert(e.name, Arc::new(t));
    }
    let mut out = BTreeMap::new();
    for (key, shape) in parameter_shapes(cfg) {
        let t = found.remove(&key).ok_or_else(|| Error::MissingTensor { key: key.clone(), expected: shape.clone() })?;
        if t.shape != shape {
            return Err(Error::Shape { key, expected: shape, got: t.shape.clone() });
        }
        if !matches!(t.dtype, DType::F32 | DType::F16 | DType::Bf16) {
            return Err(Error::TensorDType { key, expected: DType::F32, got: t.dtype });
        }
        out.insert(key, t);
    }
    if !found.is_empty() {
        return Err(Error::UnexpectedTensors { keys: found.into_keys().collect() });
    }
    Ok(out)
}
