//! PyTorch zip-pickle checkpoints (`torch.save`), read directly by burn-store's pickle reader.
//!
//! Upstream reference for the WFVAE selection rule (`WFVAEModel.init_from_ckpt`):
//! <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/causalvideovae/model/vae/modeling_wfvae.py#L526>

use std::collections::BTreeMap;
use std::path::Path;

use burn::store::TensorSnapshot;
use burn_store::pytorch::PytorchReader;

use super::{renamed, Checkpoint};
use crate::error::{Error, Result};
use crate::remap;

/// Which dictionary of a pickle holds the model weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PytorchSelection {
    /// The official training-checkpoint rule: a non-empty `ema_state_dict` (every `module.`
    /// removed), else `state_dict.gen_model`, else `state_dict`, else the whole file as a plain
    /// state dict (e.g. HF `pytorch_model.bin`).
    Auto,
    /// The whole file is a state dict.
    Whole,
    /// The tensors under this dotted key prefix (e.g. `state_dict` or `state_dict.gen_model`).
    Prefix(String),
}

pub(super) fn read(path: &Path, selection: &PytorchSelection) -> Result<Checkpoint> {
    if !path.is_file() {
        return Err(Error::checkpoint(path, "file not found"));
    }
    let reader = PytorchReader::new(path).map_err(|e| Error::checkpoint(path, e.to_string()))?;
    let all: BTreeMap<String, TensorSnapshot> = reader.into_tensors().into_iter().collect();
    let (source, tensors) = select(all, selection);
    if tensors.is_empty() {
        return Err(Error::checkpoint(path, format!("no tensors under `{source}`")));
    }
    tracing::info!(path = %path.display(), source = %source, tensors = tensors.len(), "read PyTorch checkpoint");
    Ok(Checkpoint { path: path.to_path_buf(), source, tensors })
}

fn under(all: &BTreeMap<String, TensorSnapshot>, prefix: &str) -> BTreeMap<String, TensorSnapshot> {
    let dotted = format!("{prefix}.");
    all.iter().filter_map(|(k, s)| k.strip_prefix(&dotted).map(|rest| (rest.to_string(), s.clone()))).collect()
}

fn select(
    all: BTreeMap<String, TensorSnapshot>,
    selection: &PytorchSelection,
) -> (String, BTreeMap<String, TensorSnapshot>) {
    let (source, picked) = match selection {
        PytorchSelection::Whole => ("<whole file>".to_string(), all),
        PytorchSelection::Prefix(p) => (p.clone(), under(&all, p)),
        PytorchSelection::Auto => {
            let ema = under(&all, "ema_state_dict");
            if !ema.is_empty() {
                let stripped = ema.into_iter().map(|(k, s)| (remap::strip_module_prefix(&k), s)).collect();
                ("ema_state_dict".to_string(), stripped)
            } else {
                let gen = under(&all, "state_dict.gen_model");
                if !gen.is_empty() {
                    ("state_dict.gen_model".to_string(), gen)
                } else {
                    let sd = under(&all, "state_dict");
                    if !sd.is_empty() {
                        ("state_dict".to_string(), sd)
                    } else {
                        ("<whole file>".to_string(), all)
                    }
                }
            }
        }
    };
    let tensors = picked.into_iter().map(|(k, s)| {
        let s = renamed(s, &k);
        (k, s)
    });
    (source, tensors.collect())
}
