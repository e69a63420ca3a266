//! Frame transforms of the upstream video path, at Open-Sora-Plan
//! 9fa322fbbb276e2bbe40b2f439e3d610af3d7690:
//! - `preprocess` of `opensora/sample/rec_video.py`: `ToTensorVideo` (u8 / 255),
//!   `CenterCropResizeVideo((h, w))` (`opensora/dataset/transform.py`: the largest centred window
//!   of aspect `h / w`, then `F.interpolate(mode="bilinear", align_corners=True, antialias=True)`),
//!   then `2x - 1`, giving `[1, 3, t, h, w]` f32;
//! - `custom_to_video`: `clamp(-1, 1)`, `(x + 1) / 2`, `(255 * x).astype(uint8)` (truncation);
//! - the evaluation transforms of `opensora/models/causalvideovae/dataset/video_dataset.py`
//!   (`resize` to a short side, `CenterCropVideo`).
//!
//! The resize is PyTorch's separable antialiased bilinear kernel (`_upsample_bilinear2d_aa`,
//! width pass then height pass, f32 accumulation) reimplemented here, because swscale's bilinear
//! scaler uses different sample positions and fixed-point weights. Its weights are computed in f64
//! and rounded to f32 once: it matches torch 2.5's float32 path to f32 rounding and its float64
//! path to 1e-6 (see the tests here and the trainer's transform fixtures). The trainer's data
//! transforms call the same [`resize_window`], so training and inference see the same pixels.

use std::ops::Range;

use ndarray::{Array4, Array5, ArrayView4, ArrayView5, Axis};

use crate::error::{Error, Result};

/// A crop window `[top, top + height) x [left, left + width)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CropWindow {
    pub top: usize,
    pub left: usize,
    pub height: usize,
    pub width: usize,
}

/// Upstream `center_crop_th_tw(clip, th, tw, top_crop=False)`: the largest centred window of
/// aspect `th / tw` (sizes truncated, at least 1; offsets rounded half to even like Python's
/// `round`).
pub fn center_crop_window(h: usize, w: usize, th: usize, tw: usize) -> CropWindow {
    let tr = th as f64 / tw as f64;
    let (new_h, new_w) =
        if h as f64 / w as f64 > tr { ((w as f64 * tr) as usize, w) } else { (h, (h as f64 / tr) as usize) };
    CropWindow {
        top: ((h - new_h) as f64 / 2.0).round_ties_even() as usize,
        left: ((w - new_w) as f64 / 2.0).round_ties_even() as usize,
        height: new_h.max(1),
        width: new_w.max(1),
    }
}

/// Upstream `center_crop(clip, (th, tw))` of the evaluation dataset: a `th x tw` window at the
/// centre; the frame must be at least that large.
pub fn center_window(h: usize, w: usize, th: usize, tw: usize) -> Result<CropWindow> {
    if h < th || w < tw {
        return Err(Error::VideoArg {
            what: format!("a {h}x{w} frame"),
            rule: format!("height and width must be no smaller than the crop size {th}x{tw}"),
        });
    }
    Ok(CropWindow {
        top: ((h - th) as f64 / 2.0).round_ties_even() as usize,
        left: ((w - tw) as f64 / 2.0).round_ties_even() as usize,
        height: th,
        width: tw,
    })
}

/// Upstream evaluation `resize(x, resolution)`: the short side becomes `resolution`, the other
/// side `int(resolution * aspect)`.
pub fn short_side_size(h: usize, w: usize, resolution: usize) -> (usize, usize) {
    let aspect = w as f64 / h as f64;
    if w <= h {
        ((resolution as f64 / aspect) as usize, resolution)
    } else {
        (resolution, (resolution as f64 * aspect) as usize)
    }
}

/// One output sample of the separable kernel: input taps `[start, start + weights.len())`.
struct Taps {
    start: usize,
    weights: Vec<f32>,
}

impl Taps {
    /// `sum_k weights[k] * x(start + k)`, accumulated in f32 in tap order.
    #[inline]
    fn apply(&self, x: impl Fn(usize) -> f32) -> f32 {
        let mut acc = 0.0f32;
        for (k, &w) in self.weights.iter().enumerate() {
            acc += w * x(self.start + k);
        }
        acc
    }
}

