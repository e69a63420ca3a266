//! `MT5EncoderModel`: the `shared` token embedding and the encoder [`T5Stack`].
//!
//! Upstream: <https://github.com/huggingface/transformers/blob/v4.44.2/src/transformers/models/mt5/modeling_mt5.py#L1885-L1990>

use std::collections::BTreeSet;

use burn::module::Module;
use burn::nn::Embedding;
use burn::store::TensorSnapshot;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

use super::T5Stack;
use crate::checkpoint::{load_module, Checkpoint, LoadOptions, LoadReport};
use crate::error::{Error, Result};

/// The official key of the token embedding the Burn model holds.
pub const SHARED: &str = "shared.weight";
/// The official key tied to [`SHARED`] (transformers `_tied_weights_keys`).
pub const TIED_EMBED_TOKENS: &str = "encoder.embed_tokens.weight";

#[derive(Module, Debug)]
pub struct MT5EncoderModel<B: Backend> {
    /// `[vocab_size, d_model]`; also the encoder's `embed_tokens` (tied).
    pub shared: Embedding<B>,
    pub encoder: T5Stack<B>,
    pub vocab_size: usize,
}

impl<B: Backend> MT5EncoderModel<B> {
    /// `input_ids` `[b, n]` (ids below `vocab_size`), `attention_mask` `[b, n]` of 0/1 or `None`
    /// (all ones) -> `last_hidden_state` `[b, n, d_model]`. Padded positions are computed too.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
    ) -> Result<Tensor<B, 3>> {
        let [b, n] = input_ids.dims();
        if b == 0 || n == 0 {
            return Err(Error::input("input_ids", format!("must be non-empty [batch, tokens], got [{b}, {n}]")));
        }
        let ids = int_values(input_ids.clone(), "input_ids")?;
        if let Some(bad) = ids.iter().find(|&&i| i < 0 || i as u64 >= self.vocab_size as u64) {
            return Err(Error::input(
                "input_ids",
                format!("id {bad} is outside the embedding table of {} rows", self.vocab_size),
            ));
        }
        if let Some(mask) = &attention_mask {
            if mask.dims() != [b, n] {
                return Err(Error::input(
                    "attention_mask",
                    format!("must have the shape of input_ids [{b}, {n}], got {:?}", mask.dims()),
                ));
            }
            if int_values(mask.clone(), "attention_mask")?.iter().any(|&m| m != 0 && m != 1) {
                return Err(Error::input("attention_mask", "values must be 0 or 1"));
            }
        }
        let inputs_embeds = self.shared.forward(input_ids); // [b, n, d]
        Ok(self.encoder.forward(inputs_embeds, attention_mask))
    }

    /// Loads official weights strictly (see `remap` for the tied embedding rule): every model
    /// tensor must be present once, nothing else may remain.
    pub fn load_official(&mut self, checkpoint: &Checkpoint, options: LoadOptions) -> Result<LoadReport> {
        let checkpoint = untie_embeddings(checkpoint)?;
        load_module(self, &checkpoint, &BTreeSet::new(), options)
    }
}

fn int_values<B: Backend>(t: Tensor<B, 2, Int>, name: &str) -> Result<Vec<i64>> {
    t.into_data().convert::<i64>().to_vec::<i64>().map_err(|e| Error::input(name, format!("{e:?}")))
}

/// Applies the tie `shared.weight` == `encoder.embed_tokens.weight` and drops the decoder half
/// of a full seq2seq release (`decoder.*`, `lm_head.weight`), which `MT5EncoderModel` ignores
/// upstream.
fn untie_embeddings(checkpoint: &Checkpoint) -> Result<Checkpoint> {
    let mut snapshots: Vec<TensorSnapshot> = Vec::with_capacity(checkpoint.len());
    let mut dropped = 0usize;
    for (name, snapshot) in checkpoint.snapshots() {
        if name.starts_with("decoder.") || name == "lm_head.weight" {
            dropped += 1;
        } else if name != TIED_EMBED_TOKENS {
            snapshots.push(snapshot.clone());
        }
    }
    if dropped > 0 {
        tracing::info!(dropped, "ignoring the decoder tensors of a full mT5 checkpoint, as MT5EncoderModel does");
    }
    let mut untied = Checkpoint::from_snapshots(&checkpoint.path, &checkpoint.source, snapshots);
    match (checkpoint.get(SHARED), checkpoint.get(TIED_EMBED_TOKENS)) {
        (Some(shared), Some(tied)) => check_tied(checkpoint, shared, tied)?,
        (None, Some(tied)) => untied.insert(SHARED, tied.clone()),
        (_, None) => {}
    }
    Ok(untied)
}

/// Both tied keys are present: they must be the same tensor, byte for byte.
fn check_tied(checkpoint: &Checkpoint, shared: &TensorSnapshot, tied: &TensorSnapshot) -> Result<()> {
    if shared.shape != tied.shape {
        return Err(Error::ShapeMismatch {
            path: TIED_EMBED_TOKENS.into(),
            expected: shared.shape.to_vec(),
            found: tied.shape.to_vec(),
        });
    }
    if shared.dtype != tied.dtype {
        return Err(Error::DTypeMismatch {
            path: TIED_EMBED_TOKENS.into(),
            expected: format!("{:?}", shared.dtype),
            found: format!("{:?}", tied.dtype),
        });
    }
    let read = |s: &TensorSnapshot, name: &str| -> Result<TensorData> {
        s.to_data().map_err(|e| Error::checkpoint(&checkpoint.path, format!("reading `{name}`: {e:?}")))
    };
    let (a, b) = (read(shared, SHARED)?, read(tied, TIED_EMBED_TOKENS)?);
    if a.as_bytes() != b.as_bytes() {
        let diff = a
            .convert::<f64>()
            .iter::<f64>()
            .zip(b.convert::<f64>().iter::<f64>())
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        return Err(Error::checkpoint(
            &checkpoint.path,
            format!("`{TIED_EMBED_TOKENS}` must equal the tied `{SHARED}`, but differs by up to {diff:e}"),
        ));
    }
    Ok(())
}
