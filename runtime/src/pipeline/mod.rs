//! Text-to-video generation over a pipeline bundle (`osp_graphs::pipeline`), exactly as upstream
//! `sample.py` runs `OpenSoraPipeline`: prompt template and negative prompt, mT5 (through the
//! embedding cache), classifier-free guidance with the batch `[negative] * n + [positive] * n`,
//! initial noise times `init_noise_sigma`, the scheduler loop, un-normalised latents
//! `z / scale + shift`, WFVAE decoding (whole, streamed in latent chunks, and/or spatially tiled),
//! and frames to uint8 by `((x / 2 + 0.5).clamp(0, 1) * 255)` truncated, cropped to the request.
//!
//! Upstream: `opensora/sample/pipeline_opensora.py` (`__call__`, `encode_prompt`,
//! `prepare_latents`, `decode_latents`) and `opensora/utils/sample_utils.py`
//! (`run_model_and_save_samples`) at
//! <https://github.com/PKU-YuanGroup/Open-Sora-Plan/tree/9fa322fbbb276e2bbe40b2f439e3d610af3d7690>.
//! Differences: each prompt is run on its own (as `sample.py` does), so upstream's pairing bug of
//! lists of prompts with `num_samples_per_prompt > 1` cannot occur; the noise comes from a
//! [`noise::NoiseSource`] rather than torch's global RNG.
//!
//! `osp generate --bundle e2e.pipeline --text_prompt "A cat." --num_frames 9 --height 64 --width 96`

pub mod memory;
pub mod noise;
pub mod trt_profile;

use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::{concatenate, s, Array4, Array5, ArrayD, Axis, IxDyn, Zip};
use osp_graphs::{ModelSpec, PipelineDims, PipelineManifest, VaeGraphs};

use crate::error::{Error, Result};
use crate::finite;
use crate::parallel::{ParallelDit, ParallelPlan};
use crate::scheduler::{PredictionType, SampleMethod, Scheduler, SchedulerConfig, TimestepSpacing};
use crate::session::{Bundle, GraphSession, SessionOptions};
use crate::tensor::Tensor;
use crate::text::{EmbeddingCache, TextEmbeddings, TextEncoder, TextPositions};
use crate::vae::Vae;

use self::noise::{InitLatents, NoiseSource};

/// The transformer graph and its I/O names.
pub const TRANSFORMER_GRAPH: &str = "transformer";
/// The DiT's per-prompt text half (caption projection and every block's cross-attention keys and
/// values), exported beside [`TRANSFORMER_GRAPH`].
pub const TRANSFORMER_TEXT_GRAPH: &str = "transformer_text";
/// [`TRANSFORMER_GRAPH`] reading [`TRANSFORMER_TEXT_GRAPH`]'s outputs instead of the text states.
pub const TRANSFORMER_CACHED_GRAPH: &str = "transformer_cached";
const DIT_OUTPUT: &str = "sample";

pub use crate::vae::DecodeOptions;

/// One generation request (the upstream `sample.py` arguments).
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    /// User prompts; each is run on its own.
    pub prompts: Vec<String>,
    /// Applied to each prompt (`{}` marks the prompt); `None` uses the prompt as is.
    pub prompt_template: Option<String>,
    /// The unconditional text; `""` is upstream's pipeline default (no negative prompt).
    pub negative_prompt: String,
    pub num_frames: usize,
    pub height: usize,
    pub width: usize,
    pub num_sampling_steps: usize,
    /// `> 1` runs classifier-free guidance; `1` runs the positive branch only (as upstream).
    pub guidance_scale: f32,
    /// diffusers' `guidance_rescale` (0 = off, upstream `sample.py` does not expose it).
    pub guidance_rescale: f32,
    pub sample_method: SampleMethod,
    pub num_samples_per_prompt: usize,
    pub max_sequence_length: usize,
    pub decode: DecodeOptions,
    /// Replaces the computed schedule (`timesteps`, `sigmas`), see
    /// [`Scheduler::set_recorded_schedule`].
    pub recorded_schedule: Option<(Vec<f32>, Vec<f32>)>,
    /// Upstream `--prediction_type`, overriding the bundle's scheduler config.
    pub prediction_type: Option<PredictionType>,
    /// Upstream `--rescale_betas_zero_snr` (zero-SNR betas with trailing spacing; PNDM ignores it
    /// as upstream drops it), overriding the bundle's scheduler config when `true`.
    pub rescale_betas_zero_snr: bool,
    /// Keep the f32 VAE output in [`PromptOutput::decoded`]. Off, the video is decoded straight
    /// to uint8 frames (streamed inside tiles, only one tile row is ever f32): the frames are
    /// identical, without a whole f32 copy of the video.
    pub keep_decoded: bool,
}

/// A [`GenerateRequest`] checked against a pipeline bundle ([`PipelineSpec::prepare`]), with its
/// scheduler built once: what [`Pipeline::generate_prompt`] runs. Derefs to the request.
pub struct PreparedRequest {
    req: GenerateRequest,
    /// Fresh from `set_timesteps` (and the recorded schedule); each prompt runs a copy.
    scheduler: Box<dyn Scheduler>,
}

impl std::ops::Deref for PreparedRequest {
    type Target = GenerateRequest;
    fn deref(&self) -> &GenerateRequest {
        &self.req
    }
}

impl PreparedRequest {
    pub fn request(&self) -> &GenerateRequest {
        &self.req
    }

    /// Model evaluations per prompt (the scheduler's timesteps).
    pub fn steps(&self) -> usize {
        self.scheduler.timesteps().len()
    }

    /// The request's scheduler, fresh for one prompt.
    pub fn scheduler(&self) -> Box<dyn Scheduler> {
        self.scheduler.clone()
    }
}

