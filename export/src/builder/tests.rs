use osp_graphs::{AttentionKind, DType, Dim, TensorSpec};
use prost::Message;

use super::*;
use crate::onnx;

fn tiny_graph(kind: AttentionKind) -> crate::graph::OnnxGraph {
    let mut b = GraphBuilder::new("g");
    let x = b.input(TensorSpec::new("x", DType::F32, [Dim::sym("b"), Dim::sym("n"), Dim::Fixed(8)])).unwrap();
    let w = HostTensor::from_f32(vec![8, 8], &(0..64).map(|i| i as f32 * 0.01).collect::<Vec<_>>()).unwrap();
    let w = b.initializer("attn1.to_q.weight", &w).unwrap();
    let q = b.scoped("attn1", |b| b.linear(&x, &w, None)).unwrap();
    let spec = AttentionSpec { kind, num_heads: 2, scale: 0.5 };
    let y = b.attention(&spec, &q, &q, &q, None).unwrap();
    let y = b.gelu_tanh(&y).unwrap();
    b.output(&y, TensorSpec::new("y", DType::F32, [Dim::sym("b"), Dim::sym("n"), Dim::Fixed(8)])).unwrap();
    b.finish().unwrap()
}

#[test]
fn model_proto_round_trips_through_prost() {
    for kind in AttentionKind::FORMS {
        let g = tiny_graph(kind);
        let proto = g.to_model_proto().unwrap();
        let bytes = proto.encode_to_vec();
        let back = onnx::ModelProto::decode(bytes.as_slice()).unwrap();
        assert_eq!(back, proto);
        assert_eq!(back.ir_version, Some(crate::IR_VERSION));
        let domains: Vec<_> =
            back.opset_import.iter().map(|o| (o.domain.clone().unwrap(), o.version.unwrap())).collect();
        let has_ms = domains.contains(&(crate::MS_DOMAIN.to_string(), 1));
        // `Auto` writes this bias-free call as `MultiHeadAttention`
        let ms = matches!(kind, AttentionKind::MsMultiHeadAttention | AttentionKind::Auto);
        assert_eq!(has_ms, ms, "{domains:?}");
        assert!(domains.contains(&(String::new(), 23)));
        let graph = back.graph.unwrap();
        assert_eq!(graph.initializer.iter().filter(|t| t.name.as_deref() == Some("attn1.to_q.weight")).count(), 1);
        let x = &graph.input[0];
        let Some(onnx::type_proto::Value::TensorType(t)) = x.r#type.as_ref().unwrap().value.as_ref() else { panic!() };
        let dims: Vec<_> = t.shape.as_ref().unwrap().dim.iter().map(|d| d.value.clone().unwrap()).collect();
        use onnx::tensor_shape_proto::dimension::Value as V;
        assert_eq!(dims, vec![V::DimParam("b".into()), V::DimParam("n".into()), V::DimValue(8)]);
        let mut names: Vec<_> = graph.node.iter().map(|n| n.name.clone().unwrap()).collect();
        let before = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), before, "node names must be unique");
    }
}

#[test]
fn rejects_bad_usage_with_typed_errors() {
    let mut b = GraphBuilder::new("g");
    let x = b.input(TensorSpec::new("x", DType::F32, [Dim::Fixed(2), Dim::Fixed(3)])).unwrap();
    let i = b.const_i64(&[1, 2, 3]);
    assert!(b.add(&x, &i).unwrap_err().to_string().contains("must share a dtype"));
    let t = HostTensor::from_f32(vec![3], &[1.0, 2.0, 3.0]).unwrap();
    b.initializer("w", &t).unwrap();
    assert!(b.initializer("w", &t).unwrap_err().to_string().contains("already used"));
    assert!(b.input(TensorSpec::new("x", DType::F32, [])).is_err());
    let bad_w = b.initializer("w3", &t).unwrap();
    assert!(b.linear(&x, &bad_w, None).unwrap_err().to_string().contains("must be 2-D"));
    assert!(b.output(&x, TensorSpec::new("y", DType::F16, [Dim::Fixed(2), Dim::Fixed(3)])).is_err());
    let empty = GraphBuilder::new("e");
    assert!(empty.finish().unwrap_err().to_string().contains("no outputs"));
}

