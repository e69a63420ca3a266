//! Video and image I/O with FFmpeg (ffmpeg-next) for training: probe a file, decode chosen frames
//! to RGB24, and write H.264 mp4 files (for generated data sets). Images (`.jpg`, `.png`) are read
//! through FFmpeg's image demuxer as one-frame videos.
//!
//! The decode/encode loops follow the runtime's `runtime/src/video/` (same FFmpeg calls); the
//! trainer may not depend on the runtime.

use std::path::Path;
use std::sync::OnceLock;

use ffmpeg::format::Pixel;
use ffmpeg::software::scaling;
use ffmpeg_next as ffmpeg;

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

fn media_err(path: &Path, why: impl Into<String>) -> Error {
    Error::InvalidInput { name: path.display().to_string(), rule: why.into() }
}

/// Initialises FFmpeg once per process, with its own logging below fatal (every failure reaches
/// the caller as an error naming the file).
pub fn init() -> Result<()> {
    static INIT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| {
        ffmpeg::init().map_err(|e| e.to_string())?;
        ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Fatal);
        Ok(())
    })
    .clone()
    .map_err(|e| Error::Config(format!("initialising FFmpeg failed: {e}")))
}

struct Reader {
    input: ffmpeg::format::context::Input,
    decoder: ffmpeg::decoder::Video,
    stream: usize,
    info: VideoInfo,
}

impl Reader {
    fn open(path: &Path) -> Result<Self> {
        init()?;
        if !path.is_file() {
            return Err(media_err(path, "no such file"));
        }
        let input = ffmpeg::format::input(path)
            .map_err(|e| media_err(path, format!("not a readable media file, or truncated ({e})")))?;
        let stream =
            input.streams().best(ffmpeg::media::Type::Video).ok_or_else(|| media_err(path, "no video stream"))?;
        let index = stream.index();
        let rate = stream.avg_frame_rate();
        let fps = (rate.numerator() > 0 && rate.denominator() > 0).then(|| f64::from(rate));
        let frames = stream.frames().max(0) as usize;
        let decoder = ffmpeg::codec::context::Context::from_parameters(stream.parameters())
            .and_then(|c| c.decoder().video())
            .map_err(|e| media_err(path, format!("no decoder for its video stream ({e})")))?;
        let (width, height) = (decoder.width() as usize, decoder.height() as usize);
        if width == 0 || height == 0 {
            return Err(media_err(path, format!("empty frame size {width}x{height}")));
        }
        Ok(Reader { input, decoder, stream: index, info: VideoInfo { width, height, fps, frames } })
    }

    /// Decodes frames in order until `limit` frames or the end, handing each RGB24 frame to `visit`.
    fn for_each_frame(
        &mut self,
        path: &Path,
        limit: usize,
        mut visit: impl FnMut(usize, &ffmpeg::frame::Video),
    ) -> Result<usize> {
        let derr = |what: &str, e: ffmpeg::Error| media_err(path, format!("{what}: {e}"));
        let mut count = 0usize;
        let mut scaler: Option<(scaling::Context, Pixel)> = None;
        let mut decoded = ffmpeg::frame::Video::empty();
        let mut rgb = ffmpeg::frame::Video::empty();
        let mut eof_sent = false;
        let (w, h) = (self.info.width as u32, self.info.height as u32);
        while count < limit {
            match self.decoder.receive_frame(&mut decoded) {
                Ok(()) => {
                    if (decoded.width(), decoded.height()) != (w, h) {
                        return Err(media_err(path, format!("frame {count} changes the frame size (not supported)")));
                    }
                    let fmt = decoded.format();
                    if scaler.as_ref().is_none_or(|s| s.1 != fmt) {
                        let ctx = scaling::Context::get(fmt, w, h, Pixel::RGB24, w, h, scaling::Flags::BILINEAR)
                            .map_err(|e| derr("creating the RGB24 converter", e))?;
                        scaler = Some((ctx, fmt));
                        rgb = ffmpeg::frame::Video::empty();
                    }
                    let (ctx, _) = scaler.as_mut().expect("the scaler was just created");
                    ctx.run(&decoded, &mut rgb).map_err(|e| derr("converting to RGB24", e))?;
                    visit(count, &rgb);
                    count += 1;
                }
                Err(ffmpeg::Error::Eof) => break,
                Err(ffmpeg::Error::Other { errno }) if errno == ffmpeg::util::error::EAGAIN => {
                    if eof_sent {
                        break;
                    }
                    self.feed(path, &mut eof_sent)?;
                }
                Err(e) => return Err(derr("decoding", e)),
            }
        }
        Ok(count)
    }
}

impl Reader {
    /// Sends the next packet of the video stream to the decoder, or EOF at the end of the input.
    fn feed(&mut self, path: &Path, eof_sent: &mut bool) -> Result<()> {
        let derr = |what: &str, e: ffmpeg::Error| media_err(path, format!("{what}: {e}"));
        loop {
            let mut packet = ffmpeg::Packet::empty();
            match packet.read(&mut self.input) {
                Ok(()) => {
                    if packet.stream() != self.stream {
                        continue;
                    }
                    return match self.decoder.send_packet(&packet) {
                        // A corrupt packet is skipped, as FFmpeg's own tools do.
                        Ok(()) | Err(ffmpeg::Error::InvalidData) => Ok(()),
                        Err(e) => Err(derr("sending a packet to the decoder", e)),
                    };
                }
                Err(ffmpeg::Error::Eof) => {
                    self.decoder.send_eof().map_err(|e| derr("flushing the decoder", e))?;
                    *eof_sent = true;
                    return Ok(());
                }
                Err(ffmpeg::Error::InvalidData) => continue,
                Err(e) => return Err(derr("reading a packet", e)),
            }
        }
    }
}