/// Stage timings and per-step records, reported while a prompt runs.
pub trait GenerateObserver {
    /// A stage (`text_encode`, `denoise_step`, `vae_decode`) finished after `seconds`.
    fn stage(&mut self, _prompt: usize, _stage: &'static str, _seconds: f64) {}
    /// Step `step` of `total` finished.
    fn step(&mut self, _prompt: usize, _step: usize, _total: usize, _record: &StepRecord<'_>) {}
}

/// An observer that ignores everything.
pub struct NoObserver;
impl GenerateObserver for NoObserver {}

/// The tensors of one denoising step (names as in the e2e recording).
pub struct StepRecord<'a> {
    /// Latents entering the step, `[n, c, t, h, w]`.
    pub latents: &'a ArrayD<f32>,
    pub timestep: f32,
    /// The transformer output for the CFG batch `[2n, ...]` (or `[n, ...]` without guidance).
    pub dit_out: &'a ArrayD<f32>,
    /// What the scheduler receives.
    pub guided: &'a ArrayD<f32>,
    pub noise: Option<&'a ArrayD<f32>>,
    /// Latents leaving the step.
    pub prev_sample: &'a ArrayD<f32>,
}

/// Everything one prompt produced.
#[derive(Debug, Clone)]
pub struct PromptOutput {
    /// The text actually encoded (template applied).
    pub prompt: String,
    pub positive: TextEmbeddings,
    /// `None` without guidance.
    pub negative: Option<TextEmbeddings>,
    /// Final latents `[n, c, t, h, w]` (before un-normalisation).
    pub latents: ArrayD<f32>,
    /// VAE output `[n, 3, f, H, W]` in `[-1, 1]` (before cropping), with
    /// [`GenerateRequest::keep_decoded`].
    pub decoded: Option<Array5<f32>>,
    /// Per sample, `[num_frames, height, width, 3]` uint8 frames.
    pub frames: Vec<Array4<u8>>,
}

/// A pipeline bundle's manifests, read and checked without loading any model: enough to
/// validate a request before the slow part starts.
#[derive(Debug, Clone)]
pub struct PipelineSpec {
    dir: PathBuf,
    manifest: PipelineManifest,
    dims: PipelineDims,
    scheduler_config: SchedulerConfig,
    /// The VAE's decoder metadata (whole-clip limit, streaming protocol), read once here.
    vae_graphs: VaeGraphs,
    /// What the memory estimate needs of the models.
    sizes: memory::ModelSizes,
}

/// A loaded pipeline bundle: its [`PipelineSpec`] (through `Deref`) and the model sessions.
pub struct Pipeline {
    spec: PipelineSpec,
    text: TextEncoder,
    denoiser: Denoiser,
    /// One VAE per device, all of the same bundle: the spatial tiles of a tiled decode are spread
    /// over them ([`crate::vae::decode_parallel`]); the first does everything else.
    vaes: Vec<Vae>,
    /// What the text encoder computes ([`Pipeline::with_text_positions`]).
    text_positions: TextPositions,
}

/// The DiT sessions a pipeline loaded: only the ones its denoising loop runs.
enum Denoiser {
    Single {
        /// The per-step graph: [`TRANSFORMER_CACHED_GRAPH`] when `text` is loaded, else
        /// [`TRANSFORMER_GRAPH`].
        step: GraphSession,
        /// [`TRANSFORMER_TEXT_GRAPH`], run once per prompt, when the bundle has the cached pair.
        text: Option<GraphSession>,
    },
    /// The sequence-/CFG-parallel DiT: its segment graphs, once per rank.
    Parallel(ParallelDit),
}

impl Denoiser {
    /// The single graph's sessions; with `cached` and a bundle holding both
    /// [`TRANSFORMER_TEXT_GRAPH`] and [`TRANSFORMER_CACHED_GRAPH`], the cached pair.
    fn single(dit: &Bundle, opts: &SessionOptions, cached: bool) -> Result<Self> {
        let graphs = &dit.manifest().graphs;
        if cached && graphs.contains_key(TRANSFORMER_TEXT_GRAPH) && graphs.contains_key(TRANSFORMER_CACHED_GRAPH) {
            let text = dit.session(TRANSFORMER_TEXT_GRAPH, opts)?;
            return Ok(Denoiser::Single { step: dit.session(TRANSFORMER_CACHED_GRAPH, opts)?, text: Some(text) });
        }
        Ok(Denoiser::Single { step: dit.session(TRANSFORMER_GRAPH, opts)?, text: None })
    }
}

/// Where [`Pipeline::load_parallel`] runs the DiT and the VAE's tiles: `ranks` holds one
/// [`SessionOptions`] per world rank of `plan` (its device, in world-rank order).
#[derive(Debug, Clone)]
pub struct ParallelPlacement {
    pub plan: ParallelPlan,
    pub ranks: Vec<SessionOptions>,
}

/// Where [`Pipeline::load_placed`] runs each model.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The text encoder, and the single DiT graph unless `dit` is given.
    pub main: SessionOptions,
    /// The sequence-/CFG-parallel DiT, run instead of the single graph.
    pub dit: Option<ParallelPlacement>,
    /// One per VAE worker (at least one): a tiled decode spreads its tiles over them,
    /// bit-identical to one of them; an untiled decode runs on the first.
    pub vae: Vec<SessionOptions>,
}

impl Placement {
    /// The VAE workers as the memory estimate counts them.
    pub fn vae_workers(&self) -> memory::VaeWorkers {
        let shared = self.vae.iter().all(|o| o.backend == crate::session::Backend::OrtCpu && o.share_weights);
        memory::VaeWorkers { count: self.vae.len().max(1), shared_weights: shared }
    }

    /// Every session with `profiles` as its TensorRT request profiles (by graph name).
    pub fn with_trt_request_profiles(
        mut self,
        profiles: &std::collections::BTreeMap<String, crate::session::ProfileRange>,
    ) -> Self {
        let dit_ranks = self.dit.iter_mut().flat_map(|d| d.ranks.iter_mut());
        for opts in std::iter::once(&mut self.main).chain(&mut self.vae).chain(dit_ranks) {
            opts.gpu.trt_request_profiles = profiles.clone();
        }
        self
    }

