//! `osp decode`: latents (a safetensors tensor `[b, c, t, h, w]`) -> video through a VAE bundle,
//! with the decoder run whole, streamed in time, tiled in space, or streamed inside tiles
//! ([`DecodeOpts`], shared with `osp reconstruct`). Prints one JSON line with the shapes and the
//! decode time (the release decode table is measured with it: `scripts/vae_decode_table.py`).
//!
//! `osp --threads 2 decode --bundle B --latents z.safetensors --out video.mp4 --chunk 2 --tile-size 32`

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use ndarray::Ix5;
use osp_runtime::parallel::workers::{check_devices_exist, host_gpus, worker_options, DeviceList};
use osp_runtime::vae::{self, DecodeOptions, TilingConfig, Vae, DECODER_INPUT};
use osp_runtime::video;
use osp_runtime::{read_safetensors, Bundle, Tensor};

use super::reconstruct::EncodeOpts;
use super::BackendOpts;

/// How the VAE decoder runs: temporal chunking (the streaming graphs) and spatial tiling.
#[derive(Debug, Clone, Args)]
pub struct DecodeOpts {
    /// Latent frames per streaming-decoder call after the first (default: the bundle's
    /// recommendation). Streaming is exact and bounds memory along time.
    #[arg(long, env = "OSP_VAE_CHUNK", alias = "t_chunk_dec", alias = "t-chunk-dec")]
    pub chunk: Option<usize>,
    /// Run the whole-clip decoder graph instead of streaming (memory grows with the clip length).
    #[arg(long, conflicts_with = "chunk")]
    pub no_streaming: bool,
    /// Latent tile height and width for decoding (x8 output pixels); latents no larger than one
    /// tile are decoded whole. Smaller tiles use less memory.
    #[arg(long, env = "OSP_VAE_TILE_SIZE", default_value_t = TilingConfig::default().tile_size)]
    pub tile_size: usize,
    /// Latent pixels shared by neighbouring tiles and blended linearly (x8 output pixels).
    #[arg(long, env = "OSP_VAE_TILE_OVERLAP", default_value_t = TilingConfig::default().overlap)]
    pub tile_overlap: usize,
    /// Decode the whole latent at once (memory grows with height x width).
    #[arg(long)]
    pub no_tiling: bool,
    /// Accepted for upstream compatibility; tiling is on unless --no-tiling.
    #[arg(long, alias = "enable_tiling", hide = true)]
    pub enable_tiling: bool,
}

impl DecodeOpts {
    /// The decode options for `vae`: streaming unless `--no-streaming` or the bundle has no
    /// streaming graphs (then `--chunk` is an error), tiling unless `--no-tiling`.
    pub fn options(&self, vae: &Vae) -> anyhow::Result<DecodeOptions> {
        let tiling = if self.no_tiling {
            None
        } else {
            let cfg = TilingConfig { tile_size: self.tile_size, overlap: self.tile_overlap };
            cfg.validate().context("--tile-size / --tile-overlap")?;
            Some(cfg)
        };
        let chunk = match (self.no_streaming, self.chunk, vae.default_chunk()) {
            (true, _, _) => None,
            (false, Some(0), _) => anyhow::bail!("--chunk must be at least 1 latent frame"),
            (false, Some(_), None) => {
                anyhow::bail!("--chunk needs a bundle with streaming decoder graphs; this one has only `decoder`")
            }
            (false, Some(c), Some(_)) => Some(c),
            (false, None, default) => default,
        };
        Ok(DecodeOptions { chunk, tiling })
    }
}

#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// The VAE bundle.
    #[arg(long, env = "OSP_VAE_BUNDLE", alias = "ae_path", alias = "ae-path")]
    pub bundle: PathBuf,
    /// Safetensors file holding the latents `[b, c, t, h, w]` (f32, f16 or bf16).
    #[arg(long)]
    pub latents: PathBuf,
    /// Name of the latent tensor in --latents (default: `z`, or the file's only tensor).
    #[arg(long)]
    pub name: Option<String>,
    /// Where to write the video: .mp4, .mkv, .mov (H.264) or a folder of PNG frames; with a batch
    /// of several latents, video `i` goes to `<stem>_<i>.<ext>`. Omit to only decode and time.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Also write the decoded `sample` tensor (`[b, 3, t, h, w]`, f32) to this safetensors file.
    #[arg(long)]
    pub save_sample: Option<PathBuf>,
    /// Frame rate of the written video.
    #[arg(long, default_value_t = 24.0)]
    pub fps: f64,
    /// Spread the spatial tiles over several workers, one session each: GPU ordinals for
    /// ort-cuda / ort-tensorrt (`0,1,2,3`), or as many CPU workers as entries on CPU backends
    /// (the threads are split between them). The output is bit-identical to one worker's with
    /// the same session options.
    #[arg(long)]
    pub devices: Option<DeviceList>,
    #[command(flatten)]
    pub decode: DecodeOpts,
    #[command(flatten)]
    pub encode: EncodeOpts,
}