/// PyTorch's antialiased bilinear taps (PIL's triangle filter, widened by the downscale factor)
/// for the output indices `range` of one axis resized from `input` to `output`:
/// `scale = (in - 1) / (out - 1)` with `align_corners` (0 for one output), else `in / out`;
/// `center = scale * (i + 0.5)`, support `scale` when downsampling (else 1), weights
/// `1 - |(j - center + 0.5) / max(scale, 1)|` clamped at 0, normalised, in f64. An axis whose size
/// does not change is copied, as in PyTorch.
fn aa_taps(input: usize, output: usize, align_corners: bool, range: Range<usize>) -> Vec<Taps> {
    if input == output {
        return range.map(|i| Taps { start: i, weights: vec![1.0] }).collect();
    }
    let scale = match (align_corners, output) {
        (true, 1) => 0.0,
        (true, _) => (input - 1) as f64 / (output - 1) as f64,
        (false, _) => input as f64 / output as f64,
    };
    let (support, inv) = if scale >= 1.0 { (scale, 1.0 / scale) } else { (1.0, 1.0) };
    range
        .map(|i| {
            let center = scale * (i as f64 + 0.5);
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(input as i64).max(lo as i64) as usize;
            let mut w: Vec<f64> = (lo..hi).map(|j| (1.0 - ((j as f64 - center + 0.5) * inv).abs()).max(0.0)).collect();
            let total: f64 = w.iter().sum();
            if total != 0.0 {
                w.iter_mut().for_each(|v| *v /= total);
            }
            Taps { start: lo, weights: w.into_iter().map(|v| v as f32).collect() }
        })
        .collect()
}

/// Rows `rows` and columns `cols` of `F.interpolate(x, (out_h, out_w), mode="bilinear",
/// align_corners, antialias=True)` where `x` is the `window` of each `[t, h, w, 3]` u8 frame
/// divided by 255: `[t, rows.len(), cols.len(), 3]` values in `[0, 1]`. The width pass runs before
/// the height pass, as in PyTorch; computing a crop of the resized frame gives the values of
/// resizing all of it and cropping.
pub fn resize_window(
    frames: ArrayView4<u8>,
    window: CropWindow,
    (out_h, out_w): (usize, usize),
    align_corners: bool,
    rows: Range<usize>,
    cols: Range<usize>,
) -> Array4<f32> {
    let frames = frames.as_standard_layout();
    let (t, h, w, c) = frames.dim();
    let px = frames.as_slice().expect("a standard-layout array is one slice");
    let rx = aa_taps(window.width, out_w, align_corners, cols);
    let ry = aa_taps(window.height, out_h, align_corners, rows);
    let (nr, nc) = (ry.len(), rx.len());
    let mut out = vec![0f32; t * nr * nc * c];
    let mut horizontal = vec![0f32; window.height * nc * c];
    for f in 0..t {
        for y in 0..window.height {
            let row = &px[((f * h + window.top + y) * w + window.left) * c..];
            for (ox, taps) in rx.iter().enumerate() {
                for ch in 0..c {
                    horizontal[(y * nc + ox) * c + ch] = taps.apply(|x| f32::from(row[x * c + ch]) / 255.0);
                }
            }
        }
        for (oy, taps) in ry.iter().enumerate() {
            for ox in 0..nc {
                for ch in 0..c {
                    out[((f * nr + oy) * nc + ox) * c + ch] = taps.apply(|y| horizontal[(y * nc + ox) * c + ch]);
                }
            }
        }
    }
    Array4::from_shape_vec((t, nr, nc, c), out).expect("the output holds t * rows * cols * channels values")
}

/// Crops then resizes `[t, h, w, 3]` u8 frames to `[t, out_h, out_w, 3]` values in `[0, 1]`
/// (`align_corners=True`).
pub fn crop_resize(frames: ArrayView4<u8>, window: CropWindow, out_h: usize, out_w: usize) -> Array4<f32> {
    resize_window(frames, window, (out_h, out_w), true, 0..out_h, 0..out_w)
}