    /// Every model on `opts`.
    pub fn single(opts: &SessionOptions) -> Self {
        Self { main: opts.clone(), dit: None, vae: vec![opts.clone()] }
    }

    /// The text encoder on `opts`; the DiT on `parallel`'s ranks and one VAE worker per rank.
    pub fn parallel(opts: &SessionOptions, parallel: &ParallelPlacement) -> Self {
        Self { main: opts.clone(), dit: Some(parallel.clone()), vae: parallel.ranks.clone() }
    }
}

impl std::ops::Deref for Pipeline {
    type Target = PipelineSpec;
    fn deref(&self) -> &PipelineSpec {
        &self.spec
    }
}

fn invalid(name: &str, rule: String) -> Error {
    Error::InvalidInput { name: name.to_string(), rule }
}

impl Pipeline {
    /// [`PipelineSpec::open`] then [`Pipeline::load`].
    pub fn open(dir: impl AsRef<Path>, opts: &SessionOptions, cache: Option<EmbeddingCache>) -> Result<Self> {
        Self::load(PipelineSpec::open(dir)?, opts, cache)
    }

    /// Loads the text encoder (with `cache` if given) and the transformer; VAE graphs load on
    /// first decode.
    pub fn load(spec: PipelineSpec, opts: &SessionOptions, cache: Option<EmbeddingCache>) -> Result<Self> {
        Self::load_placed(spec, cache, &Placement::single(opts))
    }

    /// [`Self::load`] with the DiT run by [`ParallelDit`] on `placement`'s ranks (its segment
    /// graphs only: the single transformer graph is not loaded) and one VAE per rank's device,
    /// over which the spatial tiles of a tiled decode are spread (bit-identical to one of them).
    /// The text encoder and everything else run on `opts`.
    pub fn load_parallel(
        spec: PipelineSpec,
        opts: &SessionOptions,
        cache: Option<EmbeddingCache>,
        placement: &ParallelPlacement,
    ) -> Result<Self> {
        Self::load_placed(spec, cache, &Placement::parallel(opts, placement))
    }

    /// Loads the text encoder (with `cache` if given) and the DiT where `placement` says, and one
    /// VAE per entry of `placement.vae` (their graphs load on first decode).
    pub fn load_placed(spec: PipelineSpec, cache: Option<EmbeddingCache>, placement: &Placement) -> Result<Self> {
        if placement.vae.is_empty() {
            return Err(invalid("devices", "the VAE needs at least one worker".into()));
        }
        let c = &spec.manifest.components;
        let text_bundle = Bundle::open(spec.dir.join(&c.text_encoder))?;
        let mut text = TextEncoder::open(&text_bundle, &placement.main, None)?;
        if let Some(cache) = cache {
            text = text.with_cache(cache);
        }
        let dit = Bundle::open(spec.dir.join(&c.transformer))?;
        let denoiser = match &placement.dit {
            None => Denoiser::single(&dit, &placement.main, true)?,
            Some(p) => Denoiser::Parallel(ParallelDit::load(&dit, p.plan, &p.ranks)?),
        };
        let vae_bundle = Bundle::open(spec.dir.join(&c.vae))?;
        let vaes = placement
            .vae
            .iter()
            .map(|o| Vae::with_graphs(&vae_bundle, spec.vae_graphs.clone(), o))
            .collect::<Result<Vec<_>>>()?;
        tracing::info!(
            bundle = %spec.dir.display(),
            latent_channels = spec.dims.latent_channels,
            vae_workers = vaes.len(),
            "pipeline loaded"
        );
        Ok(Self { spec, text, denoiser, vaes, text_positions: TextPositions::default() })
    }

    /// Runs the plain [`TRANSFORMER_GRAPH`] every step even when the bundle has the cached-text
    /// pair (the reference the cached pair is tested against); reloads the DiT (a parallel DiT
    /// is replaced by the single graph).
    pub fn without_cached_text(mut self, opts: &SessionOptions) -> Result<Self> {
        let dit = Bundle::open(self.spec.dir.join(&self.spec.manifest.components.transformer))?;
        self.denoiser = Denoiser::single(&dit, opts, false)?;
        Ok(self)
    }

    /// Whether the transformer's text half runs once per prompt ([`TRANSFORMER_TEXT_GRAPH`]).
    pub fn caches_text(&self) -> bool {
        matches!(self.denoiser, Denoiser::Single { text: Some(_), .. })
    }

    /// The names of the DiT graphs this pipeline loaded (each once, however many ranks load it).
    pub fn dit_graphs(&self) -> Vec<String> {
        match &self.denoiser {
            Denoiser::Single { step, text } => {
                text.iter().chain(std::iter::once(step)).map(|s| s.name().to_string()).collect()
            }
            Denoiser::Parallel(dit) => dit.protocol().graph_names(dit.plan().sp),
        }
    }

    /// How many VAE workers (devices) a tiled decode spreads its tiles over.
    pub fn vae_workers(&self) -> usize {
        self.vaes.len()
    }

    /// Encodes prompts at `positions`: [`TextPositions::Padded`] (the default) keeps upstream's
    /// `max_sequence_length` embeddings in [`PromptOutput`]; [`TextPositions::Real`] encodes only
    /// the real tokens and the transformer reads only those (the longest of the CFG batch), which
    /// gives the same latents and frames within `Close` (padded text keys are masked wherever they
    /// are read) and [`PromptOutput`] embeddings holding the real positions only.
    pub fn with_text_positions(mut self, positions: TextPositions) -> Self {
        self.text_positions = positions;
        self
    }

    pub fn text_positions(&self) -> TextPositions {
        self.text_positions
    }

