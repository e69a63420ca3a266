use std::sync::Arc;

use osp_graphs::{DType, Dim, Precision, TensorSpec};

use super::*;
use crate::builder::GraphBuilder;
use crate::graph::Generator;
use crate::tensor::HostTensor;

fn graph() -> OnnxGraph {
    let mut b = GraphBuilder::new("g");
    let x = b.input(TensorSpec::new("x", DType::F32, [Dim::sym("b"), Dim::Fixed(4)])).unwrap();
    let w = b.initializer("lin.weight", &HostTensor::from_f32(vec![4, 4], &[0.25; 16]).unwrap()).unwrap();
    let nw = b.initializer("norm.weight", &HostTensor::from_f32(vec![4], &[1.0; 4]).unwrap()).unwrap();
    let keep = b.initializer("keep.bias", &HostTensor::from_f32(vec![4], &[0.5; 4]).unwrap()).unwrap();
    let gen: Generator = Arc::new(|sink| {
        for i in 0..4 {
            sink(&(i as f32).to_le_bytes()[..2])?;
            sink(&(i as f32).to_le_bytes()[2..])?;
        }
        Ok(())
    });
    let big = b.generated_initializer("gen.bias", DType::F32, vec![4], gen).unwrap();
    let y = b.linear(&x, &w, Some(&keep)).unwrap();
    let y = b.add(&y, &big).unwrap();
    let y = b.rms_norm(&y, &nw, 1e-6).unwrap();
    let dead = b.sigmoid(&y).unwrap();
    let _ = b.mul(&dead, &dead).unwrap();
    b.output(&y, TensorSpec::new("y", DType::F32, [Dim::sym("b"), Dim::Fixed(4)])).unwrap();
    b.finish().unwrap()
}

#[test]
fn cast_precision_converts_all_but_keep_f32_initializers() {
    for (precision, dtype) in [(Precision::F16, DType::F16), (Precision::Bf16, DType::Bf16)] {
        let mut g = graph();
        let opts = CastPrecision { target: precision, keep_f32: ["keep.bias".to_string()].into() };
        let edit = cast_precision(&g, &opts).unwrap();
        apply(&mut g, edit).unwrap();
        assert_eq!(g.precision, precision);
        for init in g.initializers.iter().filter(|i| i.dtype.is_float()) {
            let expect_f32 = matches!(init.name.as_str(), "keep.bias" | "norm.weight") || init.dims.is_empty();
            if init.dims.is_empty() {
                continue; // rms_norm's eps scalar lives inside the f32 island
            }
            assert_eq!(init.dtype == DType::F32, expect_f32, "{} is {}", init.name, init.dtype);
            if !expect_f32 {
                assert_eq!(init.dtype, dtype);
            }
        }
        let gen = g.initializer("gen.bias").unwrap();
        let mut bytes = Vec::new();
        gen.write_chunks(&mut |c: &[u8]| {
            bytes.extend_from_slice(c);
            Ok(())
        })
        .unwrap();
        let back = HostTensor::new(dtype, vec![4], bytes).unwrap().to_f32().unwrap();
        assert_eq!(back, [0.0, 1.0, 2.0, 3.0]);
        // Graph I/O keep f32: a Cast reads `x` and a Cast writes `y`.
        let casts_from_x = g.nodes.iter().filter(|n| n.op_type.as_deref() == Some("Cast") && n.input[0] == "x").count();
        assert_eq!(casts_from_x, 1);
        let writer = g.nodes.iter().find(|n| n.output.iter().any(|o| o == "y")).unwrap();
        assert_eq!(writer.op_type.as_deref(), Some("Cast"));
        assert_eq!(g.value_dtypes["x"], DType::F32);
        assert_eq!(g.value_dtypes["y"], DType::F32);
        // keep-f32 nodes (rms_norm) still read and write f32.
        for n in g.nodes.iter().filter(|n| g.keep_f32.contains(n.name.as_deref().unwrap())) {
            for v in n.input.iter().chain(&n.output).filter(|v| g.value_dtypes[*v].is_float()) {
                assert_eq!(g.value_dtypes[v], DType::F32, "{v}");
            }
        }
    }
}

#[test]
fn prune_unused_drops_dead_nodes_and_initializers() {
    let mut g = graph();
    let n_before = g.nodes.len();
    let edit = prune_unused(&g);
    assert_eq!(edit.remove_nodes.len(), 2, "the dead Sigmoid and Mul");
    apply(&mut g, edit).unwrap();
    assert_eq!(g.nodes.len(), n_before - 2);
    assert!(!g.nodes.iter().any(|n| n.op_type.as_deref() == Some("Sigmoid")));
    assert!(prune_unused(&g).is_empty());
}

#[test]
fn f32_target_is_a_no_op() {
    let g = graph();
    assert!(cast_precision(&g, &CastPrecision::default()).unwrap().is_empty());
}

