//! Training checkpoints: `<output_dir>/checkpoint-<step>/`, written into a staging folder and
//! renamed into place (`osp_fs::StagedDir`), so a crash never leaves a half-written checkpoint under
//! a valid name; the staging folders of killed runs are removed when training starts or resumes.
//!
//! Layout (model weights in the official parameter names, loadable by the strict loader and
//! `osp-export`):
//!
//! ```text
//! checkpoint-<step>/
//!   model/<weights file>        official names (e.g. diffusion_pytorch_model.safetensors) + config.json
//!   model_ema/<weights file>    the EMA weights, same names (when EMA is on; the sample script loads these)
//!   optimizer.safetensors       AdamW moments `exp_avg.<burn path>`, `exp_avg_sq.<burn path>`
//!   training_state.json         step, optimizer and EMA counters, RNG state, data position, run config
//! ```
//!
//! `--checkpoints_total_limit` keeps at most that many checkpoints: older ones are removed before
//! a new one is written, as upstream does.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use burn::store::ModuleSnapshot;
use burn::tensor::backend::Backend;
use burn::tensor::TensorData;
use serde::{Deserialize, Serialize};

use super::rng::Rng;
use crate::error::{Error, Result};
use crate::io::write_tensors;
use crate::remap;

/// Everything besides tensors that a resumed run needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingState {
    /// Optimizer updates done (`global_step`).
    pub step: usize,
    /// AdamW update count (equals `step` unless the optimizer was reset).
    pub optimizer_steps: usize,
    /// EMA update count, when EMA is on.
    pub ema_steps: Option<usize>,
    /// The training random generator after `step` updates.
    pub rng: Rng,
    /// Where the data loader stands (owned by the data pipeline).
    pub data_position: serde_json::Value,
    /// The run's settings, for the record.
    pub run_config: serde_json::Value,
    /// Update count of a second optimizer (the WFVAE discriminator's), when the run has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aux_optimizer_steps: Option<usize>,
    /// Dynamic loss scaling's state, when the run uses it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<super::trainer::LossScaleState>,
}

/// What one checkpoint holds, ready to write.
pub struct CheckpointContents<'a> {
    /// File name of the weights inside `model/` and `model_ema/`.
    pub weights_file: &'a str,
    /// The model's upstream `config.json`, written next to the weights.
    pub model_config: Option<&'a serde_json::Value>,
    pub model: Vec<(String, TensorData)>,
    pub ema: Option<Vec<(String, TensorData)>>,
    pub optimizer: Vec<(String, TensorData)>,
    /// Further safetensors files `(path relative to the checkpoint folder, tensors)`, e.g. the
    /// WFVAE discriminator and its optimizer.
    pub extra: Vec<(String, Vec<(String, TensorData)>)>,
    pub state: &'a TrainingState,
}

/// A module's tensors under their official (PyTorch) names, laid out as the official checkpoint.
pub fn official_tensors<B: Backend, M: ModuleSnapshot<B>>(module: &M) -> Result<Vec<(String, TensorData)>> {
    module
        .collect(None, Some(remap::burn_to_official()), remap::SKIP_ENUM_VARIANTS)
        .into_iter()
        .map(|s| {
            let name = s.full_path();
            let data = s.to_data().map_err(|e| Error::input(&name, format!("reading the tensor failed: {e:?}")))?;
            Ok((name, data))
        })
        .collect()
}

/// `checkpoint-<step>` folders of `output_dir` that hold a `training_state.json`, sorted by step.
pub fn list_checkpoints(output_dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
    let mut dirs = checkpoint_dirs(output_dir)?;
    dirs.retain(|(_, dir)| dir.join("training_state.json").is_file());
    Ok(dirs)
}

/// The files every checkpoint of a trainer holds besides `training_state.json`, for the
/// completeness check of [`resolve_resume`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointFiles {
    /// The weights file inside `model/`, and inside `model_ema/` when the state records EMA steps.
    pub weights_file: String,
    /// Further safetensors files (paths relative to the checkpoint folder), e.g. the WFVAE
    /// discriminator and its optimizer.
    pub extra: Vec<String>,
}