    pub fn spec(&self) -> &PipelineSpec {
        &self.spec
    }

    /// The parallel DiT, when loaded ([`Self::load_parallel`]).
    pub fn parallel(&self) -> Option<&ParallelDit> {
        match &self.denoiser {
            Denoiser::Parallel(dit) => Some(dit),
            Denoiser::Single { .. } => None,
        }
    }

    /// The parallel DiT, when loaded, mutably (its timing totals).
    pub fn parallel_mut(&mut self) -> Option<&mut ParallelDit> {
        match &mut self.denoiser {
            Denoiser::Parallel(dit) => Some(dit),
            Denoiser::Single { .. } => None,
        }
    }

    pub fn text_encoder(&self) -> &TextEncoder {
        &self.text
    }
}

impl PipelineSpec {
    /// Reads `pipeline.json` and the component manifests and checks them against each other.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        let manifest = PipelineManifest::load(&dir)?;
        let (text_manifest, dit_manifest, vae_manifest, dims) = manifest.load_components(&dir)?;
        let c = &manifest.components;
        let sizes = memory::ModelSizes::read(
            (&text_manifest, &dir.join(&c.text_encoder)),
            (&dit_manifest, &dir.join(&c.transformer)),
            (&vae_manifest, &dir.join(&c.vae)),
        );
        let pipeline_file = dir.join(osp_graphs::PIPELINE_FILE);
        let in_pipeline_file = |e: Error| match e {
            Error::InvalidSchedulerConfig { key, why } => {
                let dot = if key.is_empty() { "" } else { "." };
                Error::InvalidSchedulerConfig { key: format!("{}: scheduler{dot}{key}", pipeline_file.display()), why }
            }
            other => other,
        };
        let scheduler_config: SchedulerConfig = serde_json::to_value(&manifest.scheduler)
            .and_then(serde_json::from_value)
            .map_err(|e| Error::InvalidSchedulerConfig { key: "".into(), why: e.to_string() })
            .map_err(in_pipeline_file)?;
        scheduler_config.sample_method().map_err(in_pipeline_file)?;
        if !matches!(vae_manifest.model, ModelSpec::Wfvae(_)) {
            return Err(Error::Graph(osp_graphs::Error::Pipeline("the VAE must be a wfvae bundle".into())));
        }
        let vae_graphs = VaeGraphs::read(&vae_manifest).map_err(|e| {
            let manifest = dir.join(&manifest.components.vae).join(osp_graphs::MANIFEST_FILE);
            Error::Graph(osp_graphs::Error::Pipeline(format!("VAE decoder metadata: {e}")).in_file(manifest))
        })?;
        Ok(Self { dir, manifest, dims, scheduler_config, vae_graphs, sizes })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn manifest(&self) -> &PipelineManifest {
        &self.manifest
    }

    pub fn dims(&self) -> &PipelineDims {
        &self.dims
    }

    /// The streaming decoder's default latents per call (upstream `t_chunk_dec`), if it has one.
    pub fn default_stream_chunk(&self) -> Option<usize> {
        self.vae_graphs.streaming.as_ref().map(|s| s.protocol().default_chunk_latents)
    }

    /// The bundle's scheduler config adapted to `method` the way upstream `get_scheduler` builds
    /// each class from the same flags: DDIM without sample clipping, PNDM without zero-SNR.
    pub fn scheduler_config(&self, method: SampleMethod) -> SchedulerConfig {
        let base = &self.scheduler_config;
        if base.sample_method().ok().flatten() == Some(method) {
            return base.clone();
        }
        let mut c = SchedulerConfig::open_sora_plan_v13(method);
        c.num_train_timesteps = base.num_train_timesteps;
        c.beta_start = base.beta_start;
        c.beta_end = base.beta_end;
        c.beta_schedule = base.beta_schedule;
        c.trained_betas = base.trained_betas.clone();
        c.prediction_type = base.prediction_type;
        if method != SampleMethod::Pndm {
            c.rescale_betas_zero_snr = base.rescale_betas_zero_snr;
            c.timestep_spacing = base.timestep_spacing;
        }
        c
    }

    /// The bundle's default request for `prompts` (`pipeline.json` `defaults`): its prompt template,
    /// negative prompt, size, steps, guidance, sample method and text length; no guidance rescale,
    /// one sample per prompt, the whole-clip decoder and the bundle's scheduler flags. Callers
    /// override fields, then [`Self::prepare`] the request.
    pub fn default_request(&self, prompts: Vec<String>) -> Result<GenerateRequest> {
        let d = &self.manifest.defaults;
        let sample_method = <SampleMethod as clap::ValueEnum>::from_str(&d.sample_method, false).map_err(|e| {
            Error::Graph(osp_graphs::Error::Pipeline(format!(
                "pipeline.json: unknown default sample_method `{}`: {e}",
                d.sample_method
            )))
        })?;
        Ok(GenerateRequest {
            prompts,
            prompt_template: Some(d.positive_prompt_template.clone()),
            negative_prompt: d.negative_prompt.clone(),
            num_frames: d.num_frames,
            height: d.height,
            width: d.width,
            num_sampling_steps: d.num_sampling_steps,
            guidance_scale: d.guidance_scale as f32,
            guidance_rescale: 0.0,
            sample_method,
            num_samples_per_prompt: 1,
            max_sequence_length: d.max_sequence_length,
            decode: DecodeOptions::default(),
            recorded_schedule: None,
            prediction_type: None,
            rescale_betas_zero_snr: false,
            keep_decoded: false,
        })
    }