/// Reads the header of `path`'s best video stream.
pub fn probe(path: &Path) -> Result<VideoInfo> {
    Ok(Reader::open(path)?.info)
}

/// Frames at `indices` (any order, repeats allowed), decoding up to the largest one. Fails when
/// the file is missing, unreadable, or ends before a requested frame.
pub fn read_frames(path: &Path, indices: &[usize]) -> Result<Frames> {
    let mut reader = Reader::open(path)?;
    let (w, h) = (reader.info.width, reader.info.height);
    let n = h * w * 3;
    let mut out = vec![0u8; indices.len() * n];
    let Some(&last) = indices.iter().max() else {
        return Frames::new(0, h, w, out);
    };
    let mut found = 0usize;
    let decoded = reader.for_each_frame(path, last + 1, |i, rgb| {
        let stride = rgb.stride(0);
        let data = rgb.data(0);
        for (slot, _) in indices.iter().enumerate().filter(|(_, &want)| want == i) {
            for row in 0..h {
                out[slot * n + row * w * 3..slot * n + (row + 1) * w * 3]
                    .copy_from_slice(&data[row * stride..row * stride + w * 3]);
            }
            found += 1;
        }
    })?;
    if found < indices.len() {
        return Err(media_err(path, format!("frame {last} was requested but only {decoded} frames decode")));
    }
    Frames::new(indices.len(), h, w, out)
}

/// Writes `[t, h, w, 3]` RGB frames as H.264 (libx264, YUV 4:2:0, `crf`) mp4 at `fps`, to a
/// temporary name renamed into place.
pub fn write_mp4(path: &Path, frames: &Frames, fps: f64, crf: u8) -> Result<()> {
    init()?;
    let (t, h, w) = (frames.t, frames.h, frames.w);
    if t == 0 || h % 2 != 0 || w % 2 != 0 || h == 0 || w == 0 {
        return Err(media_err(path, format!("H.264 4:2:0 needs >= 1 frame of even size, got {t} frames of {w}x{h}")));
    }
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("video.mp4");
    let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let result = encode(&tmp, frames, fps, crf);
    if let Err(why) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(media_err(path, why));
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

fn encode(path: &Path, frames: &Frames, fps: f64, crf: u8) -> std::result::Result<(), String> {
    let (h, w) = (frames.h, frames.w);
    let fferr = |what: &'static str| move |e: ffmpeg::Error| format!("{what}: {e}");
    let mut octx = ffmpeg::format::output_as(path, "mp4").map_err(fferr("opening the output"))?;
    let codec = ffmpeg::encoder::find_by_name("libx264").ok_or("this FFmpeg build has no libx264 encoder")?;
    let global_header = octx.format().flags().contains(ffmpeg::format::Flags::GLOBAL_HEADER);
    let rate = ffmpeg::Rational::from(fps);
    let time_base = rate.invert();
    let mut encoder = ffmpeg::codec::context::Context::new_with_codec(codec)
        .encoder()
        .video()
        .map_err(fferr("creating the encoder"))?;
    encoder.set_width(w as u32);
    encoder.set_height(h as u32);
    encoder.set_format(Pixel::YUV420P);
    encoder.set_time_base(time_base);
    encoder.set_frame_rate(Some(rate));
    if global_header {
        encoder.set_flags(ffmpeg::codec::Flags::GLOBAL_HEADER);
    }
    let mut dict = ffmpeg::Dictionary::new();
    dict.set("preset", "medium");
    dict.set("crf", &crf.to_string());
    let mut encoder = encoder.open_with(dict).map_err(fferr("opening libx264"))?;
    {
        let mut ost = octx.add_stream(codec).map_err(fferr("adding the stream"))?;
        ost.set_parameters(&encoder);
        ost.set_time_base(time_base);
        ost.set_avg_frame_rate(rate);
    }
    octx.write_header().map_err(fferr("writing the header"))?;
    let ost_time_base = octx.stream(0).map(|s| s.time_base()).ok_or("the output lost its stream")?;
    let mut scaler = scaling::Context::get(
        Pixel::RGB24,
        w as u32,
        h as u32,
        Pixel::YUV420P,
        w as u32,
        h as u32,
        scaling::Flags::BILINEAR,
    )
    .map_err(fferr("creating the YUV converter"))?;
    let mut rgb = ffmpeg::frame::Video::new(Pixel::RGB24, w as u32, h as u32);
    let mut yuv = ffmpeg::frame::Video::empty();
    let drain = |encoder: &mut ffmpeg::encoder::Video, octx: &mut ffmpeg::format::context::Output| {
        let mut packet = ffmpeg::Packet::empty();
        while encoder.receive_packet(&mut packet).is_ok() {
            packet.set_stream(0);
            packet.rescale_ts(time_base, ost_time_base);
            packet.write_interleaved(octx).map_err(fferr("writing a packet"))?;
        }
        Ok::<(), String>(())
    };
    for i in 0..frames.t {
        let src = frames.frame(i);
        let stride = rgb.stride(0);
        let data = rgb.data_mut(0);
        for y in 0..h {
            data[y * stride..y * stride + w * 3].copy_from_slice(&src[y * w * 3..(y + 1) * w * 3]);
        }
        scaler.run(&rgb, &mut yuv).map_err(fferr("converting to YUV 4:2:0"))?;
        yuv.set_pts(Some(i as i64));
        encoder.send_frame(&yuv).map_err(fferr("encoding a frame"))?;
        drain(&mut encoder, &mut octx)?;
    }
    encoder.send_eof().map_err(fferr("flushing the encoder"))?;
    drain(&mut encoder, &mut octx)?;
    octx.write_trailer().map_err(fferr("writing the trailer"))?;
    Ok(())
}
