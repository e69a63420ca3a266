//! Values that stay in an engine's memory between runs: a graph's outputs kept where the engine
//! produced them (host memory for CPU engines, device memory for CUDA / TensorRT), fed to the next
//! graph as they are, and read or written in place by a collective ([`Resident::buffer`],
//! [`Resident::buffer_mut`]). ONNX Runtime engines keep them as ORT values through IoBinding (the
//! same code on the CPU and on CUDA); other engines hold host tensors.

use osp_graphs::DType;

use super::ort::resident::OrtValue;
use crate::error::{Error, Result};
use crate::parallel::{Buffer, BufferMut};
use crate::tensor::Tensor;

/// A tensor held by an engine (see the module docs).
pub struct Resident {
    pub(crate) inner: ResidentInner,
    dtype: DType,
    shape: Vec<usize>,
}

pub(crate) enum ResidentInner {
    Host(Tensor),
    Ort(OrtValue),
}

impl std::fmt::Debug for Resident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let place = match &self.inner {
            ResidentInner::Host(_) => "host".to_string(),
            ResidentInner::Ort(v) => v.place(),
        };
        write!(f, "Resident({} {:?} on {place})", self.dtype, self.shape)
    }
}

impl Resident {
    /// A host tensor as a resident value (engines without device memory, and inputs).
    pub fn host(t: Tensor) -> Self {
        Self { dtype: t.dtype(), shape: t.shape().to_vec(), inner: ResidentInner::Host(t) }
    }

    pub(crate) fn ort(v: OrtValue, dtype: DType, shape: Vec<usize>) -> Self {
        Self { inner: ResidentInner::Ort(v), dtype, shape }
    }

    /// Whether this is a host tensor (an input, or a value of an engine without resident values)
    /// rather than a value held in the engine's own memory.
    pub fn is_host(&self) -> bool {
        matches!(self.inner, ResidentInner::Host(_))
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn bytes(&self) -> usize {
        self.shape.iter().product::<usize>() * self.dtype.size()
    }

    /// The value's memory, for a collective to read, without a copy.
    pub fn buffer(&self) -> Result<Buffer<'_>> {
        match &self.inner {
            ResidentInner::Host(t) => host_bytes(t).map(Buffer::Host),
            ResidentInner::Ort(v) => Ok(v.buffer(self.bytes())),
        }
    }

    /// The value's memory, for a collective to write, without a copy.
    pub fn buffer_mut(&mut self) -> Result<BufferMut<'_>> {
        let bytes = self.bytes();
        match &mut self.inner {
            ResidentInner::Host(t) => host_bytes_mut(t).map(BufferMut::Host),
            ResidentInner::Ort(v) => Ok(v.buffer_mut(bytes)),
        }
    }

    /// A host copy (the final `sample`, or a test's look at a value).
    pub fn to_host(&self, what: &str) -> Result<Tensor> {
        match &self.inner {
            ResidentInner::Host(t) => Ok(t.clone()),
            ResidentInner::Ort(v) => v.to_host(what),
        }
    }

    pub(crate) fn describe(&self) -> String {
        format!("{} {:?}", self.dtype, self.shape)
    }
}

fn not_contiguous() -> Error {
    Error::Tensor { name: "resident value".into(), why: "a host tensor in a collective must be contiguous".into() }
}

fn host_bytes(t: &Tensor) -> Result<&[u8]> {
    Ok(match t {
        Tensor::F32(a) => bytemuck::cast_slice(a.as_slice().ok_or_else(not_contiguous)?),
        Tensor::F16(a) => bytemuck::cast_slice(a.as_slice().ok_or_else(not_contiguous)?),
        Tensor::Bf16(a) => bytemuck::cast_slice(a.as_slice().ok_or_else(not_contiguous)?),
        Tensor::I64(a) => bytemuck::cast_slice(a.as_slice().ok_or_else(not_contiguous)?),
        Tensor::I32(a) => bytemuck::cast_slice(a.as_slice().ok_or_else(not_contiguous)?),
        Tensor::U8(a) => a.as_slice().ok_or_else(not_contiguous)?,
        Tensor::Bool(_) => {
            return Err(Error::Tensor { name: "resident value".into(), why: "bool tensors are not exchanged".into() })
        }
    })
}

fn host_bytes_mut(t: &mut Tensor) -> Result<&mut [u8]> {
    Ok(match t {
        Tensor::F32(a) => bytemuck::cast_slice_mut(a.as_slice_mut().ok_or_else(not_contiguous)?),
        Tensor::F16(a) => bytemuck::cast_slice_mut(a.as_slice_mut().ok_or_else(not_contiguous)?),
        Tensor::Bf16(a) => bytemuck::cast_slice_mut(a.as_slice_mut().ok_or_else(not_contiguous)?),
        Tensor::I64(a) => bytemuck::cast_slice_mut(a.as_slice_mut().ok_or_else(not_contiguous)?),
        Tensor::I32(a) => bytemuck::cast_slice_mut(a.as_slice_mut().ok_or_else(not_contiguous)?),
        Tensor::U8(a) => a.as_slice_mut().ok_or_else(not_contiguous)?,
        Tensor::Bool(_) => {
            return Err(Error::Tensor { name: "resident value".into(), why: "bool tensors are not exchanged".into() })
        }
    })
}