/// Upstream `preprocess(read_video(...), height, width)`: `[t, h, w, 3]` u8 frames to the VAE
/// input `x`, `[1, 3, t, height, width]` f32 in `[-1, 1]`.
pub fn preprocess(frames: ArrayView4<u8>, height: usize, width: usize) -> Array5<f32> {
    let (h, w) = (frames.shape()[1], frames.shape()[2]);
    let window = center_crop_window(h, w, height, width);
    let resized = crop_resize(frames, window, height, width);
    // [t, h, w, 3] -> [1, 3, t, h, w]
    let x = resized.mapv(|v| 2.0 * v - 1.0).permuted_axes([3, 0, 1, 2]);
    x.as_standard_layout().into_owned().insert_axis(Axis(0))
}

/// Upstream `custom_to_video` on one video `[3, t, h, w]` in `[-1, 1]`: `[t, h, w, 3]` u8.
pub fn to_u8_frames(video: ArrayView4<f32>) -> Array4<u8> {
    // [3, t, h, w] -> [t, h, w, 3]
    video.permuted_axes([1, 2, 3, 0]).mapv(quantise).as_standard_layout().into_owned()
}

/// One value in `[-1, 1]` to u8 as upstream `custom_to_video`: clamp, map to `[0, 255]`, truncate.
#[inline]
pub fn quantise(v: f32) -> u8 {
    (255.0 * ((v.clamp(-1.0, 1.0) + 1.0) / 2.0)) as u8
}

/// The VAE input or output `[b, 3, t, h, w]`: video `index` as `[t, h, w, 3]` u8 frames.
pub fn batch_to_u8_frames(x: ArrayView5<f32>, index: usize) -> Result<Array4<u8>> {
    if x.shape()[1] != 3 || index >= x.shape()[0] {
        return Err(Error::VideoArg {
            what: format!("video tensor {:?}", x.shape()),
            rule: format!("must be [b, 3, t, h, w] with b > {index}"),
        });
    }
    Ok(to_u8_frames(x.index_axis(Axis(0), index)))
}

/// `--grid`: the original and the reconstruction side by side, `[t, h, w_a + w_b, 3]`.
pub fn side_by_side(left: ArrayView4<u8>, right: ArrayView4<u8>) -> Result<Array4<u8>> {
    let (l, r) = (left.shape(), right.shape());
    if l[0] != r[0] || l[1] != r[1] {
        return Err(Error::VideoArg {
            what: format!("grid of {l:?} and {r:?} frames"),
            rule: "both videos need the same frame count and height".to_string(),
        });
    }
    ndarray::concatenate(Axis(2), &[left, right])
        .map_err(|e| Error::VideoArg { what: "grid".to_string(), rule: e.to_string() })
}

/// Upstream `save_video_grid`: `b` videos `[t, h, w, 3]` on a black canvas of `ceil(sqrt(b))` rows,
/// `ceil(b / rows)` columns, 1 pixel of padding around and between them, `[t, rows * (h + 1) + 1,
/// cols * (w + 1) + 1, 3]`. With `even`, an odd canvas side gets one more black row or column (H.264
/// with 4:2:0 chroma needs even sides; upstream's imageio resizes instead).
// https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/utils/sample_utils.py#L195-L219
pub fn video_grid(videos: &[ArrayView4<u8>], even: bool) -> Result<Array4<u8>> {
    let first = videos.first().ok_or_else(|| Error::VideoArg { what: "grid".into(), rule: "needs a video".into() })?;
    let (t, h, w, c) = first.dim();
    if let Some(v) = videos.iter().find(|v| v.dim() != (t, h, w, c)) {
        return Err(Error::VideoArg {
            what: format!("grid of {:?} and {:?} videos", first.shape(), v.shape()),
            rule: "every video needs the same shape".into(),
        });
    }
    let b = videos.len();
    let rows = (b as f64).sqrt().ceil() as usize;
    let cols = b.div_ceil(rows);
    let pad = 1;
    let (mut gh, mut gw) = ((pad + h) * rows + pad, (pad + w) * cols + pad);
    if even {
        gh += gh % 2;
        gw += gw % 2;
    }
    let mut grid = Array4::<u8>::zeros((t, gh, gw, c));
    for (i, v) in videos.iter().enumerate() {
        let (r, col) = (i / cols, i % cols);
        let (top, left) = ((pad + h) * r, (pad + w) * col);
        grid.slice_mut(ndarray::s![.., top..top + h, left..left + w, ..]).assign(v);
    }
    Ok(grid)
}

