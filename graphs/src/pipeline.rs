//! The text-to-video pipeline bundle: a directory with `pipeline.json` ([`PipelineManifest`]) and
//! one sub-bundle per component (text encoder with its tokenizer, transformer, VAE), plus the
//! diffusers scheduler config and the sampling defaults of upstream `sample.py`.
//!
//! ```text
//! pipeline.bundle/
//!   pipeline.json          components, scheduler config, defaults, provenance
//!   text_encoder/          mt5_encoder bundle (graph `text_encoder`, tokenizer file)
//!   transformer/           opensora_t2v_v1_3 bundle (graph `transformer`)
//!   vae/                   wfvae bundle (`decoder`, `decoder_first/step/last`, `encoder`)
//! ```
//!
//! [`check_components`] states every cross-component rule (latent channels, caption channels,
//! VAE compression vs DiT patching); the exporter runs it before writing and the runtime after
//! reading, so an inconsistent bundle never reaches the models.
//!
//! Upstream: `opensora/utils/sample_utils.py` (`get_args`, `run_model_and_save_samples`) at
//! <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/utils/sample_utils.py>.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::ModelSpec;
use crate::error::{Error, Result};
use crate::manifest::{BundleManifest, Provenance};

/// File name of the pipeline manifest.
pub const PIPELINE_FILE: &str = "pipeline.json";
/// The pipeline manifest format this build reads and writes.
pub const PIPELINE_FORMAT_VERSION: u32 = 1;
/// WFVAE (`WFVAEModel_D8_4x8x8`) compresses time 4x (`4n + 1` frames -> `n + 1` latents).
pub const VAE_TEMPORAL_COMPRESSION: usize = 4;
/// WFVAE compresses height and width 8x.
pub const VAE_SPATIAL_COMPRESSION: usize = 8;

/// The positive prompt template of upstream `run_model_and_save_samples` (`{}` is the prompt).
// https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/utils/sample_utils.py#L246-L248
pub const POSITIVE_PROMPT_TEMPLATE: &str = "\n    high quality, high aesthetic, {}\n    ";
/// The negative prompt of upstream `run_model_and_save_samples`.
// https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/utils/sample_utils.py#L250-L253
pub const NEGATIVE_PROMPT: &str =
    "\n    nsfw, lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, \
fewer digits, cropped, worst quality, \n    low quality, normal quality, jpeg artifacts, signature, watermark, \
username, blurry.\n    ";

/// The sub-bundle directory of each component, relative to the pipeline bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipelineComponents {
    pub text_encoder: String,
    pub transformer: String,
    pub vae: String,
}

impl Default for PipelineComponents {
    fn default() -> Self {
        Self { text_encoder: "text_encoder".into(), transformer: "transformer".into(), vae: "vae".into() }
    }
}

/// What `osp generate` uses when a flag is not given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineDefaults {
    /// Upstream `--sample_method` name (e.g. `EulerAncestralDiscrete`).
    pub sample_method: String,
    pub num_sampling_steps: usize,
    pub guidance_scale: f64,
    pub max_sequence_length: usize,
    pub num_frames: usize,
    pub height: usize,
    pub width: usize,
    pub fps: f64,
    /// Template applied to every user prompt; `{}` marks the prompt.
    pub positive_prompt_template: String,
    pub negative_prompt: String,
    /// Height and width must be multiples of this (a multiple of VAE compression x patch size).
    pub spatial_multiple: usize,
}

impl PipelineDefaults {
    /// The v1.3 release command (`scripts/text_condition/gpu/sample_t2v_v1_3.sh`): 93 x 352 x 640,
    /// 100 EulerAncestral steps, guidance 7.5, 512 tokens, 18 fps. Sizes are multiples of 32, the
    /// training `hw_stride` (VAE 8 x patch 2 x 2).
    // https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/scripts/text_condition/gpu/sample_t2v_v1_3.sh
    pub fn open_sora_plan_v13() -> Self {
        Self {
            sample_method: "EulerAncestralDiscrete".into(),
            num_sampling_steps: 100,
            guidance_scale: 7.5,
            max_sequence_length: 512,
            num_frames: 93,
            height: 352,
            width: 640,
            fps: 18.0,
            positive_prompt_template: POSITIVE_PROMPT_TEMPLATE.into(),
            negative_prompt: NEGATIVE_PROMPT.into(),
            spatial_multiple: 32,
        }
    }
}