    /// A scheduler for the request, with its timesteps set.
    pub fn scheduler(&self, req: &GenerateRequest) -> Result<Box<dyn Scheduler>> {
        let mut config = self.scheduler_config(req.sample_method);
        if let Some(p) = req.prediction_type {
            config.prediction_type = p;
        }
        if req.rescale_betas_zero_snr && req.sample_method != SampleMethod::Pndm {
            config.rescale_betas_zero_snr = true;
            config.timestep_spacing = Some(TimestepSpacing::Trailing);
        }
        let mut scheduler = req.sample_method.build(&config)?;
        scheduler.set_timesteps(req.num_sampling_steps)?;
        if let Some((timesteps, sigmas)) = &req.recorded_schedule {
            scheduler.set_recorded_schedule(timesteps, sigmas)?;
        }
        Ok(scheduler)
    }

    /// The latent shape `[n, c, t, h, w]` of the request.
    pub fn latent_shape(&self, req: &GenerateRequest) -> [usize; 5] {
        let d = &self.dims;
        [
            req.num_samples_per_prompt,
            d.latent_channels,
            (req.num_frames - 1) / d.vae_temporal + 1,
            req.height / d.vae_spatial,
            req.width / d.vae_spatial,
        ]
    }

    /// The estimated peak memory of `req` with its tiles spread over `vae` workers
    /// ([`memory::estimate`]); checked against the host with [`memory::check`] before any model
    /// loads.
    pub fn memory_estimate(&self, req: &GenerateRequest, vae: memory::VaeWorkers) -> memory::MemoryEstimate {
        let d = &self.dims;
        memory::estimate(&self.sizes, req, self.latent_shape(req), (d.patch_size_t, d.patch_size), d.vae_spatial, vae)
    }

    /// Checks the request before any model runs (each error names the flag and its rule) and
    /// builds its scheduler, once for all its prompts.
    pub fn prepare(&self, req: GenerateRequest) -> Result<PreparedRequest> {
        self.validate(&req)?;
        let scheduler = self.scheduler(&req).map_err(|e| match e {
            Error::InvalidSamplingSteps { .. } => invalid("--num_sampling_steps", e.to_string()),
            other => other,
        })?;
        if scheduler.timesteps().is_empty() {
            return Err(invalid("--num_sampling_steps", "the scheduler produced no timesteps".into()));
        }
        Ok(PreparedRequest { req, scheduler })
    }

    /// The checks of [`Self::prepare`] that come before the scheduler.
    fn validate(&self, req: &GenerateRequest) -> Result<()> {
        if req.prompts.is_empty() {
            return Err(invalid("--text_prompt", "at least one prompt is required".into()));
        }
        if let Some(i) = req.prompts.iter().position(|p| p.trim().is_empty()) {
            return Err(invalid("--text_prompt", format!("prompt {i} is empty; every prompt needs some text")));
        }
        if let Some(t) = &req.prompt_template {
            if !t.contains("{}") {
                return Err(invalid(
                    "--prompt-template",
                    format!("must contain `{{}}` where the prompt goes, got {t:?}"),
                ));
            }
        }
        let vt = self.dims.vae_temporal;
        if req.num_frames == 0 || !(req.num_frames - 1).is_multiple_of(vt) {
            return Err(invalid(
                "--num_frames",
                format!(
                    "must be {vt}n + 1 (1, 5, 9, ..., 93, ...) for the VAE's {vt}x time compression, got {}",
                    req.num_frames
                ),
            ));
        }
        let m = self.manifest.defaults.spatial_multiple;
        for (flag, v) in [("--height", req.height), ("--width", req.width)] {
            if v == 0 || !v.is_multiple_of(m) {
                return Err(invalid(
                    flag,
                    format!(
                        "must be a positive multiple of {m} (VAE {}x x DiT patch {} and the bundle's spatial_multiple), got {v}",
                        self.dims.vae_spatial, self.dims.patch_size
                    ),
                ));
            }
        }
        if req.num_sampling_steps == 0 {
            return Err(invalid("--num_sampling_steps", "must be at least 1".into()));
        }
        if !(req.guidance_scale.is_finite() && req.guidance_scale >= 1.0) {
            return Err(invalid(
                "--guidance_scale",
                format!("must be >= 1 (1 turns classifier-free guidance off), got {}", req.guidance_scale),
            ));
        }
        if !(0.0..=1.0).contains(&req.guidance_rescale) {
            return Err(invalid("--guidance-rescale", format!("must be in [0, 1], got {}", req.guidance_rescale)));
        }
        if req.num_samples_per_prompt == 0 {
            return Err(invalid("--num_samples_per_prompt", "must be at least 1".into()));
        }
        if req.max_sequence_length < 2 {
            return Err(invalid(
                "--max_sequence_length",
                format!("must be at least 2 (text and `</s>`), got {}", req.max_sequence_length),
            ));
        }
        if let Some(t) = &req.decode.tiling {
            t.validate().map_err(|e| invalid("--tile-size / --tile-overlap", e.to_string()))?;
        }
        let latent_frames = (req.num_frames - 1) / vt + 1;
        if let (None, Some(max)) = (req.decode.chunk, self.vae_graphs.max_latent_frames) {
            if latent_frames > max {
                return Err(invalid(
                    "--num_frames",
                    format!(
                        "{} frames are {latent_frames} latent frames, more than the whole VAE decoder takes ({max}); \
                         decode in chunks with --stream-chunk",
                        req.num_frames
                    ),
                ));
            }
        }
        if let Some(chunk) = req.decode.chunk {
            let Some(p) = self.vae_graphs.streaming.as_ref().map(|s| s.protocol()) else {
                return Err(invalid("--stream-chunk", "the VAE bundle has no streaming decoder graphs".into()));
            };
            if chunk == 0 || chunk > p.max_chunk_latents {
                return Err(invalid(
                    "--stream-chunk",
                    format!("must be 1..={} latent frames per call, got {chunk}", p.max_chunk_latents),
                ));
            }
        }
        Ok(())
    }

    /// The text encoded for `prompt`.
    pub fn templated(&self, req: &GenerateRequest, prompt: &str) -> String {
        match &req.prompt_template {
            Some(t) => t.replacen("{}", prompt, 1),
            None => prompt.to_string(),
        }
    }
}

