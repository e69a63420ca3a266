//! `osp generate`: text to video with a pipeline bundle, taking upstream `sample.py`'s flags
//! (snake_case as upstream, kebab-case too).
//!
//! `osp generate --bundle B --text_prompt "A cat." --num_frames 9 --height 64 --width 96 --seed 1234`

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};
use osp_graphs::path::PathKind;
use osp_runtime::pipeline::memory;
use osp_runtime::pipeline::noise::{NoiseSource, ReplayNoise, SeededNoise};
use osp_runtime::pipeline::trt_profile;
use osp_runtime::pipeline::{
    DecodeOptions, GenerateObserver, GenerateRequest, Pipeline, PipelineSpec, Placement, StepRecord,
};
use osp_runtime::scheduler::{PredictionType, SampleMethod};
use osp_runtime::text::cache::{default_cache_dir, CACHE_DIR_ENV};
use osp_runtime::text::{EmbeddingCache, TextPositions};
use osp_runtime::vae::TilingConfig;
use osp_runtime::video;
use osp_runtime::{read_safetensors, write_safetensors, BackendKind, Tensor};

use super::extract_text_embeds::ProgressArg;
use super::reconstruct::EncodeOpts;
use super::BackendOpts;

/// Container of the written videos.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// H.264 in mp4.
    Mp4,
    /// Animated GIF.
    Gif,
    /// A folder of PNG frames per video.
    Png,
}

