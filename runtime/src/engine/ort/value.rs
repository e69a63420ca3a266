//! Host tensors in and out of an ONNX Runtime session.

use std::borrow::Cow;
use std::collections::BTreeMap;

use half::{bf16, f16};
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, TensorElementType, TensorRef, ValueType};

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Runs `session` on `inputs` (already checked against the manifest) and copies every output to
/// the host.
pub(crate) fn run(session: &mut Session, graph: &str, inputs: &[(&str, &Tensor)]) -> Result<BTreeMap<String, Tensor>> {
    let run_err = |e: ort::Error| Error::Run { graph: graph.to_string(), source: Box::new(e) };
    // ONNX Runtime reads contiguous row-major buffers; other layouts are copied once.
    let contiguous: Vec<Cow<'_, Tensor>> = inputs.iter().map(|(_, t)| t.as_standard_layout()).collect();
    let mut values: Vec<(&str, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
    for ((name, _), t) in inputs.iter().zip(&contiguous) {
        let value: SessionInputValue<'_> = match t.as_ref() {
            Tensor::F32(a) => TensorRef::from_array_view(a).map_err(run_err)?.into(),
            Tensor::F16(a) => TensorRef::from_array_view(a).map_err(run_err)?.into(),
            Tensor::Bf16(a) => TensorRef::from_array_view(a).map_err(run_err)?.into(),
            Tensor::I64(a) => TensorRef::from_array_view(a).map_err(run_err)?.into(),
            Tensor::I32(a) => TensorRef::from_array_view(a).map_err(run_err)?.into(),
            Tensor::U8(a) => TensorRef::from_array_view(a).map_err(run_err)?.into(),
            Tensor::Bool(a) => TensorRef::from_array_view(a).map_err(run_err)?.into(),
        };
        values.push((name, value));
    }
    let outputs = session.run(values).map_err(run_err)?;
    // Each output's ONNX Runtime buffer is released as soon as it is copied: at most one output
    // exists twice, not all of them (a streaming decoder's state is hundreds of MiB).
    let mut result = BTreeMap::new();
    for (name, value) in outputs {
        result.insert(name.to_string(), to_host(graph, name, &value)?);
    }
    Ok(result)
}

fn to_host(graph: &str, name: &str, value: &DynValue) -> Result<Tensor> {
    let run_err = |e: ort::Error| Error::Run { graph: graph.to_string(), source: Box::new(e) };
    let ValueType::Tensor { ty, .. } = value.dtype() else {
        return Err(Error::OutputMismatch {
            graph: graph.to_string(),
            output: name.to_string(),
            expected: "a tensor".into(),
            got: value.dtype().to_string(),
        });
    };
    Ok(match ty {
        TensorElementType::Float32 => Tensor::F32(value.try_extract_array::<f32>().map_err(run_err)?.to_owned()),
        TensorElementType::Float16 => Tensor::F16(value.try_extract_array::<f16>().map_err(run_err)?.to_owned()),
        TensorElementType::Bfloat16 => Tensor::Bf16(value.try_extract_array::<bf16>().map_err(run_err)?.to_owned()),
        TensorElementType::Int64 => Tensor::I64(value.try_extract_array::<i64>().map_err(run_err)?.to_owned()),
        TensorElementType::Int32 => Tensor::I32(value.try_extract_array::<i32>().map_err(run_err)?.to_owned()),
        TensorElementType::Uint8 => Tensor::U8(value.try_extract_array::<u8>().map_err(run_err)?.to_owned()),
        TensorElementType::Bool => Tensor::Bool(value.try_extract_array::<bool>().map_err(run_err)?.to_owned()),
        other => {
            return Err(Error::UnsupportedDtype {
                context: format!("graph `{graph}` output `{name}`"),
                dtype: other.to_string(),
            })
        }
    })
}
