//! Named f32 tensor files (safetensors) for model inputs and outputs: read by name, written
//! atomically (temporary file, then rename).

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

/// Reads every tensor of a safetensors file; all must be f32.
pub fn read_tensors(path: impl AsRef<Path>) -> Result<BTreeMap<String, TensorData>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::checkpoint(path, e.to_string()))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(Error::input(name, format!("must be float32, found {:?} in {}", view.dtype(), path.display())));
        }
        let values: Vec<f32> =
            view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        out.insert(name, TensorData::new(values, view.shape().to_vec()));
    }
    Ok(out)
}

/// Reads every tensor of a safetensors file as f32, converting the other dtypes PyTorch
/// writes for model inputs (integer and boolean masks, f16/bf16/f64 values). Integer and
/// boolean 0/1 masks convert exactly.
pub fn read_tensors_as_f32(path: impl AsRef<Path>) -> Result<BTreeMap<String, TensorData>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::checkpoint(path, e.to_string()))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let dtype = match view.dtype() {
            Dtype::F32 => burn::tensor::DType::F32,
            Dtype::F64 => burn::tensor::DType::F64,
            Dtype::F16 => burn::tensor::DType::F16,
            Dtype::BF16 => burn::tensor::DType::BF16,
            Dtype::I64 => burn::tensor::DType::I64,
            Dtype::I32 => burn::tensor::DType::I32,
            Dtype::I16 => burn::tensor::DType::I16,
            Dtype::I8 => burn::tensor::DType::I8,
            // safetensors stores booleans as one byte 0/1
            Dtype::U8 | Dtype::BOOL => burn::tensor::DType::U8,
            other => {
                return Err(Error::input(
                    name,
                    format!("dtype {other:?} in {} cannot be read as float32", path.display()),
                ))
            }
        };
        let data = TensorData::from_bytes_vec(view.data().to_vec(), view.shape().to_vec(), dtype);
        let data = if dtype == burn::tensor::DType::F32 { data } else { data.convert::<f32>() };
        out.insert(name, data);
    }
    Ok(out)
}

/// Takes tensor `name` from `tensors` as a rank-`D` tensor.
pub fn take_tensor<B: Backend, const D: usize>(
    tensors: &BTreeMap<String, TensorData>,
    name: &str,
    device: &B::Device,
) -> Result<Tensor<B, D>> {
    let data = tensors.get(name).ok_or_else(|| {
        Error::input(name, format!("missing; the file holds {:?}", tensors.keys().collect::<Vec<_>>()))
    })?;
    if data.shape.len() != D {
        return Err(Error::input(name, format!("must have rank {D}, found shape {:?}", data.shape)));
    }
    Ok(Tensor::from_data(data.clone(), device))
}

/// Writes named tensors (converted to f32) to `path` atomically.
pub fn write_tensors(path: impl AsRef<Path>, tensors: &[(String, TensorData)]) -> Result<()> {
    let path = path.as_ref();
    let mut buffers = Vec::with_capacity(tensors.len());
    for (name, data) in tensors {
        let values = data.clone().convert::<f32>().to_vec::<f32>().map_err(|e| Error::input(name, format!("{e:?}")))?;
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        buffers.push((name.clone(), data.shape.to_vec(), bytes));
    }
    let views = buffers
        .iter()
        .map(|(n, s, b)| {
            safetensors::tensor::TensorView::new(Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::input(n, e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, None).map_err(|e| Error::checkpoint(path, e.to_string()))?;
    Ok(osp_fs::write_bytes(path, bytes)?)
}

/// Reads every tensor of a safetensors file as integers (token ids, masks); each must be
/// int64, int32 or uint8, and is returned as int64.
pub fn read_int_tensors(path: impl AsRef<Path>) -> Result<BTreeMap<String, TensorData>> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| Error::checkpoint(path, e.to_string()))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let data = view.data();
        let values: Vec<i64> = match view.dtype() {
            Dtype::I64 => data
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                .collect(),
            Dtype::I32 => {
                data.chunks_exact(4).map(|b| i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))).collect()
            }
            Dtype::U8 => data.iter().map(|&b| i64::from(b)).collect(),
            other => {
                return Err(Error::input(
                    name,
                    format!("must be int64, int32 or uint8, found {other:?} in {}", path.display()),
                ))
            }
        };
        out.insert(name, TensorData::new(values, view.shape().to_vec()));
    }
    Ok(out)
}