impl Pipeline {
    /// Runs prompt `index` of `req`.
    pub fn generate_prompt(
        &mut self,
        req: &PreparedRequest,
        index: usize,
        noise: &mut dyn NoiseSource,
        observer: &mut dyn GenerateObserver,
    ) -> Result<PromptOutput> {
        let _span = tracing::info_span!("generate", prompt = index).entered();
        let user = req.prompts.get(index).ok_or_else(|| invalid("prompt index", format!("{index} is out of range")))?;
        let prompt = self.templated(req, user);
        let n = req.num_samples_per_prompt;
        let cfg = req.guidance_scale > 1.0;
        let l = req.max_sequence_length;

        let in_prompt = |e: Error| e.for_prompt(index, &prompt);
        let started = Instant::now();
        let positions = self.text_positions;
        let positive = self.text.encode_positions(&[prompt.as_str()], l, false, positions).map_err(in_prompt)?;
        let negative = if cfg {
            let negative = req.negative_prompt.as_str();
            Some(self.text.encode_positions(&[negative], l, true, positions).map_err(in_prompt)?)
        } else {
            None
        };
        observer.stage(index, "text_encode", started.elapsed().as_secs_f64());

        // CFG batch: [negative] * n + [positive] * n.
        let mut rows: Vec<&TextEmbeddings> = Vec::new();
        if let Some(neg) = &negative {
            rows.extend(std::iter::repeat_n(neg, n));
        }
        rows.extend(std::iter::repeat_n(&positive, n));
        let (states, mask) = dit_text_inputs(&rows, self.dims.caption_channels)?;
        let batch = rows.len();
        // The cross-attention keys and values of every block, once per prompt.
        // The parallel DiT reads the text states itself; the cached pair serves the single graph.
        let text_kv = match &mut self.denoiser {
            Denoiser::Single { text: Some(session), .. } => {
                Some(session.run(&[("encoder_hidden_states", &states)]).map_err(in_prompt)?)
            }
            _ => None,
        };

        let mut scheduler = req.scheduler();
        let shape = self.latent_shape(req);
        let mut latents = match noise.init_latents(index, &shape)? {
            InitLatents::StandardNormal(x) => {
                let sigma = scheduler.init_noise_sigma();
                x.mapv(|v| v * sigma)
            }
            InitLatents::Scaled(x) => x,
        };
        finite::check("initial latents", latents.view()).map_err(in_prompt)?;
        let timesteps = scheduler.timesteps().to_vec();
        let total = timesteps.len();
        for (i, &t) in timesteps.iter().enumerate() {
            let _step = tracing::trace_span!("denoise_step", step = i).entered();
            let started = Instant::now();
            let scaled = scheduler.scale_model_input(&latents, i)?;
            let model_input = if cfg { cat0(&[&scaled, &scaled])? } else { scaled };
            let timestep = Tensor::F32(ArrayD::from_elem(IxDyn(&[batch]), t));
            let hidden = Tensor::F32(model_input);
            let dit_out = match &mut self.denoiser {
                Denoiser::Parallel(dit) => dit.run(&[
                    ("hidden_states", &hidden),
                    ("timestep", &timestep),
                    ("encoder_hidden_states", &states),
                    ("encoder_attention_mask", &mask),
                ])?,
                Denoiser::Single { step, .. } => {
                    let mut inputs =
                        vec![("hidden_states", &hidden), ("timestep", &timestep), ("encoder_attention_mask", &mask)];
                    match &text_kv {
                        Some(kv) => inputs.extend(kv.iter().map(|(name, t)| (name.as_str(), t))),
                        None => inputs.push(("encoder_hidden_states", &states)),
                    }
                    let mut out = step.run(&inputs)?;
                    take_f32(&mut out, TRANSFORMER_GRAPH, DIT_OUTPUT)?
                }
            };
            finite::check("transformer output", dit_out.view()).map_err(|e| in_prompt(e.at_step(i)))?;
            let guided = if cfg {
                let uncond = dit_out.slice_axis(Axis(0), (0..n).into()).to_owned();
                let text = dit_out.slice_axis(Axis(0), (n..2 * n).into()).to_owned();
                let g = req.guidance_scale;
                let guided = Zip::from(&uncond).and(&text).map_collect(|&u, &c| u + g * (c - u));
                if req.guidance_rescale > 0.0 {
                    rescale_noise_cfg(&guided, &text, req.guidance_rescale)
                } else {
                    guided
                }
            } else {
                dit_out.clone()
            };
            let step_noise =
                if scheduler.needs_noise() { Some(noise.step_noise(index, i, latents.shape())?) } else { None };
            let prev = scheduler.step(&guided, i, &latents, step_noise.as_ref())?;
            finite::check("latents after the scheduler step", prev.view()).map_err(|e| in_prompt(e.at_step(i)))?;
            observer.stage(index, "denoise_step", started.elapsed().as_secs_f64());
            observer.step(
                index,
                i,
                total,
                &StepRecord {
                    latents: &latents,
                    timestep: t,
                    dit_out: &dit_out,
                    guided: &guided,
                    noise: step_noise.as_ref(),
                    prev_sample: &prev,
                },
            );
            latents = prev;
        }

        let started = Instant::now();
        let (decoded, frames) = if req.keep_decoded {
            let decoded = self.decode_latents(&latents, &req.decode).map_err(in_prompt)?;
            let frames = (0..n)
                .map(|b| to_uint8_frames(&decoded, b, req.num_frames, req.height, req.width))
                .collect::<Result<_>>()?;
            (Some(decoded), frames)
        } else {
            let z = self.vaes[0].unnormalize(&latents)?;
            let videos =
                crate::vae::decode_frames_parallel(&mut self.vaes, z.view(), &req.decode).map_err(in_prompt)?;
            let frames = videos
                .into_iter()
                .map(|v| crop_frames(v, req.num_frames, req.height, req.width))
                .collect::<Result<_>>()?;
            (None, frames)
        };
        observer.stage(index, "vae_decode", started.elapsed().as_secs_f64());
        Ok(PromptOutput { prompt, positive, negative, latents, decoded, frames })
    }