/// The sampling flags shared by `osp generate` and `osp bench`; unset ones come from the
/// bundle's `pipeline.json` defaults.
#[derive(Debug, Clone, Args)]
pub struct SamplingOpts {
    /// The pipeline bundle (`osp-export pipeline`).
    #[arg(long, env = "OSP_PIPELINE_BUNDLE")]
    pub bundle: PathBuf,
    /// Prompts, or one `.txt` file with a prompt per line (blank lines skipped).
    #[arg(long, alias = "text_prompt", num_args = 1.., required = true)]
    pub text_prompt: Vec<String>,
    /// Frames per video (4n + 1).
    #[arg(long, alias = "num_frames")]
    pub num_frames: Option<usize>,
    /// Height in pixels (a multiple of the bundle's spatial_multiple, 32 for the release).
    #[arg(long)]
    pub height: Option<usize>,
    /// Width in pixels (a multiple of the bundle's spatial_multiple).
    #[arg(long)]
    pub width: Option<usize>,
    /// Denoising steps.
    #[arg(long, alias = "num_sampling_steps")]
    pub num_sampling_steps: Option<usize>,
    /// Classifier-free guidance scale (>= 1; 1 turns guidance off).
    #[arg(long, alias = "guidance_scale")]
    pub guidance_scale: Option<f32>,
    /// diffusers' guidance rescale factor in [0, 1] (0 = off, as upstream sample.py).
    #[arg(long, alias = "guidance_rescale", default_value_t = 0.0)]
    pub guidance_rescale: f32,
    /// Sampler (upstream names).
    #[arg(long, alias = "sample_method", value_enum)]
    pub sample_method: Option<SampleMethod>,
    /// Videos per prompt.
    #[arg(long, alias = "num_samples_per_prompt", default_value_t = 1)]
    pub num_samples_per_prompt: usize,
    /// Text length in tokens (`</s>` included); longer prompts are truncated with a warning.
    #[arg(long, alias = "max_sequence_length")]
    pub max_sequence_length: Option<usize>,
    /// Negative prompt (default: upstream's nsfw/lowres/... list).
    #[arg(long, alias = "negative_prompt", conflicts_with = "no_negative_prompt")]
    pub negative_prompt: Option<String>,
    /// Use an empty negative prompt (upstream OpenSoraPipeline's own default).
    #[arg(long)]
    pub no_negative_prompt: bool,
    /// Prompt template (`{}` is the prompt; default: upstream's "high quality, high aesthetic, {}").
    #[arg(long, conflicts_with = "no_prompt_template")]
    pub prompt_template: Option<String>,
    /// Encode the prompts as given, without the template.
    #[arg(long)]
    pub no_prompt_template: bool,
    /// Decode with the streaming VAE graphs, this many latent frames per call (bounded memory).
    #[arg(long)]
    pub stream_chunk: Option<usize>,
    /// Upstream's flag: decode in temporal chunks (the streaming graphs, upstream `t_chunk_dec` = 2
    /// latents per call unless --stream-chunk); exact for every latent count, unlike upstream.
    #[arg(long, alias = "enable_tiling")]
    pub enable_tiling: bool,
    /// Decode spatial tiles blended linearly (see --tile-size and --tile-overlap).
    #[arg(long)]
    pub spatial_tiling: bool,
    /// Latent tile height and width with --spatial-tiling (x8 output pixels).
    #[arg(long, default_value_t = TilingConfig::default().tile_size)]
    pub tile_size: usize,
    /// Latent pixels shared by neighbouring tiles, blended linearly.
    #[arg(long, default_value_t = TilingConfig::default().overlap)]
    pub tile_overlap: usize,
    /// Embedding cache directory (default: ~/.cache/osp/text).
    #[arg(long, env = CACHE_DIR_ENV)]
    pub cache_dir: Option<PathBuf>,
    /// Do not read or write the text-embedding cache.
    #[arg(long)]
    pub no_text_cache: bool,
    /// Override the bundle's scheduler: what the model predicts (epsilon, v_prediction, sample).
    #[arg(long, alias = "prediction_type", value_parser = parse_prediction_type)]
    pub prediction_type: Option<PredictionType>,
    /// Override the bundle's scheduler: zero-terminal-SNR betas with trailing timesteps.
    #[arg(long, alias = "rescale_betas_zero_snr")]
    pub rescale_betas_zero_snr: bool,
    #[command(flatten)]
    pub upstream: UpstreamOnly,
    /// Replace the computed schedule by `scheduler.timesteps` and `scheduler.sigmas` from this
    /// safetensors file (exact replay of a recorded run).
    #[arg(long)]
    pub recorded_schedule: Option<PathBuf>,
    /// Run even when the request's estimated peak memory exceeds the host's available memory
    /// (see docs/reliability_checks.md for the estimate).
    #[arg(long, env = "OSP_SKIP_MEMORY_CHECK")]
    pub skip_memory_check: bool,
    /// Text positions the encoder computes and the transformer reads: `real` (the prompt's tokens
    /// only; same videos within `Close`) or `padded` (all --max-sequence-length positions, as
    /// upstream). Default: `real`, or `padded` with --dump-latents (whose text embeddings keep
    /// upstream's recording format). See docs/text_encoder.md.
    #[arg(long, value_enum)]
    pub text_positions: Option<TextPositions>,
    #[command(flatten)]
    pub parallel: super::parallel::ParallelOpts,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub sampling: SamplingOpts,
    /// Seed of the noise (xoshiro256++ + Box-Muller, one stream per prompt; identical output for
    /// a seed on one machine and backend).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Frames per second of the written videos.
    #[arg(long)]
    pub fps: Option<f64>,
    /// Output folder; files are named like upstream: `{sample_method}_{index}_gs{g}_s{steps}[_i{k}].mp4`.
    #[arg(long, alias = "save_img_path", default_value = "./sample_videos/t2v")]
    pub save_img_path: PathBuf,
    /// Replace videos of the same name in the output folder. Without it an existing file is kept and
    /// the new video gets the first free name `{name}-{k}` (k = 1, 2, ...), with a warning naming both.
    #[arg(long)]
    pub overwrite: bool,
    /// Container for videos (one-frame results are always written as .png images).
    #[arg(long, value_enum, default_value_t = OutputFormat::Mp4)]
    pub output_format: OutputFormat,
    /// Initial latents: a safetensors file with `p{i}.latents.init_randn` (standard normal, scaled
    /// by init_noise_sigma here) or `p{i}.latents.init` (already scaled), per prompt i.
    #[arg(long)]
    pub init_latents: Option<PathBuf>,
    /// Per-step ancestral noise: a safetensors file with `p{i}.step{k}.noise` (standard normal).
    #[arg(long)]
    pub step_noise: Option<PathBuf>,
    /// Write every step's tensors (`p{i}.step{k}.{latents,dit_out,guided,noise,prev_sample}`), the text
    /// embeddings and masks (`p{i}.text.{pos,neg}.*`), `p{i}.latents.final`, `p{i}.vae.decoded` and
    /// `p{i}.video.final` to this safetensors file (the e2e recording's key names).
    #[arg(long)]
    pub dump_latents: Option<PathBuf>,
    /// Also write upstream's grids: per prompt of its samples (with --num_samples_per_prompt > 1),
    /// and of all prompts, `{sample_method}_gs{g}_s{steps}.mp4` (1 px black padding).
    #[arg(long)]
    pub grid: bool,
    /// Progress display over the denoising steps.
    #[arg(long, value_enum, default_value_t = ProgressArg::Bar)]
    pub progress: ProgressArg,
    #[command(flatten)]
    pub encode: EncodeOpts,
    #[command(flatten)]
    pub refiner: super::refine::RefinerOpts,
}

