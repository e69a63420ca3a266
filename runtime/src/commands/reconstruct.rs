//! `osp reconstruct`: encode a video with a VAE bundle, decode it and write the reconstruction,
//! like upstream `opensora/sample/rec_video.py` (one video, `--grid` as in the Ascend port's
//! `examples/rec_video.py`) and `rec_video_vae.py` / `rec_video_folder.py` (a folder).
//!
//! `osp reconstruct --video-path in.mp4 --rec-path out.mp4 --num-frames 65 --height 512 --width 512 --bundle B`

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use ndarray::Axis;
use osp_runtime::vae::{DecodeOptions, Vae};
use osp_runtime::video::{self, EncodeOptions};
use osp_runtime::Bundle;

use super::decode::DecodeOpts;
use super::BackendOpts;

/// Video file extensions the folder modes pick up (upstream `video_exts` plus mkv and mov).
pub const VIDEO_EXTS: [&str; 5] = ["mp4", "avi", "webm", "mkv", "mov"];

#[derive(Debug, Args)]
pub struct ReconstructArgs {
    /// The VAE bundle (graphs `encoder` and `decoder`).
    #[arg(long, env = "OSP_VAE_BUNDLE", alias = "ae_path", alias = "ae-path")]
    pub bundle: PathBuf,
    /// Input video (one-video mode).
    #[arg(
        long,
        alias = "video_path",
        required_unless_present = "real_video_dir",
        conflicts_with = "real_video_dir",
        requires = "rec_path"
    )]
    pub video_path: Option<PathBuf>,
    /// Where to write the reconstruction: .mp4, .mkv, .mov (H.264), or a folder for PNG frames.
    #[arg(long, alias = "rec_path")]
    pub rec_path: Option<PathBuf>,
    /// Folder mode: reconstruct every video under this folder (recursively).
    #[arg(long, alias = "real_video_dir", requires = "generated_video_dir")]
    pub real_video_dir: Option<PathBuf>,
    /// Folder mode: where the reconstructions go, at the same relative paths, as .mp4.
    #[arg(long, alias = "generated_video_dir")]
    pub generated_video_dir: Option<PathBuf>,
    /// Folder mode: also write each preprocessed input to `<generated-video-dir>/origin/`.
    #[arg(long, alias = "output_origin")]
    pub output_origin: bool,
    /// Write the preprocessed input and the reconstruction side by side (input on the left).
    #[arg(long)]
    pub grid: bool,
    /// Frames to reconstruct; must be 4n + 1.
    #[arg(long, alias = "num_frames", default_value_t = 65)]
    pub num_frames: usize,
    /// Output height (centre crop to the aspect ratio, then resize); a multiple of 8.
    #[arg(long, default_value_t = 512)]
    pub height: usize,
    /// Output width; a multiple of 8.
    #[arg(long, default_value_t = 512)]
    pub width: usize,
    /// Take every `sample-rate`-th frame (upstream sampling from frame 0).
    #[arg(long, alias = "sample_rate", default_value_t = 1)]
    pub sample_rate: usize,
    /// Frame rate of the written video (one-video mode).
    #[arg(long, default_value_t = 30.0)]
    pub fps: f64,
    /// Folder mode: source frame rate; the videos are written at `sample-fps / sample-rate`.
    #[arg(long, alias = "sample_fps", default_value_t = 30.0)]
    pub sample_fps: f64,
    #[command(flatten)]
    pub decode: DecodeOpts,
    #[command(flatten)]
    pub encode: EncodeOpts,
}

/// H.264 encoder settings.
#[derive(Debug, Clone, Args)]
pub struct EncodeOpts {
    /// x264 constant rate factor (0-51, lower is better; 18 is visually lossless).
    #[arg(long, default_value_t = EncodeOptions::default().crf, value_parser = clap::value_parser!(u8).range(0..=51))]
    pub crf: u8,
    /// x264 preset (ultrafast ... veryslow).
    #[arg(long, default_value_t = EncodeOptions::default().preset)]
    pub preset: String,
}

impl EncodeOpts {
    pub fn options(&self) -> EncodeOptions {
        EncodeOptions { crf: self.crf, preset: self.preset.clone() }
    }
}

