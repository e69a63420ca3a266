//! WFVAE weights by official (PyTorch) name, read strictly from a trainer [`Checkpoint`].
//!
//! Every tensor the lowering asks for must be present with the shape the config implies; after
//! all graphs are lowered, [`WfvaeWeights::check_all_used`] fails on any checkpoint tensor that no
//! graph used. The Haar wavelet kernels are built in ([`super::haar`]); when a checkpoint carries
//! them (official checkpoints do, as parameters and buffers) they must equal the built-in values.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use burn::backend::NdArray;
use osp_trainer::checkpoint::Checkpoint;
use osp_trainer::models::wfvae::WFVAEModelConfig;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::Normal;

use super::haar;
use crate::error::{Error, Result};
use crate::tensor::HostTensor;

/// Official name -> f32 tensor, with a record of which names the lowering used.
#[derive(Debug)]
pub struct WfvaeWeights {
    tensors: BTreeMap<String, HostTensor>,
    used: RefCell<BTreeSet<String>>,
    /// Derived layouts by name (e.g. folded kernels), made once and shared by every graph.
    derived: RefCell<BTreeMap<String, HostTensor>>,
}

impl WfvaeWeights {
    /// Reads every tensor of `checkpoint` as f32 (f16 and bf16 widen exactly). Built-in Haar
    /// kernels are checked against their fixed values and dropped.
    pub fn from_checkpoint(checkpoint: &Checkpoint) -> Result<Self> {
        let mut tensors = BTreeMap::new();
        for name in checkpoint.names() {
            let snapshot = checkpoint.get(name).expect("a name listed by the checkpoint should be present");
            let read_err = |message: String| {
                Error::Config(format!("checkpoint {}: tensor `{name}`: {message}", checkpoint.path.display()))
            };
            if !snapshot.dtype.is_float() {
                return Err(read_err(format!("must be a float tensor, found {:?}", snapshot.dtype)));
            }
            let shape = snapshot.shape.to_vec();
            let values: Vec<f32> = snapshot
                .to_data()
                .map_err(|e| read_err(format!("{e:?}")))?
                .convert::<f32>()
                .into_vec::<f32>()
                .map_err(|e| read_err(format!("{e:?}")))?;
            if let Some(fixed) = haar::official_fixed_tensor(name) {
                if fixed.shape() != shape.as_slice() {
                    return Err(Error::Shape { key: name.to_string(), expected: fixed.shape().to_vec(), got: shape });
                }
                let builtin = fixed.to_f32()?;
                let max_abs = values.iter().zip(&builtin).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                if max_abs != 0.0 {
                    return Err(read_err(format!(
                        "is a fixed Haar kernel but differs from the built-in value by {max_abs}"
                    )));
                }
                continue;
            }
            tensors.insert(name.to_string(), HostTensor::from_f32(shape, &values)?);
        }
        Ok(Self { tensors, used: RefCell::new(BTreeSet::new()), derived: RefCell::new(BTreeMap::new()) })
    }

    /// Deterministic random weights for every official tensor of the model `cfg` builds (the
    /// built-in Haar kernels aside), for size, memory and speed checks of real-size configs.
    /// Kernels are `N(0, 1 / fan_in)` so activations keep their scale through the layers; norm
    /// weights are 1, other vectors `N(0, 0.02^2)`.
    pub fn random(cfg: &WFVAEModelConfig, seed: u64) -> Result<Self> {
        let model = cfg.init::<NdArray<f32>>(&Default::default())?;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut tensors = BTreeMap::new();
        for (name, shape) in model.official_tensors() {
            if haar::official_fixed_tensor(&name).is_some() {
                continue;
            }
            let numel = shape.iter().product::<usize>();
            let values: Vec<f32> = if shape.len() == 1 && name.contains("norm") && name.ends_with(".weight") {
                vec![1.0; numel]
            } else {
                let std =
                    if shape.len() >= 2 { 1.0 / (shape[1..].iter().product::<usize>() as f32).sqrt() } else { 0.02 };
                let dist = Normal::new(0.0f32, std).expect("a positive std should make a valid normal distribution");
                (0..numel).map(|_| rng.sample(dist)).collect()
            };
            tensors.insert(name, HostTensor::from_f32(shape, &values)?);
        }
        Ok(Self { tensors, used: RefCell::new(BTreeSet::new()), derived: RefCell::new(BTreeMap::new()) })
    }

    /// The tensor `key`, which must have `shape`.
    pub(crate) fn get(&self, key: &str, shape: &[usize]) -> Result<&HostTensor> {
        let t = self
            .tensors
            .get(key)
            .ok_or_else(|| Error::MissingTensor { key: key.to_string(), expected: shape.to_vec() })?;
        if t.shape() != shape {
            return Err(Error::Shape { key: key.to_string(), expected: shape.to_vec(), got: t.shape().to_vec() });
        }
        self.used.borrow_mut().insert(key.to_string());
        Ok(t)
    }

    /// `derive(tensor key)` for the tensor `key` (which must have `shape`), computed once per
    /// `tag` and key; the graphs share the result's bytes.
    pub(crate) fn derived(
        &self,
        key: &str,
        shape: &[usize],
        tag: &str,
        derive: impl FnOnce(&HostTensor) -> Result<HostTensor>,
    ) -> Result<HostTensor> {
        let t = self.get(key, shape)?;
        let id = format!("{tag}:{key}");
        if let Some(d) = self.derived.borrow().get(&id) {
            return Ok(d.clone());
        }
        let d = derive(t)?;
        self.derived.borrow_mut().insert(id, d.clone());
        Ok(d)
    }

    /// Fails on checkpoint tensors that no lowered graph used (strict loading).
    pub fn check_all_used(&self) -> Result<()> {
        let used = self.used.borrow();
        let unused: Vec<String> = self.tensors.keys().filter(|k| !used.contains(*k)).cloned().collect();
        if unused.is_empty() {
            Ok(())
        } else {
            Err(Error::UnexpectedTensors { keys: unused })
        }
    }

    /// Number of (non built-in) tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }
}