/// Upstream `sample.py` flags that locate or place the models; the pipeline bundle already holds
/// the models, so they are accepted (a pasted upstream command runs) and ignored with a warning.
#[derive(Debug, Clone, Args)]
pub struct UpstreamOnly {
    #[arg(id = "upstream_model_path", long = "model_path", hide = true)]
    pub model_path: Option<String>,
    #[arg(id = "upstream_version", long = "version", hide = true)]
    pub version: Option<String>,
    #[arg(id = "upstream_model_type", long = "model_type", hide = true)]
    pub model_type: Option<String>,
    #[arg(id = "upstream_ae", long = "ae", hide = true)]
    pub ae: Option<String>,
    #[arg(id = "upstream_ae_path", long = "ae_path", hide = true)]
    pub ae_path: Option<String>,
    #[arg(id = "upstream_text_encoder_name_1", long = "text_encoder_name_1", hide = true)]
    pub text_encoder_name_1: Option<String>,
    #[arg(id = "upstream_cache_dir", long = "cache_dir", hide = true)]
    pub cache_dir: Option<String>,
    #[arg(id = "upstream_local_rank", long = "local_rank", hide = true, allow_hyphen_values = true)]
    pub local_rank: Option<String>,
    #[arg(id = "upstream_world_size", long = "world_size", hide = true)]
    pub world_size: Option<String>,
    #[arg(id = "upstream_save_memory", long = "save_memory", hide = true)]
    pub save_memory: bool,
    #[arg(id = "upstream_compile", long = "compile", hide = true)]
    pub compile: bool,
}

impl UpstreamOnly {
    fn warn(&self) {
        let given: Vec<&str> = [
            ("--model_path", self.model_path.is_some()),
            ("--version", self.version.is_some()),
            ("--model_type", self.model_type.is_some()),
            ("--ae", self.ae.is_some()),
            ("--ae_path", self.ae_path.is_some()),
            ("--text_encoder_name_1", self.text_encoder_name_1.is_some()),
            ("--cache_dir", self.cache_dir.is_some()),
            ("--local_rank", self.local_rank.is_some()),
            ("--world_size", self.world_size.is_some()),
            ("--save_memory", self.save_memory),
            ("--compile", self.compile),
        ]
        .into_iter()
        .filter_map(|(flag, set)| set.then_some(flag))
        .collect();
        if !given.is_empty() {
            tracing::warn!(
                flags = %given.join(" "),
                "ignored: the pipeline bundle holds the models (export it with osp-export pipeline); use --backend, \
                 --device and --threads for placement"
            );
        }
    }
}

fn parse_prediction_type(s: &str) -> Result<PredictionType, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| format!("`{s}` is not one of epsilon, v_prediction, sample"))
}

