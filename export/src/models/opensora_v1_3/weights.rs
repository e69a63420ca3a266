//! The DiT's weights, keyed by the official diffusers names (`transformer_blocks.0.attn1.to_q.weight`),
//! strictly checked against the names and shapes the Burn model (`osp_trainer`) derives from the
//! config: no missing, extra or mis-shaped tensor.
//!
//! Weights are held in host memory as f32 (the release model is 11 GB); the bundle writer streams
//! them to external data and `cast_precision` converts them while streaming.

use std::collections::BTreeMap;
use std::path::Path;

use burn::backend::NdArray;
use osp_graphs::DType;
use osp_trainer::checkpoint::Checkpoint;
use osp_trainer::models::opensora_v1_3::{Dims, OpenSoraT2V_v1_3Config};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::Normal;
use tracing::info;

use crate::error::{Error, Result};
use crate::tensor::{HostTensor, Weights};

/// Validated DiT weights (f32) with the config's derived sizes.
#[derive(Debug, Clone, PartialEq)]
pub struct DitWeights {
    weights: Weights,
    dims: Dims,
}

/// Every official tensor name of the model `config` builds, with its shape, in module order.
/// Nothing is allocated (Burn parameters stay lazy).
pub fn expected_shapes(config: &OpenSoraT2V_v1_3Config) -> Result<Vec<(String, Vec<usize>)>> {
    let model = config.init::<NdArray<f32>>(&Default::default())?;
    Ok(model.official_tensors())
}

impl DitWeights {
    /// Strict: every expected name present with its exact shape (any float dtype, converted to f32),
    /// and no other name.
    pub fn from_weights(config: &OpenSoraT2V_v1_3Config, weights: Weights) -> Result<Self> {
        let dims = config.validate()?;
        let expected = expected_shapes(config)?;
        let mut out = Weights::new();
        for (key, shape) in &expected {
            let t =
                weights.get(key).ok_or_else(|| Error::MissingTensor { key: key.clone(), expected: shape.clone() })?;
            if t.shape() != shape.as_slice() {
                return Err(Error::Shape { key: key.clone(), expected: shape.clone(), got: t.shape().to_vec() });
            }
            if !matches!(t.dtype(), DType::F32 | DType::F16 | DType::Bf16) {
                return Err(Error::TensorDType { key: key.clone(), expected: DType::F32, got: t.dtype() });
            }
            out.insert(key.clone(), t.cast_float(DType::F32)?);
        }
        let known: BTreeMap<&str, ()> = expected.iter().map(|(k, _)| (k.as_str(), ())).collect();
        let unexpected: Vec<String> = weights.keys().filter(|k| !known.contains_key(k)).map(str::to_string).collect();
        if !unexpected.is_empty() {
            return Err(Error::UnexpectedTensors { keys: unexpected });
        }
        Ok(Self { weights: out, dims })
    }

    /// Reads a checkpoint through `osp_trainer::checkpoint::Checkpoint` (single or sharded
    /// safetensors, PyTorch pickles) and checks it strictly.
    pub fn load(config: &OpenSoraT2V_v1_3Config, path: &Path) -> Result<Self> {
        let checkpoint = Checkpoint::open(path)?;
        let mut weights = Weights::new();
        for name in checkpoint.names() {
            let snapshot = checkpoint.get(name).expect("a listed checkpoint name should resolve");
            let data = snapshot
                .to_data()
                .map_err(|e| Error::Config(format!("{}: reading tensor `{name}`: {e}", path.display())))?;
            let shape = data.shape.to_vec();
            let values = data
                .convert::<f32>()
                .into_vec::<f32>()
                .map_err(|e| Error::Config(format!("{}: tensor `{name}` as f32: {e:?}", path.display())))?;
            weights.insert(name, HostTensor::from_f32(shape, &values)?);
        }
        info!(path = %path.display(), tensors = weights.len(), "read DiT checkpoint");
        Self::from_weights(config, weights)
    }

    /// Deterministic random weights: matrices and convolutions ~ N(0, 1/sqrt(fan_in)), vectors
    /// ~ N(0, 0.02), `scale_shift_table`s ~ N(0, 1/sqrt(hidden_size)) (the upstream init).
    pub fn random(config: &OpenSoraT2V_v1_3Config, seed: u64) -> Result<Self> {
        let dims = config.validate()?;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut weights = Weights::new();
        for (key, shape) in expected_shapes(config)? {
            let std = if key.ends_with("scale_shift_table") {
                1.0 / (dims.hidden_size as f32).sqrt()
            } else if shape.len() >= 2 {
                1.0 / (shape[1..].iter().product::<usize>() as f32).sqrt()
            } else {
                0.02
            };
            let dist = Normal::new(0.0f32, std).expect("a positive std should make a valid normal distribution");
            let values: Vec<f32> = (0..shape.iter().product::<usize>()).map(|_| rng.sample(dist)).collect();
            weights.insert(key, HostTensor::from_f32(shape, &values)?);
        }
        Ok(Self { weights, dims })
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        self.weights.save_safetensors(path)
    }

    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    pub fn dims(&self) -> Dims {
        self.dims
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.weights.get(key).is_some()
    }

    pub(crate) fn tensor(&self, key: &str) -> Result<&HostTensor> {
        self.weights.get(key).ok_or_else(|| Error::MissingTensor { key: key.to_string(), expected: vec![] })
    }
}