/// Evaluation frames: optional short-side resize to `resolution`, optional centre `crop`,
/// values in `[0, 1]` (`[t, h, w, 3]`). With neither, the frames are only scaled by 1/255.
pub fn eval_transform(frames: ArrayView4<u8>, resolution: Option<usize>, crop: Option<usize>) -> Result<Array4<f32>> {
    let (h, w) = (frames.shape()[1], frames.shape()[2]);
    let full = CropWindow { top: 0, left: 0, height: h, width: w };
    let resized = match resolution {
        Some(r) => {
            let (rh, rw) = short_side_size(h, w, r);
            if rh == 0 || rw == 0 {
                return Err(Error::VideoArg {
                    what: format!("a {h}x{w} frame"),
                    rule: format!("resizing its short side to {r} leaves an empty side"),
                });
            }
            crop_resize(frames, full, rh, rw)
        }
        None => frames.mapv(|v| v as f32 / 255.0),
    };
    Ok(match crop {
        Some(c) => {
            let (rh, rw) = (resized.shape()[1], resized.shape()[2]);
            let win = center_window(rh, rw, c, c)?;
            resized.slice(ndarray::s![.., win.top..win.top + win.height, win.left..win.left + win.width, ..]).to_owned()
        }
        None => resized,
    })
}

/// A `[t, h, w, 3]` array from a `[t, h, w, 3]`-ordered vector.
pub fn frames_from_vec<T>(t: usize, h: usize, w: usize, v: Vec<T>) -> Result<Array4<T>> {
    Array4::from_shape_vec((t, h, w, 3), v)
        .map_err(|e| Error::VideoArg { what: format!("[{t}, {h}, {w}, 3] frames"), rule: e.to_string() })
}

#[cfg(test)]
mod tests {
    use ndarray::Array4;
    use osp_graphs::Approx;

    use super::*;

    #[test]
    fn video_grid_places_videos_like_upstream() {
        let v: Vec<Array4<u8>> = (1..=3u8).map(|k| Array4::from_elem((2, 2, 3, 3), k)).collect();
        let views: Vec<_> = v.iter().map(|a| a.view()).collect();
        // 3 videos: 2 rows x 2 columns, canvas (1 + 2) * 2 + 1 = 7 by (1 + 3) * 2 + 1 = 9.
        let g = video_grid(&views, false).unwrap();
        assert_eq!(g.shape(), [2, 7, 9, 3]);
        // upstream starts each cell at (pad + h) * r (no leading pad offset).
        assert_eq!(g[[0, 0, 0, 0]], 1);
        assert_eq!(g[[0, 0, 4, 0]], 2);
        assert_eq!(g[[1, 3, 0, 0]], 3);
        assert_eq!(g[[0, 2, 0, 0]], 0, "padding row");
        assert_eq!(g[[0, 4, 5, 0]], 0, "empty cell");
        assert_eq!(video_grid(&views, true).unwrap().shape(), [2, 8, 10, 3]);
        assert!(video_grid(&[], false).is_err());
    }

    fn pattern() -> Array4<u8> {
        Array4::from_shape_fn((2, 20, 30, 3), |(t, y, x, c)| {
            ((x * x * 3 + y * 29 + c * 70 + t * 5 + (x * y) % 7 * 11) % 256) as u8
        })
    }

