//! PSNR of upstream `cal_psnr.py` (`img_psnr`): data range 1, one value per frame.

use ndarray::{ArrayView3, ArrayView4, Axis};

use super::{check_pair, UnitPixel};
use crate::error::Result;

/// The value upstream returns for (near-)identical frames (`mse < 1e-10`).
pub const PSNR_IDENTICAL: f64 = 100.0;

/// PSNR in dB of two `[h, w, 3]` frames.
pub fn frame_psnr<P: UnitPixel>(a: ArrayView3<P>, b: ArrayView3<P>) -> f64 {
    let n = a.len() as f64;
    let sse: f64 = a
        .iter()
        .zip(b.iter())
        .map(|(&x, &y)| {
            let d = x.unit() - y.unit();
            d * d
        })
        .sum();
    let mse = sse / n;
    if mse < 1e-10 {
        return PSNR_IDENTICAL;
    }
    20.0 * (1.0 / mse.sqrt()).log10()
}

/// PSNR of every frame pair of two `[t, h, w, 3]` videos of one shape.
pub fn psnr_per_frame<P: UnitPixel>(a: ArrayView4<P>, b: ArrayView4<P>) -> Result<Vec<f64>> {
    check_pair("psnr", &a, &b)?;
    Ok(a.axis_iter(Axis(0)).zip(b.axis_iter(Axis(0))).map(|(x, y)| frame_psnr(x, y)).collect())
}