impl SamplingOpts {
    /// The prompts: the strings given, or the lines of a single argument ending in `.txt`, which
    /// (as upstream `sample.py`) is always a prompt file: a missing or unreadable one is an error.
    pub fn prompts(&self) -> anyhow::Result<Vec<String>> {
        read_prompts(&self.text_prompt)
    }

    /// The request: the bundle's defaults ([`PipelineSpec::default_request`]) with the flags given.
    pub fn request(&self, pipeline: &PipelineSpec) -> anyhow::Result<GenerateRequest> {
        let d = pipeline
            .default_request(self.prompts()?)
            .with_context(|| format!("the defaults of {}", pipeline.dir().join(osp_graphs::PIPELINE_FILE).display()))?;
        let recorded_schedule = match &self.recorded_schedule {
            None => None,
            Some(path) => {
                let t = read_safetensors(path)?;
                let get = |k: &str| -> anyhow::Result<Vec<f32>> {
                    match t.get(k) {
                        Some(Tensor::F32(a)) => Ok(a.iter().copied().collect()),
                        _ => anyhow::bail!("--recorded-schedule {}: needs f32 `{k}`", path.display()),
                    }
                };
                Some((get("scheduler.timesteps")?, get("scheduler.sigmas")?))
            }
        };
        Ok(GenerateRequest {
            prompt_template: if self.no_prompt_template {
                None
            } else {
                self.prompt_template.clone().or(d.prompt_template.clone())
            },
            negative_prompt: if self.no_negative_prompt {
                String::new()
            } else {
                self.negative_prompt.clone().unwrap_or_else(|| d.negative_prompt.clone())
            },
            num_frames: self.num_frames.unwrap_or(d.num_frames),
            height: self.height.unwrap_or(d.height),
            width: self.width.unwrap_or(d.width),
            num_sampling_steps: self.num_sampling_steps.unwrap_or(d.num_sampling_steps),
            guidance_scale: self.guidance_scale.unwrap_or(d.guidance_scale),
            guidance_rescale: self.guidance_rescale,
            sample_method: self.sample_method.unwrap_or(d.sample_method),
            num_samples_per_prompt: self.num_samples_per_prompt,
            max_sequence_length: self.max_sequence_length.unwrap_or(d.max_sequence_length),
            decode: DecodeOptions {
                chunk: match (self.stream_chunk, self.enable_tiling) {
                    (Some(chunk), _) => Some(chunk),
                    (None, true) => Some(pipeline.default_stream_chunk().context(
                        "--enable_tiling: the VAE bundle has no streaming decoder graphs (re-export it with osp-export)",
                    )?),
                    (None, false) => None,
                },
                tiling: self
                    .spatial_tiling
                    .then_some(TilingConfig { tile_size: self.tile_size, overlap: self.tile_overlap }),
            },
            recorded_schedule,
            prediction_type: self.prediction_type,
            rescale_betas_zero_snr: self.rescale_betas_zero_snr,
            ..d
        })
    }

    /// Refuses `req` when its estimated peak memory exceeds what the host has available, unless
    /// --skip-memory-check; with `placement`'s VAE workers ([`Self::placement`]); on a GPU
    /// backend only the host part (weights, runtime, video, further VAE sessions) counts.
    pub fn check_memory(
        &self,
        spec: &PipelineSpec,
        req: &GenerateRequest,
        backend: &BackendOpts,
        placement: Option<&Placement>,
    ) -> anyhow::Result<()> {
        if self.skip_memory_check {
            return Ok(());
        }
        let vae = placement.map_or(memory::VaeWorkers::ONE, Placement::vae_workers);
        let mut estimate = spec.memory_estimate(req, vae);
        if matches!(backend.backend, BackendKind::OrtCuda | BackendKind::OrtTensorrt) {
            estimate = estimate.host_part_with_gpu();
        }
        let Some(host) = osp_runtime::mem::host_available() else {
            tracing::warn!("the host's available memory cannot be read; the memory check is skipped");
            return Ok(());
        };
        tracing::debug!(%estimate, available = host.available, "memory estimate");
        memory::check(&estimate, &host)?;
        Ok(())
    }

