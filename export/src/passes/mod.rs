//! Graph passes in the style of tract's `Rewriter`: each rule (one per file) inspects an
//! [`OnnxGraph`] and returns an [`Edit`]; [`apply`] is the only code that mutates a graph, and it
//! restores topological order and checks the wiring afterwards.

pub mod cast_precision;
pub mod prune_unused;
pub mod quantize_int8;
pub mod schedule_outputs;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use osp_graphs::{DType, Precision};

pub use cast_precision::{cast_precision, CastPrecision};
pub use prune_unused::prune_unused;
pub use quantize_int8::{quantize_int8, QuantizeInt8};
pub use schedule_outputs::schedule_outputs;

use crate::error::{Error, Result};
use crate::graph::{Generator, Initializer, OnnxGraph, TensorData};
use crate::onnx::NodeProto;
use crate::tensor::convert_float_bytes;

/// A set of changes to one graph, produced by a rule and applied by [`apply`].
#[derive(Debug, Clone, Default)]
pub struct Edit {
    /// Nodes (index into `graph.nodes`) replaced by a rewritten node.
    pub replace_nodes: BTreeMap<usize, NodeProto>,
    /// Nodes (index into `graph.nodes`) removed.
    pub remove_nodes: BTreeSet<usize>,
    /// New nodes; `apply` places them in topological order.
    pub add_nodes: Vec<NodeProto>,
    /// Nodes (index into `graph.nodes`) moved after all the others, in this order (before
    /// `add_nodes`); `apply` keeps them so wherever topological order allows.
    pub move_to_end: Vec<usize>,
    pub remove_initializers: BTreeSet<String>,
    /// New initializers (names not in the graph).
    pub add_initializers: Vec<Initializer>,
    /// Float initializers converted to another float dtype.
    pub convert_initializers: BTreeMap<String, DType>,
    /// Values whose dtype is new or changed.
    pub set_dtypes: BTreeMap<String, DType>,
    /// The graph's precision after the edit.
    pub set_precision: Option<Precision>,
}

impl Edit {
    pub fn is_empty(&self) -> bool {
        self.replace_nodes.is_empty()
            && self.remove_nodes.is_empty()
            && self.add_nodes.is_empty()
            && self.move_to_end.is_empty()
            && self.remove_initializers.is_empty()
            && self.add_initializers.is_empty()
            && self.convert_initializers.is_empty()
            && self.set_dtypes.is_empty()
            && self.set_precision.is_none()
    }
}

/// Applies `edit` to `graph`, re-sorts the nodes topologically and checks the wiring.
pub fn apply(graph: &mut OnnxGraph, edit: Edit) -> Result<()> {
    let graph_err = |message: String| Error::Graph { graph: graph.name.clone(), message };
    let n = graph.nodes.len();
    if let Some(&bad) = edit.replace_nodes.keys().chain(&edit.remove_nodes).find(|&&i| i >= n) {
        return Err(graph_err(format!("edit names node #{bad}, the graph has {n}")));
    }
    let moved: BTreeSet<usize> = edit.move_to_end.iter().copied().collect();
    if let Some(&bad) = edit.move_to_end.iter().find(|&&i| i >= n || edit.remove_nodes.contains(&i)) {
        return Err(graph_err(format!("edit moves node #{bad}, which is removed or not one of the graph's {n}")));
    }
    if moved.len() != edit.move_to_end.len() {
        return Err(graph_err("edit moves a node twice".to_string()));
    }
    let mut slots: Vec<Option<NodeProto>> = Vec::with_capacity(n);
    for (i, node) in std::mem::take(&mut graph.nodes).into_iter().enumerate() {
        if edit.remove_nodes.contains(&i) {
            if let Some(name) = &node.name {
                graph.keep_f32.remove(name);
            }
            slots.push(None);
            continue;
        }
        slots.push(Some(edit.replace_nodes.get(&i).cloned().unwrap_or(node)));
    }
    let mut nodes = Vec::with_capacity(n + edit.add_nodes.len());
    nodes.extend((0..n).filter(|i| !moved.contains(i)).filter_map(|i| slots[i].take()));
    nodes.extend(edit.move_to_end.iter().filter_map(|&i| slots[i].take()));
    nodes.extend(edit.add_nodes);
    graph.initializers.retain(|i| !edit.remove_initializers.contains(&i.name));
    if let Some(dup) = edit.add_initializers.iter().find(|a| graph.initializer(&a.name).is_some()) {
        return Err(graph_err(format!("edit adds initializer `{}`, which the graph already has", dup.name)));
    }
    graph.initializers.extend(edit.add_initializers);
    for init in &mut graph.initializers {
        if let Some(&to) = edit.convert_initializers.get(&init.name) {
            let from = init.dtype;
            if !from.is_float() || !to.is_float() {
                return Err(graph_err(format!("initializer `{}` ({from}) cannot be converted to {to}", init.name)));
            }
            init.data = match &init.data {
                TensorData::Host(bytes) => {
                    let mut out = Vec::with_capacity(bytes.len() / from.size() * to.size());
                    convert_float_bytes(from, to, bytes, &mut out)?;
                    TensorData::Host(Arc::new(out))
                }
                TensorData::Generated(generator) => {
                    TensorData::Generated(convert_generator(generator.clone(), from, to))
                }
            };
            init.dtype = to;
        }
    }
    graph.nodes = topological_order(nodes).map_err(graph_err)?;
    graph.value_dtypes.extend(edit.set_dtypes);
    let defined: BTreeSet<String> = graph
        .inputs
        .iter()
        .map(|t| t.name.clone())
        .chain(graph.initializers.iter().map(|i| i.name.clone()))
        .chain(graph.nodes.iter().flat_map(|n| n.output.iter().cloned()))
        .collect();
    graph.value_dtypes.retain(|k, _| defined.contains(k));
    if let Some(p) = edit.set_precision {
        graph.precision = p;
    }
    graph.check_wiring()
}

