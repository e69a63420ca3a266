//! The tract engine: a pure-Rust CPU engine (the `tract` feature).
//!
//! The ONNX file is parsed once (by path, so external-data files next to it are found). Graphs with
//! symbolic dims are concretized per set of input shapes: the inference model is given concrete
//! input facts, optimized, and the runnable plan is cached under those shapes. Threads come from a
//! tract-linalg multithread executor owned by the session.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use half::f16;
use tract_linalg::multithread::Executor;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::runtime::RunOptions;

use super::{Engine, Value};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// A parsed model plus the optimized plans built so far, keyed by the input shapes (model order).
pub struct TractGraph {
    path: PathBuf,
    model: InferenceModel,
    input_names: Vec<String>,
    output_names: Vec<String>,
    executor: Executor,
    plans: HashMap<Vec<Vec<usize>>, Arc<TypedRunnableModel>>,
}

impl TractGraph {
    /// Parses the model at `path`. `threads`: `None` uses all available cores.
    pub fn load(graph: &str, path: &Path, threads: Option<usize>) -> Result<Self> {
        let model_err = |e: TractError| Error::ModelLoad { path: path.to_path_buf(), source: e.into() };
        if let Err(why) = osp_graphs::path::require_file(path) {
            return Err(Error::ModelLoad {
                path: path.to_path_buf(),
                source: format!("{why} (graph `{graph}`)").into(),
            });
        }
        let model = tract_onnx::onnx().model_for_path(path).map_err(model_err)?;
        let name_of = |outlet: OutletId| -> String {
            model.outlet_label(outlet).map(str::to_string).unwrap_or_else(|| model.node(outlet.node).name.clone())
        };
        let input_names = model.input_outlets().map_err(model_err)?.iter().map(|o| name_of(*o)).collect();
        let output_names = model.output_outlets().map_err(model_err)?.iter().map(|o| name_of(*o)).collect();
        let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
        let executor = if threads > 1 { Executor::multithread(threads) } else { Executor::SingleThread };
        Ok(Self { path: path.to_path_buf(), model, input_names, output_names, executor, plans: HashMap::new() })
    }

    pub fn input_names(&self) -> &[String] {
        &self.input_names
    }

    pub fn output_names(&self) -> &[String] {
        &self.output_names
    }

    /// How many concretized plans are cached.
    pub fn cached_plans(&self) -> usize {
        self.plans.len()
    }

    /// Runs on `inputs` (already checked against the manifest; any order).
    pub fn run(&mut self, graph: &str, inputs: &[(&str, &Tensor)]) -> Result<BTreeMap<String, Tensor>> {
        let run_err = |e: TractError| Error::Run { graph: graph.to_string(), source: e.into() };
        let ordered: Vec<&Tensor> = self
            .input_names
            .iter()
            .map(|name| {
                inputs.iter().find(|(n, _)| n == name).map(|(_, t)| *t).ok_or_else(|| Error::ModelMismatch {
                    graph: graph.to_string(),
                    path: self.path.clone(),
                    why: format!("model input `{name}` was not given"),
                })
            })
            .collect::<Result<_>>()?;
        let values: Vec<tract_onnx::prelude::Tensor> =
            ordered.iter().zip(&self.input_names).map(|(t, name)| to_tract(graph, name, t)).collect::<Result<_>>()?;
        for (ix, (t, name)) in values.iter().zip(&self.input_names).enumerate() {
            self.check_declared(graph, ix, name, t.shape())?;
        }
        let key: Vec<Vec<usize>> = values.iter().map(|t| t.shape().to_vec()).collect();
        let plan = match self.plans.get(&key) {
            Some(plan) => plan.clone(),
            None => {
                let _span = tracing::info_span!("tract_optimize", graph, shapes = ?key).entered();
                let mut model = self.model.clone();
                for (ix, t) in values.iter().enumerate() {
                    model.set_input_fact(ix, InferenceFact::dt_shape(t.datum_type(), t.shape())).map_err(run_err)?;
                }
                let options = RunOptions { executor: Some(self.executor.clone()), ..Default::default() };
                let plan =
                    model.into_optimized().map_err(run_err)?.into_runnable_with_options(&options).map_err(run_err)?;
                tracing::info!(graph, shapes = ?key, "tract plan optimized for new input shapes");
                self.plans.insert(key, plan.clone());
                plan
            }
        };
        let values: TVec<TValue> = values.into_iter().map(TValue::from).collect();
        let outputs = plan.run(values).map_err(run_err)?;
        let mut result = BTreeMap::new();
        for (name, value) in self.output_names.iter().zip(outputs) {
            result.insert(name.clone(), from_tract(graph, name, value.into_tensor())?);
        }
        Ok(result)
    }
}

