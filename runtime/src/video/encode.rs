//! Video encoding with FFmpeg (ffmpeg-next): `[t, h, w, 3]` u8 RGB frames to H.264 (`libx264`,
//! YUV 4:2:0) in an mp4, mkv or mov container, or to a folder of PNG frames.
//!
//! Upstream writes mp4v through OpenCV (`array_to_video` in `opensora/sample/rec_video.py`);
//! H.264 is what players and browsers expect. Files and PNG folders are written atomically through
//! `osp_fs` (a temporary sibling renamed into place; a device or FIFO is streamed into), so a
//! failed write never leaves a partial file.

use std::path::Path;

use ffmpeg::format::Pixel;
use ffmpeg::software::scaling;
use ffmpeg_next as ffmpeg;
use ndarray::{ArrayView3, ArrayView4, Axis};

use crate::error::{Error, Result};
use crate::video::decode::init;

/// libx264 settings. `crf` 0 is lossless in quality terms (but YUV 4:2:0 still subsamples
/// chroma); 18 is visually lossless; 23 is x264's default.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodeOptions {
    pub crf: u8,
    pub preset: String,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        Self { crf: 18, preset: "medium".to_string() }
    }
}

/// Which writer a destination path selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputKind {
    /// H.264 in the named FFmpeg muxer (`mp4`, `matroska`, `mov`).
    H264(&'static str),
    /// `frame_00000.png`, ... in a folder (a destination ending in `/` or without an extension).
    PngFrames,
    /// An animated GIF (FFmpeg's `gif` encoder, 3-3-2 RGB palette).
    Gif,
    /// One image (`.png`); the clip must have exactly one frame.
    Png,
}

impl OutputKind {
    pub fn for_path(path: &Path) -> Result<Self> {
        if path.as_os_str().to_string_lossy().ends_with('/') || path.extension().is_none() {
            return Ok(OutputKind::PngFrames);
        }
        let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
        match ext.as_str() {
            "mp4" => Ok(OutputKind::H264("mp4")),
            "mkv" => Ok(OutputKind::H264("matroska")),
            "mov" => Ok(OutputKind::H264("mov")),
            "gif" => Ok(OutputKind::Gif),
            "png" => Ok(OutputKind::Png),
            other => Err(Error::VideoEncode {
                path: path.to_path_buf(),
                why: format!(
                    "unsupported output extension `.{other}` (use .mp4, .mkv, .mov, .gif, .png for one frame, or a folder path for PNG frames)"
                ),
            }),
        }
    }
}

/// Writes `frames` (`[t, h, w, 3]` RGB) to `path` at `fps` frames per second; the container or
/// PNG folder is chosen by [`OutputKind::for_path`].
pub fn write_video(path: &Path, frames: ArrayView4<u8>, fps: f64, opts: &EncodeOptions) -> Result<()> {
    let _span = tracing::debug_span!("write_video", path = %path.display()).entered();
    let err = |why: String| Error::VideoEncode { path: path.to_path_buf(), why };
    let (t, h, w, c) = frames.dim();
    if t == 0 || h == 0 || w == 0 || c != 3 {
        return Err(err(format!("frames must be [t, h, w, 3] with t, h, w >= 1, got {:?}", frames.shape())));
    }
    if !(fps.is_finite() && fps > 0.0) {
        return Err(err(format!("fps must be a positive number, got {fps}")));
    }
    let kind = OutputKind::for_path(path)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::Io { path: parent.to_path_buf(), source: e })?;
    }
    match kind {
        OutputKind::PngFrames => {
            let staged = osp_fs::StagedDir::create(path.as_os_str().to_string_lossy().trim_end_matches('/'))?;
            write_pngs(staged.path(), frames).map_err(err)?;
            staged.commit()?;
            Ok(())
        }
        OutputKind::H264(muxer) => {
            osp_fs::write_via_path(path, |tmp| write_h264(tmp, muxer, frames, fps, opts).map_err(err))
        }
        OutputKind::Gif => osp_fs::write_via_path(path, |tmp| write_gif(tmp, frames, fps).map_err(err)),
        OutputKind::Png => osp_fs::write_via_path(path, |tmp| write_png(tmp, frames).map_err(err)),
    }
}