/// `pipeline.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PipelineManifest {
    pub format_version: u32,
    pub components: PipelineComponents,
    /// A diffusers `scheduler_config.json` (`_class_name`, betas, `prediction_type`, ...), verbatim.
    pub scheduler: BTreeMap<String, serde_json::Value>,
    pub defaults: PipelineDefaults,
    pub provenance: Provenance,
}

/// Sizes every stage agrees on, derived by [`check_components`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PipelineDims {
    /// VAE `latent_dim` = DiT `in_channels` = DiT `out_channels`.
    pub latent_channels: usize,
    /// Text encoder `d_model` = DiT `caption_channels`.
    pub caption_channels: usize,
    pub patch_size: usize,
    pub patch_size_t: usize,
    pub vae_temporal: usize,
    pub vae_spatial: usize,
}

fn inconsistent(rule: String) -> Error {
    Error::Pipeline(rule)
}

/// Checks the three component manifests against each other and against `defaults`: the graphs
/// the pipeline runs exist, and [`check_models`] holds.
pub fn check_components(
    text: &BundleManifest,
    transformer: &BundleManifest,
    vae: &BundleManifest,
    defaults: &PipelineDefaults,
) -> Result<PipelineDims> {
    let dims = check_models(&text.model, &transformer.model, &vae.model, defaults)?;
    for (bundle, graph, what) in
        [(text, "text_encoder", "text encoder"), (transformer, "transformer", "transformer"), (vae, "decoder", "VAE")]
    {
        if !bundle.graphs.contains_key(graph) {
            return Err(inconsistent(format!("the {what} bundle has no `{graph}` graph")));
        }
    }
    Ok(dims)
}

/// The cross-component rules on the model configs alone (what the exporter checks before any
/// weight is read): model kinds, VAE latent channels = DiT in/out channels, DiT caption channels
/// = text d_model, `spatial_multiple` a multiple of VAE compression x patch size.
pub fn check_models(
    text: &ModelSpec,
    transformer: &ModelSpec,
    vae: &ModelSpec,
    defaults: &PipelineDefaults,
) -> Result<PipelineDims> {
    let ModelSpec::Mt5Encoder(t) = text else {
        return Err(inconsistent(format!("the text encoder must be an mt5_encoder bundle, got `{}`", text.kind())));
    };
    let ModelSpec::OpenSoraT2V(d) = transformer else {
        return Err(inconsistent(format!(
            "the transformer must be an opensora_t2v_v1_3 bundle, got `{}`",
            transformer.kind()
        )));
    };
    let ModelSpec::Wfvae(v) = vae else {
        return Err(inconsistent(format!("the VAE must be a wfvae bundle, got `{}`", vae.kind())));
    };
    let in_channels =
        d.in_channels.ok_or_else(|| inconsistent("the transformer config must set `in_channels`".into()))?;
    let out_channels = d.out_channels.unwrap_or(in_channels);
    if in_channels != v.latent_dim || out_channels != v.latent_dim {
        return Err(inconsistent(format!(
            "VAE latent channels (latent_dim = {}) must equal the transformer's in_channels ({in_channels}) and \
             out_channels ({out_channels})",
            v.latent_dim
        )));
    }
    if v.scale.len() != v.latent_dim || v.shift.len() != v.latent_dim {
        return Err(inconsistent(format!(
            "the VAE's latent scale ({}) and shift ({}) must have latent_dim = {} values",
            v.scale.len(),
            v.shift.len(),
            v.latent_dim
        )));
    }
    if v.scale.iter().any(|&s| s == 0.0 || !s.is_finite()) {
        return Err(inconsistent("the VAE's latent scale values must be finite and non-zero".into()));
    }
    let caption_channels =
        d.caption_channels.ok_or_else(|| inconsistent("the transformer config must set `caption_channels`".into()))?;
    if caption_channels != t.d_model {
        return Err(inconsistent(format!(
            "the transformer's caption_channels ({caption_channels}) must equal the text encoder's d_model ({})",
            t.d_model
        )));
    }
    let patch_size = d.patch_size.ok_or_else(|| inconsistent("the transformer config must set `patch_size`".into()))?;
    let patch_size_t = d.patch_size_t.unwrap_or(1);
    let hw = VAE_SPATIAL_COMPRESSION * patch_size;
    if defaults.spatial_multiple == 0 || !defaults.spatial_multiple.is_multiple_of(hw) {
        return Err(inconsistent(format!(
            "spatial_multiple ({}) must be a positive multiple of VAE spatial compression x patch_size = {} x {} = {hw}",
            defaults.spatial_multiple, VAE_SPATIAL_COMPRESSION, patch_size
        )));
    }
    if defaults.max_sequence_length == 0 {
        return Err(inconsistent("default max_sequence_length must be positive".into()));
    }
    if !defaults.positive_prompt_template.contains("{}") {
        return Err(inconsistent("the positive prompt template must contain `{}` (where the prompt goes)".into()));
    }
    Ok(PipelineDims {
        latent_channels: v.latent_dim,
        caption_channels,
        patch_size,
        patch_size_t,
        vae_temporal: VAE_TEMPORAL_COMPRESSION,
        vae_spatial: VAE_SPATIAL_COMPRESSION,
    })
}