pub fn run(args: &DecodeArgs, backend: &BackendOpts) -> anyhow::Result<()> {
    let z = read_latents(&args.latents, args.name.as_deref())?;
    let bundle =
        Bundle::open(&args.bundle).with_context(|| format!("opening the VAE bundle {}", args.bundle.display()))?;
    let base = backend.session_options()?;
    let workers = match &args.devices {
        Some(DeviceList(devices)) => {
            check_devices_exist(&base.backend, devices, host_gpus()).context("--devices")?;
            worker_options(&base, devices).context("--devices")?
        }
        None => vec![base],
    };
    let mut vaes = workers
        .iter()
        .map(|o| Vae::load(&bundle, o))
        .collect::<osp_runtime::Result<Vec<_>>>()
        .with_context(|| format!("reading the VAE graphs of {}", args.bundle.display()))?;
    let opts = args.decode.options(&vaes[0])?;
    let start = Instant::now();
    let context = || format!("decoding {}", args.latents.display());
    // The f32 sample is only kept whole when it is saved; a video needs only uint8 frames, which
    // a streamed, tiled decode produces without ever holding the f32 video.
    let decode_s;
    let (videos, sample_shape) = match &args.save_sample {
        Some(path) => {
            let sample = vae::decode_parallel(&mut vaes, z.view(), &opts).with_context(context)?;
            decode_s = start.elapsed().as_secs_f64();
            let tensor = Tensor::F32(sample.into_dyn());
            osp_runtime::write_safetensors(path, [("sample", &tensor)])
                .with_context(|| format!("writing {}", path.display()))?;
            let Tensor::F32(sample) = tensor else { anyhow::bail!("the sample tensor was built as f32 above") };
            let sample = sample.into_dimensionality::<Ix5>().context("the decoded sample is 5-D")?;
            let videos = match &args.out {
                Some(_) => (0..sample.shape()[0])
                    .map(|i| video::batch_to_u8_frames(sample.view(), i))
                    .collect::<osp_runtime::Result<Vec<_>>>()?,
                None => Vec::new(),
            };
            (videos, sample.shape().to_vec())
        }
        None => {
            let videos = vae::decode_frames_parallel(&mut vaes, z.view(), &opts).with_context(context)?;
            decode_s = start.elapsed().as_secs_f64();
            let (t, h, w, c) = videos.first().context("the batch holds at least one video")?.dim();
            let shape = vec![videos.len(), c, t, h, w];
            (videos, shape)
        }
    };
    tracing::info!(decode_s, shape = ?sample_shape, "decoded");

    let mut written = Vec::new();
    if let Some(out) = &args.out {
        let b = videos.len();
        for (i, frames) in videos.iter().enumerate() {
            let path = if b == 1 { out.clone() } else { numbered(out, i) };
            video::write_video(&path, frames.view(), args.fps, &args.encode.options())?;
            written.push(path.display().to_string());
        }
    }
    let report = serde_json::json!({
        "latents": z.shape(),
        "sample": sample_shape,
        "chunk": opts.chunk,
        "tiling": opts.tiling.map(|t| serde_json::json!({"tile_size": t.tile_size, "overlap": t.overlap})),
        "decode_s": decode_s,
        "workers": vaes.len(),
        "written": written,
    });
    println!("{report}");
    Ok(())
}

/// `<dir>/<stem>_<i>.<ext>` (or `<path>_<i>` for a folder of frames).
fn numbered(path: &Path, i: usize) -> PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let name = match path.extension() {
        Some(ext) => format!("{stem}_{i}.{}", ext.to_string_lossy()),
        None => format!("{stem}_{i}"),
    };
    path.with_file_name(name)
}

/// The latent tensor `name` (default `z`, or the only tensor) of a safetensors file, as 5-D f32.
pub fn read_latents(path: &Path, name: Option<&str>) -> anyhow::Result<ndarray::Array5<f32>> {
    let mut tensors = read_safetensors(path).with_context(|| format!("reading latents {}", path.display()))?;
    let key = match name {
        Some(n) => n.to_string(),
        None if tensors.contains_key(DECODER_INPUT) => DECODER_INPUT.to_string(),
        None if tensors.len() == 1 => tensors.keys().next().expect("one tensor is present").clone(),
        None => anyhow::bail!(
            "{}: holds {} tensors ({}) and none is named `{DECODER_INPUT}`; pick one with --name",
            path.display(),
            tensors.len(),
            tensors.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
    };
    let tensor = tensors.remove(&key).with_context(|| format!("{}: no tensor named `{key}`", path.display()))?;
    anyhow::ensure!(
        matches!(tensor, Tensor::F32(_) | Tensor::F16(_) | Tensor::Bf16(_)),
        "{}: latents `{key}` must be a float tensor, got {}",
        path.display(),
        tensor.describe()
    );
    let values = tensor.to_f32_vec();
    let shape = tensor.shape().to_vec();
    anyhow::ensure!(
        shape.len() == 5 && shape.iter().all(|&d| d > 0),
        "{}: latents `{key}` must be [b, c, t, h, w] with no empty axis, got {shape:?}",
        path.display()
    );
    let a = ndarray::ArrayD::from_shape_vec(shape, values).context("latent values should match their shape")?;
    a.into_dimensionality::<Ix5>().context("a 5-D shape was checked")
}
