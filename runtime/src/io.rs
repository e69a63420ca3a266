//! Named tensor maps in safetensors files: the `run-graph` input and output format.
//!
//! Element bytes are little-endian (the safetensors layout). Files are written atomically
//! (`osp_fs`: a temporary sibling renamed into place; a device or FIFO is streamed into).

use std::collections::BTreeMap;
use std::path::Path;

use osp_graphs::DType;
use safetensors::Dtype as StDtype;

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Reads every tensor of a safetensors file.
pub fn read_safetensors(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    let read_err = |why: String| Error::SafetensorsRead { path: path.to_path_buf(), why };
    let file = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| read_err(e.to_string()))?;
    let mut out = BTreeMap::new();
    for (name, view) in file.iter() {
        let dtype = from_st_dtype(view.dtype())
            .ok_or_else(|| read_err(format!("tensor `{name}` has dtype {:?}, which osp does not use", view.dtype())))?;
        let tensor =
            Tensor::from_le_bytes(name, dtype, view.shape(), view.data()).map_err(|e| read_err(e.to_string()))?;
        out.insert(name.to_string(), tensor);
    }
    Ok(out)
}

/// Writes `tensors` to `path` atomically (`osp_fs::write_bytes`).
pub fn write_safetensors<'a>(path: &Path, tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>) -> Result<()> {
    let write_err = |why: String| Error::SafetensorsWrite { path: path.to_path_buf(), why };
    let owned: Vec<(&str, StDtype, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(name, t)| (name, to_st_dtype(t.dtype()), t.shape().to_vec(), t.to_le_bytes()))
        .collect();
    let views = owned
        .iter()
        .map(|(name, dtype, shape, data)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), data)
                .map(|v| (*name, v))
                .map_err(|e| write_err(format!("tensor `{name}`: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes = safetensors::serialize(views, None).map_err(|e| write_err(e.to_string()))?;
    Ok(osp_fs::write_bytes(path, bytes)?)
}

fn to_st_dtype(dtype: DType) -> StDtype {
    match dtype {
        DType::F32 => StDtype::F32,
        DType::F16 => StDtype::F16,
        DType::Bf16 => StDtype::BF16,
        DType::F64 => StDtype::F64,
        DType::I64 => StDtype::I64,
        DType::I32 => StDtype::I32,
        DType::I8 => StDtype::I8,
        DType::U8 => StDtype::U8,
        DType::Bool => StDtype::BOOL,
    }
}

fn from_st_dtype(dtype: StDtype) -> Option<DType> {
    Some(match dtype {
        StDtype::F32 => DType::F32,
        StDtype::F16 => DType::F16,
        StDtype::BF16 => DType::Bf16,
        StDtype::F64 => DType::F64,
        StDtype::I64 => DType::I64,
        StDtype::I32 => DType::I32,
        StDtype::I8 => DType::I8,
        StDtype::U8 => DType::U8,
        StDtype::BOOL => DType::Bool,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use half::{bf16, f16};
    use ndarray::{ArrayD, IxDyn};

    use super::*;

    fn arr<T: Clone>(shape: &[usize], values: Vec<T>) -> ArrayD<T> {
        ArrayD::from_shape_vec(IxDyn(shape), values).unwrap()
    }

    #[test]
    fn round_trip_every_dtype() {
        let mut tensors = BTreeMap::new();
        tensors.insert("f32".to_string(), Tensor::F32(arr(&[2, 3], vec![0.5, -1.0, 3.25, 1e-8, f32::MAX, -0.0])));
        tensors.insert("f16".to_string(), Tensor::F16(arr(&[3], vec![f16::from_f32(1.5), f16::MIN, f16::EPSILON])));
        tensors.insert("bf16".to_string(), Tensor::Bf16(arr(&[1, 2], vec![bf16::from_f32(-2.5), bf16::MAX])));
        tensors.insert("i64".to_string(), Tensor::I64(arr(&[2], vec![i64::MIN, 7])));
        tensors.insert("i32".to_string(), Tensor::I32(arr(&[2, 1, 1], vec![-3, i32::MAX])));
        tensors.insert("u8".to_string(), Tensor::U8(arr(&[4], vec![0, 1, 128, 255])));
        tensors.insert("bool".to_string(), Tensor::Bool(arr(&[2, 2], vec![true, false, false, true])));
        tensors.insert("scalar".to_string(), Tensor::F32(arr(&[], vec![42.0])));
        tensors.insert("empty".to_string(), Tensor::I64(arr(&[0, 3], vec![])));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        write_safetensors(&path, tensors.iter().map(|(k, v)| (k.as_str(), v))).unwrap();
        assert!(osp_fs::temporaries(dir.path()).unwrap().is_empty());
        let back = read_safetensors(&path).unwrap();
        assert_eq!(back, tensors);
    }

    #[test]
    fn corrupt_file_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.safetensors");
        std::fs::write(&path, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json").unwrap();
        let err = read_safetensors(&path).unwrap_err().to_string();
        assert!(err.contains("bad.safetensors"), "{err}");
        let err = read_safetensors(&dir.path().join("missing.safetensors")).unwrap_err().to_string();
        assert!(err.contains("missing.safetensors"), "{err}");
    }
}
