//! The embedded default model (`assets/default/`, written by `scripts/train_default.sh`) does what
//! its prompts say: for prompts naming each of the 4 colours and each of the 4 directions,
//! generated with a fixed seed through the library pipeline on ort-cpu, the dominant
//! non-background colour of the video is the named one and the shape's centroid moves the named
//! way between the first and the last frame.
//! Runs in CI on the committed bundle; never loosen it: retrain instead.

use std::path::PathBuf;

use anyhow::{ensure, Result};
use ndarray::{s, Array4};
use osp_runtime::pipeline::noise::SeededNoise;
use osp_runtime::pipeline::{DecodeOptions, GenerateRequest, NoObserver, Pipeline};
use osp_runtime::session::Backend;
use osp_runtime::vae::TilingConfig;
use osp_runtime::SessionOptions;
use osp_trainer::data::shapes::{Color, BACKGROUND};

/// `(prompt, colour, direction (dx, dy) in image coordinates)`: every colour and every direction.
const CASES: [(&str, Color, (f32, f32)); 4] = [
    ("a red circle moving to the right", Color::Red, (1.0, 0.0)),
    ("a green square moving to the left", Color::Green, (-1.0, 0.0)),
    ("a blue triangle moving up", Color::Blue, (0.0, -1.0)),
    ("a yellow circle moving down", Color::Yellow, (0.0, 1.0)),
];

/// A pixel belongs to the shape when it is this far (max channel difference) from the background.
const FOREGROUND_DISTANCE: i32 = 60;

fn bundle() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/default")
}

/// Centroid `(x, y)` and mean colour of the foreground pixels of frame `f` (`[t, h, w, 3]`).
fn foreground(frames: &Array4<u8>, f: usize) -> Option<((f32, f32), [f32; 3])> {
    let frame = frames.slice(s![f, .., .., ..]);
    let (h, w, _) = frame.dim();
    let (mut sx, mut sy, mut n, mut rgb) = (0.0f32, 0.0f32, 0.0f32, [0.0f32; 3]);
    for y in 0..h {
        for x in 0..w {
            let p = [frame[[y, x, 0]], frame[[y, x, 1]], frame[[y, x, 2]]];
            let d = (0..3).map(|c| (i32::from(p[c]) - i32::from(BACKGROUND[c])).abs()).max().unwrap_or(0);
            if d > FOREGROUND_DISTANCE {
                sx += x as f32;
                sy += y as f32;
                n += 1.0;
                for c in 0..3 {
                    rgb[c] += f32::from(p[c]);
                }
            }
        }
    }
    (n > 0.0).then(|| ((sx / n, sy / n), rgb.map(|v| v / n)))
}

/// The data set colour nearest to `rgb`.
fn nearest_colour(rgb: [f32; 3]) -> Color {
    let dist = |c: Color| c.rgb().iter().zip(rgb).map(|(&a, b)| (f32::from(a) - b).powi(2)).sum::<f32>();
    [Color::Red, Color::Green, Color::Blue, Color::Yellow]
        .into_iter()
        .min_by(|a, b| dist(*a).total_cmp(&dist(*b)))
        .expect("four colours")
}

fn open_pipeline() -> Result<Pipeline> {
    let dir = bundle();
    ensure!(
        dir.join("pipeline.json").is_file(),
        "{} has no pipeline.json: run scripts/train_default.sh",
        dir.display()
    );
    let opts = SessionOptions::new(Backend::OrtCpu).with_threads(2);
    Ok(Pipeline::open(&dir, &opts, None)?)
}

/// The bundle's default request for the `CASES` prompts.
fn request(pipeline: &Pipeline) -> Result<GenerateRequest> {
    Ok(pipeline.spec().default_request(CASES.iter().map(|c| c.0.to_string()).collect())?)
}

#[test]
fn default_bundle_draws_the_named_colour_moving_the_named_way() -> Result<()> {
    let mut pipeline = open_pipeline()?;
    let req = pipeline.prepare(request(&pipeline)?)?;
    let mut failures = Vec::new();
    for (i, (prompt, colour, (dx, dy))) in CASES.iter().enumerate() {
        let mut noise = SeededNoise::new(1000 + i as u64);
        let out = pipeline.generate_prompt(&req, i, &mut noise, &mut NoObserver)?;
        let frames = &out.frames[0];
        let last = frames.dim().0 - 1;
        let (Some((c0, rgb0)), Some((c1, rgb1))) = (foreground(frames, 0), foreground(frames, last)) else {
            failures.push(format!("{prompt}: no shape in the first or last frame"));
            continue;
        };
        let mean = [0, 1, 2].map(|c| (rgb0[c] + rgb1[c]) / 2.0);
        let got = nearest_colour(mean);
        if got != *colour {
            failures.push(format!("{prompt}: dominant colour {mean:?} is nearest {got:?}"));
        }
        let moved = ((c1.0 - c0.0) * dx + (c1.1 - c0.1) * dy, (c1.0 - c0.0) * dy.abs() + (c1.1 - c0.1) * dx.abs());
        if !(moved.0 > 1.0 && moved.0 > moved.1.abs()) {
            failures.push(format!("{prompt}: centroid moved from {c0:?} to {c1:?}"));
        }
    }
    ensure!(failures.is_empty(), "{} of {} prompts wrong:\n{}", failures.len(), CASES.len(), failures.join("\n"));
    Ok(())
}

/// Decoding straight to uint8 frames (`keep_decoded: false`, the default of `osp generate`) gives
/// exactly the frames of the f32 path, for whole, streamed, and streamed-inside-tiles decoding
/// (4x4 latents in 2x2 tiles overlapping by 1: the tiled uint8 path quantises row strips).
#[test]
fn frames_decoded_without_the_f32_video_are_identical() -> Result<()> {
    let mut pipeline = open_pipeline()?;
    let mut req = request(&pipeline)?;
    req.prompts.truncate(1);
    req.num_sampling_steps = 4;
    let tiled = TilingConfig { tile_size: 2, overlap: 1 };
    for decode in [
        DecodeOptions::default(),
        DecodeOptions { chunk: Some(1), tiling: None },
        DecodeOptions { chunk: Some(1), tiling: Some(tiled) },
    ] {
        let mut outs = Vec::new();
        for keep in [true, false] {
            let req = pipeline.prepare(GenerateRequest { decode, keep_decoded: keep, ..req.clone() })?;
            outs.push(pipeline.generate_prompt(&req, 0, &mut SeededNoise::new(7), &mut NoObserver)?);
        }
        ensure!(outs[0].decoded.is_some() && outs[1].decoded.is_none(), "{decode:?}: decoded kept only when asked");
        ensure!(outs[0].frames == outs[1].frames, "{decode:?}: uint8 frames differ between the two paths");
        ensure!(outs[0].frames[0].dim() == (req.num_frames, req.height, req.width, 3), "{decode:?}: frame shape");
    }
    Ok(())
}
