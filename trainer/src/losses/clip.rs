//! Global gradient-norm clipping over one module's gradients (PyTorch `clip_grad_norm_`).
//!
//! Burn's `GradientClipping::Norm` clips each parameter tensor by its own norm; upstream clips the
//! concatenation of all gradients, which this does.

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;

use super::scalar;

struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    total: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            self.total += scalar(g.square().sum());
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f64,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads.register::<B::InnerBackend, D>(param.id, g.mul_scalar(self.factor));
        }
    }
}

/// L2 norm of all of `module`'s gradients in `grads`, taken together.
pub fn grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(module: &M, grads: &GradientsParams) -> f64 {
    let mut visitor = SquaredNorm { grads, total: 0.0 };
    module.visit(&mut visitor);
    visitor.total.sqrt()
}

/// Scales `grads` so that their joint L2 norm is at most `max_norm` (factor
/// `max_norm / (norm + 1e-6)` when above, as PyTorch). Returns the norm before clipping.
pub fn clip_grad_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> f64 {
    let norm = grad_norm::<B, M>(module, grads);
    let factor = max_norm / (norm + 1e-6);
    if factor < 1.0 {
        module.visit(&mut Scale { grads, factor });
    }
    norm
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::module::Module;
    use burn::tensor::TensorData;

    type A = Autodiff<NdArray<f32>>;

    #[derive(Module, Debug)]
    struct Two<B: burn::tensor::backend::Backend> {
        a: Param<Tensor<B, 1>>,
        b: Param<Tensor<B, 2>>,
    }

    #[test]
    fn clips_the_joint_norm() {
        let device = Default::default();
        let m = Two::<A> {
            a: Param::from_data(TensorData::new(vec![1.0f32, 1.0], [2]), &device),
            b: Param::from_data(TensorData::new(vec![1.0f32], [1, 1]), &device),
        };
        // loss = 3 a0 + 0 a1 + 4 b -> grads (3, 0) and (4): joint norm 5.
        let coef = Tensor::<A, 1>::from_data(TensorData::new(vec![3.0f32, 0.0], [2]), &device);
        let loss = (m.a.val() * coef).sum() + m.b.val().sum().mul_scalar(4.0);
        let mut grads = GradientsParams::from_grads(loss.backward(), &m);
        assert!((grad_norm::<A, _>(&m, &grads) - 5.0).abs() < 1e-6);
        let before = clip_grad_norm::<A, _>(&m, &mut grads, 1.0);
        assert!((before - 5.0).abs() < 1e-6);
        assert!((grad_norm::<A, _>(&m, &grads) - 1.0).abs() < 1e-5);
        let a = grads.get::<NdArray<f32>, 1>(m.a.id).unwrap().into_data().to_vec::<f32>().unwrap();
        assert!((a[0] - 0.6).abs() < 1e-5 && a[1] == 0.0, "{a:?}");
        // Below the bound nothing changes.
        assert!((clip_grad_norm::<A, _>(&m, &mut grads, 10.0) - 1.0).abs() < 1e-5);
        assert!((grad_norm::<A, _>(&m, &grads) - 1.0).abs() < 1e-5);
    }
}