    /// Reads the bundle's manifests and checks them (no model is loaded).
    pub fn spec(&self) -> anyhow::Result<PipelineSpec> {
        self.upstream.warn();
        PipelineSpec::open(&self.bundle)
            .with_context(|| format!("opening the pipeline bundle {}", self.bundle.display()))
    }

    /// Checks --sp / --cfg-parallel / --devices against `req` (nothing loads): where the models
    /// run, `None` for everything on the backend's one device.
    pub fn placement(
        &self,
        spec: &PipelineSpec,
        req: &GenerateRequest,
        backend: &BackendOpts,
    ) -> anyhow::Result<Option<Placement>> {
        self.parallel.check(spec, req, backend)
    }

    /// The text positions of a run: --text-positions, else `padded` when the run dumps upstream's
    /// recording format (`dump_latents`), else `real`.
    pub fn positions(&self, dump_latents: bool) -> TextPositions {
        self.text_positions.unwrap_or(if dump_latents { TextPositions::Padded } else { TextPositions::Real })
    }

    /// Loads the pipeline's models for `req` where `placement` says ([`Self::placement`]; `None`:
    /// on the backend's options) with the text cache the flags ask for: with --sp / --cfg-parallel
    /// the parallel DiT (not the single transformer graph), and one VAE per tile worker. On
    /// ort-tensorrt without --trt-profile, the DiT and VAE engines are built for `req`'s shapes
    /// ([`trt_profile::request_profiles`]).
    pub fn load_for(
        &self,
        spec: PipelineSpec,
        req: &GenerateRequest,
        backend: &BackendOpts,
        placement: Option<&Placement>,
        positions: TextPositions,
    ) -> anyhow::Result<Pipeline> {
        let cache = if self.no_text_cache {
            None
        } else {
            let dir = self.cache_dir.clone().unwrap_or_else(default_cache_dir);
            Some(EmbeddingCache::new(&dir).with_context(|| format!("text cache {}", dir.display()))?)
        };
        let mut placement = match placement {
            Some(p) => p.clone(),
            None => Placement::single(&backend.session_options()?),
        };
        if backend.backend == BackendKind::OrtTensorrt && backend.gpu.trt_profile.is_none() {
            let mut profiles = trt_profile::request_profiles(&spec, req, positions);
            if let Some(parallel) = &placement.dit {
                let dir = spec.dir().join(&spec.manifest().components.transformer);
                let manifest =
                    osp_graphs::BundleManifest::load(&dir).with_context(|| format!("reading {}", dir.display()))?;
                if let Some(protocol) = osp_graphs::DitSegments::read(&manifest.graphs)? {
                    let segments = trt_profile::segment_profiles(&protocol, parallel.plan, &spec, req, positions)
                        .map_err(|rule| anyhow::anyhow!("--sp: {rule}"))?;
                    profiles.extend(segments);
                }
            }
            tracing::debug!(?profiles, "TensorRT profiles from the request");
            placement = placement.with_trt_request_profiles(&profiles);
        }
        let pipeline = Pipeline::load_placed(spec, cache, &placement)
            .with_context(|| format!("loading the pipeline bundle {}", self.bundle.display()))?;
        Ok(pipeline.with_text_positions(positions))
    }
}

/// The prompts of `--text_prompt`: the strings given, or the lines of a single argument ending in
/// `.txt` (see [`SamplingOpts::prompts`]).
pub fn read_prompts(text_prompt: &[String]) -> anyhow::Result<Vec<String>> {
    if let [one] = text_prompt {
        if one.ends_with(".txt") {
            if let Err(why) = osp_graphs::path::require_file(Path::new(one)) {
                anyhow::bail!(
                    "--text_prompt `{one}` {why}; a single --text_prompt ending in .txt is read as a prompt \
                         file (one prompt per line, as upstream sample.py)"
                );
            }
            let text = std::fs::read_to_string(one).with_context(|| format!("reading --text_prompt {one}"))?;
            let prompts: Vec<String> =
                text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect();
            anyhow::ensure!(!prompts.is_empty(), "--text_prompt {one}: the file holds no prompt");
            return Ok(prompts);
        }
    }
    Ok(text_prompt.to_vec())
}