#[test]
fn linear_uses_gemm_for_2d_and_matmul_transpose_for_nd() {
    let mut b = GraphBuilder::new("g");
    let x2 = b.input(TensorSpec::new("x2", DType::F32, [Dim::sym("b"), Dim::Fixed(4)])).unwrap();
    let x3 = b.input(TensorSpec::new("x3", DType::F32, [Dim::sym("b"), Dim::sym("n"), Dim::Fixed(4)])).unwrap();
    let w = b.initializer("w", &HostTensor::from_f32(vec![3, 4], &[0.5; 12]).unwrap()).unwrap();
    let y2 = b.linear(&x2, &w, None).unwrap();
    let y3 = b.linear(&x3, &w, None).unwrap();
    b.output(&y2, TensorSpec::new("y2", DType::F32, [Dim::sym("b"), Dim::Fixed(3)])).unwrap();
    b.output(&y3, TensorSpec::new("y3", DType::F32, [Dim::sym("b"), Dim::sym("n"), Dim::Fixed(3)])).unwrap();
    let g = b.finish().unwrap();
    let ops: Vec<_> = g.nodes.iter().map(|n| n.op_type.clone().unwrap()).collect();
    assert_eq!(ops, ["Gemm", "Transpose", "MatMul", "Identity", "Identity"]);
    let gemm = &g.nodes[0];
    assert!(gemm.attribute.iter().any(|a| a.name.as_deref() == Some("transB") && a.i == Some(1)));
    assert_eq!(g.initializer("w").unwrap().dims, vec![3, 4], "the weight keeps the PyTorch layout");
}

/// The attention ops of a graph with one call on `[b, n, 8]` (2 heads): with a key bias `[b, 1, 1, n]`
/// as the bias input, or through [`GraphBuilder::attention_key_bias_channel`].
fn attention_ops(kind: AttentionKind, bias: bool, channel: bool) -> Vec<(String, usize)> {
    let mut b = GraphBuilder::new("g");
    let x = b.input(TensorSpec::new("x", DType::F32, [Dim::sym("b"), Dim::sym("n"), Dim::Fixed(8)])).unwrap();
    let m = b.input(TensorSpec::new("m", DType::F32, [Dim::sym("b"), 1.into(), 1.into(), Dim::sym("n")])).unwrap();
    let spec = AttentionSpec { kind, num_heads: 2, scale: 0.5 };
    let y = match (bias, channel) {
        (true, true) => b.attention_key_bias_channel(&spec, &x, &x, &x, &m).unwrap(),
        (true, false) => b.attention(&spec, &x, &x, &x, Some(&m)).unwrap(),
        (false, _) => b.attention(&spec, &x, &x, &x, None).unwrap(),
    };
    b.output(&y, TensorSpec::new("y", DType::F32, [Dim::sym("b"), Dim::sym("n"), Dim::Fixed(8)])).unwrap();
    let g = b.finish().unwrap();
    g.nodes
        .iter()
        .filter(|n| matches!(n.op_type.as_deref(), Some("Attention" | "MultiHeadAttention" | "Softmax")))
        .map(|n| (n.op_type.clone().unwrap(), n.input.iter().filter(|i| !i.is_empty()).count()))
        .collect()
}

#[test]
fn auto_attention_is_multi_head_attention_without_a_bias_and_onnx_attention_with_one() {
    let ms = |inputs| vec![("MultiHeadAttention".to_string(), inputs)];
    let onnx = |inputs| vec![("Attention".to_string(), inputs)];
    assert_eq!(attention_ops(AttentionKind::Auto, false, false), ms(3));
    assert_eq!(attention_ops(AttentionKind::Auto, true, false), onnx(4));
    // the key bias in a channel: a bias-free call, so `Auto` reaches the flash path
    assert_eq!(attention_ops(AttentionKind::Auto, true, true), ms(3));
    assert_eq!(attention_ops(AttentionKind::OnnxAttention, true, true), onnx(3));
    assert_eq!(attention_ops(AttentionKind::Decomposed, true, true), vec![("Softmax".to_string(), 1)]);
}

#[test]
fn key_bias_channel_rejects_a_bias_that_is_not_4d() {
    let mut b = GraphBuilder::new("g");
    let x = b.input(TensorSpec::new("x", DType::F32, [Dim::sym("b"), Dim::sym("n"), Dim::Fixed(8)])).unwrap();
    let m = b.input(TensorSpec::new("m", DType::F32, [Dim::sym("b"), Dim::sym("n")])).unwrap();
    let spec = AttentionSpec { kind: AttentionKind::Auto, num_heads: 2, scale: 0.5 };
    let err = b.attention_key_bias_channel(&spec, &x, &x, &x, &m).unwrap_err().to_string();
    assert!(err.contains("must be 4-D"), "{err}");
}