fn write_h264(
    path: &Path,
    muxer: &str,
    frames: ArrayView4<u8>,
    fps: f64,
    opts: &EncodeOptions,
) -> std::result::Result<(), String> {
    init().map_err(|e| e.to_string())?;
    let (_, h, w, _) = frames.dim();
    if h % 2 != 0 || w % 2 != 0 {
        return Err(format!("H.264 with YUV 4:2:0 needs an even frame size, got {w}x{h}"));
    }
    let octx = ffmpeg::format::output_as(path, muxer).map_err(fferr("opening the output"))?;
    let codec = ffmpeg::encoder::find_by_name("libx264")
        .ok_or("this FFmpeg build has no libx264 encoder (install FFmpeg with libx264)")?;
    let mut dict = ffmpeg::Dictionary::new();
    dict.set("preset", &opts.preset);
    dict.set("crf", &opts.crf.to_string());
    let spec = EncoderSpec {
        format: Pixel::YUV420P,
        avg_frame_rate: true,
        create: "creating the encoder",
        open: "opening libx264 (check --preset and --crf)",
        converter: "creating the YUV converter",
    };
    let mut yuv_frames = FrameWriter::open(octx, codec, &spec, (h, w), fps, dict)?;
    yuv_frames.write_all(frames, "converting to YUV 4:2:0")
}

/// Maps an FFmpeg error to a message naming the step that failed.
fn fferr(what: &'static str) -> impl Fn(ffmpeg::Error) -> String {
    move |e| format!("{what}: {e}")
}

/// An opened encoder, its one-stream output and the RGB24 -> encoder-format converter: writes
/// `[t, h, w, 3]` frames with pts 0, 1, ... and finishes the file.
struct FrameWriter {
    encoder: ffmpeg::encoder::Video,
    octx: ffmpeg::format::context::Output,
    scaler: scaling::Context,
    time_base: ffmpeg::Rational,
    ost_time_base: ffmpeg::Rational,
}

/// The encoder [`FrameWriter::open`] sets up: its pixel format, whether the stream records the
/// average frame rate, and the names of its steps in errors.
struct EncoderSpec {
    format: Pixel,
    avg_frame_rate: bool,
    create: &'static str,
    open: &'static str,
    converter: &'static str,
}

impl FrameWriter {
    /// Opens `codec` with `options` for `[h, w]` frames at `fps` (time base `1 / fps`; a global
    /// header when the container wants one) as the one stream of `octx`, writes the header, and
    /// makes the RGB24 -> `spec.format` converter.
    fn open(
        mut octx: ffmpeg::format::context::Output,
        codec: ffmpeg::Codec,
        spec: &EncoderSpec,
        (h, w): (usize, usize),
        fps: f64,
        options: ffmpeg::Dictionary,
    ) -> std::result::Result<Self, String> {
        let global_header = octx.format().flags().contains(ffmpeg::format::Flags::GLOBAL_HEADER);
        let rate = ffmpeg::Rational::from(fps);
        let time_base = rate.invert();
        let mut encoder =
            ffmpeg::codec::context::Context::new_with_codec(codec).encoder().video().map_err(fferr(spec.create))?;
        encoder.set_width(w as u32);
        encoder.set_height(h as u32);
        encoder.set_format(spec.format);
        encoder.set_time_base(time_base);
        encoder.set_frame_rate(Some(rate));
        if global_header {
            encoder.set_flags(ffmpeg::codec::Flags::GLOBAL_HEADER);
        }
        let encoder = encoder.open_with(options).map_err(fferr(spec.open))?;
        {
            let mut ost = octx.add_stream(codec).map_err(fferr("adding the stream"))?;
            ost.set_parameters(&encoder);
            ost.set_time_base(time_base);
            if spec.avg_frame_rate {
                ost.set_avg_frame_rate(rate);
            }
        }
        octx.write_header().map_err(fferr("writing the header"))?;
        let ost_time_base = octx.stream(0).map(|s| s.time_base()).ok_or("the output lost its stream")?;
        let (pw, ph) = (w as u32, h as u32);
        let scaler = scaling::Context::get(Pixel::RGB24, pw, ph, spec.format, pw, ph, scaling::Flags::BILINEAR)
            .map_err(fferr(spec.converter))?;
        Ok(FrameWriter { encoder, octx, scaler, time_base, ost_time_base })
    }

    fn write_all(&mut self, frames: ArrayView4<u8>, converting: &'static str) -> std::result::Result<(), String> {
        let (_, h, w, _) = frames.dim();
        let mut rgb = ffmpeg::frame::Video::new(Pixel::RGB24, w as u32, h as u32);
        let mut converted = ffmpeg::frame::Video::empty();
        for (i, frame) in frames.axis_iter(Axis(0)).enumerate() {
            fill_rgb(&mut rgb, frame);
            self.scaler.run(&rgb, &mut converted).map_err(fferr(converting))?;
            converted.set_pts(Some(i as i64));
            self.encoder.send_frame(&converted).map_err(fferr("encoding a frame"))?;
            self.drain()?;
        }
        self.encoder.send_eof().map_err(fferr("flushing the encoder"))?;
        self.drain()?;
        self.octx.write_trailer().map_err(fferr("writing the trailer"))?;
        Ok(())
    }

