//! Rule: run a graph's weights and interior arithmetic in f16 or bf16.
//!
//! The rule, for every value that is f32 before the pass:
//! - graph inputs and outputs keep the dtypes their specs name: a `Cast` follows each f32 input and
//!   precedes each f32 output;
//! - a node is **keep-f32** when the builder marked it (`rms_norm`'s mean/rsqrt chain, the decomposed
//!   attention's `Softmax`) or when the caller lists its name; keep-f32 nodes read and write f32,
//!   with `Cast`s inserted on the edges that cross into or out of them;
//! - every other node computes in the target dtype; `Cast(to = f32)` nodes become `Cast(to = target)`
//!   and float `ConstantOfShape` fills are converted;
//! - float initializers are converted to the target dtype unless the caller lists them, or every
//!   reader needs f32 (keep-f32 nodes, `Resize`'s `roi`/`scales`, which ONNX fixes to f32);
//! - `LayerNormalization` runs in the target dtype: its `stash_type` (default 1 = f32) already makes
//!   backends compute mean and variance in f32.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use osp_graphs::{DType, Precision};

use super::{Edit, Uses};
use crate::builder::{attribute, Attr};
use crate::error::{Error, Result};
use crate::graph::OnnxGraph;
use crate::onnx::NodeProto;
use crate::tensor::{onnx_elem_type, HostTensor};

/// Options of [`cast_precision`].
#[derive(Debug, Clone, Default)]
pub struct CastPrecision {
    pub target: Precision,
    /// Node or initializer names that stay f32.
    pub keep_f32: BTreeSet<String>,
}

/// Inputs ONNX fixes to f32 whatever the data dtype: `(op_type, slot)`.
fn fixed_f32_slot(op: &str, slot: usize) -> bool {
    matches!((op, slot), ("Resize", 1) | ("Resize", 2))
}

/// The edit that converts `graph` to `opts.target`; empty for `Precision::F32`.
pub fn cast_precision(graph: &OnnxGraph, opts: &CastPrecision) -> Result<Edit> {
    let target = match opts.target {
        Precision::F32 => return Ok(Edit::default()),
        Precision::Int8 => {
            return Err(Error::Graph {
                graph: graph.name.clone(),
                message: "int8 is not a float precision (see passes::quantize_int8)".into(),
            })
        }
        Precision::F16 => DType::F16,
        Precision::Bf16 => DType::Bf16,
    };
    if graph.precision != Precision::F32 {
        return Err(Error::Graph {
            graph: graph.name.clone(),
            message: format!("cast_precision expects an f32 graph, this one is already {}", graph.precision),
        });
    }
    let uses = Uses::of(graph);
    let old = |v: &str| graph.value_dtypes.get(v).copied();
    let island: Vec<bool> = graph
        .nodes
        .iter()
        .map(|n| n.name.as_ref().is_some_and(|name| graph.keep_f32.contains(name) || opts.keep_f32.contains(name)))
        .collect();
    let need = |node: usize, slot: usize| -> DType {
        let op = graph.nodes[node].op_type.as_deref().unwrap_or("");
        if island[node] || fixed_f32_slot(op, slot) {
            DType::F32
        } else {
            target
        }
    };
    let outputs: BTreeSet<&str> = graph.outputs.iter().map(|t| t.name.as_str()).collect();
    let inputs: BTreeSet<&str> = graph.inputs.iter().map(|t| t.name.as_str()).collect();

    // The dtype each originally-f32 value carries after the pass.
    let mut new_dtype: BTreeMap<&str, DType> = BTreeMap::new();
    for (name, &dt) in &graph.value_dtypes {
        if dt != DType::F32 {
            continue;
        }
        let name = name.as_str();
        let dt = if inputs.contains(name) {
            DType::F32
        } else if let Some(&p) = uses.producer.get(name) {
            if island[p] {
                DType::F32
            } else {
                target
            }
        } else if graph.initializer(name).is_some() {
            let readers = uses.consumers.get(name).map(Vec::as_slice).unwrap_or(&[]);
            let all_f32 = !readers.is_empty() && readers.iter().all(|&(n, s)| need(n, s) == DType::F32);
            if opts.keep_f32.contains(name) || all_f32 || outputs.contains(name) {
                DType::F32
            } else {
                target
            }
        } else {
            continue;
        };
        new_dtype.insert(name, dt);
    }

    let mut edit = Edit { set_precision: Some(opts.target), ..Default::default() };
    for (name, &dt) in &new_dtype {
        if dt != DType::F32 {
            edit.set_dtypes.insert(name.to_string(), dt);
            if graph.initializer(name).is_some() {
                edit.convert_initializers.insert(name.to_string(), dt);
            }
        }
    }

    let mut taken: BTreeSet<String> = graph.value_dtypes.keys().cloned().collect();
    taken.extend(graph.nodes.iter().filter_map(|n| n.name.clone()));
    let mut casts = Casts { taken, nodes: Vec::new() };
    let mut cast_of: HashMap<(String, DType), String> = HashMap::new();

    // Graph outputs that now carry the target dtype: the producer writes `<o>/lowp`, a Cast writes `o`.
    let mut alias: BTreeMap<&str, String> = BTreeMap::new();
    for o in graph.outputs.iter().filter(|o| o.dtype == DType::F32) {
        if new_dtype.get(o.name.as_str()) != Some(&target) {
            continue;
        }
        let p = uses.producer[o.name.as_str()];
        let node = &graph.nodes[p];
        if node.op_type.as_deref() == Some("Identity") {
            let source = &node.input[0];
            edit.replace_nodes.insert(p, cast_node(node.name.clone().unwrap_or_default(), source, &o.name, DType::F32));
            edit.set_dtypes.insert(o.name.clone(), DType::F32);
            continue;
        }
        let lowp = casts.fresh(format!("{}/lowp", o.name));
        alias.insert(o.name.as_str(), lowp.clone());
        casts.add(&mut edit, &lowp, DType::F32, Some(o.name.clone()));
        edit.set_dtypes.insert(lowp, target);
        edit.set_dtypes.insert(o.name.clone(), DType::F32);
    }

    for (i, node) in graph.nodes.iter().enumerate() {
        if edit.replace_nodes.contains_key(&i) {
            continue;
        }
        let mut rewritten = node.clone();
        let mut changed = false;
        for (slot, input) in node.input.iter().enumerate() {
            if input.is_empty() || old(input) != Some(DType::F32) {
                continue;
            }
            let source = alias.get(input.as_str()).cloned().unwrap_or_else(|| input.clone());
            let have = new_dtype.get(input.as_str()).copied().unwrap_or(DType::F32);
            let want = need(i, slot);
            let wired = if have == want {
                source
            } else {
                let key = (source.clone(), want);
                match cast_of.get(&key) {
                    Some(v) => v.clone(),
                    None => {
                        let v = casts.add(&mut edit, &source, want, None);
                        cast_of.insert(key, v.clone());
                        v
                    }
                }
            };
            if wired != *input {
                rewritten.input[slot] = wired;
                changed = true;
            }
        }
        for out in rewritten.output.iter_mut() {
            if let Some(a) = alias.get(out.as_str()) {
                *out = a.clone();
                changed = true;
            }
        }
        if !island[i] {
            changed |= retype_attributes(&mut rewritten, target)?;
        }
        if changed {
            edit.replace_nodes.insert(i, rewritten);
        }
    }
    edit.add_nodes = casts.nodes;
    Ok(edit)
}