/// Python's `str(float)` for the file names (`7.5`, `7.0`).
fn py_float(v: f32) -> String {
    if v.fract() == 0.0 && v.abs() < 1e16 {
        format!("{v:.1}")
    } else {
        format!("{v}")
    }
}

/// Upstream's file names: `{sample_method}[_{index}]_gs{g}_s{steps}[_i{sample}]` with `.mp4` / `.gif`,
/// a folder of PNG frames, or `.png` for a one-frame result (upstream writes `.jpg`). When that
/// name is taken and `overwrite` is off, the first free `{name}-{k}` (k = 1, 2, ...) with a warning,
/// so an earlier video is never replaced unasked; with `overwrite`, a warning names the file replaced.
fn output_path(
    dir: &Path,
    req: &GenerateRequest,
    format: OutputFormat,
    index: Option<usize>,
    sample: Option<usize>,
    frames: usize,
    overwrite: bool,
) -> PathBuf {
    let stem = format!(
        "{}{}_gs{}_s{}{}",
        req.sample_method.name(),
        index.map(|i| format!("_{i}")).unwrap_or_default(),
        py_float(req.guidance_scale),
        req.num_sampling_steps,
        sample.map(|k| format!("_i{k}")).unwrap_or_default()
    );
    let ext = match (frames, format) {
        (1, _) => ".png",
        (_, OutputFormat::Mp4) => ".mp4",
        (_, OutputFormat::Gif) => ".gif",
        // A trailing `/` makes the writer treat the dotted stem (`gs7.5`) as a folder.
        (_, OutputFormat::Png) => "/",
    };
    let upstream = dir.join(format!("{stem}{ext}"));
    if !upstream.exists() {
        return upstream;
    }
    if overwrite {
        tracing::warn!("replacing {} (--overwrite)", upstream.display());
        return upstream;
    }
    let mut k = 1usize;
    let free = loop {
        let candidate = dir.join(format!("{stem}-{k}{ext}"));
        if !candidate.exists() {
            break candidate;
        }
        k += 1;
    };
    tracing::warn!("{} exists: writing {} instead (--overwrite replaces it)", upstream.display(), free.display());
    free
}

/// Progress over steps and the optional per-step dump.
struct Observer {
    bar: Box<dyn StepProgress>,
    dump: Option<BTreeMap<String, Tensor>>,
}

trait StepProgress {
    fn step(&mut self, prompt: usize, step: usize, total: usize);
}

struct Quiet;
impl StepProgress for Quiet {
    fn step(&mut self, _: usize, _: usize, _: usize) {}
}

struct JsonLines;
impl StepProgress for JsonLines {
    fn step(&mut self, prompt: usize, step: usize, total: usize) {
        eprintln!("{}", serde_json::json!({"prompt": prompt, "step": step + 1, "total": total}));
    }
}

#[cfg(feature = "progress")]
struct Bar(Option<(usize, indicatif::ProgressBar)>);

#[cfg(feature = "progress")]
impl StepProgress for Bar {
    fn step(&mut self, prompt: usize, step: usize, total: usize) {
        if self.0.as_ref().is_none_or(|(p, _)| *p != prompt) {
            let bar = indicatif::ProgressBar::new(total as u64);
            if let Ok(style) =
                indicatif::ProgressStyle::with_template("{msg} {bar:40} {pos}/{len} steps [{elapsed} < {eta}]")
            {
                bar.set_style(style);
            }
            bar.set_message(format!("prompt {prompt}"));
            self.0 = Some((prompt, bar));
        }
        if let Some((_, bar)) = &self.0 {
            bar.inc(1);
            if step + 1 == total {
                bar.finish();
            }
        }
    }
}

fn progress(arg: ProgressArg) -> Box<dyn StepProgress> {
    match arg {
        #[cfg(feature = "progress")]
        ProgressArg::Bar => Box::new(Bar(None)),
        #[cfg(not(feature = "progress"))]
        ProgressArg::Bar => Box::new(JsonLines),
        ProgressArg::Jsonl => Box::new(JsonLines),
        ProgressArg::Off => Box::new(Quiet),
    }
}

