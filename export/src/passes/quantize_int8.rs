//! Rule: weight-and-activation int8 for the token-wise linear layers (`--precision int8`,
//! approximate, opt-in).
//!
//! Every `MatMul(x, W)` whose `W` is a 2-D f32 initializer (or `Transpose(perm = [1, 0])` of one,
//! which is how `GraphBuilder::linear` lowers `nn.Linear`) named under one of
//! [`QuantizeInt8::weight_prefixes`] becomes ONNX Runtime's `com.microsoft.DynamicQuantizeMatMul`:
//! - the weight, as `[K, N]`, is quantized at export, symmetric per output channel:
//!   `scale[n] = max_k |W[k, n]| / 127`, `q = round(W / scale)` in int8 `[-127, 127]`, zero point 0
//!   (`<key>.int8`, `<key>.int8_scale`); an all-zero channel gets scale 1;
//! - the activation is quantized per call by the op (uint8, asymmetric, per tensor), and the
//!   product runs on MLAS's u8s8 kernels (VNNI / AMX where the CPU has them), dequantized to f32.
//!
//! Everything else (attention, norms, softmax, biases, embeddings, the timestep MLP) stays f32. The
//! graph's precision becomes [`Precision::Int8`]; ONNX Runtime only (tract has no such op).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use osp_graphs::{DType, Precision};

use super::{Edit, Uses};
use crate::error::{Error, Result};
use crate::graph::{Initializer, OnnxGraph, TensorData};
use crate::onnx::NodeProto;

/// Options of [`quantize_int8`].
#[derive(Debug, Clone, Default)]
pub struct QuantizeInt8 {
    /// Quantize only weights whose initializer name starts with one of these (PyTorch keys).
    pub weight_prefixes: Vec<String>,
}

/// Largest int8 magnitude used (symmetric range, so `-128` never occurs).
const QMAX: f32 = 127.0;

/// A 2-D f32 weight read by a `MatMul`, and whether the graph transposes it first.
struct Weight<'a> {
    init: &'a Initializer,
    /// `true`: the initializer is `[N, K]` (PyTorch `nn.Linear`) behind a `Transpose`.
    transposed: bool,
}

fn weight_of<'a>(graph: &'a OnnxGraph, uses: &Uses<'_>, value: &str) -> Option<Weight<'a>> {
    let is_f32_2d = |i: &Initializer| i.dtype == DType::F32 && i.dims.len() == 2;
    if let Some(init) = graph.initializer(value).filter(|i| is_f32_2d(i)) {
        return Some(Weight { init, transposed: false });
    }
    let &p = uses.producer.get(value)?;
    let node = &graph.nodes[p];
    if node.op_type.as_deref() != Some("Transpose") || node.domain.as_deref().is_some_and(|d| !d.is_empty()) {
        return None;
    }
    let perm = node.attribute.iter().find(|a| a.name.as_deref() == Some("perm")).map(|a| a.ints.as_slice());
    if !matches!(perm, Some([1, 0]) | None) {
        return None;
    }
    let init = graph.initializer(node.input.first()?).filter(|i| is_f32_2d(i))?;
    Some(Weight { init, transposed: true })
}

fn f32_values(init: &Initializer) -> Result<Vec<f32>> {
    let mut bytes = Vec::with_capacity(init.byte_len());
    init.write_chunks(&mut |chunk: &[u8]| {
        bytes.extend_from_slice(chunk);
        Ok(())
    })
    .map_err(|e| Error::Graph { graph: String::new(), message: format!("reading `{}`: {e}", init.name) })?;
    Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
}

/// Symmetric per-output-channel int8 of `w` as `[K, N]` (row-major) and its `[N]` scales. `w` is
/// `[N, K]` when `transposed`, else `[K, N]`.
pub fn quantize_weight(w: &[f32], dims: [usize; 2], transposed: bool) -> (Vec<i8>, Vec<f32>) {
    let (k, n) = if transposed { (dims[1], dims[0]) } else { (dims[0], dims[1]) };
    let at = |kk: usize, nn: usize| if transposed { w[nn * k + kk] } else { w[kk * n + nn] };
    let scales: Vec<f32> = (0..n)
        .map(|nn| {
            let max = (0..k).fold(0f32, |m, kk| m.max(at(kk, nn).abs()));
            if max > 0.0 && max.is_finite() {
                max / QMAX
            } else {
                1.0
            }
        })
        .collect();
    let mut q = vec![0i8; k * n];
    for kk in 0..k {
        for nn in 0..n {
            q[kk * n + nn] = (at(kk, nn) / scales[nn]).round().clamp(-QMAX, QMAX) as i8;
        }
    }
    (q, scales)
}

