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
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        scale::<B, M>(module, grads, coef);
    }
    norm
}

use burn::tensor::ElementConversion as _;
