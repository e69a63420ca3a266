//! AdamW exactly as `torch.optim.AdamW` (decoupled weight decay applied before the moment update,
//! bias-corrected moments, `eps` added to `sqrt(v_hat)`), with upstream's flag defaults.
//!
//! The moments are kept per parameter under its Burn module path (stable across runs of the same
//! code), so optimizer state can be saved to safetensors and restored into a freshly built model
//! whose `ParamId`s differ.
// https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/train/train_t2v_diffusers.py#L1116-L1124

use std::collections::BTreeMap;

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// `--adam_beta1`, `--adam_beta2`, `--adam_weight_decay`, `--adam_epsilon`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub weight_decay: f64,
    pub epsilon: f64,
}

impl Default for AdamWConfig {
    /// Upstream's argparse defaults: betas (0.9, 0.999), weight decay 1e-2, epsilon 1e-15.
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, weight_decay: 1e-2, epsilon: 1e-15 }
    }
}

impl AdamWConfig {
    pub fn validate(&self) -> Result<()> {
        let beta_ok = |b: f64| (0.0..1.0).contains(&b);
        if !beta_ok(self.beta1) || !beta_ok(self.beta2) {
            return Err(Error::Config(format!(
                "--adam_beta1/--adam_beta2 must lie in [0, 1), got {} and {}",
                self.beta1, self.beta2
            )));
        }
        if !(self.weight_decay >= 0.0 && self.epsilon > 0.0) {
            return Err(Error::Config(format!(
                "--adam_weight_decay must be >= 0 and --adam_epsilon > 0, got {} and {}",
                self.weight_decay, self.epsilon
            )));
        }
        Ok(())
    }
}

struct Moments<B: Backend> {
    exp_avg: Tensor<B, 1>,
    exp_avg_sq: Tensor<B, 1>,
}

/// AdamW state: the number of updates done and the two moments of every parameter.
pub struct AdamW<B: Backend> {
    pub config: AdamWConfig,
    steps: usize,
    moments: BTreeMap<String, Moments<B>>,
}

impl<B: Backend> AdamW<B> {
    pub fn new(config: AdamWConfig) -> Result<Self> {
        config.validate()?;
        Ok(AdamW { config, steps: 0, moments: BTreeMap::new() })
    }

    /// Updates done so far.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// One update of every parameter of `module` that has a gradient in `grads` (consumed).
    pub fn step<AB, M>(&mut self, module: M, grads: &mut GradientsParams, lr: f64) -> M
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        self.steps += 1;
        let t = self.steps as i32;
        let c = self.config;
        let mut mapper = AdamWMapper::<AB> {
            moments: &mut self.moments,
            grads,
            lr,
            config: c,
            bias_correction1: 1.0 - c.beta1.powi(t),
            bias_correction2_sqrt: (1.0 - c.beta2.powi(t)).sqrt(),
            path: Vec::new(),
        };
        module.map(&mut mapper)
    }

    /// The state as named tensors: `exp_avg.<path>` and `exp_avg_sq.<path>` (flattened).
    pub fn state_tensors(&self) -> Vec<(String, TensorData)> {
        let mut out = Vec::with_capacity(self.moments.len() * 2);
        for (path, m) in &self.moments {
            out.push((format!("exp_avg.{path}"), m.exp_avg.to_data()));
            out.push((format!("exp_avg_sq.{path}"), m.exp_avg_sq.to_data()));
        }
        out
    }

    /// Restores state saved by [`Self::state_tensors`] after `steps` updates, checking each entry
    /// against the parameters of `module` (path and element count).
    pub fn load_state<M: Module<B>>(
        &mut self,
        module: &M,
        steps: usize,
        tensors: &BTreeMap<String, TensorData>,
        device: &B::Device,
    ) -> Result<()> {
        let params = param_paths::<B, M>(module);
        let mut moments = BTreeMap::new();
        for (name, data) in tensors {
            let (kind, path) =
                name.split_once('.').ok_or_else(|| Error::input(name, "unknown optimizer state entry"))?;
            if kind != "exp_avg" && kind != "exp_avg_sq" {
                return Err(Error::input(name, "optimizer state entries are exp_avg.<path> or exp_avg_sq.<path>"));
            }
            let numel = params.get(path).ok_or_else(|| {
                Error::input(name, format!("the model has no parameter `{path}` (optimizer state of another model?)"))
            })?;
            if data.shape.len() != 1 || data.shape[0] != *numel {
                return Err(Error::input(
                    name,
                    format!("has shape {:?}, parameter `{path}` has {numel} elements", data.shape),
                ));
            }
            let tensor = Tensor::<B, 1>::from_data(data.clone(), device);
            let entry = moments.entry(path.to_string()).or_insert((None, None));
            if kind == "exp_avg" {
                entry.0 = Some(tensor);
            } else {
                entry.1 = Some(tensor);
            }
        }
        self.moments = moments
            .into_iter()
            .map(|(path, pair)| match pair {
                (Some(exp_avg), Some(exp_avg_sq)) => Ok((path, Moments { exp_avg, exp_avg_sq })),
                _ => Err(Error::input(path, "optimizer state needs both exp_avg and exp_avg_sq")),
            })
            .collect::<Result<_>>()?;
        self.steps = steps;
        Ok(())
    }
}

