//! Video decoding with FFmpeg (ffmpeg-next): the best video stream of a file, converted to RGB24
//! and returned as `[t, h, w, 3]` u8 frames, with the frame sampling of upstream `read_video`
//! (`opensora/sample/rec_video.py` at Open-Sora-Plan 9fa322fbbb276e2bbe40b2f439e3d610af3d7690).
//!
//! The pixels equal decord's (upstream's reader) and `ffmpeg -pix_fmt rgb24`'s bit for bit: all
//! three use swscale's unscaled YUV -> RGB24 conversion.

use std::path::Path;
use std::sync::OnceLock;

use ffmpeg::format::Pixel;
use ffmpeg::software::scaling;
use ffmpeg_next as ffmpeg;
use ndarray::Array4;

use crate::error::{Error, Result};

/// Decoded RGB24 frames, `[t, h, w, 3]`.
pub type Frames = Array4<u8>;

/// Initialises FFmpeg once per process and silences its own logging below fatal: every failure
/// reaches the caller as an [`Error`] naming the file.
pub fn init() -> Result<()> {
    static INIT: OnceLock<std::result::Result<(), ffmpeg::Error>> = OnceLock::new();
    INIT.get_or_init(|| {
        ffmpeg::init()?;
        ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Fatal);
        Ok(())
    })
    .map_err(|e| Error::FfmpegInit(e.to_string()))
}

/// What the container says about a file's best video stream.
#[derive(Debug, Clone, PartialEq)]
pub struct VideoInfo {
    pub width: u32,
    pub height: u32,
    /// Average frame rate, when the container knows it.
    pub fps: Option<f64>,
    /// Frame count declared by the container (0 when unknown); decoding is the ground truth.
    pub declared_frames: u64,
}

/// Opens `path` and reads its best video stream's header.
pub fn probe(path: &Path) -> Result<VideoInfo> {
    let reader = Reader::open(path)?;
    Ok(reader.info())
}

/// The frame indices upstream samples: `np.linspace(0, num_frames * sample_rate - 1, num_frames,
/// dtype=int)` (strictly increasing, from frame 0).
pub fn sample_indices(num_frames: usize, sample_rate: usize) -> Vec<usize> {
    let stop = (num_frames * sample_rate).saturating_sub(1) as f64;
    match num_frames {
        0 => Vec::new(),
        1 => vec![0],
        n => {
            // numpy: `arange(n) * (stop / (n - 1))`, last element set to `stop`, then truncated.
            let step = stop / (n - 1) as f64;
            (0..n).map(|i| if i == n - 1 { stop } else { i as f64 * step }).map(|v| v as usize).collect()
        }
    }
}

/// Upstream `read_video(path, num_frames, sample_rate)`: frames `sample_indices(num_frames,
/// sample_rate)` of the file. Fails if the file has fewer than `num_frames * sample_rate` frames.
pub fn read_video(path: &Path, num_frames: usize, sample_rate: usize) -> Result<Frames> {
    if num_frames == 0 || sample_rate == 0 {
        return Err(Error::VideoArg {
            what: format!("{}", path.display()),
            rule: format!("num_frames ({num_frames}) and sample_rate ({sample_rate}) must be at least 1"),
        });
    }
    let indices = sample_indices(num_frames, sample_rate);
    let needed = num_frames * sample_rate;
    read_frames(path, &indices).map_err(|e| match e {
        Error::TooFewFrames { path, decoded, declared, .. } => Error::TooFewFrames {
            path,
            needed,
            decoded,
            declared,
            rule: format!("num_frames {num_frames} x sample_rate {sample_rate} needs the first {needed} frames"),
        },
        other => other,
    })
}

/// Frames at `indices` (any order, repeats allowed), decoding only up to the largest one.
pub fn read_frames(path: &Path, indices: &[usize]) -> Result<Frames> {
    let _span = tracing::debug_span!("read_frames", path = %path.display()).entered();
    let mut reader = Reader::open(path)?;
    let (w, h) = (reader.width as usize, reader.height as usize);
    let mut out = Frames::zeros((indices.len(), h, w, 3));
    let Some(&last) = indices.iter().max() else {
        return Ok(out);
    };
    let mut found = 0usize;
    let decoded = reader.for_each_frame(Some(last + 1), |i, rgb| {
        for (slot, _) in indices.iter().enumerate().filter(|(_, &want)| want == i) {
            copy_rgb(rgb, &mut out, slot);
            found += 1;
        }
    })?;
    if found < indices.len() {
        return Err(Error::TooFewFrames {
            path: path.to_path_buf(),
            needed: last + 1,
            decoded,
            declared: reader.declared_frames,
            rule: format!("frame index {last} was requested"),
        });
    }
    Ok(out)
}

