//! ONNX Runtime values kept in the engine's memory: IoBinding runs whose outputs are bound to the
//! session's device (CPU memory on ort-cpu, the CUDA device's memory on ort-cuda / ort-tensorrt),
//! and buffers allocated there for a collective to fill.

use std::collections::BTreeMap;
use std::marker::PhantomData;

use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::Session;
use ort::value::{DynTensor, DynTensorValueType, TensorElementType, ValueType};
use osp_graphs::DType;

use crate::engine::resident::{Resident, ResidentInner};
use crate::error::{Error, Result};
use crate::parallel::{Buffer, BufferMut};
use crate::tensor::Tensor;

/// One ORT tensor value.
pub(crate) struct OrtValue {
    value: DynTensor,
}

fn run_err(graph: &str) -> impl Fn(ort::Error) -> Error + '_ {
    move |e| Error::Run { graph: graph.to_string(), source: Box::new(e) }
}

fn element(dtype: DType) -> Option<TensorElementType> {
    Some(match dtype {
        DType::F32 => TensorElementType::Float32,
        DType::F16 => TensorElementType::Float16,
        DType::Bf16 => TensorElementType::Bfloat16,
        DType::I64 => TensorElementType::Int64,
        DType::I32 => TensorElementType::Int32,
        DType::U8 => TensorElementType::Uint8,
        DType::Bool => TensorElementType::Bool,
        _ => return None,
    })
}

fn dtype_of(ty: TensorElementType) -> Option<DType> {
    Some(match ty {
        TensorElementType::Float32 => DType::F32,
        TensorElementType::Float16 => DType::F16,
        TensorElementType::Bfloat16 => DType::Bf16,
        TensorElementType::Int64 => DType::I64,
        TensorElementType::Int32 => DType::I32,
        TensorElementType::Uint8 => DType::U8,
        TensorElementType::Bool => DType::Bool,
        _ => return None,
    })
}

/// Where an engine keeps its values: the CPU, or CUDA device `id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    Cpu,
    Cuda(i32),
}

impl Place {
    fn memory_info(self) -> std::result::Result<MemoryInfo<'static>, ort::Error> {
        match self {
            Place::Cpu => MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Device, MemoryType::Default),
            Place::Cuda(id) => MemoryInfo::new(AllocationDevice::CUDA, id, AllocatorType::Device, MemoryType::Default),
        }
    }
}

impl OrtValue {
    pub(crate) fn place(&self) -> String {
        let m = self.value.memory_info();
        format!("{:?} {}", m.allocation_device(), m.device_id())
    }

    pub(crate) fn buffer(&self, bytes: usize) -> Buffer<'_> {
        let m = self.value.memory_info();
        let ptr = self.value.data_ptr();
        if m.is_cpu_accessible() {
            // SAFETY: a CPU-accessible ORT tensor of `bytes` bytes, borrowed for `&self`.
            Buffer::Host(unsafe { std::slice::from_raw_parts(ptr.cast::<u8>(), bytes) })
        } else {
            Buffer::Cuda { device: m.device_id(), ptr: ptr as u64, bytes, _life: PhantomData }
        }
    }

    pub(crate) fn buffer_mut(&mut self, bytes: usize) -> BufferMut<'_> {
        let (cpu, device) = {
            let m = self.value.memory_info();
            (m.is_cpu_accessible(), m.device_id())
        };
        let ptr = self.value.data_ptr_mut();
        if cpu {
            // SAFETY: a CPU-accessible ORT tensor of `bytes` bytes, borrowed exclusively for `&mut self`.
            BufferMut::Host(unsafe { std::slice::from_raw_parts_mut(ptr.cast::<u8>(), bytes) })
        } else {
            BufferMut::Cuda { device, ptr: ptr as u64, bytes, _life: PhantomData }
        }
    }

    pub(crate) fn to_host(&self, what: &str) -> Result<Tensor> {
        let err = run_err(what);
        let copy;
        let v = if self.value.memory_info().is_cpu_accessible() {
            &self.value
        } else {
            copy = self.value.to(AllocationDevice::CPU, 0).map_err(&err)?;
            &copy
        };
        let ValueType::Tensor { ty, .. } = v.dtype() else { unreachable!("an OrtValue is a tensor") };
        Ok(match ty {
            TensorElementType::Float32 => Tensor::F32(v.try_extract_array::<f32>().map_err(&err)?.to_owned()),
            TensorElementType::Int64 => Tensor::I64(v.try_extract_array::<i64>().map_err(&err)?.to_owned()),
            TensorElementType::Int32 => Tensor::I32(v.try_extract_array::<i32>().map_err(&err)?.to_owned()),
            TensorElementType::Uint8 => Tensor::U8(v.try_extract_array::<u8>().map_err(&err)?.to_owned()),
            other => {
                return Err(Error::UnsupportedDtype {
                    context: format!("resident value `{what}`"),
                    dtype: other.to_string(),
                })
            }
        })
    }
}