impl TractGraph {
    /// Checks a shape against the rank and the fixed dims the model declares for input `ix`:
    /// tract does not check input shapes itself, and a tensor of another rank (a manifest that
    /// disagrees with its graph) can make it panic or loop.
    fn check_declared(&self, graph: &str, ix: usize, name: &str, shape: &[usize]) -> Result<()> {
        use tract_onnx::tract_hir::infer::Factoid;
        let fact = self.model.input_fact(ix).map_err(|e| Error::Run { graph: graph.to_string(), source: e.into() })?;
        let mismatch = |declared: String| Error::ModelMismatch {
            graph: graph.to_string(),
            path: self.path.clone(),
            why: format!("input `{name}` has shape {shape:?}, the model declares {declared}"),
        };
        let Some(rank) = fact.shape.rank().concretize() else { return Ok(()) };
        if rank != shape.len() as i64 {
            return Err(mismatch(format!("rank {rank}")));
        }
        for (axis, dim) in fact.shape.dims().enumerate() {
            if let Some(d) = dim.concretize().and_then(|d| d.to_i64().ok()) {
                if d != shape[axis] as i64 {
                    return Err(mismatch(format!("dim {axis} = {d}")));
                }
            }
        }
        Ok(())
    }
}

impl Engine for TractGraph {
    fn input_names(&self) -> Vec<String> {
        self.input_names.clone()
    }

    fn output_names(&self) -> Vec<String> {
        self.output_names.clone()
    }

    fn run(&mut self, graph: &str, inputs: &[(&str, &Value)]) -> Result<BTreeMap<String, Value>> {
        TractGraph::run(self, graph, inputs)
    }

    fn end_profiling(&mut self, graph: &str) -> Result<PathBuf> {
        Err(profiling_refused(graph))
    }
}

/// Profiling is an ONNX Runtime feature: tract sessions refuse it.
pub(crate) fn profiling_refused(graph: &str) -> Error {
    Error::BackendUnavailable {
        backend: "tract".into(),
        why: format!("graph `{graph}`: profiling is an ONNX Runtime feature; use an ort backend to profile"),
    }
}

fn to_tract(graph: &str, name: &str, t: &Tensor) -> Result<tract_onnx::prelude::Tensor> {
    Ok(match t {
        Tensor::F32(a) => a.clone().into(),
        Tensor::F16(a) => a.clone().into(),
        Tensor::I64(a) => a.clone().into(),
        Tensor::I32(a) => a.clone().into(),
        Tensor::U8(a) => a.clone().into(),
        Tensor::Bool(a) => a.clone().into(),
        Tensor::Bf16(_) => {
            return Err(Error::unsupported(format!("tract backend, graph `{graph}` input `{name}`"), t.dtype()))
        }
    })
}

fn from_tract(graph: &str, name: &str, t: tract_onnx::prelude::Tensor) -> Result<Tensor> {
    let dt = t.datum_type();
    let run_err = |e: TractError| Error::Run { graph: graph.to_string(), source: e.into() };
    Ok(if dt == f32::datum_type() {
        Tensor::F32(t.into_plain_array::<f32>().map_err(run_err)?)
    } else if dt == f16::datum_type() {
        Tensor::F16(t.into_plain_array::<f16>().map_err(run_err)?)
    } else if dt == i64::datum_type() {
        Tensor::I64(t.into_plain_array::<i64>().map_err(run_err)?)
    } else if dt == i32::datum_type() {
        Tensor::I32(t.into_plain_array::<i32>().map_err(run_err)?)
    } else if dt == u8::datum_type() {
        Tensor::U8(t.into_plain_array::<u8>().map_err(run_err)?)
    } else if dt == bool::datum_type() {
        Tensor::Bool(t.into_plain_array::<bool>().map_err(run_err)?)
    } else {
        return Err(Error::UnsupportedDtype {
            context: format!("tract backend, graph `{graph}` output `{name}`"),
            dtype: format!("{dt:?}"),
        });
    })
}

#[cfg(test)]
mod tests {
    use ndarray::{ArrayD, IxDyn};

    use super::*;

    #[test]
    fn plans_are_cached_per_input_shape_set() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bundle/add.onnx");
        let mut g = TractGraph::load("add", &path, Some(2)).unwrap();
        assert_eq!(g.input_names(), ["x"]);
        assert_eq!(g.output_names(), ["y"]);
        for (shape, plans) in [([2, 3], 1), ([4, 1], 2), ([2, 3], 2)] {
            let x = Tensor::F32(ArrayD::from_elem(IxDyn(&shape), 2.0));
            let y = g.run("add", &[("x", &x)]).unwrap();
            assert_eq!(y["y"], Tensor::F32(ArrayD::from_elem(IxDyn(&shape), 3.0)));
            assert_eq!(g.cached_plans(), plans);
        }
    }
}
