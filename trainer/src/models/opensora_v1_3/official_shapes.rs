//! Official names and shapes of a module's tensors without materialising them.
//!
//! `ModuleSnapshot::collect` reads every parameter (`Param::val`), which runs the lazy
//! initialisers: 11 GB of f32 for the 2B DiT. This visitor mirrors burn-store's `Collector`
//! (same path and container stacks, enum variants skipped as [`remap::SKIP_ENUM_VARIANTS`])
//! but takes [`Param::lazy_shape`], then names the tensors through the same
//! [`remap::burn_to_official`] adapter that strict loading uses.

use std::rc::Rc;

use burn::module::{Module, ModuleVisitor, Param};
use burn::store::{TensorSnapshot, TensorSnapshotError};
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, Element, Int, Tensor};

use crate::remap;

struct LazyShapes {
    snapshots: Vec<TensorSnapshot>,
    path_stack: Vec<String>,
    container_stack: Vec<String>,
}

impl LazyShapes {
    fn push(&mut self, id: burn::module::ParamId, shape: burn::tensor::Shape, dtype: burn::tensor::DType) {
        let data_fn = Rc::new(|| -> Result<burn::tensor::TensorData, TensorSnapshotError> {
            Err(TensorSnapshotError::DataError("shape-only snapshot holds no data".into()))
        });
        self.snapshots.push(TensorSnapshot::from_closure(
            data_fn,
            dtype,
            shape,
            self.path_stack.clone(),
            self.container_stack.clone(),
            id,
        ));
    }
}

impl<B: Backend> ModuleVisitor<B> for LazyShapes {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.container_stack.push(container_type.to_string());
        if !remap::SKIP_ENUM_VARIANTS || !container_type.starts_with("Enum:") {
            self.path_stack.push(name.to_string());
        }
    }

    fn exit_module(&mut self, _name: &str, container_type: &str) {
        self.container_stack.pop();
        if !remap::SKIP_ENUM_VARIANTS || !container_type.starts_with("Enum:") {
            self.path_stack.pop();
        }
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        self.push(param.id, param.lazy_shape(), B::FloatElem::dtype());
    }

    fn visit_int<const D: usize>(&mut self, param: &Param<Tensor<B, D, Int>>) {
        self.push(param.id, param.lazy_shape(), B::IntElem::dtype());
    }

    fn visit_bool<const D: usize>(&mut self, param: &Param<Tensor<B, D, Bool>>) {
        self.push(param.id, param.lazy_shape(), B::BoolElem::dtype());
    }
}

/// Every tensor of `module` as `(official name, shape)`, in module order, without
/// initialising any parameter.
pub fn official_shapes<B: Backend, M: Module<B>>(module: &M) -> Vec<(String, Vec<usize>)> {
    let mut visitor = LazyShapes { snapshots: Vec::new(), path_stack: Vec::new(), container_stack: Vec::new() };
    module.visit(&mut visitor);
    let adapter = remap::burn_to_official();
    visitor
        .snapshots
        .iter()
        .map(|s| {
            let s = adapter.adapt(s);
            (s.full_path(), s.shape.to_vec())
        })
        .collect()
}
