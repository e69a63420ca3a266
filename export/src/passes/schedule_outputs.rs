//! Rule: move each graph output's private tail to the end of the node list, the tail whose
//! inputs are ready last first, so that ONNX Runtime's default schedule computes every output as
//! soon as its inputs exist.
//!
//! Hidden constraint: ONNX Runtime's default execution order (`ExecutionOrder::DEFAULT`, the one
//! the C API gives) is a depth-first search backwards from the leaf nodes, run in post-order,
//! starting from the leaf with the highest node index (node indices follow the order of the
//! nodes in the file). A leaf that no later computation reads, such as a streaming decoder's
//! `cache_out.*` slice of a causal-padding concat, is therefore run only once the searches from
//! every higher-indexed leaf are done: after the main output when it sits earlier in the file,
//! that is at the end of the run, and every tensor it reads stays alive until then. In the
//! release WFVAE step graph that kept all 33 padded concats (up to 64 MiB each for a 32x32
//! latent tile) alive at once. With the tails ordered here, the search starts at the output
//! that is ready first and each later search picks up where the previous one stopped, so each
//! state output runs right after the tensor it slices is made.
//!
//! The values and the set of nodes are unchanged; only their order in the file moves.

use std::collections::BTreeSet;

use super::{Edit, Uses};
use crate::graph::OnnxGraph;

/// Moves each output's tail (its producer, and every node all of whose outputs are read only by
/// that tail and are not graph outputs) after every other node, the tails in the reverse of the
/// order in which their inputs are ready (ties: the reverse of the outputs' order).
pub fn schedule_outputs(graph: &OnnxGraph) -> Edit {
    let uses = Uses::of(graph);
    let outputs: BTreeSet<&str> = graph.outputs.iter().map(|t| t.name.as_str()).collect();
    let mut taken = BTreeSet::new();
    // (readiness, position among the outputs, nodes in file order)
    let mut tails: Vec<(Option<usize>, usize, Vec<usize>)> = Vec::new();
    for (pos, out) in graph.outputs.iter().enumerate() {
        let Some(&root) = uses.producer.get(out.name.as_str()) else {
            continue; // a graph input passed straight through
        };
        if !taken.insert(root) {
            continue; // a node with two graph outputs belongs to the first one's tail
        }
        let mut tail = BTreeSet::from([root]);
        let mut stack = vec![root];
        while let Some(node) = stack.pop() {
            for input in graph.nodes[node].input.iter().filter(|s| !s.is_empty()) {
                let Some(&p) = uses.producer.get(input.as_str()) else {
                    continue;
                };
                if tail.contains(&p) || taken.contains(&p) {
                    continue;
                }
                let private = graph.nodes[p].output.iter().all(|v| {
                    !outputs.contains(v.as_str())
                        && uses.consumers.get(v.as_str()).is_none_or(|c| c.iter().all(|(user, _)| tail.contains(user)))
                });
                if private {
                    tail.insert(p);
                    taken.insert(p);
                    stack.push(p);
                }
            }
        }
        let ready = tail
            .iter()
            .flat_map(|&node| graph.nodes[node].input.iter())
            .filter_map(|v| uses.producer.get(v.as_str()))
            .filter(|p| !tail.contains(p))
            .max()
            .copied();
        tails.push((ready, pos, tail.into_iter().collect()));
    }
    // ONNX Runtime runs the tails in the reverse of their file order, so they are written in the
    // reverse of the order they should run in: ready first, then the outputs' order.
    tails.sort_by_key(|&(ready, pos, _)| std::cmp::Reverse((ready, pos)));
    let move_to_end: Vec<usize> = tails.into_iter().flat_map(|(_, _, nodes)| nodes).collect();
    if move_to_end.iter().copied().eq((graph.nodes.len() - move_to_end.len())..graph.nodes.len()) {
        return Edit::default(); // already in place
    }
    Edit { move_to_end, ..Default::default() }
}