    // Upstream `preprocess` (rec_video.py, torch 2.5.1 CPU) on the same frames:
    //   T, Y, X, C = np.meshgrid(np.arange(2), np.arange(20), np.arange(30), np.arange(3), indexing="ij")
    //   frames = ((X * X * 3 + Y * 29 + C * 70 + T * 5 + (X * Y) % 7 * 11) % 256).astype(np.uint8)
    //   x = torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 255.0
    //   x = center_crop_th_tw(x, h, w, top_crop=False)
    //   x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=True, antialias=True)
    //   out = (2.0 * x - 1.0).unsqueeze(0); out.double().sum(), out[p] for p below
    #[test]
    fn preprocess_matches_upstream_downscale_and_upscale() {
        let frames = pattern();
        type Case = ((usize, usize), f64, [([usize; 5], f64); 6]);
        let cases: [Case; 2] = [
            (
                (8, 16),
                -0.09634238481521606,
                [
                    ([0, 0, 0, 0, 0], -0.21387988328933716),
                    ([0, 1, 1, 3, 5], 0.09229707717895508),
                    ([0, 2, 0, 7, 15], -0.35003364086151123),
                    ([0, 0, 1, 4, 5], 0.04089641571044922),
                    ([0, 1, 0, 1, 14], 0.06502091884613037),
                    ([0, 2, 1, 6, 1], -0.2571603059768677),
                ],
            ),
            (
                (32, 40),
                54.90311497449875,
                [
                    ([0, 0, 0, 0, 0], -0.9058823585510254),
                    ([0, 1, 1, 3, 5], 0.829903244972229),
                    ([0, 2, 0, 31, 39], 0.4394111633300781),
                    ([0, 0, 1, 16, 13], -0.18907207250595093),
                    ([0, 1, 0, 1, 38], 0.29170382022857666),
                    ([0, 2, 1, 30, 1], 0.6268866062164307),
                ],
            ),
        ];
        for ((h, w), sum, points) in cases {
            let x = preprocess(frames.view(), h, w);
            assert_eq!(x.shape(), &[1, 3, 2, h, w]);
            let got: Vec<f64> = points.iter().map(|(p, _)| x[*p] as f64).collect();
            let want: Vec<f64> = points.iter().map(|(_, v)| *v).collect();
            let c = Approx::Close.compare(&got, &want);
            assert!(c.ok(), "{h}x{w}: {got:?} vs {want:?}: {c:?}");
            let total: f64 = x.iter().map(|&v| v as f64).sum();
            assert!((total - sum).abs() < 1e-3, "{h}x{w}: sum {total} vs {sum}");
        }
    }

    #[test]
    fn center_crop_rounds_like_python() {
        // 20x30 to aspect 8:16 -> 15x30 at top round(2.5) = 2; to 32:40 -> 20x25 at left 2.
        assert_eq!(center_crop_window(20, 30, 8, 16), CropWindow { top: 2, left: 0, height: 15, width: 30 });
        assert_eq!(center_crop_window(20, 30, 32, 40), CropWindow { top: 0, left: 2, height: 20, width: 25 });
        assert_eq!(center_crop_window(272, 640, 512, 512), CropWindow { top: 0, left: 184, height: 272, width: 272 });
    }

    #[test]
    fn same_size_resize_is_the_identity() {
        let frames = pattern();
        let x = preprocess(frames.view(), 20, 30);
        let back = to_u8_frames(x.index_axis(Axis(0), 0));
        // (2 v / 255 - 1 + 1) / 2 * 255 truncates to v or v - 1 in f32.
        for (a, b) in back.iter().zip(frames.iter()) {
            assert!(*a == *b || *a + 1 == *b, "{a} vs {b}");
        }
    }

    #[test]
    fn to_u8_clamps_and_truncates_like_custom_to_video() {
        let v = ndarray::Array4::from_shape_vec((3, 1, 1, 2), vec![-2.0f32, 1.5, 0.0, 0.999, -1.0, 1.0]).unwrap();
        let u = to_u8_frames(v.view());
        // (255 * ((x + 1) / 2)).astype(uint8): -2 -> 0, 1.5 -> 255, 0 -> 127, 0.999 -> 254.
        assert_eq!(u.shape(), &[1, 1, 2, 3]);
        assert_eq!(u.iter().copied().collect::<Vec<_>>(), vec![0, 127, 0, 255, 254, 255]);
    }

    #[test]
    fn eval_transform_resizes_the_short_side_and_crops() {
        let frames = pattern();
        let x = eval_transform(frames.view(), Some(10), Some(8)).unwrap();
        assert_eq!(short_side_size(20, 30, 10), (10, 15));
        assert_eq!(x.shape(), &[2, 8, 8, 3]);
        let e = eval_transform(frames.view(), None, Some(25)).unwrap_err().to_string();
        assert!(e.contains("no smaller than the crop size"), "{e}");
    }
}