impl CheckpointFiles {
    /// `model/<weights_file>`, `optimizer.safetensors` and `extra`.
    pub fn new(weights_file: impl Into<String>, extra: &[&str]) -> Self {
        CheckpointFiles { weights_file: weights_file.into(), extra: extra.iter().map(|s| s.to_string()).collect() }
    }
}

/// `--resume_from_checkpoint`: `latest` or a checkpoint folder.
///
/// `latest` is the newest complete `checkpoint-<step>` of `output_dir` (see [`check_checkpoint`]):
/// a newer one that is incomplete or corrupt is named in a warning with the reason and skipped.
/// `Ok(None)` when `output_dir` has no checkpoint yet; an error naming every checkpoint and its
/// fault when none is complete. A folder named explicitly must itself be complete (no fallback).
pub fn resolve_resume(output_dir: &Path, spec: &str, files: &CheckpointFiles) -> Result<Option<PathBuf>> {
    if spec == "latest" {
        let candidates = checkpoint_dirs(output_dir)?;
        let mut faults = Vec::new();
        for (_, dir) in candidates.iter().rev() {
            match check_checkpoint(dir, files) {
                Ok(_) => return Ok(Some(dir.clone())),
                Err(e) => {
                    tracing::warn!(
                        checkpoint = %dir.display(),
                        reason = %e,
                        "--resume_from_checkpoint latest: this checkpoint is incomplete or corrupt; trying the next older one"
                    );
                    faults.push(format!("{}: {e}", dir.display()));
                }
            }
        }
        if faults.is_empty() {
            return Ok(None);
        }
        return Err(Error::input(
            "--resume_from_checkpoint latest",
            format!(
                "no complete checkpoint in {}:\n  {}\nremove the broken folders to start fresh, or name a checkpoint from elsewhere",
                output_dir.display(),
                faults.join("\n  ")
            ),
        ));
    }
    let path = PathBuf::from(spec);
    let path = if path.is_dir() { path } else { output_dir.join(spec) };
    if !path.is_dir() {
        return Err(Error::input(
            "--resume_from_checkpoint",
            format!("`{spec}` is not a checkpoint folder; use `latest` or a checkpoint-<step> path"),
        ));
    }
    check_checkpoint(&path, files).map_err(|e| {
        Error::input(
            "--resume_from_checkpoint",
            format!(
                "{}: {e} (a checkpoint named explicitly is not replaced by another; pass `latest` to resume from the newest complete one)",
                path.display()
            ),
        )
    })?;
    Ok(Some(path))
}

