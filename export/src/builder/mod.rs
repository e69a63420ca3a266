//! A typed builder of ONNX graphs (default domain opset 23, `com.microsoft` opset 1 when used).
//!
//! Values are [`Value`] handles carrying the ONNX value name, element type and (when known) rank.
//! Node and intermediate value names are generated and unique (`<scope>/<Op>_<n>`); initializers are
//! named exactly by the caller (the PyTorch parameter key, e.g. `attn1.to_q.weight`).
//!
//! Layer helpers named like PyTorch modules live in [`layers`], attention in [`attention`].

pub mod attention;
pub mod layers;

pub use attention::AttentionSpec;

use std::collections::BTreeSet;
use std::sync::Arc;

use osp_graphs::{DType, TensorSpec};

use crate::error::{Error, Result};
use crate::graph::{Generator, Initializer, OnnxGraph, TensorData};
use crate::onnx;
use crate::onnx::attribute_proto::AttributeType;
use crate::options::Lowering;
use crate::tensor::{onnx_elem_type, HostTensor};

/// A value of the graph under construction. Cheap to clone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    name: Arc<str>,
    dtype: DType,
    rank: Option<usize>,
}

impl Value {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The rank, where the builder can know it statically.
    pub fn rank(&self) -> Option<usize> {
        self.rank
    }
}

/// An ONNX attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
    Floats(Vec<f32>),
    String(String),
    Tensor(Box<onnx::TensorProto>),
}

pub(crate) fn attribute(name: &str, value: Attr) -> onnx::AttributeProto {
    let mut a = onnx::AttributeProto { name: Some(name.to_string()), ..Default::default() };
    let ty = match value {
        Attr::Int(i) => {
            a.i = Some(i);
            AttributeType::Int
        }
        Attr::Float(f) => {
            a.f = Some(f);
            AttributeType::Float
        }
        Attr::Ints(v) => {
            a.ints = v;
            AttributeType::Ints
        }
        Attr::Floats(v) => {
            a.floats = v;
            AttributeType::Floats
        }
        Attr::String(s) => {
            a.s = Some(s.into_bytes());
            AttributeType::String
        }
        Attr::Tensor(t) => {
            a.t = Some(*t);
            AttributeType::Tensor
        }
    };
    a.r#type = Some(ty as i32);
    a
}

/// Options of `Conv` / `ConvTranspose` (PyTorch's `stride`, `padding`, `dilation`, `groups`).
/// Empty vectors take the ONNX defaults (1 per spatial axis, zero padding).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConvOptions {
    pub strides: Vec<i64>,
    /// ONNX layout: `[begin_0, .., begin_k, end_0, .., end_k]`.
    pub pads: Vec<i64>,
    pub dilations: Vec<i64>,
    pub group: i64,
    /// `ConvTranspose` only.
    pub output_padding: Vec<i64>,
}

/// Builds one [`OnnxGraph`].
pub struct GraphBuilder {
    graph: OnnxGraph,
    used_names: BTreeSet<String>,
    counter: usize,
    scopes: Vec<String>,
    f32_depth: usize,
    lowering: Lowering,
}