/// The edit that turns the selected `MatMul`s of an f32 `graph` into `DynamicQuantizeMatMul`.
pub fn quantize_int8(graph: &OnnxGraph, opts: &QuantizeInt8) -> Result<Edit> {
    if graph.precision != Precision::F32 {
        return Err(Error::Graph {
            graph: graph.name.clone(),
            message: format!("quantize_int8 expects an f32 graph, this one is {}", graph.precision),
        });
    }
    let uses = Uses::of(graph);
    let mut edit = Edit { set_precision: Some(Precision::Int8), ..Default::default() };
    let mut done: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut taken: BTreeSet<String> = graph.nodes.iter().filter_map(|n| n.name.clone()).collect();
    let mut count = 0usize;
    for (i, node) in graph.nodes.iter().enumerate() {
        if node.op_type.as_deref() != Some("MatMul") || node.domain.as_deref().is_some_and(|d| !d.is_empty()) {
            continue;
        }
        let Some(w) = node.input.get(1).and_then(|b| weight_of(graph, &uses, b)) else {
            continue;
        };
        if !opts.weight_prefixes.iter().any(|p| w.init.name.starts_with(p.as_str())) {
            continue;
        }
        let (q_name, s_name) = match done.get(&w.init.name) {
            Some(names) => names.clone(),
            None => {
                let values = f32_values(w.init)?;
                let (q, scales) = quantize_weight(&values, [w.init.dims[0], w.init.dims[1]], w.transposed);
                let (k, n) =
                    if w.transposed { (w.init.dims[1], w.init.dims[0]) } else { (w.init.dims[0], w.init.dims[1]) };
                let names = (format!("{}.int8", w.init.name), format!("{}.int8_scale", w.init.name));
                let q_bytes: Vec<u8> = q.iter().map(|&v| v as u8).collect();
                let s_bytes: Vec<u8> = scales.iter().flat_map(|v| v.to_le_bytes()).collect();
                edit.add_initializers.push(Initializer {
                    name: names.0.clone(),
                    dtype: DType::I8,
                    dims: vec![k, n],
                    data: TensorData::Host(Arc::new(q_bytes)),
                });
                edit.add_initializers.push(Initializer {
                    name: names.1.clone(),
                    dtype: DType::F32,
                    dims: vec![n],
                    data: TensorData::Host(Arc::new(s_bytes)),
                });
                edit.set_dtypes.insert(names.0.clone(), DType::I8);
                edit.set_dtypes.insert(names.1.clone(), DType::F32);
                done.insert(w.init.name.clone(), names.clone());
                names
            }
        };
        let base = node.name.clone().unwrap_or_else(|| format!("matmul_{i}"));
        let mut name = format!("{base}/int8");
        while taken.contains(&name) {
            name.push('_');
        }
        taken.insert(name.clone());
        edit.replace_nodes.insert(
            i,
            NodeProto {
                name: Some(name),
                op_type: Some("DynamicQuantizeMatMul".to_string()),
                domain: Some(crate::MS_DOMAIN.to_string()),
                input: vec![node.input[0].clone(), q_name, s_name],
                output: node.output.clone(),
                ..Default::default()
            },
        );
        count += 1;
    }
    tracing::debug!(graph = %graph.name, matmuls = count, weights = done.len(), "int8 quantization");
    Ok(edit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_round_trip_within_half_a_step_per_channel() {
        // PyTorch [N = 3, K = 4]; channel 2 is all zero.
        let w = [0.5f32, -1.0, 0.25, 0.0, 2.0, 1.0, -2.0, 0.1, 0.0, 0.0, 0.0, 0.0];
        let (q, s) = quantize_weight(&w, [3, 4], true);
        assert_eq!(s, vec![1.0 / QMAX, 2.0 / QMAX, 1.0]);
        assert_eq!(q.len(), 12);
        for kk in 0..4 {
            for nn in 0..3 {
                let back = f32::from(q[kk * 3 + nn]) * s[nn];
                assert!((back - w[nn * 4 + kk]).abs() <= s[nn] / 2.0 + 1e-7, "k {kk} n {nn}");
            }
        }
        assert_eq!(q[1 * 3], -127, "the channel maximum maps to -127");
        let (q2, s2) = quantize_weight(&[0.5, 2.0, 0.0, -1.0, 1.0, 0.0, 0.25, -2.0, 0.0, 0.0, 0.1, 0.0], [4, 3], false);
        assert_eq!((q2, s2), (q, s), "[K, N] and transposed [N, K] agree");
    }
}