fn wrap(graph: &str, name: &str, value: DynTensor) -> Result<Resident> {
    let ValueType::Tensor { ty, shape, .. } = value.dtype().clone() else {
        return Err(Error::OutputMismatch {
            graph: graph.to_string(),
            output: name.to_string(),
            expected: "a tensor".into(),
            got: value.dtype().to_string(),
        });
    };
    let dtype = dtype_of(ty).ok_or_else(|| Error::UnsupportedDtype {
        context: format!("graph `{graph}` output `{name}`"),
        dtype: ty.to_string(),
    })?;
    let shape: Vec<usize> = shape.iter().map(|&d| d.max(0) as usize).collect();
    Ok(Resident::ort(OrtValue { value }, dtype, shape))
}

/// A host tensor as an ORT value (one copy), for inputs that start on the host.
fn from_host(graph: &str, t: &Tensor) -> Result<DynTensor> {
    let err = run_err(graph);
    let t = t.as_standard_layout();
    Ok(match t.as_ref() {
        Tensor::F32(a) => ort::value::Tensor::from_array(a.clone()).map_err(&err)?.upcast(),
        Tensor::I64(a) => ort::value::Tensor::from_array(a.clone()).map_err(&err)?.upcast(),
        Tensor::I32(a) => ort::value::Tensor::from_array(a.clone()).map_err(&err)?.upcast(),
        Tensor::U8(a) => ort::value::Tensor::from_array(a.clone()).map_err(&err)?.upcast(),
        other => {
            return Err(Error::UnsupportedDtype {
                context: format!("graph `{graph}` resident input"),
                dtype: other.dtype().to_string(),
            })
        }
    })
}

/// Runs `session` through an IoBinding: inputs bound where they are (host tensors are copied into
/// ORT values first), every output bound to `place` and returned there.
pub(crate) fn run(
    session: &mut Session,
    place: Place,
    graph: &str,
    inputs: &[(&str, &Resident)],
) -> Result<BTreeMap<String, Resident>> {
    let err = run_err(graph);
    let mut binding = session.create_binding().map_err(&err)?;
    for (name, r) in inputs {
        match &r.inner {
            ResidentInner::Ort(v) => binding.bind_input(*name, &v.value).map_err(&err)?,
            ResidentInner::Host(t) => binding.bind_input(*name, &from_host(graph, t)?).map_err(&err)?,
        }
    }
    let memory = place.memory_info().map_err(&err)?;
    let names: Vec<String> = session.outputs().iter().map(|o| o.name().to_string()).collect();
    for name in &names {
        binding.bind_output_to_device(name.as_str(), &memory).map_err(&err)?;
    }
    let outputs = session.run_binding(&binding).map_err(&err)?;
    let mut result = BTreeMap::new();
    for (name, value) in outputs {
        let value = value.downcast::<DynTensorValueType>().map_err(&err)?;
        result.insert(name.to_string(), wrap(graph, name, value)?);
    }
    Ok(result)
}

/// An uninitialised-or-zero tensor of `dtype` and `shape` in `place`'s memory (a collective's
/// receive buffer: every byte is written before it is read).
pub(crate) fn alloc(session: &Session, place: Place, graph: &str, dtype: DType, shape: &[usize]) -> Result<Resident> {
    let err = run_err(graph);
    let ty = element(dtype).ok_or_else(|| Error::UnsupportedDtype {
        context: format!("graph `{graph}` buffer"),
        dtype: dtype.to_string(),
    })?;
    let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
    let value = match place {
        Place::Cpu => DynTensor::new(&Allocator::default(), ty, dims).map_err(&err)?,
        Place::Cuda(_) => {
            let allocator = Allocator::new(session, place.memory_info().map_err(&err)?).map_err(&err)?;
            DynTensor::new(&allocator, ty, dims).map_err(&err)?
        }
    };
    Ok(Resident::ort(OrtValue { value }, dtype, shape.to_vec()))
}