impl GenerateObserver for Observer {
    fn step(&mut self, prompt: usize, step: usize, total: usize, r: &StepRecord<'_>) {
        self.bar.step(prompt, step, total);
        if let Some(dump) = &mut self.dump {
            let key = |name: &str| format!("p{prompt}.step{step}.{name}");
            dump.insert(key("latents"), Tensor::F32(r.latents.clone()));
            dump.insert(key("dit_out"), Tensor::F32(r.dit_out.clone()));
            dump.insert(key("guided"), Tensor::F32(r.guided.clone()));
            if let Some(n) = r.noise {
                dump.insert(key("noise"), Tensor::F32(n.clone()));
            }
            dump.insert(key("prev_sample"), Tensor::F32(r.prev_sample.clone()));
        }
    }
}

/// Checks --save_img_path before any model loads: an existing path must be a folder, and a new
/// one needs a folder as its nearest existing ancestor.
fn check_save_dir(path: &Path) -> anyhow::Result<()> {
    let shown = path.display();
    match PathKind::of(path) {
        PathKind::Dir => Ok(()),
        kind @ (PathKind::Missing | PathKind::Inaccessible(_)) => {
            for ancestor in path.ancestors().skip(1).filter(|a| !a.as_os_str().is_empty()) {
                match PathKind::of(ancestor) {
                    PathKind::Missing | PathKind::Inaccessible(_) => continue,
                    PathKind::Dir => break,
                    a => anyhow::bail!(
                        "--save_img_path `{shown}` cannot be created: `{}` {a}, not a folder",
                        ancestor.display()
                    ),
                }
            }
            match kind {
                PathKind::Inaccessible(_) => anyhow::bail!("--save_img_path `{shown}` {kind}"),
                _ => Ok(()),
            }
        }
        kind => anyhow::bail!("--save_img_path `{shown}` {kind}; --save_img_path must be a folder"),
    }
}

