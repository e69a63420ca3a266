//! `osp-train latent-stats`: encodes clips of a data set with a WFVAE and writes a copy of the VAE
//! folder whose `config.json` carries the measured per-channel `shift` (mean) and `scale`
//! (1 / std) of its latents, plus `latent_stats.json`. A DiT trained on that folder (`osp-train
//! dit --ae_path`) sees latents of zero mean and unit variance per channel, and a bundle exported
//! from it decodes with the same numbers.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::{bail, Context};
use burn::backend::NdArray;
use burn::tensor::{Tensor, TensorData};
use clap::Args;

use osp_trainer::data::Dataset;
use osp_trainer::train::checkpoint::write_json;
use osp_trainer::train::latent_stats::LatentMoments;

use super::dit::{load_vae, vae_weights_file};
use super::vae::{sources, ClipArgs};

#[derive(Debug, Args)]
pub struct LatentStatsArgs {
    /// WFVAE folder (`config.json` + one *.safetensors/*.ckpt).
    #[arg(long = "ae_path")]
    pub ae_path: PathBuf,
    /// Folder of videos (searched recursively).
    #[arg(long = "video_path")]
    pub video_path: Option<PathBuf>,
    /// `--data` file instead of --video_path: lines `MEDIA_ROOT,...,ANNOTATION.json`.
    #[arg(long)]
    pub data: Option<PathBuf>,
    #[command(flatten)]
    pub clips: ClipArgs,
    /// Clips encoded at once.
    #[arg(long = "batch_size", default_value_t = 8)]
    pub batch_size: usize,
    /// At most this many clips (the first ones of the data set).
    #[arg(long = "max_clips", default_value_t = 512)]
    pub max_clips: usize,
    /// Output WFVAE folder (written under a temporary name, then renamed).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: LatentStatsArgs) -> anyhow::Result<()> {
    type B = NdArray<f32>;
    if args.batch_size == 0 || args.max_clips == 0 {
        bail!("--batch_size and --max_clips must be at least 1");
    }
    let device = Default::default();
    let (vae, config) = load_vae::<B>(&args.ae_path, &device)?;
    let data_config = args.clips.data_config(1, 0)?;
    let dataset = Dataset::build_from_items(&sources(&args.video_path, &args.data)?, data_config)?;
    let n = dataset.samples.len().min(args.max_clips);
    if n == 0 {
        bail!("the data set has no usable clips of {} frames", args.clips.num_frames);
    }
    let mut moments = LatentMoments::new(config.latent_dim);
    let mut bad = BTreeSet::new();
    let indices: Vec<usize> = (0..n).collect();
    let bar = super::progress::Count::new(n, "clips");
    for batch in indices.chunks(args.batch_size) {
        let loaded = dataset.load_batch(batch, None, &mut bad)?;
        let (t, h, w) = dataset.samples[loaded[0].0].shape();
        let pixels: Vec<f32> = loaded.iter().flat_map(|(_, p)| p.iter().copied()).collect();
        let x = Tensor::<B, 5>::from_data(TensorData::new(pixels, [loaded.len(), 3, t, h, w]), &device);
        let posterior = vae.encode(x)?;
        let shape = posterior.mean.dims();
        let to_vec = |t: Tensor<B, 5>| t.into_data().to_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"));
        let std = to_vec(posterior.std())?;
        moments.add(&to_vec(posterior.mean)?, &std, shape)?;
        bar.inc(batch.len());
    }
    bar.finish();
    let stats = moments.finish()?;
    tracing::info!(clips = n, skipped = bad.len(), mean = ?stats.mean, std = ?stats.std, "latent statistics");

    let config_path = args.ae_path.join("config.json");
    let mut json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&config_path).with_context(|| format!("reading {}", config_path.display()))?,
    )
    .with_context(|| format!("parsing {}", config_path.display()))?;
    let obj = json.as_object_mut().with_context(|| format!("{} is not a JSON object", config_path.display()))?;
    obj.insert("scale".into(), serde_json::json!(stats.scale));
    obj.insert("shift".into(), serde_json::json!(stats.shift));

    let weights = vae_weights_file(&args.ae_path)?;
    let name = args.out.file_name().and_then(|n| n.to_str()).context("--out needs a folder name")?;
    let tmp = args.out.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    std::fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let file_name = weights.file_name().context("weights file name")?;
    std::fs::copy(&weights, tmp.join(file_name)).with_context(|| format!("copying {}", weights.display()))?;
    write_json(&tmp.join("config.json"), &json)?;
    write_json(&tmp.join("latent_stats.json"), &stats)?;
    if args.out.exists() {
        std::fs::remove_dir_all(&args.out).with_context(|| format!("replacing {}", args.out.display()))?;
    }
    std::fs::rename(&tmp, &args.out).with_context(|| format!("renaming to {}", args.out.display()))?;
    tracing::info!(out = %args.out.display(), "wrote the WFVAE with its latent shift/scale");
    Ok(())
}
