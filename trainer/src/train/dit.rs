//! The DiT training objective: a batch of normalised latents with their text states, noised on
//! the host, run through `OpenSoraT2V_v1_3`, scored with the (min-SNR weighted) MSE.
//! Upstream: `train_t2v_diffusers.py` `run()` at commit 9fa322fb.

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::diffusion::{weighted_mse, DdpmSchedule, NoisedBatch};
use super::rng::Rng;
use crate::error::{Error, Result};
use crate::models::opensora_v1_3::OpenSoraT2V_v1_3;

/// One (shard of a) DiT training batch.
#[derive(Debug, Clone)]
pub struct DitBatch {
    pub noised: NoisedBatch,
    /// `[b, 1, l, caption_channels]` text-encoder states.
    pub text: TensorData,
    /// `[b, 1, l]` 0/1 text mask.
    pub text_mask: TensorData,
}

/// Splits a tensor along axis 0 into `n` equal parts.
fn split_rows(data: &TensorData, n: usize, name: &str) -> Result<Vec<TensorData>> {
    let b = data.shape[0];
    if n == 0 || b % n != 0 {
        return Err(Error::input(name, format!("batch of {b} cannot be split into {n} equal shards")));
    }
    let values = data.clone().convert::<f32>().to_vec::<f32>().map_err(|e| Error::input(name, format!("{e:?}")))?;
    let per = values.len() / n;
    let mut shape = data.shape.clone();
    shape[0] = b / n;
    Ok(values.chunks(per).map(|c| TensorData::new(c.to_vec(), shape.clone())).collect())
}

impl DitBatch {
    /// Draws noise and timesteps for `latents` `[b, c, t, h, w]` from `rng` (rank `rank` of `ranks`
    /// for the stratified timesteps).
    pub fn new(
        schedule: &DdpmSchedule,
        rng: &mut Rng,
        latents: TensorData,
        text: TensorData,
        text_mask: TensorData,
    ) -> Result<Self> {
        if latents.shape.len() != 5 {
            return Err(Error::input("latents", format!("must be [b, c, t, h, w], found {:?}", latents.shape)));
        }
        let b = latents.shape[0];
        if text.shape.len() != 4 || text.shape[0] != b || text_mask.shape.to_vec() != [b, 1, text.shape[2]] {
            return Err(Error::input(
                "encoder_hidden_states",
                format!("must be [{b}, 1, l, d] with a [{b}, 1, l] mask, found {:?} and {:?}", text.shape, text_mask.shape),
            ));
        }
        let n = latents.shape.iter().product();
        let noise = TensorData::new(rng.normals(n), latents.shape.clone());
        let timesteps = schedule.sample_timesteps(rng, b, 1, 0);
        Ok(DitBatch { noised: NoisedBatch { latents, noise, timesteps }, text, text_mask })
    }

    pub fn len(&self) -> usize {
        self.noised.timesteps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `n` equal shards along the batch (for data-parallel replicas).
    pub fn shards(&self, n: usize) -> Result<Vec<DitBatch>> {
        let lat = split_rows(&self.noised.latents, n, "latents")?;
        let noise = split_rows(&self.noised.noise, n, "noise")?;
        let text = split_rows(&self.text, n, "encoder_hidden_states")?;
        let mask = split_rows(&self.text_mask, n, "encoder_attention_mask")?;
        let per = self.len() / n;
        Ok((0..n)
            .map(|i| DitBatch {
                noised: NoisedBatch {
                    latents: lat[i].clone(),
                    noise: noise[i].clone(),
                    timesteps: self.noised.timesteps[i * per..(i + 1) * per].to_vec(),
                },
                text: text[i].clone(),
                text_mask: mask[i].clone(),
            })
            .collect())
    }
}

/// The loss of upstream's `run()`.
#[derive(Debug, Clone)]
pub struct DitObjective {
    pub schedule: DdpmSchedule,
    /// `--snr_gamma`.
    pub snr_gamma: Option<f32>,
}

impl DitObjective {
    /// The scalar training loss of `batch` (on the model's device).
    pub fn loss<B: Backend>(&self, model: &OpenSoraT2V_v1_3<B>, batch: &DitBatch) -> Result<Tensor<B, 1>> {
        let device = model.devices().first().cloned().unwrap_or_default();
        let targets = self.schedule.targets::<B>(&batch.noised, self.snr_gamma, &device)?;
        let timestep = Tensor::<B, 1>::from_data(
            TensorData::new(batch.noised.timesteps.iter().map(|&t| t as f32).collect::<Vec<_>>(), [batch.len()]),
            &device,
        );
        let text = Tensor::<B, 4>::from_data(batch.text.clone().convert::<f32>(), &device);
        let mask = Tensor::<B, 3>::from_data(batch.text_mask.clone().convert::<f32>(), &device);
        let pred = model.forward(targets.noisy, timestep, text, None, Some(mask))?;
        Ok(weighted_mse(pred, targets.target, &targets.weights))
    }
}
