//! The text-to-video pipeline bundle (`osp_graphs::pipeline`): the mT5 text encoder with its
//! tokenizer, the OpenSoraT2V v1.3 transformer and WFVAE (whole and streaming decoders), each
//! exported by its own lowering into a sub-bundle, plus `pipeline.json` (scheduler config and
//! sampling defaults).
//!
//! Two source layouts ([`PipelineSources`]):
//! - a flat folder (the layout of `reference/e2e/`): `{text_encoder,transformer,vae}_config.json`,
//!   `{text_encoder,transformer,vae}.safetensors`, `tokenizer.json` (or `spiece.model`) and
//!   `scheduler_config.json`;
//! - the released folders: the transformer (`config.json` + diffusers safetensors, sharded with an
//!   index or single), the VAE (`config.json` + a `.ckpt` / `.safetensors`) and the Hugging Face
//!   mT5 folder (`config.json`, weights, `tokenizer.json` or `spiece.model`); the scheduler is the
//!   one upstream `sample.py` builds for the release command unless a `scheduler_config.json` is given.
//!
//! The cross-component rules ([`osp_graphs::check_models`]) are checked on the configs before any
//! weight is read, and again on the written manifests. Everything is written into a staging folder
//! (`osp_fs::StagedDir`) and renamed into place at the end.
//!
//! `osp-export pipeline --from-dir reference/e2e --out e2e.pipeline`

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use osp_graphs::pipeline::{PipelineComponents, PipelineDefaults, PipelineManifest, PIPELINE_FORMAT_VERSION};
use osp_graphs::{check_components, check_models, BundleManifest, ModelSpec, PIPELINE_FILE};
use osp_trainer::models::opensora_v1_3::OpenSoraT2V_v1_3Config;
use osp_trainer::models::wfvae::WFVAEModelConfig;
use tracing::info;

use crate::bundle::provenance;
use crate::error::{Error, Result};
use crate::models::mt5::{export_mt5, manifest_config, MT5Config, Mt5ExportOptions, Mt5Weights};
use crate::models::opensora_v1_3::{export_opensora_t2v, DitWeights};
use crate::models::wfvae::{export_wfvae, load_weights};
use crate::options::ExportOptions;

/// Where each component's config and weights come from.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineSources {
    pub text_encoder_config: PathBuf,
    pub text_encoder_weights: PathBuf,
    /// `tokenizer.json` or `spiece.model`, copied into the text-encoder sub-bundle.
    pub tokenizer: PathBuf,
    pub transformer_config: PathBuf,
    pub transformer_weights: PathBuf,
    pub vae_config: PathBuf,
    pub vae_weights: PathBuf,
    /// A diffusers `scheduler_config.json`; `None` = upstream's release scheduler.
    pub scheduler_config: Option<PathBuf>,
}

fn need_file(path: PathBuf, what: &str) -> Result<PathBuf> {
    match osp_graphs::path::require_file(&path) {
        Ok(()) => Ok(path),
        Err(why) => Err(Error::Config(format!("{what}: {} {why}", path.display()))),
    }
}

/// The first of `names` present in `dir`.
fn first_present(dir: &Path, names: &[&str], what: &str) -> Result<PathBuf> {
    names
        .iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::Config(format!("{what}: {} holds none of {}", dir.display(), names.join(", "))))
}

