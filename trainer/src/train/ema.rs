//! Exponential moving average of a model's weights, as diffusers' `EMAModel` (upstream
//! `--use_ema --ema_decay --ema_start_step`): after every optimizer update `s -= (1 - d) (s - p)`
//! with `d = clamp((1 + k) / (10 + k), min_decay, decay)`, `k = updates - update_after_step - 1`,
//! and `d = 0` (a copy) while `k <= 0`.
// https://github.com/huggingface/diffusers/blob/v0.30.2/src/diffusers/training_utils.py#L286-L420

use std::collections::HashMap;

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

/// EMA settings (diffusers defaults besides `decay`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EmaConfig {
    /// `--ema_decay` (0.9999 in the v1.3 script).
    pub decay: f64,
    /// `--ema_start_step`: updates before the average starts to lag.
    pub update_after_step: usize,
    pub min_decay: f64,
    /// Use `1 - (1 + k / inv_gamma)^-power` instead of `(1 + k) / (10 + k)`.
    pub use_ema_warmup: bool,
    pub inv_gamma: f64,
    pub power: f64,
}

impl Default for EmaConfig {
    fn default() -> Self {
        EmaConfig {
            decay: 0.9999,
            update_after_step: 0,
            min_decay: 0.0,
            use_ema_warmup: false,
            inv_gamma: 1.0,
            power: 2.0 / 3.0,
        }
    }
}

impl EmaConfig {
    /// The decay used at update number `optimization_step` (1-based, as diffusers counts).
    pub fn decay_at(&self, optimization_step: usize) -> f64 {
        let k = optimization_step as f64 - self.update_after_step as f64 - 1.0;
        if k <= 0.0 {
            return 0.0;
        }
        let d = if self.use_ema_warmup {
            1.0 - (1.0 + k / self.inv_gamma).powf(-self.power)
        } else {
            (1.0 + k) / (10.0 + k)
        };
        d.min(self.decay).max(self.min_decay)
    }
}

/// The averaged weights (a module of the inner, non-autodiff backend) and the update count.
pub struct Ema<B: Backend, M: Module<B>> {
    pub config: EmaConfig,
    pub module: M,
    pub optimization_step: usize,
    _backend: std::marker::PhantomData<B>,
}

impl<B: Backend, M: Module<B>> Ema<B, M> {
    /// Starts from a copy of the current weights (`model.valid()`); parameter ids are shared with
    /// the trained model, which is how [`Self::update`] pairs the tensors.
    pub fn new(config: EmaConfig, module: M) -> Self {
        Ema { config, module, optimization_step: 0, _backend: std::marker::PhantomData }
    }

    /// One EMA step towards the current weights of `model`.
    pub fn update<AB, TM>(&mut self, model: &TM)
    where
        AB: AutodiffBackend<InnerBackend = B>,
        TM: AutodiffModule<AB, InnerModule = M>,
    {
        self.optimization_step += 1;
        let decay = self.config.decay_at(self.optimization_step);
        let mut current = Collect::<B> { out: HashMap::new() };
        model.valid().visit(&mut current);
        let module = std::mem::replace(&mut self.module, model.valid());
        self.module = module.map(&mut Lerp::<B> { current: current.out, one_minus_decay: 1.0 - decay });
    }
}

struct Collect<B: Backend> {
    out: HashMap<ParamId, Tensor<B, 1>>,
}

impl<B: Backend> ModuleVisitor<B> for Collect<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let t = param.val();
        let n = t.dims().iter().product::<usize>();
        self.out.insert(param.id, t.reshape([n]));
    }
}

struct Lerp<B: Backend> {
    current: HashMap<ParamId, Tensor<B, 1>>,
    one_minus_decay: f64,
}

impl<B: Backend> ModuleMapper<B> for Lerp<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, shadow, mapper) = param.consume();
        let Some(p) = self.current.remove(&id) else {
            return Param::from_mapped_value(id, shadow, mapper);
        };
        let p = p.reshape(shadow.dims());
        let out = if self.one_minus_decay == 1.0 {
            p
        } else {
            shadow.clone() - (shadow - p).mul_scalar(self.one_minus_decay)
        };
        Param::from_mapped_value(id, out, mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decay_follows_diffusers() {
        let c = EmaConfig { decay: 0.9999, update_after_step: 0, ..Default::default() };
        assert_eq!(c.decay_at(1), 0.0);
        assert_eq!(c.decay_at(2), 2.0 / 11.0);
        assert_eq!(c.decay_at(100_000), 0.9999);
        let late = EmaConfig { update_after_step: 5, ..c };
        assert_eq!(late.decay_at(6), 0.0);
        assert_eq!(late.decay_at(7), 2.0 / 11.0);
    }
}