pub fn run(args: &ReconstructArgs, backend: &BackendOpts) -> anyhow::Result<()> {
    video::check_vae_shape("--num-frames/--height/--width", args.num_frames, args.height, args.width)?;
    if args.sample_rate == 0 {
        anyhow::bail!("--sample-rate must be at least 1");
    }
    let encode = args.encode.options();
    let bundle =
        Bundle::open(&args.bundle).with_context(|| format!("opening the VAE bundle {}", args.bundle.display()))?;
    let mut vae = Vae::load(&bundle, &backend.session_options()?)
        .with_context(|| format!("loading the VAE graphs of {}", args.bundle.display()))?;
    let decode = args.decode.options(&vae)?;

    match (&args.video_path, &args.real_video_dir) {
        (Some(input), _) => {
            let output = args.rec_path.as_ref().context("--rec-path is required with --video-path")?;
            let job = Job { args, decode: &decode, encode: &encode, fps: args.fps };
            job.reconstruct(&mut vae, input, output, None)?;
            println!("{}", output.display());
            Ok(())
        }
        (None, Some(dir)) => {
            let out_dir =
                args.generated_video_dir.as_ref().context("--generated-video-dir is required with --real-video-dir")?;
            let job = Job { args, decode: &decode, encode: &encode, fps: args.sample_fps / args.sample_rate as f64 };
            run_folder(&job, &mut vae, dir, out_dir)
        }
        (None, None) => anyhow::bail!("give --video-path (one video) or --real-video-dir (a folder)"),
    }
}

struct Job<'a> {
    args: &'a ReconstructArgs,
    decode: &'a DecodeOptions,
    encode: &'a EncodeOptions,
    fps: f64,
}

impl Job<'_> {
    /// Reads, preprocesses, encodes, decodes and writes one video; `origin` also receives the
    /// preprocessed input.
    fn reconstruct(&self, vae: &mut Vae, input: &Path, output: &Path, origin: Option<&Path>) -> anyhow::Result<()> {
        let a = self.args;
        let frames = video::read_video(input, a.num_frames, a.sample_rate)?;
        let x = video::preprocess(frames.view(), a.height, a.width);
        let z = vae.encode(x.view()).with_context(|| format!("encoding {}", input.display()))?;
        // Straight to uint8 frames: streamed inside tiles, only one tile row of the output is f32.
        let mut videos =
            vae.decode_frames(z.view(), self.decode).with_context(|| format!("decoding {}", input.display()))?;
        let want = [a.num_frames, a.height, a.width, 3];
        anyhow::ensure!(
            videos.len() == 1 && videos[0].shape() == want,
            "the VAE turned {} into {:?} frames, expected one video of {want:?}",
            input.display(),
            videos.iter().map(|v| v.shape().to_vec()).collect::<Vec<_>>()
        );
        let rec = videos.remove(0);
        let original = video::to_u8_frames(x.index_axis(Axis(0), 0));
        let written = if a.grid { video::side_by_side(original.view(), rec.view())? } else { rec };
        video::write_video(output, written.view(), self.fps, self.encode)?;
        if let Some(origin) = origin {
            video::write_video(origin, original.view(), self.fps, self.encode)?;
        }
        tracing::info!(input = %input.display(), output = %output.display(), "reconstructed");
        Ok(())
    }
}

fn run_folder(job: &Job<'_>, vae: &mut Vae, dir: &Path, out_dir: &Path) -> anyhow::Result<()> {
    let files = video_files(dir, true)?;
    anyhow::ensure!(!files.is_empty(), "{}: no videos ({}) found", dir.display(), VIDEO_EXTS.join(", "));
    let mut failed = Vec::new();
    for rel in &files {
        let output = out_dir.join(rel).with_extension("mp4");
        let origin = job.args.output_origin.then(|| out_dir.join("origin").join(rel).with_extension("mp4"));
        match job.reconstruct(vae, &dir.join(rel), &output, origin.as_deref()) {
            Ok(()) => println!("{}", output.display()),
            Err(e) => {
                tracing::error!("{e:#}");
                failed.push(format!("{}: {e:#}", rel.display()));
            }
        }
    }
    if !failed.is_empty() {
        anyhow::bail!("{} of {} videos failed:\n  {}", failed.len(), files.len(), failed.join("\n  "));
    }
    Ok(())
}

/// Video files in `dir` (and its subfolders if `recursive`), as sorted paths relative to `dir`.
pub fn video_files(dir: &Path, recursive: bool) -> anyhow::Result<Vec<PathBuf>> {
    anyhow::ensure!(dir.is_dir(), "{}: not a folder", dir.display());
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let path = entry.with_context(|| format!("listing {}", d.display()))?.path();
            if path.is_dir() {
                if recursive {
                    stack.push(path);
                }
            } else if path
                .extension()
                .is_some_and(|e| VIDEO_EXTS.contains(&e.to_string_lossy().to_ascii_lowercase().as_str()))
            {
                let rel =
                    path.strip_prefix(dir).expect("listed paths should lie under the listed folder").to_path_buf();
                found.push(rel);
            }
        }
    }
    found.sort();
    Ok(found)
}