struct AdamWMapper<'a, AB: AutodiffBackend> {
    moments: &'a mut BTreeMap<String, Moments<AB::InnerBackend>>,
    grads: &'a mut GradientsParams,
    lr: f64,
    config: AdamWConfig,
    bias_correction1: f64,
    bias_correction2_sqrt: f64,
    path: Vec<String>,
}

impl<AB: AutodiffBackend> ModuleMapper<AB> for AdamWMapper<'_, AB> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<AB, D>>) -> Param<Tensor<AB, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<AB::InnerBackend, D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let require_grad = tensor.is_require_grad();
        let c = self.config;
        let p = tensor.inner();
        let dims = p.dims();
        let n = dims.iter().product::<usize>();
        let g = grad.reshape([n]);
        let key = self.path.join(".");
        let (exp_avg, exp_avg_sq) = match self.moments.remove(&key) {
            Some(m) => (
                m.exp_avg.mul_scalar(c.beta1) + g.clone().mul_scalar(1.0 - c.beta1),
                m.exp_avg_sq.mul_scalar(c.beta2) + g.square().mul_scalar(1.0 - c.beta2),
            ),
            None => (g.clone().mul_scalar(1.0 - c.beta1), g.square().mul_scalar(1.0 - c.beta2)),
        };
        let p = p.reshape([n]).mul_scalar(1.0 - self.lr * c.weight_decay);
        let denom = exp_avg_sq.clone().sqrt().div_scalar(self.bias_correction2_sqrt).add_scalar(c.epsilon);
        let p = p - exp_avg.clone().div(denom).mul_scalar(self.lr / self.bias_correction1);
        self.moments.insert(key, Moments { exp_avg, exp_avg_sq });
        let mut t = Tensor::from_inner(p.reshape(dims));
        if require_grad {
            t = t.require_grad();
        }
        Param::from_mapped_value(id, t, mapper)
    }
}

/// Every float parameter of `module` by Burn module path, with its element count.
pub fn param_paths<B: Backend, M: Module<B>>(module: &M) -> BTreeMap<String, usize> {
    struct Paths {
        path: Vec<String>,
        out: BTreeMap<String, usize>,
    }
    impl<B: Backend> ModuleVisitor<B> for Paths {
        fn enter_module(&mut self, name: &str, _container_type: &str) {
            self.path.push(name.to_string());
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.path.pop();
        }
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            self.out.insert(self.path.join("."), param.val().dims().iter().product());
        }
    }
    let mut v = Paths { path: Vec::new(), out: BTreeMap::new() };
    module.visit(&mut v);
    v.out
}