    /// Un-normalises and decodes latents `[n, c, t, h, w]` to video `[n, 3, f, H, W]`
    /// ([`Vae::decode_latents`]), spatial tiles spread over the VAE workers
    /// ([`crate::vae::decode_parallel`]).
    pub fn decode_latents(&mut self, latents: &ArrayD<f32>, opts: &DecodeOptions) -> Result<Array5<f32>> {
        let z = self.vaes[0].unnormalize(latents)?;
        crate::vae::decode_parallel(&mut self.vaes, z.view(), opts)
    }
}

fn take_f32(out: &mut std::collections::BTreeMap<String, Tensor>, graph: &str, name: &str) -> Result<ArrayD<f32>> {
    let produced = out.keys().cloned().collect::<Vec<_>>().join(", ");
    match out.remove(name) {
        Some(Tensor::F32(a)) => Ok(a),
        Some(other) => Err(Error::OutputMismatch {
            graph: graph.into(),
            output: name.into(),
            expected: "f32".into(),
            got: other.describe(),
        }),
        None => Err(Error::MissingOutput { graph: graph.into(), output: name.into(), produced }),
    }
}

fn cat0(parts: &[&ArrayD<f32>]) -> Result<ArrayD<f32>> {
    let views: Vec<_> = parts.iter().map(|a| a.view()).collect();
    concatenate(Axis(0), &views).map_err(|e| Error::Tensor { name: "cfg batch".into(), why: e.to_string() })
}

/// `encoder_hidden_states` `[b, 1, l, d]` and `encoder_attention_mask` f32 `[b, 1, l]` from one
/// `[1, l_i, d]` embedding per batch row, `l` the longest row; shorter rows (real-token
/// embeddings, [`TextPositions::Real`]) are zero-filled and masked up to `l`.
fn dit_text_inputs(rows: &[&TextEmbeddings], d: usize) -> Result<(Tensor, Tensor)> {
    let b = rows.len();
    let l = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let mut states = Vec::with_capacity(b * l * d);
    let mut mask = Vec::with_capacity(b * l);
    for r in rows {
        let (Tensor::F32(e), Tensor::I64(m)) = (&r.embeddings, &r.mask) else {
            return Err(Error::Tensor { name: "prompt_embeds".into(), why: "must be f32 with an i64 mask".into() });
        };
        let li = r.len();
        if e.shape() != [1, li, d] || m.shape() != [1, li] {
            return Err(Error::Tensor {
                name: "prompt_embeds".into(),
                why: format!("must be [1, {li}, {d}] with a [1, {li}] mask, got {:?} and {:?}", e.shape(), m.shape()),
            });
        }
        states.extend(e.iter().copied());
        states.resize(states.len() + (l - li) * d, 0.0);
        mask.extend(m.iter().map(|&v| v as f32));
        mask.resize(mask.len() + (l - li), 0.0);
    }
    let shaped = |e: ndarray::ShapeError| Error::Tensor { name: "encoder_hidden_states".into(), why: e.to_string() };
    Ok((
        Tensor::F32(ArrayD::from_shape_vec(IxDyn(&[b, 1, l, d]), states).map_err(shaped)?),
        Tensor::F32(ArrayD::from_shape_vec(IxDyn(&[b, 1, l]), mask).map_err(shaped)?),
    ))
}

/// diffusers `rescale_noise_cfg` (arXiv:2305.08891 §3.4): rescales the guided prediction to the
/// per-sample standard deviation (unbiased, over all but the batch axis) of the text prediction,
/// mixed by `phi`.
pub fn rescale_noise_cfg(guided: &ArrayD<f32>, text: &ArrayD<f32>, phi: f32) -> ArrayD<f32> {
    let std = |a: ndarray::ArrayViewD<f32>| -> f32 {
        let n = a.len() as f64;
        let mean = a.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let var = a.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
        var.sqrt() as f32
    };
    let mut out = guided.clone();
    for (b, mut row) in out.axis_iter_mut(Axis(0)).enumerate() {
        let s_text = std(text.index_axis(Axis(0), b));
        let s_cfg = std(guided.index_axis(Axis(0), b));
        let factor = if s_cfg > 0.0 { s_text / s_cfg } else { 1.0 };
        row.mapv_inplace(|v| phi * (v * factor) + (1.0 - phi) * v);
    }
    out
}

/// Frames `[f, H, W, 3]` cropped to `[:num_frames, :height, :width]` as upstream `__call__`.
fn crop_frames(frames: Array4<u8>, num_frames: usize, height: usize, width: usize) -> Result<Array4<u8>> {
    let (f, h, w, _) = frames.dim();
    if f < num_frames || h < height || w < width {
        return Err(Error::VideoArg {
            what: format!("decoded frames {:?}", frames.shape()),
            rule: format!("must be at least {num_frames} x {height} x {width}"),
        });
    }
    if (f, h, w) == (num_frames, height, width) {
        return Ok(frames);
    }
    Ok(frames.slice(s![..num_frames, ..height, ..width, ..]).to_owned())
}

