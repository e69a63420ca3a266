//! The DiT's text half, computed once per prompt: two graphs cut out of the `transformer` graph,
//! written beside it (same initializers, stored once by the bundle writer).
//!
//! - `transformer_text`: `encoder_hidden_states` f32 `[b, 1, l, caption_channels]` ->
//!   `transformer_blocks.{i}.attn2.key` and `.value` f32 `[b, l, heads * d_head]` for every block
//!   `i` (the caption projection and each block's cross-attention `to_k` / `to_v`);
//! - `transformer_cached`: `transformer` with those keys and values as inputs instead of
//!   `encoder_hidden_states`: `hidden_states`, `timestep`, `encoder_attention_mask` and the keys
//!   and values -> `sample`.
//!
//! Both are made by cutting the f32 `transformer` graph at the values its `to_k` / `to_v` linear
//! layers produce (`MatMul(caption, Transpose(W))` then `Add(bias)`, see `GraphBuilder::linear`):
//! every node of the pair is a node of `transformer`, so `transformer_text` then
//! `transformer_cached` computes what `transformer` computes, in the same order. The text inputs
//! do not depend on the timestep, so the pipeline runs `transformer_text` once per prompt rather
//! than once per step.

use osp_graphs::{DType, Dim, TensorSpec};

use crate::error::{Error, Result};
use crate::graph::OnnxGraph;
use crate::onnx::NodeProto;
use crate::passes::{self, Edit, Uses};

/// The text graph's name.
pub const TEXT_GRAPH: &str = "transformer_text";
/// The cached-text transformer's name.
pub const CACHED_GRAPH: &str = "transformer_cached";

/// Name of block `i`'s cross-attention key (`"key"`) or value (`"value"`) input / output.
pub fn kv_name(i: usize, which: &str) -> String {
    format!("transformer_blocks.{i}.attn2.{which}")
}

fn cut_error(graph: &OnnxGraph, message: String) -> Error {
    Error::Graph { graph: graph.name.clone(), message: format!("cutting the cached-text graphs: {message}") }
}

/// The value `nn.Linear` `prefix` writes in `graph`: `MatMul(x, Transpose(W))` or `MatMul(x, W)`
/// followed by `Add(_, <prefix>.bias)` when the layer has a bias.
fn linear_output(graph: &OnnxGraph, uses: &Uses<'_>, prefix: &str) -> Result<String> {
    let weight = format!("{prefix}.weight");
    let fail = |why: &str| cut_error(graph, format!("`{prefix}`: {why}"));
    let only = |value: &str| -> Option<&NodeProto> {
        match uses.consumers.get(value).map(Vec::as_slice) {
            Some([(n, _)]) => Some(&graph.nodes[*n]),
            _ => None,
        }
    };
    let op = |n: &NodeProto| n.op_type.clone().unwrap_or_default();
    let mut node = only(&weight).ok_or_else(|| fail("the weight should have one reader"))?;
    if op(node) == "Transpose" {
        node = only(&node.output[0]).ok_or_else(|| fail("the transposed weight should have one reader"))?;
    }
    if op(node) != "MatMul" || node.input.get(1).is_none() {
        return Err(fail(&format!("expected a MatMul, found {}", op(node))));
    }
    let mut out = node.output[0].clone();
    let bias = format!("{prefix}.bias");
    if graph.initializer(&bias).is_some() {
        let add = only(&out).filter(|n| op(n) == "Add" && n.input.contains(&bias));
        out = add.ok_or_else(|| fail("the bias Add should follow the MatMul"))?.output[0].clone();
    }
    Ok(out)
}

/// `(block, "key" | "value", value name in graph)` for every block's cross-attention K and V.
fn kv_values(graph: &OnnxGraph, num_layers: usize) -> Result<Vec<(usize, &'static str, String)>> {
    let uses = Uses::of(graph);
    let mut out = Vec::with_capacity(2 * num_layers);
    for i in 0..num_layers {
        for (which, layer) in [("key", "to_k"), ("value", "to_v")] {
            let value = linear_output(graph, &uses, &format!("transformer_blocks.{i}.attn2.{layer}"))?;
            out.push((i, which, value));
        }
    }
    Ok(out)
}

fn kv_spec(name: String, inner: usize) -> TensorSpec {
    TensorSpec::new(name, DType::F32, [Dim::sym("b"), Dim::sym("l"), inner.into()])
}

/// `transformer_text` and `transformer_cached` cut from the f32 `transformer` graph `full` (before
/// any precision pass) of a DiT with `num_layers` blocks of width `inner` (`heads * d_head`).
pub fn cut_cached_graphs(full: &OnnxGraph, num_layers: usize, inner: usize) -> Result<(OnnxGraph, OnnxGraph)> {
    let kv = kv_values(full, num_layers)?;
    let text_input = "encoder_hidden_states";

    let mut text = full.clone();
    text.name = TEXT_GRAPH.to_string();
    let mut edit = Edit::default();
    text.outputs.clear();
    for (i, which, value) in &kv {
        let name = kv_name(*i, which);
        edit.add_nodes.push(NodeProto {
            name: Some(format!("{name}/output")),
            op_type: Some("Identity".to_string()),
            input: vec![value.clone()],
            output: vec![name.clone()],
            ..Default::default()
        });
        edit.set_dtypes.insert(name.clone(), DType::F32);
        text.outputs.push(kv_spec(name, inner));
    }
    passes::apply(&mut text, edit)?;
    let edit = passes::prune_unused(&text);
    passes::apply(&mut text, edit)?;
    let read: std::collections::BTreeSet<&str> =
        text.nodes.iter().flat_map(|n| n.input.iter().map(String::as_str)).collect();
    let unread: Vec<String> =
        text.inputs.iter().filter(|t| !read.contains(t.name.as_str())).map(|t| t.name.clone()).collect();
    text.inputs.retain(|t| !unread.contains(&t.name));
    unread.iter().for_each(|n| {
        text.value_dtypes.remove(n);
    });
    if text.inputs.iter().map(|t| t.name.as_str()).ne([text_input]) {
        return Err(cut_error(full, format!("the text graph should read only `{text_input}`")));
    }
    text.check_wiring()?;

    let mut cached = full.clone();
    cached.name = CACHED_GRAPH.to_string();
    let renamed: std::collections::BTreeMap<&str, String> =
        kv.iter().map(|(i, which, value)| (value.as_str(), kv_name(*i, which))).collect();
    let mut edit = Edit::default();
    let uses = Uses::of(full);
    for (value, name) in &renamed {
        for &(n, slot) in uses.consumers.get(value).map(Vec::as_slice).unwrap_or(&[]) {
            let node = edit.replace_nodes.entry(n).or_insert_with(|| full.nodes[n].clone());
            node.input[slot] = name.clone();
        }
        edit.set_dtypes.insert(name.clone(), DType::F32);
    }
    for (i, which, _) in &kv {
        cached.inputs.push(kv_spec(kv_name(*i, which), inner));
    }
    passes::apply(&mut cached, edit)?;
    let edit = passes::prune_unused(&cached);
    passes::apply(&mut cached, edit)?;
    if cached.nodes.iter().any(|n| n.input.iter().any(|x| x == text_input)) {
        return Err(cut_error(full, format!("the cached graph still reads `{text_input}`")));
    }
    cached.inputs.retain(|t| t.name != text_input);
    cached.value_dtypes.remove(text_input);
    cached.check_wiring()?;
    Ok((text, cached))
}