/// Every `checkpoint-<step>` folder of `output_dir`, complete or not, sorted by step.
fn checkpoint_dirs(output_dir: &Path) -> Result<Vec<(usize, PathBuf)>> {
    if !output_dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(output_dir).map_err(|e| Error::io(output_dir, e))? {
        let entry = entry.map_err(|e| Error::io(output_dir, e))?;
        let name = entry.file_name();
        let Some(step) = name.to_str().and_then(|n| n.strip_prefix("checkpoint-")).and_then(|s| s.parse().ok()) else {
            continue;
        };
        if entry.path().is_dir() {
            out.push((step, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Checks that a checkpoint folder is complete: `training_state.json` parses, and
/// `model/<weights>`, `model_ema/<weights>` (when the state records EMA steps),
/// `optimizer.safetensors` and the extra files exist, each with a well-formed safetensors header
/// whose tensors end exactly at the end of the file (a truncated or emptied file fails). Reads
/// only the headers. Returns the state.
pub fn check_checkpoint(dir: &Path, files: &CheckpointFiles) -> Result<TrainingState> {
    let state = read_state(dir)?;
    let mut required = vec![Path::new("model").join(&files.weights_file)];
    if state.ema_steps.is_some() {
        required.push(Path::new("model_ema").join(&files.weights_file));
    }
    required.push(PathBuf::from("optimizer.safetensors"));
    required.extend(files.extra.iter().map(PathBuf::from));
    for rel in required {
        check_safetensors_header(&dir.join(rel))?;
    }
    Ok(state)
}

/// Reads the header of a safetensors file and checks that its tensors' byte ranges are
/// contiguous, match their dtype and shape, and end at the end of the file.
fn check_safetensors_header(path: &Path) -> Result<()> {
    use std::io::Read;
    let bad = |why: String| Error::checkpoint(path, why);
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut n = [0u8; 8];
    file.read_exact(&mut n).map_err(|_| bad(format!("{len} bytes, too short for a safetensors header")))?;
    let n = u64::from_le_bytes(n);
    if n > 100_000_000 || n > len - 8 {
        return Err(bad(format!("header length field {n} does not fit the {len}-byte file")));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
    let metadata: safetensors::tensor::Metadata =
        serde_json::from_slice(&header).map_err(|e| bad(format!("unreadable safetensors header: {e}")))?;
    let mut end = 0usize;
    for name in metadata.offset_keys() {
        let info = metadata.info(&name).ok_or_else(|| bad(format!("tensor `{name}` has no entry")))?;
        let bytes = info
            .shape
            .iter()
            .try_fold(info.dtype.bitsize(), |acc, &d| acc.checked_mul(d))
            .map(|bits| bits / 8)
            .ok_or_else(|| bad(format!("tensor `{name}`: shape {:?} overflows", info.shape)))?;
        let (s, e) = info.data_offsets;
        if s != end || e < s || e - s != bytes {
            return Err(bad(format!("tensor `{name}`: byte range {s}..{e} does not fit its dtype and shape")));
        }
        end = e;
    }
    if 8 + n + end as u64 != len {
        return Err(bad(format!("the header describes {} bytes, the file has {len} (truncated?)", 8 + n + end as u64)));
    }
    Ok(())
}

/// Writes `checkpoint-<step>` atomically, first removing the oldest checkpoints so that at most
/// `total_limit` remain afterwards. Returns the checkpoint folder.
pub fn save_checkpoint(
    output_dir: &Path,
    contents: &CheckpointContents<'_>,
    total_limit: Option<usize>,
) -> Result<PathBuf> {
    std::fs::create_dir_all(output_dir).map_err(|e| Error::io(output_dir, e))?;
    let step = contents.state.step;
    let final_dir = output_dir.join(format!("checkpoint-{step}"));
    if let Some(limit) = total_limit {
        let existing: Vec<_> = list_checkpoints(output_dir)?.into_iter().filter(|(s, _)| *s != step).collect();
        let remove = (existing.len() + 1).saturating_sub(limit.max(1));
        for (_, dir) in existing.iter().take(remove) {
            tracing::info!(dir = %dir.display(), "removing old checkpoint (--checkpoints_total_limit)");
            osp_fs::remove_dir(dir)?;
        }
    }
    let staged = osp_fs::StagedDir::create(&final_dir)?;
    let tmp = staged.path();
    let write_model = |sub: &str, tensors: &[(String, TensorData)]| -> Result<()> {
        let dir = tmp.join(sub);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        write_tensors(dir.join(contents.weights_file), tensors)?;
        if let Some(config) = contents.model_config {
            write_json(&dir.join("config.json"), config)?;
        }
        Ok(())
    };
    write_model("model", &contents.model)?;
    if let Some(ema) = &contents.ema {
        write_model("model_ema", ema)?;
    }
    write_tensors(tmp.join("optimizer.safetensors"), &contents.optimizer)?;
    for (rel, tensors) in &contents.extra {
        let path = tmp.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        write_tensors(path, tensors)?;
    }
    write_json(&tmp.join("training_state.json"), contents.state)?;
    staged.commit()?;
    tracing::info!(dir = %final_dir.display(), step, "saved checkpoint");
    Ok(final_dir)
}

/// Reads `training_state.json` of a checkpoint folder.
pub fn read_state(dir: &Path) -> Result<TrainingState> {
    let path = dir.join("training_state.json");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Json { path, source: e })
}

/// Reads `optimizer.safetensors` of a checkpoint folder.
pub fn read_optimizer(dir: &Path) -> Result<BTreeMap<String, TensorData>> {
    crate::io::read_tensors(dir.join("optimizer.safetensors"))
}

/// Writes `value` as pretty JSON to `path` atomically (`osp_fs::write_bytes`).
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Json { path: path.to_path_buf(), source: e })?;
    Ok(osp_fs::write_bytes(path, text)?)
}
