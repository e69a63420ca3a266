//! An ONNX graph under construction or rewrite: nodes as ONNX protos, initializers kept apart
//! (host bytes or a streaming generator) so weights are never serialized into the protobuf
//! before the bundle writer decides where they live.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use osp_graphs::{DType, Dim, Precision, TensorSpec};

use crate::error::{Error, Result};
use crate::onnx;
use crate::tensor::onnx_elem_type;

/// A consumer of data chunks.
pub type ChunkSink<'a> = dyn FnMut(&[u8]) -> std::io::Result<()> + 'a;

/// Produces an initializer's bytes chunk by chunk (each call yields the whole tensor again).
pub type Generator = Arc<dyn Fn(&mut ChunkSink<'_>) -> std::io::Result<()> + Send + Sync>;

/// Where an initializer's little-endian bytes come from.
#[derive(Clone)]
pub enum TensorData {
    /// Bytes in host memory, shared with the caller's weights.
    Host(Arc<Vec<u8>>),
    /// Bytes streamed from a generator, for weights too large to hold (never materialized by the writer).
    Generated(Generator),
}

impl std::fmt::Debug for TensorData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TensorData::Host(d) => write!(f, "Host({} bytes)", d.len()),
            TensorData::Generated(_) => f.write_str("Generated"),
        }
    }
}

/// A named constant tensor of the graph. `name` is the PyTorch parameter key for weights.
#[derive(Debug, Clone)]
pub struct Initializer {
    pub name: String,
    pub dtype: DType,
    pub dims: Vec<usize>,
    pub data: TensorData,
}

impl Initializer {
    pub fn byte_len(&self) -> usize {
        self.dims.iter().product::<usize>() * self.dtype.size()
    }

    /// Streams the bytes into `sink`; errors if the source yields a length other than [`Self::byte_len`].
    pub fn write_chunks(&self, sink: &mut ChunkSink<'_>) -> std::io::Result<()> {
        let mut written = 0usize;
        let mut counting = |chunk: &[u8]| {
            written += chunk.len();
            sink(chunk)
        };
        match &self.data {
            TensorData::Host(bytes) => counting(bytes)?,
            TensorData::Generated(generator) => generator(&mut counting)?,
        }
        if written != self.byte_len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("initializer `{}` produced {written} bytes, its shape needs {}", self.name, self.byte_len()),
            ));
        }
        Ok(())
    }

    /// The tensor proto without data (name, dims, data type).
    pub fn header_proto(&self) -> onnx::TensorProto {
        onnx::TensorProto {
            name: Some(self.name.clone()),
            dims: self.dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(onnx_elem_type(self.dtype)),
            ..Default::default()
        }
    }

    /// The tensor proto with its bytes inline in `raw_data`.
    pub fn inline_proto(&self) -> Result<onnx::TensorProto> {
        let mut raw = Vec::with_capacity(self.byte_len());
        self.write_chunks(&mut |c: &[u8]| {
            raw.extend_from_slice(c);
            Ok(())
        })
        .map_err(|e| Error::Graph { graph: String::new(), message: e.to_string() })?;
        Ok(onnx::TensorProto { raw_data: Some(raw), ..self.header_proto() })
    }
}

/// A graph: ONNX nodes in topological order, initializers, typed I/O, and the dtype of every value.
#[derive(Debug, Clone, Default)]
pub struct OnnxGraph {
    pub name: String,
    pub nodes: Vec<onnx::NodeProto>,
    pub initializers: Vec<Initializer>,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// Element type of every value (graph inputs, initializers, node outputs).
    pub value_dtypes: BTreeMap<String, DType>,
    /// Names of nodes that compute in f32 whatever the graph precision (see `passes::cast_precision`).
    pub keep_f32: BTreeSet<String>,
    /// Precision of weights and interior arithmetic (set by `passes::cast_precision`).
    pub precision: Precision,
}

impl OnnxGraph {
    pub fn initializer(&self, name: &str) -> Option<&Initializer> {
        self.initializers.iter().find(|i| i.name == name)
    }

    pub fn uses_domain(&self, domain: &str) -> bool {
        self.nodes.iter().any(|n| n.domain.as_deref() == Some(domain))
    }

    /// The model proto with `initializers` as the graph's initializer list.
    pub fn model_proto_with(&self, initializers: Vec<onnx::TensorProto>) -> onnx::ModelProto {
        let mut opset_import =
            vec![onnx::OperatorSetIdProto { domain: Some(String::new()), version: Some(crate::OPSET) }];
        if self.uses_domain(crate::MS_DOMAIN) {
            opset_import.push(onnx::OperatorSetIdProto {
                domain: Some(crate::MS_DOMAIN.to_string()),
                version: Some(crate::MS_OPSET),
            });
        }
        onnx::ModelProto {
            ir_version: Some(crate::IR_VERSION),
            opset_import,
            producer_name: Some("osp-export".to_string()),
            producer_version: Some(env!("CARGO_PKG_VERSION").to_string()),
            graph: Some(onnx::GraphProto {
                name: Some(self.name.clone()),
                node: self.nodes.clone(),
                initializer: initializers,
                input: self.inputs.iter().map(value_info).collect(),
                output: self.outputs.iter().map(value_info).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// The model proto with every initializer inline (small graphs and tests).
    pub fn to_model_proto(&self) -> Result<onnx::ModelProto> {
        let inits = self.initializers.iter().map(Initializer::inline_proto).collect::<Result<Vec<_>>>()?;
        Ok(self.model_proto_with(inits))
    }

    /// Checks the graph's wiring: every node input is produced before use (or is a graph input or
    /// initializer), every value has one producer, and every graph output is produced.
    pub fn check_wiring(&self) -> Result<()> {
        let fail = |message: String| Err(Error::Graph { graph: self.name.clone(), message });
        let mut defined: BTreeSet<&str> = self.inputs.iter().map(|t| t.name.as_str()).collect();
        for init in &self.initializers {
            if !defined.insert(&init.name) {
                return fail(format!("value `{}` is defined twice", init.name));
            }
        }
        for node in &self.nodes {
            for input in node.input.iter().filter(|i| !i.is_empty()) {
                if !defined.contains(input.as_str()) {
                    return fail(format!(
                        "node `{}` reads `{input}` before it is defined",
                        node.name.as_deref().unwrap_or("?")
                    ));
                }
            }
            for output in node.output.iter().filter(|o| !o.is_empty()) {
                if !defined.insert(output) {
                    return fail(format!("value `{output}` is defined twice"));
                }
            }
        }
        for out in &self.outputs {
            if !defined.contains(out.name.as_str()) {
                return fail(format!("graph output `{}` is never produced", out.name));
            }
        }
        Ok(())
    }
}

fn value_info(spec: &TensorSpec) -> onnx::ValueInfoProto {
    use onnx::tensor_shape_proto::{dimension, Dimension};
    let dim = spec
        .dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(v) => dimension::Value::DimValue(*v as i64),
                Dim::Symbolic(s) => dimension::Value::DimParam(s.clone()),
            }),
            denotation: None,
        })
        .collect();
    onnx::ValueInfoProto {
        name: Some(spec.name.clone()),
        r#type: Some(onnx::TypeProto {
            denotation: None,
            value: Some(onnx::type_proto::Value::TensorType(onnx::type_proto::Tensor {
                elem_type: Some(onnx_elem_type(spec.dtype)),
                shape: Some(onnx::TensorShapeProto { dim }),
            })),
        }),
        ..Default::default()
    }
}