pub fn run(args: &GenerateArgs, backend: &BackendOpts) -> anyhow::Result<()> {
    if let Some(fps) = args.fps {
        anyhow::ensure!(fps.is_finite() && fps > 0.0, "--fps must be a positive number, got {fps}");
    }
    check_save_dir(&args.save_img_path)?;
    if let Some(path) = &args.dump_latents {
        osp_fs::check_file_target(path).context("--dump-latents")?;
    }
    let spec = args.sampling.spec()?;
    let mut req = args.sampling.request(&spec)?;
    req.keep_decoded = args.dump_latents.is_some();
    let prepare = |req| {
        spec.prepare(req).with_context(|| {
            format!(
                "the request from the flags and the defaults of {}",
                spec.dir().join(osp_graphs::PIPELINE_FILE).display()
            )
        })
    };
    let mut placement = None;
    if args.refiner.is_set() {
        // The flags are checked before the refiner runs; the refined prompts are checked again.
        let checked = prepare(req.clone())?;
        placement = Some(args.sampling.placement(&spec, &checked, backend)?);
        req.prompts =
            args.refiner.apply(&req.prompts, args.seed, args.sampling.upstream.model_type.as_deref(), backend)?;
    }
    let req = prepare(req)?;
    let placement = match placement {
        Some(p) => p,
        None => args.sampling.placement(&spec, &req, backend)?,
    };
    args.sampling.check_memory(&spec, &req, backend, placement.as_ref())?;
    let fps = args.fps.unwrap_or(spec.manifest().defaults.fps);
    let shape = spec.latent_shape(&req);
    let steps = req.steps();
    let seeded = SeededNoise::new(args.seed);
    let mut noise: Box<dyn NoiseSource> = if args.init_latents.is_some() || args.step_noise.is_some() {
        let replay = ReplayNoise::open(args.init_latents.as_deref(), args.step_noise.as_deref(), seeded)?;
        replay.check(req.prompts.len(), steps, &shape)?;
        Box::new(replay)
    } else {
        Box::new(seeded)
    };
    let positions = args.sampling.positions(args.dump_latents.is_some());
    let mut pipeline = args.sampling.load_for(spec, &req, backend, placement.as_ref(), positions)?;
    let encode = args.encode.options();
    // The folder is created at the first video write; an existing one is cleared of dead runs' temporaries.
    if args.save_img_path.is_dir() {
        osp_fs::collect_stale_logged(&args.save_img_path);
    }
    let mut observer =
        Observer { bar: progress(args.progress), dump: args.dump_latents.as_ref().map(|_| BTreeMap::new()) };
    let mut grids: Vec<ndarray::Array4<u8>> = Vec::new();
    for index in 0..req.prompts.len() {
        let out = pipeline.generate_prompt(&req, index, noise.as_mut(), &mut observer)?;
        if let Some(dump) = &mut observer.dump {
            dump.insert(format!("p{index}.latents.final"), Tensor::F32(out.latents.clone()));
            for (side, emb) in [("pos", Some(&out.positive)), ("neg", out.negative.as_ref())] {
                if let Some(emb) = emb {
                    dump.insert(format!("p{index}.text.{side}.embeds"), emb.embeddings.clone());
                    dump.insert(format!("p{index}.text.{side}.attention_mask"), emb.mask.clone());
                }
            }
            let decoded = out.decoded.as_ref().context("--dump-latents keeps the f32 VAE output")?;
            dump.insert(format!("p{index}.vae.decoded"), Tensor::F32(decoded.clone().into_dyn()));
        }
        let n = out.frames.len();
        let name = |sample: Option<usize>, index: Option<usize>, frames: usize| {
            output_path(&args.save_img_path, &req, args.output_format, index, sample, frames, args.overwrite)
        };
        let write = |path: &Path, frames: ndarray::ArrayView4<u8>| -> anyhow::Result<()> {
            // Created on the first write: a run that stops early (a non-finite value) leaves nothing.
            std::fs::create_dir_all(&args.save_img_path)
                .with_context(|| format!("creating --save_img_path {}", args.save_img_path.display()))?;
            video::write_video(path, frames, fps, &encode).with_context(|| format!("writing {}", path.display()))?;
            println!("{}", path.display());
            Ok(())
        };
        for (k, frames) in out.frames.iter().enumerate() {
            write(&name((n > 1).then_some(k), Some(index), frames.shape()[0]), frames.view())?;
        }
        let views: Vec<_> = out.frames.iter().map(|f| f.view()).collect();
        if args.grid {
            let prompt_video = if n > 1 { video::video_grid(&views, false)? } else { out.frames[0].clone() };
            if n > 1 {
                let even = video::video_grid(&views, true)?;
                write(&name(None, Some(index), even.shape()[0]), even.view())?;
            }
            grids.push(prompt_video);
        }
        if let Some(dump) = &mut observer.dump {
            let finals: Vec<_> = views.iter().map(|v| v.insert_axis(ndarray::Axis(0))).collect();
            let all = ndarray::concatenate(ndarray::Axis(0), &finals)?;
            dump.insert(format!("p{index}.video.final"), Tensor::U8(all.into_dyn()));
        }
    }
    if args.grid {
        let views: Vec<_> = grids.iter().map(|g| g.view()).collect();
        let grid = video::video_grid(&views, true)?;
        let path =
            output_path(&args.save_img_path, &req, args.output_format, None, None, grid.shape()[0], args.overwrite);
        video::write_video(&path, grid.view(), fps, &encode).with_context(|| format!("writing {}", path.display()))?;
        println!("{}", path.display());
    }
    if let (Some(path), Some(dump)) = (&args.dump_latents, &observer.dump) {
        write_safetensors(path, dump.iter().map(|(k, t)| (k.as_str(), t)))
            .with_context(|| format!("writing --dump-latents {}", path.display()))?;
        tracing::info!(path = %path.display(), tensors = dump.len(), "wrote the step dump");
    }
    Ok(())
}