/// Stable topological sort: among ready nodes the earliest in `nodes` goes first.
fn topological_order(nodes: Vec<NodeProto>) -> std::result::Result<Vec<NodeProto>, String> {
    let mut producer: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, node) in nodes.iter().enumerate() {
        for out in node.output.iter().filter(|o| !o.is_empty()) {
            if producer.insert(out, i).is_some() {
                return Err(format!("value `{out}` has two producers"));
            }
        }
    }
    let mut pending = vec![0usize; nodes.len()];
    let mut users: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    for (i, node) in nodes.iter().enumerate() {
        for input in node.input.iter().filter(|s| !s.is_empty()) {
            if let Some(&p) = producer.get(input.as_str()) {
                pending[i] += 1;
                users[p].push(i);
            }
        }
    }
    let mut ready: BTreeSet<usize> = (0..nodes.len()).filter(|&i| pending[i] == 0).collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &u in &users[i] {
            pending[u] -= 1;
            if pending[u] == 0 {
                ready.insert(u);
            }
        }
    }
    if order.len() != nodes.len() {
        return Err("the graph has a cycle".to_string());
    }
    let mut slots: Vec<Option<NodeProto>> = nodes.into_iter().map(Some).collect();
    Ok(order.into_iter().map(|i| slots[i].take().expect("each node should be ordered once")).collect())
}

/// Wraps a generator so its float elements come out converted from `from` to `to`.
fn convert_generator(inner: Generator, from: DType, to: DType) -> Generator {
    Arc::new(move |sink| {
        let mut carry: Vec<u8> = Vec::new();
        let mut out: Vec<u8> = Vec::new();
        inner(&mut |chunk: &[u8]| {
            carry.extend_from_slice(chunk);
            let whole = carry.len() / from.size() * from.size();
            out.clear();
            convert_float_bytes(from, to, &carry[..whole], &mut out)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
            carry.drain(..whole);
            sink(&out)
        })?;
        if !carry.is_empty() {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "generator ended inside an element"));
        }
        Ok(())
    })
}

/// The node index producing each value and the `(node, slot)` uses of each value.
pub(crate) struct Uses<'a> {
    pub producer: BTreeMap<&'a str, usize>,
    pub consumers: BTreeMap<&'a str, Vec<(usize, usize)>>,
}

impl<'a> Uses<'a> {
    pub fn of(graph: &'a OnnxGraph) -> Self {
        let mut producer = BTreeMap::new();
        let mut consumers: BTreeMap<&str, Vec<(usize, usize)>> = BTreeMap::new();
        for (i, node) in graph.nodes.iter().enumerate() {
            for out in &node.output {
                producer.insert(out.as_str(), i);
            }
            for (slot, input) in node.input.iter().enumerate().filter(|(_, s)| !s.is_empty()) {
                consumers.entry(input.as_str()).or_default().push((i, slot));
            }
        }
        Self { producer, consumers }
    }
}

/// The standard pipeline every model export runs: cast to the target precision, prune, then
/// order the outputs' tails for ONNX Runtime's schedule. [`Precision::Int8`] needs the model's
/// linear layers: use [`optimize_int8`].
pub fn optimize(graph: &mut OnnxGraph, precision: Precision) -> Result<()> {
    if precision == Precision::Int8 {
        return Err(Error::Graph {
            graph: graph.name.clone(),
            message: "int8 applies to the DiT's and mT5's linear layers only (osp-export dit|mt5|pipeline)".into(),
        });
    }
    let edit = cast_precision(graph, &CastPrecision { target: precision, ..Default::default() })?;
    apply(graph, edit)?;
    let edit = prune_unused(graph);
    apply(graph, edit)?;
    let edit = schedule_outputs(graph);
    apply(graph, edit)
}

/// [`optimize`] for `precision`, quantizing the linear layers whose weights start with one of
/// `int8_prefixes` when `precision` is [`Precision::Int8`] ([`quantize_int8`]).
pub fn optimize_int8(graph: &mut OnnxGraph, precision: Precision, int8_prefixes: &[String]) -> Result<()> {
    if precision != Precision::Int8 {
        return optimize(graph, precision);
    }
    let opts = QuantizeInt8 { weight_prefixes: int8_prefixes.to_vec() };
    let edit = quantize_int8(graph, &opts)?;
    apply(graph, edit)?;
    let edit = prune_unused(graph);
    apply(graph, edit)?;
    let edit = schedule_outputs(graph);
    apply(graph, edit)
}

#[cfg(test)]
mod tests;