    fn drain(&mut self) -> std::result::Result<(), String> {
        let mut packet = ffmpeg::Packet::empty();
        while self.encoder.receive_packet(&mut packet).is_ok() {
            packet.set_stream(0);
            packet.rescale_ts(self.time_base, self.ost_time_base);
            packet.write_interleaved(&mut self.octx).map_err(fferr("writing a packet"))?;
        }
        Ok(())
    }
}

/// Copies one `[h, w, 3]` frame into an RGB24 frame whose rows are `stride` bytes apart.
fn fill_rgb(rgb: &mut ffmpeg::frame::Video, frame: ArrayView3<u8>) {
    let (h, w, _) = frame.dim();
    let stride = rgb.stride(0);
    let data = rgb.data_mut(0);
    for (y, row) in frame.axis_iter(Axis(0)).enumerate().take(h) {
        let dst = &mut data[y * stride..y * stride + w * 3];
        for (x, px) in row.axis_iter(Axis(0)).enumerate() {
            dst[x * 3..x * 3 + 3].copy_from_slice(&[px[0], px[1], px[2]]);
        }
    }
}

/// One PNG image from a one-frame clip.
fn write_png(path: &Path, frames: ArrayView4<u8>) -> std::result::Result<(), String> {
    if frames.shape()[0] != 1 {
        return Err(format!(
            "a .png file holds one frame, the clip has {} (use .mp4, .gif or a folder)",
            frames.shape()[0]
        ));
    }
    let bytes = encode_pngs(frames)?.pop().ok_or("the PNG encoder produced nothing")?;
    std::fs::write(path, bytes).map_err(|e| format!("writing {}: {e}", path.display()))
}

fn write_gif(path: &Path, frames: ArrayView4<u8>, fps: f64) -> std::result::Result<(), String> {
    init().map_err(|e| e.to_string())?;
    let (_, h, w, _) = frames.dim();
    let octx = ffmpeg::format::output_as(path, "gif").map_err(fferr("opening the output"))?;
    let codec = ffmpeg::encoder::find(ffmpeg::codec::Id::GIF).ok_or("this FFmpeg build has no GIF encoder")?;
    let spec = EncoderSpec {
        format: Pixel::RGB8,
        avg_frame_rate: false,
        create: "creating the GIF encoder",
        open: "opening the GIF encoder",
        converter: "creating the palette converter",
    };
    let mut pal_frames = FrameWriter::open(octx, codec, &spec, (h, w), fps, ffmpeg::Dictionary::new())?;
    pal_frames.write_all(frames, "converting to the GIF palette")
}

/// Each frame encoded as PNG bytes.
fn encode_pngs(frames: ArrayView4<u8>) -> std::result::Result<Vec<Vec<u8>>, String> {
    init().map_err(|e| e.to_string())?;
    let (_, h, w, _) = frames.dim();
    let codec = ffmpeg::encoder::find(ffmpeg::codec::Id::PNG).ok_or("this FFmpeg build has no PNG encoder")?;
    let mut encoder = ffmpeg::codec::context::Context::new_with_codec(codec)
        .encoder()
        .video()
        .map_err(fferr("creating the PNG encoder"))?;
    encoder.set_width(w as u32);
    encoder.set_height(h as u32);
    encoder.set_format(Pixel::RGB24);
    encoder.set_time_base(ffmpeg::Rational(1, 1));
    let mut encoder = encoder.open_with(ffmpeg::Dictionary::new()).map_err(fferr("opening the PNG encoder"))?;
    let mut rgb = ffmpeg::frame::Video::new(Pixel::RGB24, w as u32, h as u32);
    let mut packet = ffmpeg::Packet::empty();
    let mut out = Vec::new();
    for (i, frame) in frames.axis_iter(Axis(0)).enumerate() {
        fill_rgb(&mut rgb, frame);
        rgb.set_pts(Some(i as i64));
        encoder.send_frame(&rgb).map_err(fferr("encoding a PNG"))?;
        encoder.receive_packet(&mut packet).map_err(fferr("receiving a PNG"))?;
        out.push(packet.data().ok_or("the PNG encoder returned an empty packet")?.to_vec());
    }
    Ok(out)
}

fn write_pngs(dir: &Path, frames: ArrayView4<u8>) -> std::result::Result<(), String> {
    let images = encode_pngs(frames)?;
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    for (i, bytes) in images.iter().enumerate() {
        let file = dir.join(format!("frame_{i:05}.png"));
        std::fs::write(&file, bytes).map_err(|e| format!("writing {}: {e}", file.display()))?;
    }
    Ok(())
}
