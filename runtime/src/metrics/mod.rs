//! Video reconstruction metrics as upstream defines them, at Open-Sora-Plan
//! 9fa322fbbb276e2bbe40b2f439e3d610af3d7690, `opensora/models/causalvideovae/eval/`:
//! - PSNR (`cal_psnr.py` `img_psnr`): per frame, on values in `[0, 1]`, MSE over all pixels and
//!   channels, `20 log10(1 / sqrt(mse))`, and 100 when `mse < 1e-10`;
//! - SSIM (`cal_ssim.py` `ssim` / `calculate_ssim_function`): per frame and channel in f64 with
//!   `C1 = 0.01^2`, `C2 = 0.03^2` (data range 1), an 11x11 Gaussian window of sigma 1.5
//!   (`cv2.getGaussianKernel(11, 1.5)` outer product) applied with `cv2.filter2D` and cropped
//!   `[5:-5, 5:-5]`, i.e. only windows fully inside the frame (so OpenCV's border mode never
//!   matters); the frame's value is the mean over the three channels' mean SSIM maps.
//!
//! Both `calculate_*` functions average per frame index over the videos and `eval.py` then
//! averages those; with equal frame counts that is the mean over every (video, frame) pair,
//! which is what [`mean`] of all per-frame values gives. Upstream `eval.py` hands the functions
//! `[b, c, t, h, w]` batches although they index `[b, t, c, h, w]` (its PSNR branch then fails on
//! `np.mean` of a dict); the definitions ported here are the per-frame ones the functions
//! document, on correctly ordered frames.
//!
//! Frames are `[t, h, w, 3]`: u8 (scaled by 1/255) or f32 already in `[0, 1]`.

mod psnr;
mod ssim;

pub use psnr::{frame_psnr, psnr_per_frame, PSNR_IDENTICAL};
pub use ssim::{frame_ssim, gaussian_window, ssim_per_frame};

use ndarray::{ArrayView4, Axis};

use crate::error::{Error, Result};

/// A pixel type whose values map to `[0, 1]`.
pub trait UnitPixel: Copy {
    fn unit(self) -> f64;
}

impl UnitPixel for u8 {
    fn unit(self) -> f64 {
        f64::from(self) / 255.0
    }
}

impl UnitPixel for f32 {
    fn unit(self) -> f64 {
        f64::from(self)
    }
}

/// Which metric `osp eval` computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Metric {
    Psnr,
    Ssim,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Metric::Psnr => "psnr",
            Metric::Ssim => "ssim",
        }
    }

    /// The metric of every frame pair of two `[t, h, w, 3]` videos.
    pub fn per_frame<P: UnitPixel>(self, a: ArrayView4<P>, b: ArrayView4<P>) -> Result<Vec<f64>> {
        match self {
            Metric::Psnr => psnr_per_frame(a, b),
            Metric::Ssim => ssim_per_frame(a, b),
        }
    }
}