/// Every frame of the file (at most `limit`). A file that decodes to fewer frames than its
/// container declares is reported as truncated.
pub fn read_all(path: &Path, limit: Option<usize>) -> Result<Frames> {
    let _span = tracing::debug_span!("read_all", path = %path.display()).entered();
    let mut reader = Reader::open(path)?;
    let (w, h) = (reader.width as usize, reader.height as usize);
    let mut frames: Vec<u8> = Vec::new();
    let decoded = reader.for_each_frame(limit, |_, rgb| {
        for row in 0..h {
            let start = row * rgb.stride(0);
            frames.extend_from_slice(&rgb.data(0)[start..start + w * 3]);
        }
    })?;
    let declared = reader.declared_frames;
    let wanted = limit.map_or(declared, |l| declared.min(l as u64));
    if decoded == 0 || (declared > 0 && (decoded as u64) < wanted) {
        return Err(Error::TooFewFrames {
            path: path.to_path_buf(),
            needed: wanted.max(1) as usize,
            decoded,
            declared,
            rule: "every frame the container declares must decode".to_string(),
        });
    }
    Frames::from_shape_vec((decoded, h, w, 3), frames).map_err(|e| Error::VideoArg {
        what: path.display().to_string(),
        rule: format!("decoded frames do not fill [{decoded}, {h}, {w}, 3]: {e}"),
    })
}

fn copy_rgb(rgb: &ffmpeg::frame::Video, out: &mut Frames, slot: usize) {
    let (h, w) = (out.shape()[1], out.shape()[2]);
    let stride = rgb.stride(0);
    let data = rgb.data(0);
    let mut dst = out.index_axis_mut(ndarray::Axis(0), slot);
    let dst = dst.as_slice_mut().expect("a freshly allocated frame slot should be contiguous");
    // Rows of an FFmpeg frame are padded to `stride` bytes.
    for row in 0..h {
        dst[row * w * 3..(row + 1) * w * 3].copy_from_slice(&data[row * stride..row * stride + w * 3]);
    }
}

/// An opened input with the decoder of its best video stream.
struct Reader {
    path: std::path::PathBuf,
    input: ffmpeg::format::context::Input,
    decoder: ffmpeg::decoder::Video,
    stream: usize,
    width: u32,
    height: u32,
    fps: Option<f64>,
    declared_frames: u64,
}

impl Reader {
    fn open(path: &Path) -> Result<Self> {
        init()?;
        match osp_graphs::path::PathKind::of(path) {
            osp_graphs::path::PathKind::File => {}
            osp_graphs::path::PathKind::Missing => {
                return Err(Error::VideoOpen { path: path.to_path_buf(), why: "no such file".to_string() });
            }
            _ => {
                let why = osp_graphs::path::require_file(path).err().unwrap_or_default();
                return Err(Error::VideoOpen { path: path.to_path_buf(), why });
            }
        }
        let open_err = |why: String| Error::VideoOpen { path: path.to_path_buf(), why };
        let input = ffmpeg::format::input(path)
            .map_err(|e| open_err(format!("not a readable media file, or truncated ({e})")))?;
        let stream = input
            .streams()
            .best(ffmpeg::media::Type::Video)
            .ok_or_else(|| Error::NoVideoStream { path: path.to_path_buf() })?;
        let index = stream.index();
        let rate = stream.avg_frame_rate();
        let fps = (rate.numerator() > 0 && rate.denominator() > 0).then(|| f64::from(rate));
        let declared_frames = stream.frames().max(0) as u64;
        let decoder = ffmpeg::codec::context::Context::from_parameters(stream.parameters())
            .and_then(|c| c.decoder().video())
            .map_err(|e| open_err(format!("no decoder for its video stream ({e})")))?;
        let (width, height) = (decoder.width(), decoder.height());
        if width == 0 || height == 0 {
            return Err(open_err(format!("video stream has an empty frame size {width}x{height}")));
        }
        Ok(Self { path: path.to_path_buf(), input, decoder, stream: index, width, height, fps, declared_frames })
    }