/// Fresh names and the `Cast` nodes the edit adds.
struct Casts {
    taken: BTreeSet<String>,
    nodes: Vec<NodeProto>,
}

impl Casts {
    fn fresh(&mut self, base: String) -> String {
        let mut name = base.clone();
        let mut i = 1;
        while !self.taken.insert(name.clone()) {
            i += 1;
            name = format!("{base}_{i}");
        }
        name
    }

    /// Adds `Cast(from) -> output` (a fresh name when `None`) and returns the output name.
    fn add(&mut self, edit: &mut Edit, from: &str, to: DType, output: Option<String>) -> String {
        let out = output.unwrap_or_else(|| self.fresh(format!("{from}/to_{to}")));
        let node_name = self.fresh(format!("{from}/Cast_{to}"));
        self.nodes.push(cast_node(node_name, from, &out, to));
        edit.set_dtypes.insert(out.clone(), to);
        out
    }
}

fn cast_node(name: String, input: &str, output: &str, to: DType) -> NodeProto {
    NodeProto {
        input: vec![input.to_string()],
        output: vec![output.to_string()],
        name: Some(name),
        op_type: Some("Cast".to_string()),
        attribute: vec![attribute("to", Attr::Int(onnx_elem_type(to) as i64))],
        ..Default::default()
    }
}

/// Moves attributes that name f32 (`Cast.to`, `ConstantOfShape.value`) to `target`.
fn retype_attributes(node: &mut NodeProto, target: DType) -> Result<bool> {
    let f32_code = onnx_elem_type(DType::F32);
    let mut changed = false;
    match node.op_type.as_deref() {
        Some("Cast") => {
            for a in node.attribute.iter_mut().filter(|a| a.name.as_deref() == Some("to")) {
                if a.i == Some(f32_code as i64) {
                    a.i = Some(onnx_elem_type(target) as i64);
                    changed = true;
                }
            }
        }
        Some("ConstantOfShape") => {
            for a in node.attribute.iter_mut().filter(|a| a.name.as_deref() == Some("value")) {
                let Some(t) = a.t.as_mut() else { continue };
                if t.data_type != Some(f32_code) {
                    continue;
                }
                let raw = match (&t.raw_data, t.float_data.is_empty()) {
                    (Some(raw), _) => raw.clone(),
                    (None, false) => t.float_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                    (None, true) => vec![0; 4],
                };
                let n = raw.len() / 4;
                let converted = HostTensor::new(DType::F32, vec![n], raw)?.cast_float(target)?;
                t.float_data.clear();
                t.raw_data = Some(converted.data().to_vec());
                t.data_type = Some(onnx_elem_type(target));
                changed = true;
            }
        }
        _ => {}
    }
    Ok(changed)
}
