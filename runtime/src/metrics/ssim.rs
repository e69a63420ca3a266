//! SSIM of upstream `cal_ssim.py`: 11x11 Gaussian window (sigma 1.5), valid windows only, f64,
//! the mean over the three channels.

use ndarray::{Array2, ArrayView2, ArrayView3, ArrayView4, Axis};

use super::{check_pair, UnitPixel};
use crate::error::{Error, Result};

const WINDOW: usize = 11;
const SIGMA: f64 = 1.5;
const C1: f64 = 0.01 * 0.01;
const C2: f64 = 0.03 * 0.03;

/// `cv2.getGaussianKernel(11, 1.5)`: `exp(-(i - 5)^2 / (2 sigma^2))`, normalised to sum 1.
pub fn gaussian_window() -> [f64; WINDOW] {
    let half = (WINDOW / 2) as f64;
    let mut k = [0.0f64; WINDOW];
    for (i, v) in k.iter_mut().enumerate() {
        let x = i as f64 - half;
        *v = (-(x * x) / (2.0 * SIGMA * SIGMA)).exp();
    }
    let sum: f64 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= sum);
    k
}

/// The Gaussian-weighted mean of every fully inside 11x11 window of `x`, `[h - 10, w - 10]`
/// (the separable form of `cv2.filter2D(x, -1, outer(k, k))[5:-5, 5:-5]`).
fn filter_valid(x: &Array2<f64>, k: &[f64; WINDOW]) -> Array2<f64> {
    let (h, w) = x.dim();
    let (oh, ow) = (h + 1 - WINDOW, w + 1 - WINDOW);
    let rows = Array2::from_shape_fn((h, ow), |(y, j)| (0..WINDOW).map(|d| x[[y, j + d]] * k[d]).sum::<f64>());
    Array2::from_shape_fn((oh, ow), |(i, j)| (0..WINDOW).map(|d| rows[[i + d, j]] * k[d]).sum::<f64>())
}

/// Upstream `ssim(img1, img2)` of one channel, `[h, w]` with values in `[0, 1]`.
fn channel_ssim(a: ArrayView2<f64>, b: ArrayView2<f64>, k: &[f64; WINDOW]) -> f64 {
    let a = a.to_owned();
    let b = b.to_owned();
    let mu1 = filter_valid(&a, k);
    let mu2 = filter_valid(&b, k);
    let s11 = filter_valid(&(&a * &a), k);
    let s22 = filter_valid(&(&b * &b), k);
    let s12 = filter_valid(&(&a * &b), k);
    let mut total = 0.0;
    for ((((&m1, &m2), &e11), &e22), &e12) in mu1.iter().zip(mu2.iter()).zip(s11.iter()).zip(s22.iter()).zip(s12.iter())
    {
        let (m1_sq, m2_sq, m12) = (m1 * m1, m2 * m2, m1 * m2);
        let (sigma1_sq, sigma2_sq, sigma12) = (e11 - m1_sq, e22 - m2_sq, e12 - m12);
        total += ((2.0 * m12 + C1) * (2.0 * sigma12 + C2)) / ((m1_sq + m2_sq + C1) * (sigma1_sq + sigma2_sq + C2));
    }
    total / mu1.len() as f64
}

/// SSIM of two `[h, w, 3]` frames (both at least 11x11): the mean of the per-channel values.
pub fn frame_ssim<P: UnitPixel>(a: ArrayView3<P>, b: ArrayView3<P>) -> Result<f64> {
    let (h, w, _) = a.dim();
    if h < WINDOW || w < WINDOW {
        return Err(Error::Metric {
            metric: "ssim",
            why: format!("frames must be at least {WINDOW}x{WINDOW} (the Gaussian window), got {h}x{w}"),
        });
    }
    let k = gaussian_window();
    let mut sum = 0.0;
    for c in 0..3 {
        let pa = a.index_axis(Axis(2), c).mapv(|v| v.unit());
        let pb = b.index_axis(Axis(2), c).mapv(|v| v.unit());
        sum += channel_ssim(pa.view(), pb.view(), &k);
    }
    Ok(sum / 3.0)
}

/// SSIM of every frame pair of two `[t, h, w, 3]` videos of one shape.
pub fn ssim_per_frame<P: UnitPixel>(a: ArrayView4<P>, b: ArrayView4<P>) -> Result<Vec<f64>> {
    check_pair("ssim", &a, &b)?;
    a.axis_iter(Axis(0)).zip(b.axis_iter(Axis(0))).map(|(x, y)| frame_ssim(x, y)).collect()
}