    fn info(&self) -> VideoInfo {
        VideoInfo { width: self.width, height: self.height, fps: self.fps, declared_frames: self.declared_frames }
    }

    fn decode_err(&self, what: &str, e: ffmpeg::Error) -> Error {
        Error::VideoDecode { path: self.path.clone(), why: format!("{what}: {e}") }
    }

    /// Decodes frames in order, handing each (as RGB24) to `visit` with its index, until `limit`
    /// frames or the end of the stream. Returns the number of frames decoded.
    fn for_each_frame(
        &mut self,
        limit: Option<usize>,
        mut visit: impl FnMut(usize, &ffmpeg::frame::Video),
    ) -> Result<usize> {
        let limit = limit.unwrap_or(usize::MAX);
        let mut count = 0usize;
        let mut scaler: Option<(scaling::Context, Pixel, u32, u32)> = None;
        let mut decoded = ffmpeg::frame::Video::empty();
        let mut rgb = ffmpeg::frame::Video::empty();
        let mut eof_sent = false;
        while count < limit {
            match self.decoder.receive_frame(&mut decoded) {
                Ok(()) => {
                    let (fmt, w, h) = (decoded.format(), decoded.width(), decoded.height());
                    if (w, h) != (self.width, self.height) {
                        return Err(Error::VideoDecode {
                            path: self.path.clone(),
                            why: format!(
                                "frame {count} is {w}x{h}, the stream started at {}x{} (size changes are not supported)",
                                self.width, self.height
                            ),
                        });
                    }
                    if scaler.as_ref().is_none_or(|s| s.1 != fmt) {
                        let ctx = scaling::Context::get(fmt, w, h, Pixel::RGB24, w, h, scaling::Flags::BILINEAR)
                            .map_err(|e| self.decode_err("creating the RGB24 converter", e))?;
                        scaler = Some((ctx, fmt, w, h));
                        rgb = ffmpeg::frame::Video::empty();
                    }
                    let (ctx, ..) = scaler.as_mut().expect("the scaler was just created");
                    ctx.run(&decoded, &mut rgb).map_err(|e| self.decode_err("converting to RGB24", e))?;
                    visit(count, &rgb);
                    count += 1;
                }
                Err(ffmpeg::Error::Eof) => break,
                Err(ffmpeg::Error::Other { errno }) if errno == ffmpeg::util::error::EAGAIN => {
                    if eof_sent {
                        break;
                    }
                    self.feed(&mut eof_sent)?;
                }
                Err(e) => return Err(self.decode_err(&format!("decoding frame {count}"), e)),
            }
        }
        Ok(count)
    }

    /// Sends the next packet of the video stream to the decoder, or EOF at the end of the input.
    fn feed(&mut self, eof_sent: &mut bool) -> Result<()> {
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
                        Err(e) => Err(self.decode_err("sending a packet to the decoder", e)),
                    };
                }
                Err(ffmpeg::Error::Eof) => {
                    self.decoder.send_eof().map_err(|e| self.decode_err("flushing the decoder", e))?;
                    *eof_sent = true;
                    return Ok(());
                }
                // The demuxer resyncs past invalid data.
                Err(ffmpeg::Error::InvalidData) => continue,
                Err(e) => return Err(self.decode_err("reading a packet", e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // np.linspace(0, n * sr - 1, n, dtype=int).tolist()
    #[test]
    fn sample_indices_match_numpy_linspace() {
        assert_eq!(sample_indices(5, 3), vec![0, 3, 7, 10, 14]);
        assert_eq!(sample_indices(17, 2), vec![0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 33]);
        assert_eq!(sample_indices(9, 7), vec![0, 7, 15, 23, 31, 38, 46, 54, 62]);
        assert_eq!(sample_indices(65, 1), (0..65).collect::<Vec<_>>());
        assert_eq!(sample_indices(1, 4), vec![0]);
    }
}