/// Sample `b` of a decoded video `[n, 3, f, H, W]` as upstream `decode_latents` + `__call__`
/// crop: `((x / 2 + 0.5).clamp(0, 1) * 255)` truncated to uint8, `[f, H, W, 3]`, cropped to
/// `[:num_frames, :height, :width]`. That is [`crate::video::quantise`] (upstream
/// `custom_to_video`'s `(255 * (x.clamp(-1, 1) + 1) / 2)`) bit for bit: halving is exact in f32,
/// so `x / 2 + 0.5` and `(x + 1) / 2` round identically, and the clamps commute with the map.
pub fn to_uint8_frames(
    video: &Array5<f32>,
    b: usize,
    num_frames: usize,
    height: usize,
    width: usize,
) -> Result<Array4<u8>> {
    let (n, c, f, h, w) = video.dim();
    if b >= n || c != 3 || f < num_frames || h < height || w < width {
        return Err(Error::VideoArg {
            what: format!("decoded video {:?}", video.shape()),
            rule: format!("must be [n > {b}, 3, >= {num_frames}, >= {height}, >= {width}]"),
        });
    }
    let v = video.slice(s![b, .., ..num_frames, ..height, ..width]);
    Ok(v.permuted_axes([1, 2, 3, 0]).mapv(crate::video::quantise).as_standard_layout().into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uint8_truncates_like_upstream() {
        // x = 0.0 -> 0.5 * 255 = 127.5 -> 127 (truncation, not 128); -1 -> 0; 1 -> 255; 3 -> 255; -0.999 -> 0.
        let v = Array5::from_shape_vec((1, 3, 1, 1, 2), vec![0.0, -1.0, 1.0, 3.0, -0.999, 0.9999]).unwrap();
        let f = to_uint8_frames(&v, 0, 1, 1, 2).unwrap();
        assert_eq!(f.shape(), [1, 1, 2, 3]);
        assert_eq!(f.iter().copied().collect::<Vec<_>>(), vec![127, 255, 0, 0, 255, 254]);
        assert!(to_uint8_frames(&v, 1, 1, 1, 2).is_err());
    }

    #[test]
    fn upstream_pipeline_quantisation_is_custom_to_video_bit_for_bit() {
        let pipeline = |x: f32| ((x / 2.0 + 0.5).clamp(0.0, 1.0) * 255.0) as u8;
        let mut checked = 0usize;
        for bits in (0u32..=u32::MAX).step_by(97).chain([0.0f32, -1.0, 1.0, 0.5, -0.5].map(f32::to_bits)) {
            let x = f32::from_bits(bits);
            if x.is_finite() && x.abs() <= 2.0 {
                assert_eq!(pipeline(x), crate::video::quantise(x), "{x:e}");
                checked += 1;
            }
        }
        assert!(checked > 20_000_000, "{checked}");
    }

    #[test]
    fn other_samplers_get_upstream_get_scheduler_flags() {
        let base = SchedulerConfig::open_sora_plan_v13(SampleMethod::EulerAncestralDiscrete);
        let spec = PipelineSpec {
            dir: PathBuf::new(),
            manifest: PipelineManifest {
                format_version: osp_graphs::pipeline::PIPELINE_FORMAT_VERSION,
                components: Default::default(),
                scheduler: Default::default(),
                defaults: osp_graphs::PipelineDefaults::open_sora_plan_v13(),
                provenance: Default::default(),
            },
            dims: PipelineDims {
                latent_channels: 8,
                caption_channels: 32,
                patch_size: 2,
                patch_size_t: 1,
                vae_temporal: 4,
                vae_spatial: 8,
            },
            scheduler_config: base.clone(),
            vae_graphs: VaeGraphs::default(),
            sizes: Default::default(),
        };
        assert_eq!(spec.scheduler_config(SampleMethod::EulerAncestralDiscrete), base);
        for m in [SampleMethod::Ddim, SampleMethod::EulerDiscrete, SampleMethod::DpmSolverMultistep, SampleMethod::Pndm]
        {
            assert_eq!(spec.scheduler_config(m), SchedulerConfig::open_sora_plan_v13(m), "{m}");
        }
    }

    /// Each prompt runs a copy of the request's scheduler: a copy taken before any step runs a
    /// whole loop bit-identically to a freshly built scheduler, also after another copy ran (the
    /// multistep and ancestral schedulers carry state between steps).
    #[test]
    fn scheduler_copies_run_like_fresh_schedulers() {
        let methods = [
            SampleMethod::EulerAncestralDiscrete,
            SampleMethod::Ddim,
            SampleMethod::EulerDiscrete,
            SampleMethod::DpmSolverMultistep,
            SampleMethod::Pndm,
        ];
        let run = |mut s: Box<dyn Scheduler>| -> Vec<f32> {
            let mut x = ArrayD::from_shape_fn(IxDyn(&[1, 2, 3]), |i| (i[1] * 3 + i[2]) as f32 * 0.3 - 0.7);
            for i in 0..s.timesteps().len() {
                let eps = x.mapv(|v| (v * 1.7).sin());
                let noise = s.needs_noise().then(|| x.mapv(|v| (v * 3.1).cos()));
                x = s.step(&eps, i, &x, noise.as_ref()).unwrap();
            }
            x.iter().copied().collect()
        };
        for m in methods {
            let fresh = || {
                let mut s = m.build(&SchedulerConfig::open_sora_plan_v13(m)).unwrap();
                s.set_timesteps(6).unwrap();
                s
            };
            let prepared = fresh();
            let first = run(prepared.clone());
            let second = run(prepared.clone());
            let want = run(fresh());
            assert_eq!(first, want, "{m}");
            assert_eq!(second, want, "{m}");
        }
    }

    #[test]
    fn rescale_matches_the_formula() {
        let guided = ArrayD::from_shape_vec(IxDyn(&[1, 4]), vec![0.0, 2.0, 4.0, 6.0]).unwrap();
        let text = ArrayD::from_shape_vec(IxDyn(&[1, 4]), vec![0.0, 1.0, 2.0, 3.0]).unwrap();
        // std ratio 0.5: phi = 1 halves, phi = 0 keeps.
        assert_eq!(
            rescale_noise_cfg(&guided, &text, 1.0).iter().copied().collect::<Vec<_>>(),
            vec![0.0, 1.0, 2.0, 3.0]
        );
        assert_eq!(rescale_noise_cfg(&guided, &text, 0.0), guided);
    }
}