/// The arithmetic mean (`NaN` for no values, which callers report as an error first).
pub fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// Both videos `[t, h, w, 3]` with one shape and at least one frame.
fn check_pair<P>(metric: &'static str, a: &ArrayView4<P>, b: &ArrayView4<P>) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::Metric {
            metric,
            why: format!("the videos differ in shape: {:?} vs {:?} (both must be [t, h, w, 3])", a.shape(), b.shape()),
        });
    }
    if a.shape()[3] != 3 || a.len_of(Axis(0)) == 0 {
        return Err(Error::Metric {
            metric,
            why: format!("videos must be [t, h, w, 3] with t >= 1, got {:?}", a.shape()),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use ndarray::Array4;
    use osp_graphs::Approx;

    use super::*;

    /// The test pair of the reference snippet below: `[2, 16, 12, 3]` u8 patterns.
    fn pair() -> (Array4<u8>, Array4<u8>) {
        let a = Array4::from_shape_fn((2, 16, 12, 3), |(t, y, x, c)| ((x * 7 + y * 13 + c * 50 + t * 11) % 256) as u8);
        let b = Array4::from_shape_fn((2, 16, 12, 3), |(t, y, x, c)| {
            let v = a[[t, y, x, c]] as i64 + ((x * y + c + t) % 9) as i64 - 4;
            v.clamp(0, 255) as u8
        });
        (a, b)
    }

    // Upstream `img_psnr` and `ssim` (cal_psnr.py, cal_ssim.py; numpy 2.4, opencv 4.x) on frames
    // `[c, h, w]` float32 / 255:
    //   T, Y, X, C = np.meshgrid(np.arange(2), np.arange(16), np.arange(12), np.arange(3), indexing="ij")
    //   a = ((X * 7 + Y * 13 + C * 50 + T * 11) % 256).astype(np.uint8)
    //   b = np.clip(a.astype(int) + (X * Y + C + T) % 9 - 4, 0, 255).astype(np.uint8)
    //   fa = (a.astype(np.float32) / 255.0).transpose(0, 3, 1, 2); fb likewise
    //   [img_psnr(fa[i], fb[i]) for i in range(2)]             -> 39.66906521229681, 40.28690934502505
    //   [np.mean([ssim(fa[i][c], fb[i][c]) for c in range(3)])] -> 0.9957731825307011, 0.9963753857968091
    #[test]
    fn psnr_matches_upstream() {
        let (a, b) = pair();
        let got = psnr_per_frame(a.view(), b.view()).unwrap();
        let want = [39.66906521229681f64, 40.28690934502505];
        let c = Approx::Close.compare(&got, &want);
        assert!(c.ok(), "{got:?} vs {want:?}: {c:?}");
    }

    #[test]
    fn ssim_matches_upstream() {
        let (a, b) = pair();
        let got = ssim_per_frame(a.view(), b.view()).unwrap();
        let want = [0.9957731825307011f64, 0.9963753857968091];
        let c = Approx::Close.compare(&got, &want);
        assert!(c.ok(), "{got:?} vs {want:?}: {c:?}");
    }

    // cv2.getGaussianKernel(11, 1.5).ravel()
    #[test]
    fn gaussian_window_matches_opencv() {
        let want = [
            0.0010283800844791097f64,
            0.007598758135239182,
            0.03600077212843082,
            0.10936068950970002,
            0.21300553771125372,
            0.2660117248617943,
            0.21300553771125372,
            0.10936068950970002,
            0.03600077212843082,
            0.007598758135239182,
            0.0010283800844791097,
        ];
        let c = Approx::Close.compare(&gaussian_window(), &want);
        assert!(c.ok(), "{c:?}");
    }

    #[test]
    fn identical_frames_give_the_upstream_caps() {
        let (a, _) = pair();
        assert_eq!(psnr_per_frame(a.view(), a.view()).unwrap(), vec![PSNR_IDENTICAL; 2]);
        for s in ssim_per_frame(a.view(), a.view()).unwrap() {
            assert!((s - 1.0).abs() < 1e-12, "{s}");
        }
    }

    #[test]
    fn u8_and_unit_f32_frames_agree() {
        let (a, b) = pair();
        let fa = a.mapv(|v| v as f32 / 255.0);
        let fb = b.mapv(|v| v as f32 / 255.0);
        for m in [Metric::Psnr, Metric::Ssim] {
            let u = m.per_frame(a.view(), b.view()).unwrap();
            let f = m.per_frame(fa.view(), fb.view()).unwrap();
            assert!(Approx::Close.compare(&u, &f).ok(), "{m:?}: {u:?} vs {f:?}");
        }
    }

    #[test]
    fn bad_pairs_are_errors_naming_the_rule() {
        let (a, _) = pair();
        let small = Array4::<u8>::zeros((2, 8, 12, 3));
        let e = psnr_per_frame(a.view(), small.view()).unwrap_err().to_string();
        assert!(e.contains("differ in shape"), "{e}");
        let e = ssim_per_frame(small.view(), small.view()).unwrap_err().to_string();
        assert!(e.contains("at least 11x11"), "{e}");
    }
}