/// The only file in `dir` ending with one of `suffixes` (in order of preference).
fn only_with_suffix(dir: &Path, suffixes: &[&str], what: &str) -> Result<PathBuf> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut names: Vec<String> = Vec::new();
    for e in entries {
        let e = e.map_err(|e| Error::io(dir, e))?;
        if e.path().is_file() {
            names.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    names.sort();
    for suffix in suffixes {
        let found: Vec<&String> = names.iter().filter(|n| n.ends_with(suffix)).collect();
        match found.as_slice() {
            [] => continue,
            [one] => return Ok(dir.join(one)),
            many => {
                return Err(Error::Config(format!(
                    "{what}: {} holds several `*{suffix}` files ({}); keep one",
                    dir.display(),
                    many.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                )))
            }
        }
    }
    Err(Error::Config(format!("{what}: {} holds no {} file", dir.display(), suffixes.join(" / "))))
}

impl PipelineSources {
    /// The flat layout of `reference/e2e/` (see the module docs).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let f = |name: &str, what: &str| need_file(dir.join(name), what);
        let tokenizer = first_present(dir, &["tokenizer.json", "spiece.model"], "tokenizer")?;
        Ok(Self {
            text_encoder_config: f("text_encoder_config.json", "text encoder config")?,
            text_encoder_weights: f("text_encoder.safetensors", "text encoder weights")?,
            tokenizer,
            transformer_config: f("transformer_config.json", "transformer config")?,
            transformer_weights: f("transformer.safetensors", "transformer weights")?,
            vae_config: f("vae_config.json", "VAE config")?,
            vae_weights: f("vae.safetensors", "VAE weights")?,
            scheduler_config: Some(f("scheduler_config.json", "scheduler config")?),
        })
    }

    /// The released folders (see the module docs).
    pub fn from_released(
        transformer: &Path,
        vae: &Path,
        text_encoder: &Path,
        scheduler_config: Option<&Path>,
    ) -> Result<Self> {
        let transformer_weights = only_with_suffix(
            transformer,
            &[".safetensors.index.json", ".safetensors", ".bin", ".pt"],
            "transformer weights",
        )?;
        let vae_weights = only_with_suffix(vae, &[".ckpt", ".safetensors", ".pt", ".pth"], "VAE weights")?;
        let text_encoder_weights = only_with_suffix(
            text_encoder,
            &[".safetensors.index.json", ".safetensors", ".bin"],
            "text encoder weights",
        )?;
        Ok(Self {
            text_encoder_config: need_file(text_encoder.join("config.json"), "text encoder config")?,
            text_encoder_weights,
            tokenizer: first_present(text_encoder, &["tokenizer.json", "spiece.model"], "tokenizer")?,
            transformer_config: need_file(transformer.join("config.json"), "transformer config")?,
            transformer_weights,
            vae_config: need_file(vae.join("config.json"), "VAE config")?,
            vae_weights,
            scheduler_config: scheduler_config.map(|p| need_file(p.to_path_buf(), "scheduler config")).transpose()?,
        })
    }
}

/// The scheduler upstream `get_scheduler` builds for the release command
/// (`--sample_method EulerAncestralDiscrete --prediction_type v_prediction --rescale_betas_zero_snr`):
/// diffusers' defaults otherwise (linear betas 1e-4..0.02 over 1000 steps).
// https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/utils/sample_utils.py#L38-L79
pub fn release_scheduler_config() -> BTreeMap<String, serde_json::Value> {
    use serde_json::json;
    BTreeMap::from([
        ("_class_name".to_string(), json!("EulerAncestralDiscreteScheduler")),
        ("num_train_timesteps".to_string(), json!(1000)),
        ("beta_start".to_string(), json!(0.0001)),
        ("beta_end".to_string(), json!(0.02)),
        ("beta_schedule".to_string(), json!("linear")),
        ("prediction_type".to_string(), json!("v_prediction")),
        ("timestep_spacing".to_string(), json!("trailing")),
        ("steps_offset".to_string(), json!(0)),
        ("rescale_betas_zero_snr".to_string(), json!(true)),
    ])
}

/// How to export the pipeline: graph options shared by the components (each records its own
/// checkpoint in its provenance), an optional separate precision for the text encoder, and the
/// sampling defaults written to `pipeline.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineExportOptions {
    pub graph: ExportOptions,
    pub text_encoder_precision: Option<osp_graphs::Precision>,
    pub defaults: PipelineDefaults,
}

/// Reads and checks the scheduler config: a JSON object naming a scheduler class.
fn read_scheduler(path: Option<&Path>) -> Result<BTreeMap<String, serde_json::Value>> {
    let Some(path) = path else {
        return Ok(release_scheduler_config());
    };
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let map: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(&text).map_err(|e| Error::Json { path: path.to_path_buf(), source: e })?;
    if !map.get("_class_name").is_some_and(|v| v.is_string()) {
        return Err(Error::Config(format!(
            "scheduler config {}: `_class_name` must name the scheduler",
            path.display()
        )));
    }
    Ok(map)
}

