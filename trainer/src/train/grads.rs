//! Whole-model gradient arithmetic on Burn's [`GradientsParams`]: sums (gradient accumulation and
//! data-parallel averaging), scaling, and the global L2 norm clip of torch's
//! `clip_grad_norm_` (upstream `--max_grad_norm`; Burn's own clipping is per parameter).

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;

/// `acc += factor * other` for every parameter of `module` (`other` is consumed).
pub fn accumulate<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    acc: &mut GradientsParams,
    mut other: GradientsParams,
    factor: f64,
) {
    struct Add<'a> {
        acc: &'a mut GradientsParams,
        other: &'a mut GradientsParams,
        factor: f64,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Add<'_> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let Some(g) = self.other.remove::<B::InnerBackend, D>(param.id) else {
                return;
            };
            let g = if self.factor == 1.0 { g } else { g.mul_scalar(self.factor) };
            let sum = match self.acc.remove::<B::InnerBackend, D>(param.id) {
                Some(a) => a + g,
                None => g,
            };
            self.acc.register(param.id, sum);
        }
    }
    module.visit(&mut Add { acc, other: &mut other, factor });
}

/// Multiplies every gradient by `factor`.
pub fn scale<B: AutodiffBackend, M: AutodiffModule<B>>(module: &M, grads: &mut GradientsParams, factor: f64) {
    let mut out = GradientsParams::new();
    accumulate(module, &mut out, std::mem::take(grads), factor);
    *grads = out;
}

/// The L2 norm of all gradients together.
pub fn global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(module: &M, grads: &GradientsParams) -> f64 {
    struct Norm<'a, IB: burn::tensor::backend::Backend> {
        grads: &'a GradientsParams,
        total: Option<Tensor<IB, 1>>,
    }
    impl<B: AutodiffBackend> ModuleVisitor<B> for Norm<'_, B::InnerBackend> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
                let sq = g.square().sum();
                self.total = Some(match self.total.take() {
                    Some(t) => t + sq,
                    None => sq,
                });
            }
        }
    }
    let mut v = Norm::<B::InnerBackend> { grads, total: None };
    module.visit(&mut v);
    v.total.map_or(0.0, |t| t.into_scalar().elem::<f64>().sqrt())
}

/// torch's `clip_grad_norm_(max_norm)`: scales all gradients by `min(1, max_norm / (norm + 1e-6))`;
/// returns the norm before clipping.
pub fn clip_global_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> f64 {
    let norm = global_norm::<B, M>(module, grads);
    clip_to_norm::<B, M>(module, grads, norm, max_norm);
    norm
}

/// [`clip_global_norm`] with the gradients' global norm `norm` already known.
pub fn clip_to_norm<B: AutodiffBackend, M: AutodiffModule<B>>(
    module: &M,
    grads: &mut GradientsParams,
    norm: f64,
    max_norm: f64,
) {
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        scale::<B, M>(module, grads, coef);
    }
}

use burn::tensor::ElementConversion as _;

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, NdArray};
    use burn::module::{Module, Param};
    use burn::tensor::Tensor;
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
        assert!((global_norm::<A, _>(&m, &grads) - 5.0).abs() < 1e-6);
        let before = clip_global_norm::<A, _>(&m, &mut grads, 1.0);
        assert!((before - 5.0).abs() < 1e-6);
        assert!((global_norm::<A, _>(&m, &grads) - 1.0).abs() < 1e-5);
        let a = grads.get::<NdArray<f32>, 1>(m.a.id).unwrap().into_data().to_vec::<f32>().unwrap();
        assert!((a[0] - 0.6).abs() < 1e-5 && a[1] == 0.0, "{a:?}");
        // Below the bound nothing changes.
        assert!((clip_global_norm::<A, _>(&m, &mut grads, 10.0) - 1.0).abs() < 1e-5);
        assert!((global_norm::<A, _>(&m, &grads) - 1.0).abs() < 1e-5);
    }
}
