//! `osp eval`: PSNR and SSIM between two folders of videos, as upstream
//! `opensora/models/causalvideovae/eval/eval.py` pairs them (each generated video with the real
//! video of the same relative path; the real one sampled with `--sample-rate`).
//!
//! `osp eval --real-video-dir rec/origin --generated-video-dir rec --metric all`

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use osp_runtime::metrics::{self, Metric};
use osp_runtime::video;
use serde_json::json;

use super::reconstruct::video_files;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MetricChoice {
    Psnr,
    Ssim,
    All,
}

impl MetricChoice {
    fn metrics(self) -> Vec<Metric> {
        match self {
            MetricChoice::Psnr => vec![Metric::Psnr],
            MetricChoice::Ssim => vec![Metric::Ssim],
            MetricChoice::All => vec![Metric::Psnr, Metric::Ssim],
        }
    }
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Folder of reference videos.
    #[arg(long, alias = "real_video_dir")]
    pub real_video_dir: PathBuf,
    /// Folder of generated (reconstructed) videos; each needs a real video at the same relative path.
    #[arg(long, alias = "generated_video_dir")]
    pub generated_video_dir: PathBuf,
    /// Which metric to compute.
    #[arg(long, value_enum, default_value_t = MetricChoice::All)]
    pub metric: MetricChoice,
    /// Frames compared per video (default: every frame of the generated video).
    #[arg(long, alias = "num_frames")]
    pub num_frames: Option<usize>,
    /// Frame stride of the real videos (the generated ones are read with stride 1).
    #[arg(long, alias = "sample_rate", default_value_t = 1)]
    pub sample_rate: usize,
    /// Resize both videos so that their short side is this many pixels (upstream `--resolution`;
    /// default: no resize).
    #[arg(long)]
    pub resolution: Option<usize>,
    /// Centre-crop both videos to this square size after any resize.
    #[arg(long, alias = "crop_size")]
    pub crop_size: Option<usize>,
    /// Also write the JSON report to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run(args: &EvalArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.sample_rate >= 1, "--sample-rate must be at least 1");
    // Upstream lists the generated folder without recursing (so `origin/` is not a candidate).
    let generated = video_files(&args.generated_video_dir, false)?;
    anyhow::ensure!(!generated.is_empty(), "{}: no videos found", args.generated_video_dir.display());
    let missing: Vec<String> = generated
        .iter()
        .map(|rel| args.real_video_dir.join(rel))
        .filter_map(|p| osp_graphs::path::require_file(&p).err().map(|why| format!("{} ({why})", p.display())))
        .collect();
    anyhow::ensure!(
        missing.is_empty(),
        "every generated video needs a real video at the same relative path; unusable: {}",
        missing.join(", ")
    );

    let wanted = args.metric.metrics();
    let mut rows = Vec::new();
    let mut all: Vec<Vec<f64>> = vec![Vec::new(); wanted.len()];
    for rel in &generated {
        let gen_path = args.generated_video_dir.join(rel);
        let real_path = args.real_video_dir.join(rel);
        let gen = video::read_all(&gen_path, args.num_frames)?;
        let n = gen.shape()[0];
        if let Some(want) = args.num_frames {
            anyhow::ensure!(n == want, "{}: has {n} frames, --num-frames asks for {want}", gen_path.display());
        }
        let real = video::read_video(&real_path, n, args.sample_rate)?;
        let gen = video::eval_transform(gen.view(), args.resolution, args.crop_size)
            .with_context(|| gen_path.display().to_string())?;
        let real = video::eval_transform(real.view(), args.resolution, args.crop_size)
            .with_context(|| real_path.display().to_string())?;
        anyhow::ensure!(
            gen.shape() == real.shape(),
            "{} is {:?} but {} is {:?} ([t, h, w, 3]); compare against the preprocessed inputs \
             (`osp reconstruct --output-origin`) or pass --resolution / --crop-size",
            gen_path.display(),
            gen.shape(),
            real_path.display(),
            real.shape()
        );
        let mut per_metric = Vec::new();
        for (i, m) in wanted.iter().enumerate() {
            let values = m
                .per_frame(real.view(), gen.view())
                .with_context(|| format!("{} vs {}", real_path.display(), gen_path.display()))?;
            all[i].extend_from_slice(&values);
            per_metric.push(values);
        }
        rows.push((rel.display().to_string(), n, per_metric));
    }

    let means: Vec<f64> = all.iter().map(|v| metrics::mean(v)).collect();
    let name_width = rows.iter().map(|r| r.0.len()).max().unwrap_or(5).max(5);
    let mut header = format!("{:<name_width$}  {:>6}", "video", "frames");
    for m in &wanted {
        header.push_str(&format!("  {:>9}", m.name()));
    }
    println!("{header}");
    for (name, n, per_metric) in &rows {
        let mut line = format!("{name:<name_width$}  {n:>6}");
        for values in per_metric {
            line.push_str(&format!("  {:>9.4}", metrics::mean(values)));
        }
        println!("{line}");
    }
    let mut line = format!("{:<name_width$}  {:>6}", "mean", all[0].len());
    for m in &means {
        line.push_str(&format!("  {m:>9.4}"));
    }
    println!("{line}");

    let report = json!({
        "real_video_dir": args.real_video_dir.display().to_string(),
        "generated_video_dir": args.generated_video_dir.display().to_string(),
        "frames": all[0].len(),
        "mean": wanted.iter().zip(&means).map(|(m, v)| (m.name().to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        "videos": rows.iter().map(|(name, n, per_metric)| {
            let mut v = serde_json::Map::new();
            v.insert("video".into(), json!(name));
            v.insert("frames".into(), json!(n));
            for (m, values) in wanted.iter().zip(per_metric) {
                v.insert(m.name().into(), json!(metrics::mean(values)));
                v.insert(format!("{}_per_frame", m.name()), json!(values));
            }
            serde_json::Value::Object(v)
        }).collect::<Vec<_>>(),
    });
    let text = serde_json::to_string_pretty(&report)?;
    println!("{text}");
    if let Some(path) = &args.json {
        write_atomic(path, text.as_bytes())?;
    }
    Ok(())
}

/// Writes `bytes` to `path` through a temporary sibling and a rename.
fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    let name = path.file_name().with_context(|| format!("{}: not a file path", path.display()))?;
    let tmp = path.with_file_name(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}
