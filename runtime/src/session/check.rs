//! The manifest checks around every graph run: the model's own input and output names when a
//! graph loads, the call's inputs before a run and the produced outputs after it.

use std::collections::BTreeMap;
use std::path::Path;

use osp_graphs::{Dim, GraphSpec, SymbolBindings};

use crate::error::{Error, Result};
use crate::tensor::{input_view, Tensor};

/// Checks `inputs` against the manifest (names, dtypes, ranks, dims, symbols bound consistently)
/// and returns the symbol bindings they make.
pub(super) fn inputs(graph: &str, spec: &GraphSpec, inputs: &[(&str, &Tensor)]) -> Result<SymbolBindings> {
    let views: Vec<_> = inputs.iter().map(|(name, t)| input_view(name, t)).collect();
    Ok(spec.check_inputs(graph, &views)?)
}

/// The model's own input and output names must match the manifest's.
pub(super) fn model_io(
    graph: &str,
    path: &Path,
    spec: &GraphSpec,
    inputs: &[String],
    outputs: &[String],
) -> Result<()> {
    let mismatch = |why: String| Error::ModelMismatch { graph: graph.to_string(), path: path.to_path_buf(), why };
    for (kind, model_names, spec_names) in [
        ("input", inputs, spec.inputs.iter().map(|t| t.name.as_str()).collect::<Vec<_>>()),
        ("output", outputs, spec.outputs.iter().map(|t| t.name.as_str()).collect::<Vec<_>>()),
    ] {
        for name in &spec_names {
            if !model_names.iter().any(|m| m == name) {
                return Err(mismatch(format!(
                    "the manifest names {kind} `{name}`, which the model lacks (model {kind}s: {})",
                    model_names.join(", ")
                )));
            }
        }
        if kind == "input" {
            if let Some(extra) = model_names.iter().find(|m| !spec_names.contains(&m.as_str())) {
                return Err(mismatch(format!("the model has input `{extra}`, which the manifest does not name")));
            }
        }
    }
    Ok(())
}

/// What the output check reads of a produced value (host tensors and resident values).
pub(super) trait Produced {
    fn dtype(&self) -> osp_graphs::DType;
    fn shape(&self) -> &[usize];
    fn describe(&self) -> String;
}

impl Produced for Tensor {
    fn dtype(&self) -> osp_graphs::DType {
        Tensor::dtype(self)
    }
    fn shape(&self) -> &[usize] {
        Tensor::shape(self)
    }
    fn describe(&self) -> String {
        Tensor::describe(self)
    }
}

impl Produced for crate::engine::Resident {
    fn dtype(&self) -> osp_graphs::DType {
        crate::engine::Resident::dtype(self)
    }
    fn shape(&self) -> &[usize] {
        crate::engine::Resident::shape(self)
    }
    fn describe(&self) -> String {
        crate::engine::Resident::describe(self)
    }
}

/// Checks resident `inputs` like [`inputs`].
pub(super) fn resident_inputs(
    graph: &str,
    spec: &GraphSpec,
    inputs: &[(&str, &crate::engine::Resident)],
) -> Result<SymbolBindings> {
    let views: Vec<_> = inputs
        .iter()
        .map(|(name, r)| osp_graphs::manifest::InputView { name, dtype: r.dtype(), shape: r.shape() })
        .collect();
    Ok(spec.check_inputs(graph, &views)?)
}

/// Every manifest output was produced, with its dtype, rank and (where `bindings` determine
/// them) dims.
pub(super) fn outputs<T: Produced>(
    graph: &str,
    spec: &GraphSpec,
    bindings: &SymbolBindings,
    outputs: &BTreeMap<String, T>,
) -> Result<()> {
    for out in &spec.outputs {
        let Some(t) = outputs.get(&out.name) else {
            return Err(Error::MissingOutput {
                graph: graph.to_string(),
                output: out.name.clone(),
                produced: outputs.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        };
        let mismatch = |expected: String| Error::OutputMismatch {
            graph: graph.to_string(),
            output: out.name.clone(),
            expected,
            got: t.describe(),
        };
        if t.dtype() != out.dtype || t.shape().len() != out.dims.len() {
            return Err(mismatch(format!("{} {}", out.dtype, out.dims_string())));
        }
        for (axis, (dim, &got)) in out.dims.iter().zip(t.shape()).enumerate() {
            let want = match dim {
                Dim::Fixed(v) => Some(*v),
                Dim::Symbolic(s) => bindings.get(s).copied(),
            };
            if let Some(want) = want.filter(|&w| w != got) {
                return Err(mismatch(format!("{} {} (dim {axis} = {want})", out.dtype, out.dims_string())));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use osp_graphs::{AttentionKind, DType, Precision, TensorSpec};

    use super::*;

    fn spec() -> GraphSpec {
        GraphSpec {
            file: "g.onnx".into(),
            external_data: vec![],
            inputs: vec![TensorSpec::new("x", DType::F32, [Dim::sym("b"), Dim::Fixed(3)])],
            outputs: vec![TensorSpec::new("y", DType::F32, [Dim::sym("b"), Dim::sym("n")])],
            attention: AttentionKind::None,
            precision: Precision::F32,
            opset: 23,
            metadata: BTreeMap::new(),
        }
    }

    fn out(dtype: DType, shape: &[usize]) -> BTreeMap<String, Tensor> {
        BTreeMap::from([("y".to_string(), Tensor::zeros(dtype, shape).unwrap())])
    }

    #[test]
    fn outputs_are_checked_against_the_input_bindings() {
        let x = Tensor::zeros(DType::F32, &[2, 3]).unwrap();
        let bindings = inputs("g", &spec(), &[("x", &x)]).unwrap();
        // `n` is bound by no input: any length passes; `b` must match the input's.
        outputs("g", &spec(), &bindings, &out(DType::F32, &[2, 7])).unwrap();
        let err = outputs("g", &spec(), &bindings, &out(DType::F32, &[4, 7])).unwrap_err();
        assert!(matches!(&err, Error::OutputMismatch { output, .. } if output == "y"), "{err}");
        assert!(err.to_string().contains("dim 0 = 2"), "{err}");
        let err = outputs("g", &spec(), &bindings, &out(DType::F16, &[2, 7])).unwrap_err();
        assert!(matches!(err, Error::OutputMismatch { .. }), "{err}");
        let err = outputs::<Tensor>("g", &spec(), &bindings, &BTreeMap::new()).unwrap_err();
        assert!(matches!(&err, Error::MissingOutput { output, .. } if output == "y"), "{err}");
        let bad = Tensor::zeros(DType::F32, &[2, 4]).unwrap();
        assert!(inputs("g", &spec(), &[("x", &bad)]).is_err());
    }

    #[test]
    fn model_names_must_match_the_manifest() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let path = Path::new("g.onnx");
        model_io("g", path, &spec(), &names(&["x"]), &names(&["y", "extra"])).unwrap();
        for (ins, outs, why) in [
            (&["z"][..], &["y"][..], "names input `x`, which the model lacks"),
            (&["x", "z"], &["y"], "the model has input `z`"),
            (&["x"], &["z"], "names output `y`, which the model lacks"),
        ] {
            let err = model_io("g", path, &spec(), &names(ins), &names(outs)).unwrap_err();
            assert!(matches!(&err, Error::ModelMismatch { why: w, .. } if w.contains(why)), "{err}");
        }
    }
}