impl PipelineManifest {
    /// Reads `<dir>/pipeline.json` and checks its format version and component names.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(PIPELINE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Io { path: path.clone(), source })?;
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| Error::Json { path: path.clone(), source })?;
        let found = value.get("format_version").and_then(|v| v.as_u64()).map_or(0, |v| u32::try_from(v).unwrap_or(0));
        if found != PIPELINE_FORMAT_VERSION {
            return Err(Error::FormatVersion { path, found, supported: PIPELINE_FORMAT_VERSION });
        }
        let manifest: Self =
            serde_json::from_value(value).map_err(|source| Error::Json { path: path.clone(), source })?;
        manifest.validate().map_err(|e| e.in_file(&path))?;
        Ok(manifest)
    }

    /// Component directories must be plain names inside the bundle.
    pub fn validate(&self) -> Result<()> {
        let c = &self.components;
        for (what, name) in [("text_encoder", &c.text_encoder), ("transformer", &c.transformer), ("vae", &c.vae)] {
            let plain = Path::new(name).file_name().map(|f| f == name.as_str()).unwrap_or(false);
            if !plain || name == ".." || name == "." {
                return Err(inconsistent(format!("component `{what}` directory `{name}` must be a plain name")));
            }
        }
        Ok(())
    }

    /// Loads the three component manifests under `dir` and checks them with [`check_components`].
    pub fn load_components(
        &self,
        dir: &Path,
    ) -> Result<(BundleManifest, BundleManifest, BundleManifest, PipelineDims)> {
        let c = &self.components;
        let text = BundleManifest::load(&dir.join(&c.text_encoder))?;
        let transformer = BundleManifest::load(&dir.join(&c.transformer))?;
        let vae = BundleManifest::load(&dir.join(&c.vae))?;
        let dims = check_components(&text, &transformer, &vae, &self.defaults).map_err(|e| e.in_file(dir))?;
        Ok((text, transformer, vae, dims))
    }

    /// Writes `<dir>/pipeline.json` atomically (`osp_fs::write_bytes`).
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.validate()?;
        let path = dir.join(PIPELINE_FILE);
        let text = serde_json::to_string_pretty(self).map_err(|source| Error::Json { path: path.clone(), source })?;
        Ok(osp_fs::write_bytes(&path, text + "\n")?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Mt5EncoderConfig, OpenSoraT2VConfig, WfvaeConfig};
    use crate::manifest::{AttentionKind, DType, Dim, GraphSpec, Precision, TensorSpec};

    fn graph() -> GraphSpec {
        GraphSpec {
            file: "g.onnx".into(),
            external_data: vec![],
            inputs: vec![],
            outputs: vec![TensorSpec::new("y", DType::F32, [Dim::sym("b")])],
            attention: AttentionKind::OnnxAttention,
            precision: Precision::F32,
            opset: 23,
            metadata: BTreeMap::new(),
        }
    }

    fn bundle(model: ModelSpec, name: &str) -> BundleManifest {
        let mut m = BundleManifest::new(model, Provenance::default());
        m.graphs.insert(name.into(), graph());
        m
    }

    fn parts(latent: usize, in_ch: usize, caption: usize, d_model: usize) -> [BundleManifest; 3] {
        let text = Mt5EncoderConfig { vocab_size: 10, d_model, d_ff: 8, num_heads: 1, upstream: BTreeMap::new() };
        let dit = OpenSoraT2VConfig {
            in_channels: Some(in_ch),
            caption_channels: Some(caption),
            patch_size: Some(2),
            patch_size_t: Some(1),
            ..Default::default()
        };
        let vae = WfvaeConfig {
            latent_dim: latent,
            scale: vec![1.0; latent],
            shift: vec![0.0; latent],
            upstream: BTreeMap::new(),
        };
        [
            bundle(ModelSpec::Mt5Encoder(text), "text_encoder"),
            bundle(ModelSpec::OpenSoraT2V(dit), "transformer"),
            bundle(ModelSpec::Wfvae(vae), "decoder"),
        ]
    }

    #[test]
    fn consistent_components_pass_and_each_rule_is_named() {
        let d = PipelineDefaults::open_sora_plan_v13();
        let [t, x, v] = parts(8, 8, 32, 32);
        let dims = check_components(&t, &x, &v, &d).unwrap();
        assert_eq!((dims.latent_channels, dims.caption_channels, dims.patch_size), (8, 32, 2));

        let [t, x, v] = parts(8, 4, 32, 32);
        let e = check_components(&t, &x, &v, &d).unwrap_err().to_string();
        assert!(e.contains("latent_dim = 8") && e.contains("in_channels (4)"), "{e}");

        let [t, x, v] = parts(8, 8, 32, 48);
        let e = check_components(&t, &x, &v, &d).unwrap_err().to_string();
        assert!(e.contains("caption_channels (32)") && e.contains("d_model (48)"), "{e}");

        let [t, x, v] = parts(8, 8, 32, 32);
        let bad = PipelineDefaults { spatial_multiple: 24, ..d.clone() };
        let e = check_components(&t, &x, &v, &bad).unwrap_err().to_string();
        assert!(e.contains("spatial_multiple (24)") && e.contains("= 16"), "{e}");

        let e = check_components(&x, &t, &v, &d).unwrap_err().to_string();
        assert!(e.contains("mt5_encoder"), "{e}");
    }

    #[test]
    fn manifest_round_trips_and_rejects_unsafe_component_names() {
        let dir = std::env::temp_dir().join(format!("osp-pipeline-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut m = PipelineManifest {
            format_version: PIPELINE_FORMAT_VERSION,
            components: PipelineComponents::default(),
            scheduler: BTreeMap::from([("_class_name".to_string(), serde_json::json!("DDIMScheduler"))]),
            defaults: PipelineDefaults::open_sora_plan_v13(),
            provenance: Provenance::default(),
        };
        m.save(&dir).unwrap();
        assert_eq!(PipelineManifest::load(&dir).unwrap(), m);
        m.components.vae = "../vae".into();
        assert!(m.save(&dir).unwrap_err().to_string().contains("plain name"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn upstream_prompt_strings_are_exact() {
        // From meta.json of the e2e recording (`negative_prompt_repr`).
        assert_eq!(
            NEGATIVE_PROMPT,
            "\n    nsfw, lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, \
             cropped, worst quality, \n    low quality, normal quality, jpeg artifacts, signature, watermark, \
             username, blurry.\n    "
        );
        assert_eq!(
            POSITIVE_PROMPT_TEMPLATE.replace("{}", "A cat."),
            "\n    high quality, high aesthetic, A cat.\n    "
        );
    }
}
