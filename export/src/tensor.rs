//! Host tensors and named weight sets, with safetensors read/write.
//!
//! Data is little-endian bytes behind an `Arc`, so handing a tensor to the graph builder shares it
//! instead of copying (a 2.4 GB weight set is held once).

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;

use half::{bf16, f16};
use osp_graphs::DType;
use serde_json::Value as Json;

use crate::error::{Error, Result};

/// A dense tensor in host memory: dtype, shape and little-endian bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    dtype: DType,
    shape: Vec<usize>,
    data: Arc<Vec<u8>>,
}

impl HostTensor {
    /// Checks that `data` holds exactly `shape` elements of `dtype`.
    pub fn new(dtype: DType, shape: Vec<usize>, data: Vec<u8>) -> Result<Self> {
        let expected = shape.iter().product::<usize>() * dtype.size();
        if data.len() != expected {
            return Err(Error::DataLength { name: String::new(), dtype, shape, len: data.len(), expected });
        }
        Ok(Self { dtype, shape, data: Arc::new(data) })
    }

    pub fn from_f32(shape: Vec<usize>, values: &[f32]) -> Result<Self> {
        Self::new(DType::F32, shape, values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    pub fn from_f16(shape: Vec<usize>, values: &[f16]) -> Result<Self> {
        Self::new(DType::F16, shape, values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    pub fn from_bf16(shape: Vec<usize>, values: &[bf16]) -> Result<Self> {
        Self::new(DType::Bf16, shape, values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    pub fn from_i64(shape: Vec<usize>, values: &[i64]) -> Result<Self> {
        Self::new(DType::I64, shape, values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    pub fn from_i32(shape: Vec<usize>, values: &[i32]) -> Result<Self> {
        Self::new(DType::I32, shape, values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }

    pub fn from_u8(shape: Vec<usize>, values: &[u8]) -> Result<Self> {
        Self::new(DType::U8, shape, values.to_vec())
    }

    pub fn from_bool(shape: Vec<usize>, values: &[bool]) -> Result<Self> {
        Self::new(DType::Bool, shape, values.iter().map(|&v| v as u8).collect())
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// The shared byte buffer (cheap to clone).
    pub fn shared_data(&self) -> Arc<Vec<u8>> {
        Arc::clone(&self.data)
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Values as f32 (from f32, f16 or bf16).
    pub fn to_f32(&self) -> Result<Vec<f32>> {
        match self.dtype {
            DType::F32 => Ok(self.data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
            DType::F16 => Ok(self.data.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect()),
            DType::Bf16 => Ok(self.data.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect()),
            other => Err(Error::Config(format!("tensor of dtype {other} cannot be read as f32"))),
        }
    }

    /// The same values converted between float dtypes (f32, f16, bf16; round to nearest even).
    pub fn cast_float(&self, to: DType) -> Result<Self> {
        if to == self.dtype {
            return Ok(self.clone());
        }
        let mut out = Vec::with_capacity(self.numel() * to.size());
        convert_float_bytes(self.dtype, to, &self.data, &mut out)?;
        Self::new(to, self.shape.clone(), out)
    }
}

/// Appends `input` (whole elements of `from`) converted to `to` onto `out`. Supports f32, f16 and bf16.
pub(crate) fn convert_float_bytes(from: DType, to: DType, input: &[u8], out: &mut Vec<u8>) -> Result<()> {
    let unsupported = || Error::Config(format!("float conversion {from} -> {to} is not supported"));
    let values: Box<dyn Iterator<Item = f32> + '_> = match from {
        DType::F32 => Box::new(input.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        DType::F16 => Box::new(input.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())),
        DType::Bf16 => Box::new(input.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())),
        _ => return Err(unsupported()),
    };
    match to {
        DType::F32 => values.for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        DType::F16 => values.for_each(|v| out.extend_from_slice(&f16::from_f32(v).to_le_bytes())),
        DType::Bf16 => values.for_each(|v| out.extend_from_slice(&bf16::from_f32(v).to_le_bytes())),
        _ => return Err(unsupported()),
    }
    Ok(())
}

/// Named tensors, keyed by the PyTorch parameter name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Weights {
    tensors: BTreeMap<String, HostTensor>,
}

impl Weights {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, key: impl Into<String>, tensor: HostTensor) -> Option<HostTensor> {
        self.tensors.insert(key.into(), tensor)
    }

    pub fn get(&self, key: &str) -> Option<&HostTensor> {
        self.tensors.get(key)
    }

    pub fn remove(&mut self, key: &str) -> Option<HostTensor> {
        self.tensors.remove(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &HostTensor)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|k| k.as_str())
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Reads a safetensors file tensor by tensor (the file is never held in memory whole).
    pub fn load_safetensors(path: &Path) -> Result<Self> {
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut weights = Weights::new();
        for entry in read_safetensors_header(path)? {
            file.seek(SeekFrom::Start(entry.offset)).map_err(|e| Error::io(path, e))?;
            let mut data = vec![0u8; entry.byte_len() as usize];
            file.read_exact(&mut data).map_err(|e| Error::io(path, e))?;
            weights.insert(entry.name, HostTensor::new(entry.dtype, entry.shape, data)?);
        }
        Ok(weights)
    }

    /// Writes a safetensors file atomically (`osp_fs::write_bytes`).
    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
        let st_err = |message: String| Error::Safetensors { path: path.to_path_buf(), message };
        let mut views = Vec::with_capacity(self.tensors.len());
        for (name, t) in &self.tensors {
            let view = safetensors::tensor::TensorView::new(safetensors_dtype(t.dtype), t.shape.clone(), t.data())
                .map_err(|e| st_err(format!("tensor `{name}`: {e}")))?;
            views.push((name.as_str(), view));
        }
        let bytes = safetensors::serialize(views, None).map_err(|e| st_err(e.to_string()))?;
        Ok(osp_fs::write_bytes(path, bytes)?)
    }
}

/// One tensor of a safetensors file, as its header describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetensorsEntry {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Absolute byte offset of the tensor's data in the file.
    pub offset: u64,
}

impl SafetensorsEntry {
    pub fn byte_len(&self) -> u64 {
        (self.shape.iter().product::<usize>() * self.dtype.size()) as u64
    }
}

/// Reads and checks only the header of a safetensors file (no tensor data is read): every
/// tensor's dtype, shape and absolute data offset, in file order. Each tensor's byte range must
/// match its shape and lie inside the file.
pub fn read_safetensors_header(path: &Path) -> Result<Vec<SafetensorsEntry>> {
    let st_err = |message: String| Error::Safetensors { path: path.to_path_buf(), message };
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut n = [0u8; 8];
    file.read_exact(&mut n).map_err(|e| Error::io(path, e))?;
    let header_len = u64::from_le_bytes(n);
    if header_len > 100_000_000 || 8 + header_len > file_len {
        return Err(st_err(format!("header length {header_len} does not fit the {file_len}-byte file")));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
    let header: BTreeMap<String, Json> =
        serde_json::from_slice(&header).map_err(|e| st_err(format!("header is not a JSON object: {e}")))?;
    let data_start = 8 + header_len;
    let mut entries = Vec::with_capacity(header.len());
    for (name, info) in header {
        if name == "__metadata__" {
            continue;
        }
        let bad = |what: &str| st_err(format!("tensor `{name}`: {what}"));
        let dtype = info.get("dtype").and_then(Json::as_str).ok_or_else(|| bad("missing dtype"))?;
        let dtype = dtype_from_safetensors_name(dtype).ok_or_else(|| bad(&format!("unsupported dtype {dtype}")))?;
        let shape: Vec<usize> = info
            .get("shape")
            .and_then(Json::as_array)
            .ok_or_else(|| bad("missing shape"))?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("shape must be a list of non-negative integers"))?;
        let offsets: Vec<u64> = info
            .get("data_offsets")
            .and_then(Json::as_array)
            .map(|o| o.iter().filter_map(Json::as_u64).collect())
            .unwrap_or_default();
        let [begin, end] = offsets[..] else {
            return Err(bad("data_offsets must be [begin, end]"));
        };
        let expected = shape.iter().try_fold(dtype.size() as u64, |acc, &d| acc.checked_mul(d as u64));
        if expected.is_none_or(|e| end < begin || end - begin != e || data_start + end > file_len) {
            return Err(bad(&format!(
                "data_offsets [{begin}, {end}] do not hold shape {shape:?} of {dtype} inside the file"
            )));
        }
        entries.push(SafetensorsEntry { name, dtype, shape, offset: data_start + begin });
    }
    entries.sort_by_key(|e| e.offset);
    Ok(entries)
}

fn safetensors_dtype(dtype: DType) -> safetensors::Dtype {
    use safetensors::Dtype as S;
    match dtype {
        DType::F32 => S::F32,
        DType::F16 => S::F16,
        DType::Bf16 => S::BF16,
        DType::F64 => S::F64,
        DType::I64 => S::I64,
        DType::I32 => S::I32,
        DType::I8 => S::I8,
        DType::U8 => S::U8,
        DType::Bool => S::BOOL,
    }
}

fn dtype_from_safetensors_name(name: &str) -> Option<DType> {
    Some(match name {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::Bf16,
        "F64" => DType::F64,
        "I64" => DType::I64,
        "I32" => DType::I32,
        "I8" => DType::I8,
        "U8" => DType::U8,
        "BOOL" => DType::Bool,
        _ => return None,
    })
}

/// The ONNX `TensorProto.DataType` code of a dtype.
pub fn onnx_elem_type(dtype: DType) -> i32 {
    use crate::onnx::tensor_proto::DataType as D;
    (match dtype {
        DType::F32 => D::Float,
        DType::F16 => D::Float16,
        DType::Bf16 => D::Bfloat16,
        DType::F64 => D::Double,
        DType::I64 => D::Int64,
        DType::I32 => D::Int32,
        DType::I8 => D::Int8,
        DType::U8 => D::Uint8,
        DType::Bool => D::Bool,
    }) as i32
}

/// The dtype of an ONNX `TensorProto.DataType` code, if osp uses it.
pub fn dtype_from_onnx(code: i32) -> Option<DType> {
    use crate::onnx::tensor_proto::DataType as D;
    Some(match D::try_from(code).ok()? {
        D::Float => DType::F32,
        D::Float16 => DType::F16,
        D::Bfloat16 => DType::Bf16,
        D::Double => DType::F64,
        D::Int64 => DType::I64,
        D::Int32 => DType::I32,
        D::Int8 => DType::I8,
        D::Uint8 => DType::U8,
        D::Bool => DType::Bool,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn safetensors_round_trip_and_float_casts() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = Weights::new();
        w.insert("a.weight", HostTensor::from_f32(vec![2, 3], &[1.0, -2.5, 3.25, 0.1, 1e-3, 7.0]).unwrap());
        w.insert("b", HostTensor::from_i64(vec![2], &[5, -7]).unwrap());
        let path = dir.path().join("w.safetensors");
        w.save_safetensors(&path).unwrap();
        assert_eq!(Weights::load_safetensors(&path).unwrap(), w);

        let a = w.get("a.weight").unwrap();
        let h = a.cast_float(DType::F16).unwrap();
        assert_eq!(h.data().len(), 12);
        assert_eq!(h.to_f32().unwrap()[1], -2.5);
        let b = a.cast_float(DType::Bf16).unwrap().to_f32().unwrap();
        assert!((b[3] - 0.1).abs() < 1e-3 && b[3] != 0.1);
        assert!(HostTensor::new(DType::F32, vec![3], vec![0; 8]).is_err());
    }
}
