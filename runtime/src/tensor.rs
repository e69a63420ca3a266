//! The host tensor passed into and out of every backend: an `ndarray` array tagged with its
//! element type.

use std::borrow::Cow;

use half::{bf16, f16};
use ndarray::{ArrayD, IxDyn};
use osp_graphs::DType;

use crate::error::{Error, Result};

/// A host tensor. `ndarray` 0.17 is the version `ort` and `tract` use, so arrays cross into either
/// backend without conversion.
#[derive(Debug, Clone, PartialEq)]
pub enum Tensor {
    F32(ArrayD<f32>),
    F16(ArrayD<f16>),
    Bf16(ArrayD<bf16>),
    I64(ArrayD<i64>),
    I32(ArrayD<i32>),
    U8(ArrayD<u8>),
    Bool(ArrayD<bool>),
}

/// Applies `$body` to the array inside any variant, binding it to `$a`.
macro_rules! map_tensor {
    ($t:expr, $a:ident => $body:expr) => {
        match $t {
            Tensor::F32($a) => $body,
            Tensor::F16($a) => $body,
            Tensor::Bf16($a) => $body,
            Tensor::I64($a) => $body,
            Tensor::I32($a) => $body,
            Tensor::U8($a) => $body,
            Tensor::Bool($a) => $body,
        }
    };
}

impl Tensor {
    pub fn dtype(&self) -> DType {
        match self {
            Tensor::F32(_) => DType::F32,
            Tensor::F16(_) => DType::F16,
            Tensor::Bf16(_) => DType::Bf16,
            Tensor::I64(_) => DType::I64,
            Tensor::I32(_) => DType::I32,
            Tensor::U8(_) => DType::U8,
            Tensor::Bool(_) => DType::Bool,
        }
    }

    pub fn shape(&self) -> &[usize] {
        map_tensor!(self, a => a.shape())
    }

    pub fn len(&self) -> usize {
        map_tensor!(self, a => a.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_standard_layout(&self) -> bool {
        map_tensor!(self, a => a.is_standard_layout())
    }

    /// `self` if its elements are contiguous in row-major order, else a row-major copy.
    pub fn as_standard_layout(&self) -> Cow<'_, Tensor> {
        if self.is_standard_layout() {
            Cow::Borrowed(self)
        } else {
            Cow::Owned(map_tensor!(self, a => Tensor::from(a.as_standard_layout().into_owned())))
        }
    }

    /// A tensor of `dtype` and `shape` filled with zeros (`false` for bool).
    pub fn zeros(dtype: DType, shape: &[usize]) -> Result<Self> {
        let dim = IxDyn(shape);
        Ok(match dtype {
            DType::F32 => Tensor::F32(ArrayD::zeros(dim)),
            DType::F16 => Tensor::F16(ArrayD::from_elem(dim, f16::ZERO)),
            DType::Bf16 => Tensor::Bf16(ArrayD::from_elem(dim, bf16::ZERO)),
            DType::I64 => Tensor::I64(ArrayD::zeros(dim)),
            DType::I32 => Tensor::I32(ArrayD::zeros(dim)),
            DType::U8 => Tensor::U8(ArrayD::zeros(dim)),
            DType::Bool => Tensor::Bool(ArrayD::from_elem(dim, false)),
            other => return Err(Error::unsupported("creating a tensor", other)),
        })
    }

    /// Builds a tensor from little-endian element bytes (the safetensors layout).
    pub fn from_le_bytes(name: &str, dtype: DType, shape: &[usize], bytes: &[u8]) -> Result<Self> {
        let count: usize = shape.iter().product();
        let expected = count
            .checked_mul(dtype.size())
            .ok_or_else(|| Error::Tensor { name: name.to_string(), why: format!("shape {shape:?} overflows") })?;
        if bytes.len() != expected {
            return Err(Error::Tensor {
                name: name.to_string(),
                why: format!("{dtype} {shape:?} needs {expected} bytes, got {}", bytes.len()),
            });
        }
        let dim = IxDyn(shape);
        let shaped = |e: ndarray::ShapeError| Error::Tensor { name: name.to_string(), why: e.to_string() };
        // `pod_collect_to_vec` copies, so unaligned input (safetensors offsets are not aligned) is fine.
        Ok(match dtype {
            DType::F32 => Tensor::F32(ArrayD::from_shape_vec(dim, le_vec::<f32>(bytes)).map_err(shaped)?),
            DType::F16 => Tensor::F16(ArrayD::from_shape_vec(dim, le_vec::<f16>(bytes)).map_err(shaped)?),
            DType::Bf16 => Tensor::Bf16(ArrayD::from_shape_vec(dim, le_vec::<bf16>(bytes)).map_err(shaped)?),
            DType::I64 => Tensor::I64(ArrayD::from_shape_vec(dim, le_vec::<i64>(bytes)).map_err(shaped)?),
            DType::I32 => Tensor::I32(ArrayD::from_shape_vec(dim, le_vec::<i32>(bytes)).map_err(shaped)?),
            DType::U8 => Tensor::U8(ArrayD::from_shape_vec(dim, bytes.to_vec()).map_err(shaped)?),
            DType::Bool => {
                let values = bytes
                    .iter()
                    .map(|&b| match b {
                        0 => Ok(false),
                        1 => Ok(true),
                        other => Err(Error::Tensor {
                            name: name.to_string(),
                            why: format!("bool element has byte value {other} (must be 0 or 1)"),
                        }),
                    })
                    .collect::<Result<Vec<bool>>>()?;
                Tensor::Bool(ArrayD::from_shape_vec(dim, values).map_err(shaped)?)
            }
            other => return Err(Error::unsupported(format!("tensor `{name}`"), other)),
        })
    }

    /// The elements as little-endian bytes in row-major order.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        fn bytes_of<T: bytemuck::Pod>(a: &ArrayD<T>) -> Vec<u8> {
            match a.as_slice() {
                Some(s) => bytemuck::cast_slice(s).to_vec(),
                None => a.iter().flat_map(|v| bytemuck::bytes_of(v).to_vec()).collect(),
            }
        }
        match self {
            Tensor::F32(a) => bytes_of(a),
            Tensor::F16(a) => bytes_of(a),
            Tensor::Bf16(a) => bytes_of(a),
            Tensor::I64(a) => bytes_of(a),
            Tensor::I32(a) => bytes_of(a),
            Tensor::U8(a) => bytes_of(a),
            Tensor::Bool(a) => a.iter().map(|&b| u8::from(b)).collect(),
        }
    }

    /// The values widened to f32 (for comparisons and summaries); bool maps to 0/1.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match self {
            Tensor::F32(a) => a.iter().copied().collect(),
            Tensor::F16(a) => a.iter().map(|v| v.to_f32()).collect(),
            Tensor::Bf16(a) => a.iter().map(|v| v.to_f32()).collect(),
            Tensor::I64(a) => a.iter().map(|&v| v as f32).collect(),
            Tensor::I32(a) => a.iter().map(|&v| v as f32).collect(),
            Tensor::U8(a) => a.iter().map(|&v| f32::from(v)).collect(),
            Tensor::Bool(a) => a.iter().map(|&v| f32::from(u8::from(v))).collect(),
        }
    }

    /// Converts a float tensor to another float dtype (f32, f16, bf16); returns `self` unchanged
    /// when the dtype already matches.
    pub fn cast_float(self, dtype: DType) -> Result<Self> {
        if self.dtype() == dtype {
            return Ok(self);
        }
        let from = self.dtype();
        let values: ArrayD<f32> = match self {
            Tensor::F32(a) => a,
            Tensor::F16(a) => a.mapv(|v| v.to_f32()),
            Tensor::Bf16(a) => a.mapv(|v| v.to_f32()),
            _ => return Err(Error::unsupported(format!("casting to {dtype}"), from)),
        };
        Ok(match dtype {
            DType::F32 => Tensor::F32(values),
            DType::F16 => Tensor::F16(values.mapv(f16::from_f32)),
            DType::Bf16 => Tensor::Bf16(values.mapv(bf16::from_f32)),
            other => return Err(Error::unsupported(format!("casting from {from}"), other)),
        })
    }

    pub fn as_f32(&self) -> Option<&ArrayD<f32>> {
        match self {
            Tensor::F32(a) => Some(a),
            _ => None,
        }
    }

    /// A one-line `dtype [d0, d1, ...]` description.
    pub fn describe(&self) -> String {
        format!("{} {:?}", self.dtype(), self.shape())
    }
}