/// Exports the pipeline bundle at `out` (replaced only if it already is a pipeline bundle or empty).
pub fn export_pipeline(src: &PipelineSources, opts: &PipelineExportOptions, out: &Path) -> Result<PipelineManifest> {
    if out.file_name().is_none() {
        return Err(Error::Config(format!("pipeline bundle path {} must name a directory", out.display())));
    }
    let replaceable = out.is_dir()
        && (out.join(PIPELINE_FILE).is_file()
            || std::fs::read_dir(out).map(|mut d| d.next().is_none()).unwrap_or(false));
    if out.exists() && !replaceable {
        return Err(Error::Config(format!(
            "{} exists and is not a pipeline bundle (no {PIPELINE_FILE}); refusing to replace it",
            out.display()
        )));
    }
    let scheduler = read_scheduler(src.scheduler_config.as_deref())?;
    let text_cfg = MT5Config::from_json_file(&src.text_encoder_config)?;
    let dit_cfg = OpenSoraT2V_v1_3Config::from_json_file(&src.transformer_config)?;
    let vae_cfg = WFVAEModelConfig::from_json_file(&src.vae_config)?;
    check_models(
        &ModelSpec::Mt5Encoder(manifest_config(&text_cfg)?),
        &ModelSpec::OpenSoraT2V(crate::models::opensora_v1_3::manifest_config(&dit_cfg)?),
        &ModelSpec::Wfvae(crate::models::wfvae::manifest_config(&vae_cfg)?),
        &opts.defaults,
    )?;
    crate::models::wfvae::check_options(&opts.graph)?;

    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        osp_fs::collect_stale_logged(parent);
    }
    let staged = osp_fs::StagedDir::create(out)?;
    let staging = staged.path().to_path_buf();
    let components = PipelineComponents::default();

    info!(component = "text_encoder", "exporting");
    let mut text_opts = opts.graph.clone();
    text_opts.source = Some(src.text_encoder_weights.clone());
    if let Some(p) = opts.text_encoder_precision {
        text_opts.precision = p;
    }
    let text_weights = Mt5Weights::load(&text_cfg, &src.text_encoder_weights)?;
    let text = export_mt5(
        &text_cfg,
        &text_weights,
        &Mt5ExportOptions { graph: text_opts, tokenizer: Some(src.tokenizer.clone()) },
        &staging.join(&components.text_encoder),
    )?;
    drop(text_weights);

    info!(component = "transformer", "exporting");
    let dit_weights = DitWeights::load(&dit_cfg, &src.transformer_weights)?;
    let dit_opts = ExportOptions { source: Some(src.transformer_weights.clone()), ..opts.graph.clone() };
    let transformer = export_opensora_t2v(&dit_cfg, &dit_weights, &dit_opts, &staging.join(&components.transformer))?;
    drop(dit_weights);

    info!(component = "vae", "exporting");
    let vae_weights = load_weights(&src.vae_weights)?;
    let mut vae_opts = ExportOptions { source: Some(src.vae_weights.clone()), ..opts.graph.clone() };
    if vae_opts.precision == osp_graphs::Precision::Int8 {
        // int8 covers the DiT's and mT5's linear layers; the convolutional VAE stays f32.
        vae_opts.precision = osp_graphs::Precision::F32;
    }
    let vae = export_wfvae(&vae_cfg, &vae_weights, &vae_opts, &staging.join(&components.vae))?;
    drop(vae_weights);

    check_components(&text, &transformer, &vae, &opts.defaults)?;
    let manifest = PipelineManifest {
        format_version: PIPELINE_FORMAT_VERSION,
        components,
        scheduler,
        defaults: opts.defaults.clone(),
        provenance: provenance(None)?,
    };
    manifest.save(&staging)?;
    staged.commit()?;
    info!(bundle = %out.display(), "pipeline bundle written");
    Ok(manifest)
}

/// Loads the component manifests of a written pipeline bundle (for tests and `inspect`).
pub fn load_components(dir: &Path) -> Result<(PipelineManifest, [BundleManifest; 3])> {
    let m = PipelineManifest::load(dir)?;
    let (t, x, v, _) = m.load_components(dir)?;
    Ok((m, [t, x, v]))
}
