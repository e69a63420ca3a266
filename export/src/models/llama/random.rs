//! Random-weight Hugging Face Llama folders (`config.json`, `generation_config.json`, safetensors
//! weights, sharded like a release when they exceed one shard) for size, memory and speed checks:
//! the weights are streamed into the files, never held in memory.
//!
//! Values (deterministic per seed and key): norm weights `1 + U(-0.1, 0.1)`, the embedding
//! `U(-1, 1)`, projections `U(-1/sqrt(in), 1/sqrt(in))` (PyTorch's `nn.Linear` bound).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use osp_graphs::llama::{LlamaConfig, CONFIG_FILE, GENERATION_CONFIG_FILE};
use osp_graphs::DType;
use serde_json::json;

use super::source::{parameter_shapes, WEIGHTS_FILE, WEIGHTS_INDEX_FILE};
use crate::error::{Error, Result};
use crate::models::mt5::splitmix64;

const CHUNK_ELEMENTS: usize = 1 << 20;

fn safetensors_name(dtype: DType) -> Result<&'static str> {
    Ok(match dtype {
        DType::F32 => "F32",
        DType::F16 => "F16",
        DType::Bf16 => "BF16",
        other => return Err(Error::Config(format!("random weights are float, not {other}"))),
    })
}

/// Streams `numel` random values for `key` of `shape` as `dtype` into `w`.
fn write_values(w: &mut dyn Write, seed: u64, key: &str, shape: &[usize], dtype: DType) -> std::io::Result<()> {
    let key_hash = key.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, c| (h ^ c as u64).wrapping_mul(0x0100_0000_01B3));
    let numel: usize = shape.iter().product();
    let (offset, bound) = if key.ends_with("norm.weight") {
        (1.0f32, 0.1f32)
    } else if key == "model.embed_tokens.weight" {
        (0.0, 1.0)
    } else {
        (0.0, 1.0 / (shape[1] as f32).sqrt())
    };
    let mut state = seed ^ key_hash;
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK_ELEMENTS.min(numel) * dtype.size());
    let mut left = numel;
    while left > 0 {
        let n = left.min(CHUNK_ELEMENTS);
        buf.clear();
        for _ in 0..n {
            let u = (splitmix64(&mut state) >> 40) as f32 / (1u64 << 24) as f32;
            let v = offset + (2.0 * u - 1.0) * bound;
            match dtype {
                DType::F16 => buf.extend_from_slice(&half::f16::from_f32(v).to_le_bytes()),
                DType::Bf16 => buf.extend_from_slice(&half::bf16::from_f32(v).to_le_bytes()),
                _ => buf.extend_from_slice(&v.to_le_bytes()),
            }
        }
        w.write_all(&buf)?;
        left -= n;
    }
    Ok(())
}

/// Writes a random-weight folder for `config` (a Llama `config.json` value) into `dir`: weights in
/// `dtype`, in shards of at most `max_shard_bytes` (one `model.safetensors` when they fit).
/// The tokenizer files are the caller's to add.
pub fn write_random_folder(
    dir: &Path,
    config: &serde_json::Value,
    dtype: DType,
    seed: u64,
    max_shard_bytes: u64,
) -> Result<()> {
    let cfg: LlamaConfig = serde_json::from_value(config.clone())
        .map_err(|e| Error::Config(format!("random llama folder: config.json: {e}")))?;
    cfg.validate()?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let st = safetensors_name(dtype)?;
    let params = parameter_shapes(&cfg);
    let mut shards: Vec<Vec<(String, Vec<usize>)>> = vec![vec![]];
    let mut shard_bytes = 0u64;
    for (key, shape) in params {
        let bytes = (shape.iter().product::<usize>() * dtype.size()) as u64;
        if shard_bytes > 0 && shard_bytes + bytes > max_shard_bytes {
            shards.push(vec![]);
            shard_bytes = 0;
        }
        shard_bytes += bytes;
        shards.last_mut().expect("one shard at least").push((key, shape));
    }
    let n = shards.len();
    let mut weight_map = BTreeMap::new();
    let mut total = 0u64;
    for (i, shard) in shards.iter().enumerate() {
        let file = if n == 1 { WEIGHTS_FILE.to_string() } else { format!("model-{:05}-of-{n:05}.safetensors", i + 1) };
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), json!({"format": "pt"}));
        let mut offset = 0u64;
        for (key, shape) in shard {
            let len = (shape.iter().product::<usize>() * dtype.size()) as u64;
            header.insert(key.clone(), json!({"dtype": st, "shape": shape, "data_offsets": [offset, offset + len]}));
            offset += len;
            weight_map.insert(key.clone(), file.clone());
        }
        total += offset;
        let mut text = serde_json::to_vec(&header).map_err(|e| Error::Config(e.to_string()))?;
        while text.len() % 8 != 0 {
            text.push(b' ');
        }
        osp_fs::write_with(dir.join(&file), |w| {
            let mut w = std::io::BufWriter::with_capacity(1 << 22, w);
            w.write_all(&(text.len() as u64).to_le_bytes())?;
            w.write_all(&text)?;
            for (key, shape) in shard {
                write_values(&mut w, seed, key, shape, dtype)?;
            }
            w.flush()
        })?;
    }
    if n > 1 {
        let index = json!({"metadata": {"total_size": total}, "weight_map": weight_map});
        osp_fs::write_bytes(dir.join(WEIGHTS_INDEX_FILE), serde_json::to_string_pretty(&index).unwrap_or_default())?;
    }
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default() + "\n";
    osp_fs::write_bytes(dir.join(CONFIG_FILE), pretty(config))?;
    let generation = json!({
        "bos_token_id": config.get("bos_token_id"),
        "eos_token_id": config.get("eos_token_id"),
        "do_sample": false,
    });
    osp_fs::write_bytes(dir.join(GENERATION_CONFIG_FILE), pretty(&generation))?;
    Ok(())
}
