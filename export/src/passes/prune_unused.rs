//! Rule: drop nodes and initializers that do not reach a graph output.

use std::collections::BTreeSet;

use super::{Edit, Uses};
use crate::graph::OnnxGraph;

/// Removes every node none of whose outputs reaches a graph output, and every initializer no kept
/// node reads.
pub fn prune_unused(graph: &OnnxGraph) -> Edit {
    let uses = Uses::of(graph);
    let mut live_values: BTreeSet<&str> = graph.outputs.iter().map(|t| t.name.as_str()).collect();
    let mut live_nodes = BTreeSet::new();
    let mut stack: Vec<&str> = live_values.iter().copied().collect();
    while let Some(value) = stack.pop() {
        let Some(&p) = uses.producer.get(value) else {
            continue;
        };
        if live_nodes.insert(p) {
            for input in graph.nodes[p].input.iter().filter(|s| !s.is_empty()) {
                if live_values.insert(input) {
                    stack.push(input);
                }
            }
        }
    }
    let remove_nodes = (0..graph.nodes.len()).filter(|i| !live_nodes.contains(i)).collect();
    let remove_initializers =
        graph.initializers.iter().filter(|i| !live_values.contains(i.name.as_str())).map(|i| i.name.clone()).collect();
    Edit { remove_nodes, remove_initializers, ..Default::default() }
}