/// Two causal-padding concats with a state slice each, then the main output: the shape of a
/// streaming decoder step graph.
fn streaming_graph() -> OnnxGraph {
    let spec = |name: &str| TensorSpec::new(name, DType::F32, [Dim::sym("t")]);
    let mut b = GraphBuilder::new("g");
    let x = b.input(spec("x")).unwrap();
    let cache_a = b.input(spec("cache_in.a")).unwrap();
    let cache_b = b.input(spec("cache_in.b")).unwrap();
    let padded_a = b.concat(&[&cache_a, &x], 0).unwrap();
    let state_a = b.slice(&padded_a, &[-2], &[i64::MAX], &[0], None).unwrap();
    b.output(&state_a, spec("cache_out.a")).unwrap();
    let h = b.sigmoid(&padded_a).unwrap();
    let padded_b = b.concat(&[&cache_b, &h], 0).unwrap();
    let state_b = b.slice(&padded_b, &[-2], &[i64::MAX], &[0], None).unwrap();
    b.output(&state_b, spec("cache_out.b")).unwrap();
    let h = b.sigmoid(&padded_b).unwrap();
    let y = b.mul(&h, &h).unwrap();
    b.output(&y, spec("y")).unwrap();
    b.finish().unwrap()
}

/// ONNX Runtime's default execution order: a post-order depth-first search backwards from the
/// leaves, the highest-indexed leaf first, each node's inputs the lowest-indexed first
/// (`GraphViewer` with `Graph::ReverseDFSFrom` and `NodeCompare`).
fn ort_default_order(g: &OnnxGraph) -> Vec<String> {
    let uses = Uses::of(g);
    let leaves: Vec<usize> = (0..g.nodes.len())
        .filter(|&i| g.nodes[i].output.iter().all(|o| !uses.consumers.contains_key(o.as_str())))
        .collect();
    let mut stack: Vec<(usize, bool)> = leaves.into_iter().map(|i| (i, false)).collect();
    let mut seen = vec![false; g.nodes.len()];
    let mut order = Vec::new();
    while let Some((i, leave)) = stack.pop() {
        if leave {
            order.push(g.nodes[i].name.clone().unwrap());
            continue;
        }
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        stack.push((i, true));
        let mut inputs: Vec<usize> =
            g.nodes[i].input.iter().filter_map(|v| uses.producer.get(v.as_str()).copied()).collect();
        inputs.sort_unstable_by(|a, b| b.cmp(a));
        stack.extend(inputs.into_iter().map(|p| (p, false)));
    }
    order
}

/// The position in `order` of the node writing `value`, looking through the output `Identity`.
fn position(g: &OnnxGraph, order: &[String], value: &str) -> usize {
    let writer = g.nodes.iter().find(|n| n.output.iter().any(|o| o == value)).unwrap();
    order.iter().position(|n| Some(n) == writer.name.as_ref()).unwrap()
}

#[test]
fn schedule_outputs_runs_each_state_slice_right_after_its_concat() {
    let mut g = streaming_graph();
    let order = ort_default_order(&g);
    // As built, both state slices wait for the main output: the first concat outlives its use.
    let first_sigmoid = order.iter().position(|n| n.starts_with("Sigmoid")).unwrap();
    assert!(position(&g, &order, "cache_out.a") > first_sigmoid, "{order:?}");

    let nodes_before: BTreeSet<String> = g.nodes.iter().map(|n| n.name.clone().unwrap()).collect();
    let edit = schedule_outputs(&g);
    apply(&mut g, edit).unwrap();
    let nodes_after: BTreeSet<String> = g.nodes.iter().map(|n| n.name.clone().unwrap()).collect();
    assert_eq!(nodes_before, nodes_after, "the pass only reorders");

    let order = ort_default_order(&g);
    let concat = |k: usize| order.iter().enumerate().filter(|(_, n)| n.starts_with("Concat")).nth(k).unwrap().0;
    let sigmoid = |k: usize| order.iter().enumerate().filter(|(_, n)| n.starts_with("Sigmoid")).nth(k).unwrap().0;
    let (a, b) = (position(&g, &order, "cache_out.a"), position(&g, &order, "cache_out.b"));
    assert!(concat(0) < a && a < sigmoid(0), "state a runs before the main path goes on: {order:?}");
    assert!(concat(1) < b && b < sigmoid(1), "state b runs before the main path goes on: {order:?}");
    assert_eq!(position(&g, &order, "y"), order.len() - 1, "the main output last: {order:?}");
    // Applying the rule again changes nothing.
    assert!(schedule_outputs(&g).is_empty());
}

#[test]
fn schedule_outputs_leaves_a_one_output_graph_alone() {
    let mut g = graph();
    let edit = prune_unused(&g);
    apply(&mut g, edit).unwrap();
    assert!(schedule_outputs(&g).is_empty());
}
