//! Video and image I/O for training through the runtime's FFmpeg decode/encode
//! ([`osp_runtime::video`]), so training and inference read and write the same bytes: probe a
//! file, decode chosen frames to RGB24, and write H.264 mp4 files (for generated data sets).
//! Images (`.jpg`, `.png`) are read through FFmpeg's image demuxer as one-frame videos.

use std::path::Path;

use ndarray::ArrayView4;
use osp_runtime::video::{self as media, EncodeOptions};

use crate::error::{Error, Result};

/// RGB24 frames, `[t, h, w, 3]` row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frames {
    pub t: usize,
    pub h: usize,
    pub w: usize,
    pub data: Vec<u8>,
}

impl Frames {
    /// A `[t, h, w, 3]` frame stack; `data` must hold `t * h * w * 3` bytes.
    pub fn new(t: usize, h: usize, w: usize, data: Vec<u8>) -> Result<Self> {
        if data.len() != t * h * w * 3 {
            return Err(Error::input("frames", format!("{} bytes do not fill [{t}, {h}, {w}, 3]", data.len())));
        }
        Ok(Frames { t, h, w, data })
    }

    /// Frame `i` as `[h, w, 3]` bytes.
    pub fn frame(&self, i: usize) -> &[u8] {
        let n = self.h * self.w * 3;
        &self.data[i * n..(i + 1) * n]
    }
}

/// What the container says about a file's best video stream.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoInfo {
    pub width: usize,
    pub height: usize,
    pub fps: Option<f64>,
    /// Declared frame count (0 when unknown).
    pub frames: usize,
}

/// Initialises FFmpeg once per process (the runtime's, with FFmpeg's own logging below fatal).
pub fn init() -> Result<()> {
    Ok(media::init()?)
}

/// Reads the header of `path`'s best video stream.
pub fn probe(path: &Path) -> Result<VideoInfo> {
    let info = media::probe(path)?;
    Ok(VideoInfo {
        width: info.width as usize,
        height: info.height as usize,
        fps: info.fps,
        frames: usize::try_from(info.declared_frames).unwrap_or(usize::MAX),
    })
}

/// Frames at `indices` (any order, repeats allowed), decoding up to the largest one. Fails when
/// the file is missing, unreadable, or ends before a requested frame.
pub fn read_frames(path: &Path, indices: &[usize]) -> Result<Frames> {
    let frames = media::read_frames(path, indices)?;
    let (t, h, w, _) = frames.dim();
    let data =
        if frames.is_standard_layout() { frames.into_raw_vec_and_offset().0 } else { frames.iter().copied().collect() };
    Frames::new(t, h, w, data)
}

/// Writes `[t, h, w, 3]` RGB frames as H.264 (libx264 `medium`, YUV 4:2:0, `crf`) mp4 at `fps`, to
/// a temporary name renamed into place.
pub fn write_mp4(path: &Path, frames: &Frames, fps: f64, crf: u8) -> Result<()> {
    if !path.extension().is_some_and(|e| e.eq_ignore_ascii_case("mp4")) {
        return Err(Error::input(path.display().to_string(), "an mp4 destination must end in `.mp4`"));
    }
    let view = ArrayView4::from_shape((frames.t, frames.h, frames.w, 3), &frames.data)
        .map_err(|e| Error::input("frames", format!("[{}, {}, {}, 3]: {e}", frames.t, frames.h, frames.w)))?;
    Ok(media::write_video(path, view, fps, &EncodeOptions { crf, preset: "medium".to_string() })?)
}