fn le_vec<T: bytemuck::Pod>(bytes: &[u8]) -> Vec<T> {
    bytemuck::pod_collect_to_vec(bytes)
}

macro_rules! impl_from_array {
    ($($t:ty => $variant:ident),* $(,)?) => {$(
        impl From<ArrayD<$t>> for Tensor {
            fn from(a: ArrayD<$t>) -> Self {
                Tensor::$variant(a)
            }
        }
    )*};
}
impl_from_array!(f32 => F32, f16 => F16, bf16 => Bf16, i64 => I64, i32 => I32, u8 => U8, bool => Bool);

/// A `Tensor`'s view in the form `GraphSpec::check_inputs` takes.
pub(crate) fn input_view<'a>(name: &'a str, t: &'a Tensor) -> osp_graphs::manifest::InputView<'a> {
    osp_graphs::manifest::InputView { name, dtype: t.dtype(), shape: t.shape() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_round_trip_keeps_values_and_rejects_bad_lengths() {
        let t = Tensor::Bf16(ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![bf16::from_f32(1.5); 4]).unwrap());
        let bytes = t.to_le_bytes();
        assert_eq!(Tensor::from_le_bytes("x", DType::Bf16, &[2, 2], &bytes).unwrap(), t);
        let err = Tensor::from_le_bytes("x", DType::Bf16, &[2, 3], &bytes).unwrap_err().to_string();
        assert!(err.contains("tensor `x`: bf16 [2, 3] needs 12 bytes, got 8"), "{err}");
        let err = Tensor::from_le_bytes("m", DType::Bool, &[2], &[0, 7]).unwrap_err().to_string();
        assert!(err.contains("byte value 7"), "{err}");
    }

    #[test]
    fn non_contiguous_arrays_serialize_in_logical_order() {
        let a = ArrayD::from_shape_vec(IxDyn(&[2, 3]), (0..6).map(|v| v as f32).collect()).unwrap();
        let t = Tensor::F32(a.t().to_owned().into_dyn());
        let transposed = Tensor::F32(a.reversed_axes());
        assert_eq!(transposed.to_le_bytes(), t.to_le_bytes());
        assert_eq!(transposed.to_f32_vec(), vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
    }

    #[test]
    fn float_casts() {
        let t = Tensor::F32(ArrayD::from_elem(IxDyn(&[3]), 0.5));
        let h = t.clone().cast_float(DType::F16).unwrap();
        assert_eq!(h.dtype(), DType::F16);
        assert_eq!(h.cast_float(DType::F32).unwrap(), t);
        assert!(Tensor::zeros(DType::I64, &[1]).unwrap().cast_float(DType::F32).is_err());
    }
}
