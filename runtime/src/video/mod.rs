//! The video path of the runtime: decoding files into RGB frames, the upstream preprocessing
//! into VAE inputs and back, and encoding frames to H.264.
//!
//! ```no_run
//! # fn main() -> osp_runtime::Result<()> {
//! use osp_runtime::video;
//! let frames = video::read_video("bikes.mp4".as_ref(), 17, 1)?; // [17, 272, 640, 3] u8
//! let x = video::preprocess(frames.view(), 128, 128); // [1, 3, 17, 128, 128] in [-1, 1]
//! let back = video::to_u8_frames(x.index_axis(ndarray::Axis(0), 0));
//! video::write_video("out.mp4".as_ref(), back.view(), 30.0, &Default::default())?;
//! # Ok(())
//! # }
//! ```

pub mod decode;
pub mod encode;
pub mod transform;

pub use decode::{init, probe, read_all, read_frames, read_video, sample_indices, Frames, VideoInfo};
pub use encode::{write_video, EncodeOptions, OutputKind};
pub use transform::{
    batch_to_u8_frames, center_crop_window, eval_transform, preprocess, quantise, resize_window, side_by_side,
    to_u8_frames, video_grid, CropWindow,
};

use crate::error::{Error, Result};

/// WFVAE's temporal compression: inputs have `4n + 1` frames.
pub const TEMPORAL_COMPRESSION: usize = 4;
/// WFVAE's spatial compression: heights and widths are multiples of 8.
pub const SPATIAL_COMPRESSION: usize = 8;

/// Checks the VAE input rules before any decoding: `num_frames = 4n + 1`, height and width
/// multiples of 8. `what` names the input (a file or a flag) in the error.
pub fn check_vae_shape(what: &str, num_frames: usize, height: usize, width: usize) -> Result<()> {
    if num_frames == 0 || !(num_frames - 1).is_multiple_of(TEMPORAL_COMPRESSION) {
        return Err(Error::VideoArg {
            what: what.to_string(),
            rule: format!(
                "num_frames must be 4n + 1 (1, 5, 9, ..., 65, ...) for the 4x temporal compression, got {num_frames}"
            ),
        });
    }
    for (name, v) in [("height", height), ("width", width)] {
        if v == 0 || !v.is_multiple_of(SPATIAL_COMPRESSION) {
            return Err(Error::VideoArg {
                what: what.to_string(),
                rule: format!("{name} must be a positive multiple of 8 for the 8x spatial compression, got {v}"),
            });
        }
    }
    Ok(())
}