impl GraphBuilder {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            graph: OnnxGraph { name: name.into(), ..Default::default() },
            used_names: BTreeSet::new(),
            counter: 0,
            scopes: Vec::new(),
            f32_depth: 0,
            lowering: Lowering::default(),
        }
    }

    /// Writes the layers that have several exact forms ([`Lowering`]) in the given one.
    pub fn with_lowering(mut self, lowering: Lowering) -> Self {
        self.lowering = lowering;
        self
    }

    pub fn lowering(&self) -> Lowering {
        self.lowering
    }

    /// Runs `f` with `scope` prefixed to generated names (`attn1/MatMul_3`).
    pub fn scoped<T>(&mut self, scope: &str, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.scopes.push(scope.to_string());
        let out = f(self);
        self.scopes.pop();
        out
    }

    /// Runs `f` with every node it creates marked keep-f32 (see `passes::cast_precision`).
    pub fn in_f32<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.f32_depth += 1;
        let out = f(self);
        self.f32_depth -= 1;
        out
    }

    fn fresh_name(&mut self, base: &str) -> String {
        let prefix = if self.scopes.is_empty() { String::new() } else { format!("{}/", self.scopes.join("/")) };
        loop {
            self.counter += 1;
            let name = format!("{prefix}{base}_{}", self.counter);
            if self.used_names.insert(name.clone()) {
                return name;
            }
        }
    }

    fn claim_name(&mut self, name: &str, what: &str) -> Result<()> {
        if name.is_empty() {
            return Err(Error::builder(what, "names must not be empty"));
        }
        if !self.used_names.insert(name.to_string()) {
            return Err(Error::builder(what, format!("the name `{name}` is already used in this graph")));
        }
        Ok(())
    }

    fn value(&mut self, name: String, dtype: DType, rank: Option<usize>) -> Value {
        self.graph.value_dtypes.insert(name.clone(), dtype);
        Value { name: name.into(), dtype, rank }
    }

    /// Declares a graph input.
    pub fn input(&mut self, spec: TensorSpec) -> Result<Value> {
        self.claim_name(&spec.name, "input")?;
        let v = self.value(spec.name.clone(), spec.dtype, Some(spec.dims.len()));
        self.graph.inputs.push(spec);
        Ok(v)
    }

    /// Declares `value` as the graph output `spec` (an `Identity` node gives it the spec's name).
    pub fn output(&mut self, value: &Value, spec: TensorSpec) -> Result<()> {
        if value.dtype != spec.dtype {
            return Err(Error::builder(
                "output",
                format!("output `{}` is declared {} but the value is {}", spec.name, spec.dtype, value.dtype),
            ));
        }
        if let Some(rank) = value.rank.filter(|&r| r != spec.dims.len()) {
            return Err(Error::builder(
                "output",
                format!(
                    "output `{}` is declared with rank {} but the value has rank {rank}",
                    spec.name,
                    spec.dims.len()
                ),
            ));
        }
        self.claim_name(&spec.name, "output")?;
        let node_name = self.fresh_name("Identity");
        self.push_node(node_name, "Identity", "", vec![value.name.to_string()], vec![spec.name.clone()], vec![]);
        self.graph.value_dtypes.insert(spec.name.clone(), spec.dtype);
        self.graph.outputs.push(spec);
        Ok(())
    }

    /// Checks the wiring and returns the graph.
    pub fn finish(self) -> Result<OnnxGraph> {
        if self.graph.outputs.is_empty() {
            return Err(Error::Graph { graph: self.graph.name.clone(), message: "the graph has no outputs".into() });
        }
        self.graph.check_wiring()?;
        Ok(self.graph)
    }

    /// An initializer named exactly `name` (the PyTorch key), sharing `tensor`'s bytes.
    pub fn initializer(&mut self, name: &str, tensor: &HostTensor) -> Result<Value> {
        self.claim_name(name, "initializer")?;
        let init = Initializer {
            name: name.to_string(),
            dtype: tensor.dtype(),
            dims: tensor.shape().to_vec(),
            data: TensorData::Host(tensor.shared_data()),
        };
        self.graph.initializers.push(init);
        Ok(self.value(name.to_string(), tensor.dtype(), Some(tensor.shape().len())))
    }

    /// An initializer whose bytes are streamed from `generator` when the bundle is written.
    pub fn generated_initializer(
        &mut self,
        name: &str,
        dtype: DType,
        dims: Vec<usize>,
        generator: Generator,
    ) -> Result<Value> {
        self.claim_name(name, "initializer")?;
        let rank = dims.len();
        self.graph.initializers.push(Initializer {
            name: name.to_string(),
            dtype,
            dims,
            data: TensorData::Generated(generator),
        });
        Ok(self.value(name.to_string(), dtype, Some(rank)))
    }

    /// An auto-named constant initializer.
    pub fn constant(&mut self, tensor: &HostTensor) -> Value {
        let name = self.fresh_name("const");
        self.graph.initializers.push(Initializer {
            name: name.clone(),
            dtype: tensor.dtype(),
            dims: tensor.shape().to_vec(),
            data: TensorData::Host(tensor.shared_data()),
        });
        self.value(name, tensor.dtype(), Some(tensor.shape().len()))
    }

    /// A 0-D float constant of `dtype` (f32, f16, bf16 or f64).
    pub fn scalar(&mut self, v: f64, dtype: DType) -> Result<Value> {
        let bytes = match dtype {
            DType::F32 => (v as f32).to_le_bytes().to_vec(),
            DType::F16 => half::f16::from_f64(v).to_le_bytes().to_vec(),
            DType::Bf16 => half::bf16::from_f64(v).to_le_bytes().to_vec(),
            DType::F64 => v.to_le_bytes().to_vec(),
            other => return Err(Error::builder("scalar", format!("float scalar of dtype {other}"))),
        };
        Ok(self.constant(&HostTensor::new(dtype, vec![], bytes)?))
    }

    /// A 0-D constant with the dtype of `like`.
    pub fn scalar_like(&mut self, v: f64, like: &Value) -> Result<Value> {
        self.scalar(v, like.dtype)
    }

    /// A 1-D i64 constant (shapes, axes, pads).
    pub fn const_i64(&mut self, values: &[i64]) -> Value {
        let t = HostTensor::from_i64(vec![values.len()], values).expect("an i64 vector should match its own length");
        self.constant(&t)
    }

    /// A 1-D f32 constant.
    pub fn const_f32(&mut self, values: &[f32]) -> Value {
        let t = HostTensor::from_f32(vec![values.len()], values).expect("an f32 vector should match its own length");
        self.constant(&t)
    }

    fn push_node(
        &mut self,
        name: String,
        op_type: &str,
        domain: &str,
        input: Vec<String>,
        output: Vec<String>,
        attribute: Vec<onnx::AttributeProto>,
    ) {
        if self.f32_depth > 0 {
            self.graph.keep_f32.insert(name.clone());
        }
        self.graph.nodes.push(onnx::NodeProto {
            input,
            output,
            name: Some(name),
            op_type: Some(op_type.to_string()),
            domain: if domain.is_empty() { None } else { Some(domain.to_string()) },
            attribute,
            ..Default::default()
        });
    }

    /// Adds a node of any op. `inputs` entries of `None` are omitted optional inputs; `outputs`
    /// gives each output's dtype and rank.
    pub fn node(
        &mut self,
        op_type: &str,
        domain: &str,
        inputs: &[Option<&Value>],
        attrs: Vec<(&str, Attr)>,
        outputs: &[(DType, Option<usize>)],
    ) -> Vec<Value> {
        let name = self.fresh_name(op_type);
        let out_values: Vec<Value> = outputs
            .iter()
            .enumerate()
            .map(|(i, &(dtype, rank))| {
                let out_name = if outputs.len() == 1 { format!("{name}_out") } else { format!("{name}_out{i}") };
                self.used_names.insert(out_name.clone());
                self.value(out_name, dtype, rank)
            })
            .collect();
        let mut input: Vec<String> = inputs.iter().map(|v| v.map(|v| v.name.to_string()).unwrap_or_default()).collect();
        while input.last().is_some_and(|s| s.is_empty()) {
            input.pop();
        }
        let attribute = attrs.into_iter().map(|(n, a)| attribute(n, a)).collect();
        self.push_node(
            name,
            op_type,
            domain,
            input,
            out_values.iter().map(|v| v.name.to_string()).collect(),
            attribute,
        );
        out_values
    }

    /// A default-domain node with one output.
    fn op1(
        &mut self,
        op_type: &str,
        inputs: &[&Value],
        attrs: Vec<(&str, Attr)>,
        dtype: DType,
        rank: Option<usize>,
    ) -> Value {
        let inputs: Vec<Option<&Value>> = inputs.iter().map(|v| Some(*v)).collect();
        self.node(op_type, "", &inputs, attrs, &[(dtype, rank)]).remove(0)
    }

    fn same_dtype(op: &str, a: &Value, b: &Value) -> Result<()> {
        if a.dtype != b.dtype {
            return Err(Error::builder(
                op,
                format!("operands `{}` ({}) and `{}` ({}) must share a dtype", a.name, a.dtype, b.name, b.dtype),
            ));
        }
        Ok(())
    }

    fn float_only(op: &str, x: &Value) -> Result<()> {
        if !x.dtype.is_float() {
            return Err(Error::builder(op, format!("`{}` must be a float tensor, got {}", x.name, x.dtype)));
        }
        Ok(())
    }

    fn broadcast_rank(a: &Value, b: &Value) -> Option<usize> {
        Some(a.rank?.max(b.rank?))
    }

    fn binary(&mut self, op: &str, a: &Value, b: &Value) -> Result<Value> {
        Self::same_dtype(op, a, b)?;
        let rank = Self::broadcast_rank(a, b);
        Ok(self.op1(op, &[a, b], vec![], a.dtype, rank))
    }

    pub fn add(&mut self, a: &Value, b: &Value) -> Result<Value> {
        self.binary("Add", a, b)
    }

    pub fn sub(&mut self, a: &Value, b: &Value) -> Result<Value> {
        self.binary("Sub", a, b)
    }

    pub fn mul(&mut self, a: &Value, b: &Value) -> Result<Value> {
        self.binary("Mul", a, b)
    }

    pub fn div(&mut self, a: &Value, b: &Value) -> Result<Value> {
        self.binary("Div", a, b)
    }

    pub fn max(&mut self, a: &Value, b: &Value) -> Result<Value> {
        self.binary("Max", a, b)
    }

    pub fn min(&mut self, a: &Value, b: &Value) -> Result<Value> {
        self.binary("Min", a, b)
    }

    /// `a ** b`; `b` may have another numeric dtype (ONNX `Pow` allows it).
    pub fn pow(&mut self, a: &Value, b: &Value) -> Result<Value> {
        Self::float_only("Pow", a)?;
        let rank = Self::broadcast_rank(a, b);
        Ok(self.op1("Pow", &[a, b], vec![], a.dtype, rank))
    }

    pub fn equal(&mut self, a: &Value, b: &Value) -> Result<Value> {
        Self::same_dtype("Equal", a, b)?;
        let rank = Self::broadcast_rank(a, b);
        Ok(self.op1("Equal", &[a, b], vec![], DType::Bool, rank))
    }

    pub fn where_(&mut self, cond: &Value, a: &Value, b: &Value) -> Result<Value> {
        if cond.dtype != DType::Bool {
            return Err(Error::builder("Where", format!("condition `{}` must be bool, got {}", cond.name, cond.dtype)));
        }
        Self::same_dtype("Where", a, b)?;
        let rank = Self::broadcast_rank(a, b).and_then(|r| Some(r.max(cond.rank?)));
        Ok(self.op1("Where", &[cond, a, b], vec![], a.dtype, rank))
    }

    fn unary_float(&mut self, op: &str, x: &Value) -> Result<Value> {
        Self::float_only(op, x)?;
        Ok(self.op1(op, &[x], vec![], x.dtype, x.rank))
    }

    pub fn sqrt(&mut self, x: &Value) -> Result<Value> {
        self.unary_float("Sqrt", x)
    }

    pub fn reciprocal(&mut self, x: &Value) -> Result<Value> {
        self.unary_float("Reciprocal", x)
    }

    pub fn exp(&mut self, x: &Value) -> Result<Value> {
        self.unary_float("Exp", x)
    }

    pub fn neg(&mut self, x: &Value) -> Result<Value> {
        Ok(self.op1("Neg", &[x], vec![], x.dtype, x.rank))
    }

    pub fn tanh(&mut self, x: &Value) -> Result<Value> {
        self.unary_float("Tanh", x)
    }

    pub fn sigmoid(&mut self, x: &Value) -> Result<Value> {
        self.unary_float("Sigmoid", x)
    }

    pub fn erf(&mut self, x: &Value) -> Result<Value> {
        self.unary_float("Erf", x)
    }

    /// Natural logarithm.
    pub fn log(&mut self, x: &Value) -> Result<Value> {
        self.unary_float("Log", x)
    }

    pub fn abs(&mut self, x: &Value) -> Result<Value> {
        Ok(self.op1("Abs", &[x], vec![], x.dtype, x.rank))
    }

    /// `a < b` (bool).
    pub fn less(&mut self, a: &Value, b: &Value) -> Result<Value> {
        Self::same_dtype("Less", a, b)?;
        let rank = Self::broadcast_rank(a, b);
        Ok(self.op1("Less", &[a, b], vec![], DType::Bool, rank))
    }

    /// `a > b` (bool).
    pub fn greater(&mut self, a: &Value, b: &Value) -> Result<Value> {
        Self::same_dtype("Greater", a, b)?;
        let rank = Self::broadcast_rank(a, b);
        Ok(self.op1("Greater", &[a, b], vec![], DType::Bool, rank))
    }

    /// A 0-D i64 constant.
    pub fn scalar_i64(&mut self, v: i64) -> Value {
        let t = HostTensor::from_i64(vec![], &[v]).expect("one i64 should fill a 0-D tensor");
        self.constant(&t)
    }

    /// `Range(start, limit, delta)` on 0-D values of one dtype -> 1-D.
    pub fn range(&mut self, start: &Value, limit: &Value, delta: &Value) -> Result<Value> {
        for v in [limit, delta] {
            Self::same_dtype("Range", start, v)?;
        }
        Ok(self.op1("Range", &[start, limit, delta], vec![], start.dtype, Some(1)))
    }

    pub fn cos(&mut self, x: &Value) -> Result<Value> {
        self.unary_float("Cos", x)
    }

    pub fn sin(&mut self, x: &Value) -> Result<Value> {
        self.unary_float("Sin", x)
    }

    pub fn cast(&mut self, x: &Value, to: DType) -> Value {
        self.op1("Cast", &[x], vec![("to", Attr::Int(onnx_elem_type(to) as i64))], to, x.rank)
    }

    /// `MatMul` (numpy semantics).
    pub fn matmul(&mut self, a: &Value, b: &Value) -> Result<Value> {
        self.binary("MatMul", a, b)
    }

    /// `Gemm`: `alpha * A' @ B' + beta * C` on 2-D `A`, `B`.
    pub fn gemm(&mut self, a: &Value, b: &Value, c: Option<&Value>, trans_a: bool, trans_b: bool) -> Result<Value> {
        Self::same_dtype("Gemm", a, b)?;
        for v in [a, b] {
            if v.rank.is_some_and(|r| r != 2) {
                return Err(Error::builder("Gemm", format!("`{}` must be 2-D", v.name)));
            }
        }
        let attrs = vec![("transA", Attr::Int(trans_a as i64)), ("transB", Attr::Int(trans_b as i64))];
        Ok(self.node("Gemm", "", &[Some(a), Some(b), c], attrs, &[(a.dtype, Some(2))]).remove(0))
    }

    /// `ReduceMean` (opset-18 form: axes as an input).
    pub fn reduce_mean(&mut self, x: &Value, axes: &[i64], keepdims: bool) -> Result<Value> {
        Self::float_only("ReduceMean", x)?;
        let axes_v = self.const_i64(axes);
        let rank = x.rank.map(|r| if keepdims { r } else { r - axes.len().min(r) });
        Ok(self.op1("ReduceMean", &[x, &axes_v], vec![("keepdims", Attr::Int(keepdims as i64))], x.dtype, rank))
    }

    pub fn softmax(&mut self, x: &Value, axis: i64) -> Result<Value> {
        Self::float_only("Softmax", x)?;
        Ok(self.op1("Softmax", &[x], vec![("axis", Attr::Int(axis))], x.dtype, x.rank))
    }

    /// `Conv` over 1-D/2-D/3-D spatial inputs `[b, c, *spatial]` with weight `[c_out, c_in/group, *k]`.
    pub fn conv(&mut self, x: &Value, w: &Value, b: Option<&Value>, opts: &ConvOptions) -> Result<Value> {
        self.conv_like("Conv", x, w, b, opts)
    }

    /// `ConvTranspose`, weight `[c_in, c_out/group, *k]` (PyTorch layout).
    pub fn conv_transpose(&mut self, x: &Value, w: &Value, b: Option<&Value>, opts: &ConvOptions) -> Result<Value> {
        self.conv_like("ConvTranspose", x, w, b, opts)
    }

    fn conv_like(&mut self, op: &str, x: &Value, w: &Value, b: Option<&Value>, opts: &ConvOptions) -> Result<Value> {
        Self::same_dtype(op, x, w)?;
        let spatial = match (x.rank, w.rank) {
            (Some(xr), Some(wr)) if xr == wr && (3..=5).contains(&xr) => xr - 2,
            _ => {
                return Err(Error::builder(
                    op,
                    format!("input and weight must both be 3-D, 4-D or 5-D, got ranks {:?} and {:?}", x.rank, w.rank),
                ))
            }
        };
        let check = |what: &str, v: &[i64], len: usize| -> Result<()> {
            if !v.is_empty() && v.len() != len {
                return Err(Error::builder(op, format!("{what} needs {len} values, got {v:?}")));
            }
            Ok(())
        };
        check("strides", &opts.strides, spatial)?;
        check("dilations", &opts.dilations, spatial)?;
        check("pads", &opts.pads, 2 * spatial)?;
        check("output_padding", &opts.output_padding, spatial)?;
        let mut attrs = vec![("group", Attr::Int(opts.group.max(1)))];
        for (name, v) in [
            ("strides", &opts.strides),
            ("pads", &opts.pads),
            ("dilations", &opts.dilations),
            ("output_padding", &opts.output_padding),
        ] {
            if !v.is_empty() {
                attrs.push((name, Attr::Ints(v.clone())));
            }
        }
        Ok(self.node(op, "", &[Some(x), Some(w), b], attrs, &[(x.dtype, x.rank)]).remove(0))
    }

    /// `Resize` by per-axis `scales` (e.g. `[1, 1, 2, 2]`), `mode` in `nearest|linear|cubic`.
    pub fn resize_scales(
        &mut self,
        x: &Value,
        scales: &[f32],
        mode: &str,
        coordinate_transformation_mode: &str,
        nearest_mode: &str,
    ) -> Result<Value> {
        if x.rank.is_some_and(|r| r != scales.len()) {
            return Err(Error::builder(
                "Resize",
                format!("scales {scales:?} must have one entry per axis of `{}`", x.name),
            ));
        }
        let s = self.const_f32(scales);
        let attrs = vec![
            ("mode", Attr::String(mode.to_string())),
            ("coordinate_transformation_mode", Attr::String(coordinate_transformation_mode.to_string())),
            ("nearest_mode", Attr::String(nearest_mode.to_string())),
        ];
        Ok(self.node("Resize", "", &[Some(x), None, Some(&s)], attrs, &[(x.dtype, x.rank)]).remove(0))
    }

    /// `Pad` with ONNX-layout `pads` (`[begin_0.., end_0..]`), `mode` in `constant|reflect|edge|wrap`.
    pub fn pad(&mut self, x: &Value, pads: &[i64], mode: &str, constant: Option<f64>) -> Result<Value> {
        if x.rank.is_some_and(|r| 2 * r != pads.len()) {
            return Err(Error::builder("Pad", format!("pads {pads:?} must have two entries per axis of `{}`", x.name)));
        }
        let p = self.const_i64(pads);
        let c = match constant {
            Some(v) if x.dtype.is_float() => Some(self.scalar(v, x.dtype)?),
            Some(_) => return Err(Error::builder("Pad", "a constant pad value needs a float input")),
            None => None,
        };
        Ok(self
            .node(
                "Pad",
                "",
                &[Some(x), Some(&p), c.as_ref()],
                vec![("mode", Attr::String(mode.into()))],
                &[(x.dtype, x.rank)],
            )
            .remove(0))
    }

    /// `Slice` with constant starts/ends/axes/steps.
    pub fn slice(
        &mut self,
        x: &Value,
        starts: &[i64],
        ends: &[i64],
        axes: &[i64],
        steps: Option<&[i64]>,
    ) -> Result<Value> {
        if starts.len() != ends.len() || starts.len() != axes.len() || steps.is_some_and(|s| s.len() != axes.len()) {
            return Err(Error::builder("Slice", "starts, ends, axes and steps must have equal lengths"));
        }
        let s = self.const_i64(starts);
        let e = self.const_i64(ends);
        let a = self.const_i64(axes);
        let st = steps.map(|st| self.const_i64(st));
        Ok(self.slice_with(x, &s, &e, &a, st.as_ref()))
    }

    /// `Slice` with tensor-valued starts/ends/axes/steps.
    pub fn slice_with(
        &mut self,
        x: &Value,
        starts: &Value,
        ends: &Value,
        axes: &Value,
        steps: Option<&Value>,
    ) -> Value {
        self.node("Slice", "", &[Some(x), Some(starts), Some(ends), Some(axes), steps], vec![], &[(x.dtype, x.rank)])
            .remove(0)
    }

    pub fn concat(&mut self, values: &[&Value], axis: i64) -> Result<Value> {
        let first = values.first().ok_or_else(|| Error::builder("Concat", "needs at least one input"))?;
        for v in &values[1..] {
            Self::same_dtype("Concat", first, v)?;
        }
        Ok(self.op1("Concat", values, vec![("axis", Attr::Int(axis))], first.dtype, first.rank))
    }

    /// `Split` along `axis` into pieces of `sizes`.
    pub fn split(&mut self, x: &Value, axis: i64, sizes: &[i64]) -> Result<Vec<Value>> {
        if sizes.is_empty() {
            return Err(Error::builder("Split", "needs at least one piece"));
        }
        let s = self.const_i64(sizes);
        let outs = vec![(x.dtype, x.rank); sizes.len()];
        Ok(self.node("Split", "", &[Some(x), Some(&s)], vec![("axis", Attr::Int(axis))], &outs))
    }

    /// `Reshape` to a constant shape (`0` copies the input dim, `-1` infers one dim).
    pub fn reshape(&mut self, x: &Value, shape: &[i64]) -> Value {
        let s = self.const_i64(shape);
        self.op1("Reshape", &[x, &s], vec![], x.dtype, Some(shape.len()))
    }

    /// `Reshape` to a computed shape.
    pub fn reshape_to(&mut self, x: &Value, shape: &Value, rank: Option<usize>) -> Value {
        self.op1("Reshape", &[x, shape], vec![], x.dtype, rank)
    }

    pub fn transpose(&mut self, x: &Value, perm: &[i64]) -> Result<Value> {
        if x.rank.is_some_and(|r| r != perm.len()) {
            return Err(Error::builder("Transpose", format!("perm {perm:?} does not match the rank of `{}`", x.name)));
        }
        Ok(self.op1("Transpose", &[x], vec![("perm", Attr::Ints(perm.to_vec()))], x.dtype, Some(perm.len())))
    }

    pub fn unsqueeze(&mut self, x: &Value, axes: &[i64]) -> Value {
        let a = self.const_i64(axes);
        self.op1("Unsqueeze", &[x, &a], vec![], x.dtype, x.rank.map(|r| r + axes.len()))
    }

    pub fn squeeze(&mut self, x: &Value, axes: &[i64]) -> Value {
        let a = self.const_i64(axes);
        self.op1("Squeeze", &[x, &a], vec![], x.dtype, x.rank.map(|r| r.saturating_sub(axes.len())))
    }

    /// `Expand` (bidirectional broadcast) to `shape` (1-D i64).
    pub fn expand(&mut self, x: &Value, shape: &Value, rank: Option<usize>) -> Value {
        self.op1("Expand", &[x, shape], vec![], x.dtype, rank)
    }

    pub fn gather(&mut self, x: &Value, indices: &Value, axis: i64) -> Result<Value> {
        if !matches!(indices.dtype, DType::I64 | DType::I32) {
            return Err(Error::builder("Gather", format!("indices `{}` must be i64 or i32", indices.name)));
        }
        let rank = x.rank.and_then(|r| Some(r - 1 + indices.rank?));
        Ok(self.op1("Gather", &[x, indices], vec![("axis", Attr::Int(axis))], x.dtype, rank))
    }

    /// `Shape`, optionally of axes `start..end`.
    pub fn shape(&mut self, x: &Value, start: Option<i64>, end: Option<i64>) -> Value {
        let mut attrs = vec![];
        if let Some(s) = start {
            attrs.push(("start", Attr::Int(s)));
        }
        if let Some(e) = end {
            attrs.push(("end", Attr::Int(e)));
        }
        self.op1("Shape", &[x], attrs, DType::I64, Some(1))
    }

    pub fn tile(&mut self, x: &Value, repeats: &Value) -> Value {
        self.op1("Tile", &[x, repeats], vec![], x.dtype, x.rank)
    }

    /// `ConstantOfShape` filled with `value` of float `dtype`.
    pub fn constant_of_shape(&mut self, shape: &Value, value: f64, dtype: DType) -> Result<Value> {
        let fill = match dtype {
            DType::F32 => HostTensor::from_f32(vec![1], &[value as f32])?,
            DType::F16 => HostTensor::from_f16(vec![1], &[half::f16::from_f64(value)])?,
            DType::Bf16 => HostTensor::from_bf16(vec![1], &[half::bf16::from_f64(value)])?,
            DType::I64 => HostTensor::from_i64(vec![1], &[value as i64])?,
            other => return Err(Error::builder("ConstantOfShape", format!("fill dtype {other} is not supported"))),
        };
        let t = onnx::TensorProto {
            dims: vec![1],
            data_type: Some(onnx_elem_type(dtype)),
            raw_data: Some(fill.data().to_vec()),
            ..Default::default()
        };
        Ok(self.op1("ConstantOfShape", &[shape], vec![("value", Attr::Tensor(Box::new(t)))], dtype, None))
    }

    /// ONNX `LayerNormalization` (opset 17) over the last axis.
    pub fn layer_normalization(&mut self, x: &Value, scale: &Value, bias: Option<&Value>, eps: f64) -> Result<Value> {
        Self::same_dtype("LayerNormalization", x, scale)?;
        let attrs = vec![("axis", Attr::Int(-1)), ("epsilon", Attr::Float(eps as f32))];
        Ok(self.node("LayerNormalization", "", &[Some(x), Some(scale), bias], attrs, &[(x.dtype, x.rank)]).remove(0))
    }
}

#[cfg(test)]
mod tests;
