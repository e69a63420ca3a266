//! Spatial tiling of VAE decoding with linear blending of the overlaps, so that peak memory stays
//! flat as height and width grow. The tiler drives a [`LatentDecoder`] tile by tile and blends
//! the frames it hands back ([`FrameSink`]) as they come; temporal chunking (the streaming WFVAE
//! decoder graphs) happens inside the decoder and is untouched by the tiling.
//!
//! The blending is diffusers' linear ramps (`blend_v` / `blend_h` of `AutoencoderKL.tiled_decode`,
//! also upstream WFVAE's `tile_overlap_factor` path): where two tiles overlap over `E = overlap *
//! scale` pixels, the earlier tile weighs `1 - y / E` and the later `y / E`. Here it is computed as a
//! normalised weighted sum with separable weights (`w(y, x) = w_y(y) * w_x(x)`), accumulated tile by
//! tile as a running mean `out += (tile - out) * w / W`, where `W` is the weight gathered so far.
//! Where two tiles meet this is diffusers' formula; where four tiles meet it stays continuous,
//! whereas diffusers' in-place `blend_v` then `blend_h` leaves a step at the corners. Tiles start
//! just enough tiles along each axis that neighbours overlap by at least `overlap` (`n = 1 +
//! ceil((len - tile_size) / (tile_size - overlap))`), all of one length `ceil((len + (n - 1) *
//! overlap) / n) <= tile_size`, spread evenly so the last ends exactly at the edge. No sliver tile
//! is decoded, every tile of a decode has one shape (the backend reuses its buffers), and the
//! decoded area is the minimum the overlaps need. Shifting full-size tiles back to the edge would
//! cost more: a 60x80 latent with 32/8 tiles needs 3 x 3 tiles either way; full-size ones decode
//! 96x96 latent pixels (1.92x the area), the balanced ones 26x32 each, 78x96 (1.56x; slivers gave
//! 76x96). A latent axis no longer than one tile is one tile.
//!
//! A tile decoder that is exact per latent pixel (translation equivariant, no context) gives
//! bit-identical results tiled and untiled (the running mean of equal values is exact); a real
//! VAE's receptive field makes tiles disagree slightly near their borders, which the ramps hide.
//!
//! Memory: the output buffer, one `[h, w]` f32 weight plane, one latent tile and its decoded tile
//! (a whole-tile decoder) or one decoded chunk of it (a streaming decoder); decoding to uint8
//! frames ([`decode_tiled_frames`]) holds the frames and one tile row of f32 instead of the
//! f32 output.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Condvar, Mutex};

use ndarray::{s, Array2, Array4, Array5, ArrayView5};

use super::{FrameSink, LatentDecoder};
use crate::error::{Error, Result};

/// Tile size and overlap, in latent pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TilingConfig {
    /// Height and width of the latent tiles handed to the decoder.
    pub tile_size: usize,
    /// Latent pixels shared by neighbouring tiles; the blend ramp is `overlap * scale` pixels.
    pub overlap: usize,
}

impl Default for TilingConfig {
    /// 32 latent pixels (256 output pixels, upstream's `tile_sample_min_size_dec`) with a quarter
    /// overlap (upstream's `tile_overlap_factor = 0.25`).
    fn default() -> Self {
        Self { tile_size: 32, overlap: 8 }
    }
}

impl TilingConfig {
    pub fn validate(&self) -> Result<()> {
        if self.tile_size == 0 {
            return Err(Error::Tiling("the tile size must be at least 1 latent pixel".into()));
        }
        if self.overlap >= self.tile_size {
            return Err(Error::Tiling(format!(
                "the overlap ({}) must be smaller than the tile size ({})",
                self.overlap, self.tile_size
            )));
        }
        Ok(())
    }

    /// Start offsets of the tiles along an axis of `len` latent pixels; each tile is
    /// [`Self::tile_len`] long and the last one ends at `len`.
    pub fn starts(&self, len: usize) -> Vec<usize> {
        let n = self.tiles_along(len);
        if n == 1 {
            return vec![0];
        }
        let span = len - self.tile_len(len);
        // Steps are floor or ceil of span / (n - 1) <= tile_len - overlap (see `tile_len`).
        (0..n).map(|i| i * span / (n - 1)).collect()
    }

    /// The length of every tile along an axis of `len` latent pixels: `len` when one tile covers
    /// it, else the shortest length at which the tiles overlap by at least `overlap`.
    pub fn tile_len(&self, len: usize) -> usize {
        let n = self.tiles_along(len);
        if n == 1 {
            return len;
        }
        (len + (n - 1) * self.overlap).div_ceil(n)
    }

    fn tiles_along(&self, len: usize) -> usize {
        if len <= self.tile_size {
            return 1;
        }
        1 + (len - self.tile_size).div_ceil(self.tile_size - self.overlap)
    }

    /// Number of tiles for a `[h, w]` latent.
    pub fn tile_count(&self, h: usize, w: usize) -> usize {
        self.starts(h).len() * self.starts(w).len()
    }
}

/// The blend weight of sample `p` of a tile of `len` samples along one axis: rising over the
/// first `e` samples unless the tile is first, falling over the last `e` unless it is last.
fn ramp(p: usize, len: usize, e: usize, first: bool, last: bool) -> f32 {
    let mut w = 1.0f32;
    if !first && p < e {
        w = w.min(p as f32 / e as f32);
    }
    if !last && p + e >= len {
        w = w.min((len - p) as f32 / e as f32);
    }
    w
}

/// A function from a latent tile to its whole decoded tile, as a [`LatentDecoder`].
pub struct FnDecoder<F>(pub F);

impl<F> LatentDecoder for FnDecoder<F>
where
    F: FnMut(ArrayView5<f32>) -> Result<Array5<f32>>,
{
    fn decode_into(&mut self, z: ArrayView5<f32>, sink: &mut dyn FrameSink) -> Result<()> {
        let decoded = (self.0)(z)?;
        sink.frames(decoded.view(), decoded.shape()[2])
    }
}

/// [`decode_tiled_with`] a function from a latent tile `[b, c, t, th, tw]` to a video tile
/// `[b, c', t', th * s, tw * s]`.
pub fn decode_tiled<F>(z: ArrayView5<f32>, cfg: &TilingConfig, decode: F) -> Result<Array5<f32>>
where
    F: FnMut(ArrayView5<f32>) -> Result<Array5<f32>>,
{
    decode_tiled_with(z, cfg, &mut FnDecoder(decode))
}

/// Decodes latent `z` (`[b, c, t, h, w]`) tile by tile with `decoder` (a latent tile
/// `[b, c, t, th, tw]` -> video frames `[b, c', tc, th * s, tw * s]`, with one spatial scale `s`
/// and one `b, c'` and frame total `t'` for every tile) and blends the tiles into
/// `[b, c', t', h * s, w * s]`. Each chunk of frames the decoder hands back is blended straight
/// into the output, so a streaming decoder's tile is never held whole: beyond the output and one
/// `[h * s, w * s]` weight plane, memory is one chunk. Blending chunk by chunk is bit-identical to
/// blending whole tiles. A latent no larger than one tile is decoded in one call.
pub fn decode_tiled_with(
    z: ArrayView5<f32>,
    cfg: &TilingConfig,
    decoder: &mut dyn LatentDecoder,
) -> Result<Array5<f32>> {
    let mut blender = Blender::new(z, cfg)?;
    decode_tiles(&mut blender, z, decoder)?;
    blender.into_output()
}

/// [`decode_tiled_with`] to uint8 frames: for each video of the batch, `[t', h * s, w * s, 3]`
/// quantised as upstream `custom_to_video` ([`crate::video::to_u8_frames`]) from exactly the f32
/// values [`decode_tiled_with`] returns. Only one row of tiles is held in f32 (the rows above
/// the next tile row are final and quantised when it starts), so beyond the uint8 frames memory is
/// one tile row's f32 strip and one chunk.
pub fn decode_tiled_frames(
    z: ArrayView5<f32>,
    cfg: &TilingConfig,
    decoder: &mut dyn LatentDecoder,
) -> Result<Vec<Array4<u8>>> {
    let mut blender = Blender::new(z, cfg)?;
    blender.frames = Some(Vec::new());
    decode_tiles(&mut blender, z, decoder)?;
    blender.into_frames()
}

/// [`decode_tiled_with`] with the tiles spread over `decoders`, one worker thread each (one
/// session per worker / device): workers take tiles in plan order and decode each whole; this
/// thread blends them in plan order, so the result is bit-identical to [`decode_tiled_with`] with
/// any one of them (blending whole tiles equals blending their chunks). At most two tiles per
/// worker wait decoded at a time. The first failing tile in plan order is the error returned.
/// One decoder is the sequential path.
pub fn decode_tiled_parallel<'d>(
    z: ArrayView5<f32>,
    cfg: &TilingConfig,
    decoders: &mut [&mut (dyn LatentDecoder + Send + 'd)],
) -> Result<Array5<f32>> {
    let mut blender = Blender::new(z, cfg)?;
    decode_tiles_parallel(&mut blender, z, decoders)?;
    blender.into_output()
}

/// [`decode_tiled_frames`] with the tiles spread over `decoders` as in [`decode_tiled_parallel`];
/// bit-identical to the sequential frames.
pub fn decode_tiled_frames_parallel<'d>(
    z: ArrayView5<f32>,
    cfg: &TilingConfig,
    decoders: &mut [&mut (dyn LatentDecoder + Send + 'd)],
) -> Result<Vec<Array4<u8>>> {
    let mut blender = Blender::new(z, cfg)?;
    blender.frames = Some(Vec::new());
    decode_tiles_parallel(&mut blender, z, decoders)?;
    blender.into_frames()
}

fn decode_tiles_parallel<'d>(
    blender: &mut Blender,
    z: ArrayView5<f32>,
    decoders: &mut [&mut (dyn LatentDecoder + Send + 'd)],
) -> Result<()> {
    let tiles = blender.tiles();
    if decoders.is_empty() {
        return Err(Error::Tiling("no decoder to decode the tiles with".into()));
    }
    if decoders.len() == 1 || tiles.len() == 1 {
        return decode_tiles(blender, z, &mut *decoders[0]);
    }
    let latents: Vec<ArrayView5<f32>> = tiles.iter().map(|&(ri, ci)| blender.latent_tile(z, ri, ci)).collect();
    let window = 2 * decoders.len();
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    // Tiles blended so far: a worker waits before decoding tile `i >= blended + window`.
    let blended = (Mutex::new(0usize), Condvar::new());
    let (tx, rx) = mpsc::channel::<(usize, Result<Array5<f32>>)>();
    std::thread::scope(|scope| {
        for (worker, decoder) in decoders.iter_mut().enumerate() {
            let (tx, latents, next, stop, blended) = (tx.clone(), &latents, &next, &stop, &blended);
            scope.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= latents.len() || stop.load(Ordering::Relaxed) {
                    break;
                }
                {
                    let mut done = blended.0.lock().unwrap_or_else(|p| p.into_inner());
                    while i >= *done + window && !stop.load(Ordering::Relaxed) {
                        done = blended.1.wait(done).unwrap_or_else(|p| p.into_inner());
                    }
                }
                let _span = tracing::trace_span!("vae_tile", index = i, worker).entered();
                let decoded = decoder.decode(latents[i]);
                if tx.send((i, decoded)).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        let result = blend_in_order(blender, &tiles, &rx, &blended);
        stop.store(true, Ordering::Relaxed);
        blended.1.notify_all();
        result
    })
}

/// Blends the tiles the workers send on `rx` in plan order, counting them in `blended`.
fn blend_in_order(
    blender: &mut Blender,
    tiles: &[(usize, usize)],
    rx: &mpsc::Receiver<(usize, Result<Array5<f32>>)>,
    blended: &(Mutex<usize>, Condvar),
) -> Result<()> {
    let mut waiting = BTreeMap::new();
    for (i, &(ri, ci)) in tiles.iter().enumerate() {
        let decoded = loop {
            if let Some(d) = waiting.remove(&i) {
                break d;
            }
            let (j, d) = rx
                .recv()
                .map_err(|_| Error::Tiling(format!("tile ({ri}, {ci}): every decoding worker stopped before it")))?;
            waiting.insert(j, d);
        };
        let decoded = decoded?;
        let mut sink = TileSink { blender: &mut *blender, ri, ci, tile: None };
        sink.frames(decoded.view(), decoded.shape()[2])?;
        let tile = sink.tile.ok_or_else(|| Error::Tiling(format!("tile ({ri}, {ci}) decoded to no frames")))?;
        blender.finish_tile(tile)?;
        *blended.0.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        blended.1.notify_all();
    }
    Ok(())
}

/// Decodes every tile of `blender`'s plan with `decoder`, blending each chunk as it arrives.
fn decode_tiles(blender: &mut Blender, z: ArrayView5<f32>, decoder: &mut dyn LatentDecoder) -> Result<()> {
    for (ri, ci) in blender.tiles() {
        let _span = tracing::trace_span!("vae_tile", row = ri, col = ci).entered();
        let latent = blender.latent_tile(z, ri, ci);
        let mut sink = TileSink { blender: &mut *blender, ri, ci, tile: None };
        decoder.decode_into(latent, &mut sink)?;
        let tile = sink.tile.ok_or_else(|| Error::Tiling(format!("tile ({ri}, {ci}) decoded to no frames")))?;
        blender.finish_tile(tile)?;
    }
    Ok(())
}

/// Blends the frames of tile `(ri, ci)` into the output as the decoder hands them over.
struct TileSink<'a> {
    blender: &'a mut Blender,
    ri: usize,
    ci: usize,
    tile: Option<Tile>,
}

impl FrameSink for TileSink<'_> {
    fn frames(&mut self, chunk: ArrayView5<f32>, total: usize) -> Result<()> {
        let tile = match self.tile.as_mut() {
            Some(t) => t,
            None => self.tile.insert(self.blender.start_tile(self.ri, self.ci, chunk.shape(), total)?),
        };
        self.blender.blend(tile, chunk)
    }
}

/// The running weighted mean of the tiles: the output, the weight gathered so far per pixel, and
/// the tile plan.
struct Blender {
    cfg: TilingConfig,
    h: usize,
    w: usize,
    rows: Vec<usize>,
    cols: Vec<usize>,
    tile_h: usize,
    tile_w: usize,
    /// The output `[b, c', t', rows, w * s]` holding output rows `base..base + rows` (all of them,
    /// or one tile row's strip when quantising to `frames`) and the full weight plane, from the
    /// first tile on.
    out: Option<(Array5<f32>, Array2<f32>)>,
    base: usize,
    /// The uint8 frames `[t', h * s, w * s, 3]` per video, when decoding to frames.
    frames: Option<Vec<Array4<u8>>>,
    scale: usize,
}

/// One tile being blended: where it goes, its per-pixel share, and the frames blended so far.
struct Tile {
    ri: usize,
    ci: usize,
    oy: usize,
    ox: usize,
    /// The fraction of each pixel's final value this tile contributes so far.
    frac: Array2<f32>,
    next_frame: usize,
}

impl Blender {
    fn new(z: ArrayView5<f32>, cfg: &TilingConfig) -> Result<Self> {
        cfg.validate()?;
        let (_, _, _, h, w) = z.dim();
        if h == 0 || w == 0 {
            return Err(Error::Tiling(format!("empty latent {:?}", z.shape())));
        }
        let (rows, cols) = (cfg.starts(h), cfg.starts(w));
        tracing::debug!(
            tiles = rows.len() * cols.len(),
            tile_size = cfg.tile_size,
            overlap = cfg.overlap,
            "spatial tiling plan"
        );
        Ok(Self {
            cfg: *cfg,
            h,
            w,
            tile_h: cfg.tile_len(h),
            tile_w: cfg.tile_len(w),
            rows,
            cols,
            out: None,
            base: 0,
            frames: None,
            scale: 0,
        })
    }

    /// Tile indices in decoding order (row-major).
    fn tiles(&self) -> Vec<(usize, usize)> {
        (0..self.rows.len()).flat_map(|ri| (0..self.cols.len()).map(move |ci| (ri, ci))).collect()
    }

    fn latent_tile<'a>(&self, z: ArrayView5<'a, f32>, ri: usize, ci: usize) -> ArrayView5<'a, f32> {
        let (y0, x0) = (self.rows[ri], self.cols[ci]);
        z.slice_move(s![.., .., .., y0..y0 + self.tile_h, x0..x0 + self.tile_w])
    }

    /// Starts blending tile `(ri, ci)`, whose decoded frames have `shape` (`[b, c', _, th, tw]`)
    /// and number `frames` in all: allocates the output with the first tile, checks the shape,
    /// adds the tile's weights to the weight plane and returns its share of each pixel.
    fn start_tile(&mut self, ri: usize, ci: usize, shape: &[usize], frames: usize) -> Result<Tile> {
        let (tile_h, tile_w) = (self.tile_h, self.tile_w);
        let (th, tw) = (shape[3], shape[4]);
        if self.out.is_none() {
            let sy = th / tile_h;
            if sy == 0 || th != sy * tile_h || tw != sy * tile_w {
                return Err(Error::Tiling(format!(
                    "the decoder turned a {tile_h}x{tile_w} latent tile into {th}x{tw}, not one integer scale"
                )));
            }
            self.scale = sy;
            let (h, w) = (self.h * sy, self.w * sy);
            let held = match self.frames.as_mut() {
                Some(videos) => {
                    if shape[1] != 3 {
                        return Err(Error::Tiling(format!(
                            "decoding to frames needs 3 channels, the decoder gave {:?}",
                            shape
                        )));
                    }
                    *videos = (0..shape[0]).map(|_| Array4::zeros((frames, h, w, 3))).collect();
                    th
                }
                None => h,
            };
            self.out = Some((Array5::zeros((shape[0], shape[1], frames, held, w)), Array2::zeros((h, w))));
        } else if self.frames.is_some() && ci == 0 {
            self.advance_strip(self.rows[ri] * self.scale);
        }
        let scale = self.scale;
        let (out, weight) = self.out.as_mut().expect("the output was allocated with the first tile");
        let want = [out.shape()[0], out.shape()[1], out.shape()[2], tile_h * scale, tile_w * scale];
        if shape[..2] != want[..2] || shape[3..] != want[3..] || frames != want[2] {
            let mut got = shape.to_vec();
            got[2] = frames;
            return Err(Error::Tiling(format!(
                "tile ({ri}, {ci}) decoded to {got:?}, expected {want:?} (scale {scale})"
            )));
        }
        let e = self.cfg.overlap * scale;
        let wy: Vec<f32> = (0..th).map(|p| ramp(p, th, e, ri == 0, ri + 1 == self.rows.len())).collect();
        let wx: Vec<f32> = (0..tw).map(|p| ramp(p, tw, e, ci == 0, ci + 1 == self.cols.len())).collect();
        let (oy, ox) = (self.rows[ri] * scale, self.cols[ci] * scale);
        let mut frac = Array2::<f32>::zeros((th, tw));
        for y in 0..th {
            for x in 0..tw {
                let wt = wy[y] * wx[x];
                let total = &mut weight[[oy + y, ox + x]];
                *total += wt;
                frac[[y, x]] = if *total > 0.0 { wt / *total } else { 0.0 };
            }
        }
        Ok(Tile { ri, ci, oy, ox, frac, next_frame: 0 })
    }

    /// Blends the next frames `[b, c', tc, th, tw]` of `tile` into the output.
    fn blend(&mut self, tile: &mut Tile, chunk: ArrayView5<f32>) -> Result<()> {
        let (out, _) = self.out.as_mut().expect("start_tile allocated the output");
        let (th, tw) = tile.frac.dim();
        let (t0, tc) = (tile.next_frame, chunk.shape()[2]);
        if chunk.shape()[..2] != out.shape()[..2] || chunk.shape()[3..] != [th, tw] || t0 + tc > out.shape()[2] {
            return Err(Error::Tiling(format!(
                "tile ({}, {}): frames {t0}..{} of shape {:?} do not fit the {:?} output",
                tile.ri,
                tile.ci,
                t0 + tc,
                chunk.shape(),
                out.shape()
            )));
        }
        let (oy, ox) = (tile.oy - self.base, tile.ox);
        let mut region = out.slice_mut(s![.., .., t0..t0 + tc, oy..oy + th, ox..ox + tw]);
        for (mut dst, src) in region.outer_iter_mut().zip(chunk.outer_iter()) {
            for (mut dst, src) in dst.outer_iter_mut().zip(src.outer_iter()) {
                for (mut dst, src) in dst.outer_iter_mut().zip(src.outer_iter()) {
                    ndarray::Zip::from(&mut dst).and(&src).and(&tile.frac).for_each(|o, &v, &f| *o += (v - *o) * f);
                }
            }
        }
        tile.next_frame += tc;
        Ok(())
    }

    /// Checks that every frame of `tile` was blended.
    fn finish_tile(&self, tile: Tile) -> Result<()> {
        let frames = self.out.as_ref().map_or(0, |(o, _)| o.shape()[2]);
        if tile.next_frame != frames {
            return Err(Error::Tiling(format!(
                "tile ({}, {}) decoded to {} frames, the first tile to {frames}",
                tile.ri, tile.ci, tile.next_frame
            )));
        }
        tracing::debug!(
            row = tile.ri,
            col = tile.ci,
            mem = %crate::mem::usage_str(),
            "tile blended"
        );
        Ok(())
    }

    fn into_output(self) -> Result<Array5<f32>> {
        Ok(self.out.expect("at least one tile is always decoded").0)
    }

    /// Quantises the held rows `base..new_base` (final: no later tile reaches above `new_base`)
    /// into the frames and moves the rest of the strip up so that it starts at `new_base`.
    fn advance_strip(&mut self, new_base: usize) {
        let (out, _) = self.out.as_mut().expect("the strip was allocated with the first tile");
        let videos = self.frames.as_mut().expect("strips are only kept when decoding to frames");
        let done = new_base - self.base;
        quantise_rows(out, videos, self.base, done);
        let held = out.shape()[3];
        for mut plane in out.outer_iter_mut() {
            for mut plane in plane.outer_iter_mut() {
                for mut plane in plane.outer_iter_mut() {
                    for y in 0..held - done {
                        let (mut dst, src) = plane.view_mut().split_at(ndarray::Axis(0), y + done);
                        dst.row_mut(y).assign(&src.row(0));
                    }
                    plane.slice_mut(s![held - done.., ..]).fill(0.0);
                }
            }
        }
        self.base = new_base;
    }

    /// Quantises the rows still held and returns the frames.
    fn into_frames(mut self) -> Result<Vec<Array4<u8>>> {
        let (out, _) = self.out.as_ref().expect("at least one tile is always decoded");
        let rows = self.h * self.scale - self.base;
        let mut videos = self.frames.take().expect("decode_tiled_frames sets the frames");
        quantise_rows(out, &mut videos, self.base, rows);
        Ok(videos)
    }
}

/// Writes rows `0..rows` of `out` (`[b, 3, t, held, w]`, output rows from `base`) into `videos`
/// (`[t, h, w, 3]` each) as upstream `custom_to_video` quantises.
fn quantise_rows(out: &Array5<f32>, videos: &mut [Array4<u8>], base: usize, rows: usize) {
    for (video, src) in videos.iter_mut().zip(out.outer_iter()) {
        // [3, t, rows, w] -> [t, rows, w, 3]
        let src = src.slice(s![.., .., ..rows, ..]);
        let mut dst = video.slice_mut(s![.., base..base + rows, .., ..]);
        ndarray::Zip::from(&mut dst)
            .and(&src.permuted_axes([1, 2, 3, 0]))
            .for_each(|d, &v| *d = crate::video::quantise(v));
    }
}

#[cfg(test)]
mod tests {
    use ndarray::Array5;
    use osp_graphs::Approx;

    use super::*;

    /// A latent `[1, 2, 3, h, w]` with values that vary everywhere.
    fn latent(h: usize, w: usize) -> Array5<f32> {
        Array5::from_shape_fn((1, 2, 3, h, w), |(_, c, t, y, x)| {
            ((y * 31 + x * 17 + c * 7 + t * 3) % 23) as f32 * 0.1 - 1.0
        })
    }

    /// Exact per latent pixel: each pixel becomes an 8x8 block of a function of its channels and
    /// the position inside the block (translation equivariant, no context).
    fn pixel_decoder(z: ArrayView5<f32>) -> Result<Array5<f32>> {
        let (b, _, t, h, w) = z.dim();
        Ok(Array5::from_shape_fn((b, 3, t, h * 8, w * 8), |(bi, co, ti, y, x)| {
            let (zy, zx) = (y / 8, x / 8);
            let v0 = z[[bi, 0, ti, zy, zx]];
            let v1 = z[[bi, 1, ti, zy, zx]];
            (v0 * (co as f32 + 1.0) - v1 * 0.5).tanh() + (y % 8) as f32 * 0.01 - (x % 8) as f32 * 0.02
        }))
    }

    #[test]
    fn tiling_a_per_pixel_decoder_is_exact() {
        let z = latent(13, 21);
        let whole = pixel_decoder(z.view()).unwrap();
        for (tile_size, overlap) in [(4, 1), (5, 2), (8, 3), (6, 0), (13, 4), (32, 8)] {
            let cfg = TilingConfig { tile_size, overlap };
            let mut calls = 0;
            let tiled = decode_tiled(z.view(), &cfg, |t| {
                // One shape for every tile, no larger than asked, no sliver.
                assert_eq!((t.shape()[3], t.shape()[4]), (cfg.tile_len(13), cfg.tile_len(21)), "tile shape");
                assert!(t.shape()[3] <= tile_size && t.shape()[4] <= tile_size);
                assert!(t.shape()[3] > overlap && t.shape()[4] > overlap, "sliver tile {:?}", t.shape());
                calls += 1;
                pixel_decoder(t)
            })
            .unwrap();
            assert_eq!(calls, cfg.tile_count(13, 21));
            for len in [13, 21] {
                let starts = cfg.starts(len);
                let tl = cfg.tile_len(len);
                assert_eq!(
                    starts.last().unwrap() + tl,
                    len,
                    "tile {tile_size} overlap {overlap}: last tile ends at the edge"
                );
                assert!(starts.windows(2).all(|p| p[0] < p[1] && p[1] - p[0] <= tl - overlap), "{starts:?} x {tl}");
            }
            assert_eq!(tiled.shape(), whole.shape());
            let c = Approx::Exact.compare(tiled.as_slice().unwrap(), whole.as_slice().unwrap());
            assert!(c.ok(), "tile {tile_size} overlap {overlap}: {c:?}");
        }
    }

    #[test]
    fn tile_starts_cover_the_axis_without_slivers() {
        let cfg = TilingConfig { tile_size: 8, overlap: 2 };
        assert_eq!((cfg.starts(8), cfg.tile_len(8)), (vec![0], 8));
        assert_eq!((cfg.starts(9), cfg.tile_len(9)), (vec![0, 3], 6));
        assert_eq!((cfg.starts(14), cfg.tile_len(14)), (vec![0, 6], 8));
        assert_eq!((cfg.starts(15), cfg.tile_len(15)), (vec![0, 4, 8], 7));
        assert_eq!((cfg.starts(1), cfg.tile_len(1)), (vec![0], 1));
        // The release case: a 60x80 latent (480x640) with the default 32/8 tiles is 3 x 3 tiles of
        // 26x32, 78x96 latent pixels decoded (before: 32, 32 and a 12-row sliver, 76x96).
        let release = TilingConfig::default();
        assert_eq!((release.starts(60), release.tile_len(60)), (vec![0, 17, 34], 26));
        assert_eq!((release.starts(80), release.tile_len(80)), (vec![0, 24, 48], 32));
        assert_eq!(release.tile_count(60, 80), 9);
    }

    /// A decoder with a per-tile bias (what a context-dependent VAE does at tile borders): the
    /// blend turns each bias jump into a linear ramp over the blend width.
    #[test]
    fn blending_is_continuous_across_seams() {
        let z = latent(20, 20);
        let cfg = TilingConfig { tile_size: 8, overlap: 4 };
        let mut index = 0.0f32;
        let tiled = decode_tiled(z.view(), &cfg, |t| {
            index += 1.0;
            let bias = if (index as usize).is_multiple_of(2) { 1.0 } else { -1.0 };
            Ok(pixel_decoder(t)?.mapv(|v| v + bias))
        })
        .unwrap();
        let plain = pixel_decoder(z.view()).unwrap();
        let diff = &tiled - &plain;
        // Bias jumps are 2; the blend spreads them over 4 * 8 = 32 pixels.
        let max_step = 2.0 / 32.0 + 1e-5;
        let (_, _, _, h, w) = diff.dim();
        for y in 0..h {
            for x in 0..w {
                let v = diff[[0, 0, 0, y, x]];
                assert!((v.abs() - 1.0) <= 1e-5, "blend left the range of the biases at ({y}, {x}): {v}");
                if x + 1 < w {
                    let d = (diff[[0, 0, 0, y, x + 1]] - v).abs();
                    assert!(d <= max_step, "step {d} at ({y}, {x}) -> ({y}, {})", x + 1);
                }
                if y + 1 < h {
                    let d = (diff[[0, 0, 0, y + 1, x]] - v).abs();
                    assert!(d <= max_step, "step {d} at ({y}, {x}) -> ({}, {x})", y + 1);
                }
            }
        }
        // Unblended, the seams would jump by 2: the ramp is really there.
        assert!(diff.iter().any(|v| v.abs() < 0.9));
    }

    /// Hands each tile decoded by `decoder` to the sink in chunks of 1, 2, 3, ... frames,
    /// promising `total` frames per tile.
    struct InChunks<D> {
        decoder: D,
        total: usize,
    }

    fn in_chunks<D: Fn(ArrayView5<f32>) -> Result<Array5<f32>>>(decoder: D, total: usize) -> InChunks<D> {
        InChunks { decoder, total }
    }

    impl<D: Fn(ArrayView5<f32>) -> Result<Array5<f32>>> LatentDecoder for InChunks<D> {
        fn decode_into(&mut self, tile: ArrayView5<f32>, sink: &mut dyn FrameSink) -> Result<()> {
            let whole = (self.decoder)(tile)?;
            let (mut t0, mut n) = (0, 1);
            while t0 < whole.shape()[2] {
                let t1 = (t0 + n).min(whole.shape()[2]);
                sink.frames(whole.slice(s![.., .., t0..t1, .., ..]), self.total)?;
                (t0, n) = (t1, n + 1);
            }
            Ok(())
        }
    }

    /// A decoder that hands over no frames.
    struct Nothing;

    impl LatentDecoder for Nothing {
        fn decode_into(&mut self, _: ArrayView5<f32>, _: &mut dyn FrameSink) -> Result<()> {
            Ok(())
        }
    }

    /// Blending chunk by chunk is bit-identical to blending whole tiles, for a context-free and a
    /// per-tile-biased decoder (whose seams do not cancel).
    #[test]
    fn streamed_tiles_blend_like_whole_tiles() {
        let biased = |t: ArrayView5<f32>| -> Result<Array5<f32>> {
            let bias = t.sum().sin();
            Ok(pixel_decoder(t)?.mapv(|v| v + bias))
        };
        let z = Array5::from_shape_fn((1, 2, 7, 13, 21), |(_, c, t, y, x)| {
            ((y * 31 + x * 17 + c * 7 + t * 3) % 23) as f32 * 0.1 - 1.0
        });
        for (tile_size, overlap) in [(4, 1), (8, 3), (6, 0), (32, 8)] {
            let cfg = TilingConfig { tile_size, overlap };
            for (name, decoder) in
                [("pixel", &pixel_decoder as &dyn Fn(ArrayView5<f32>) -> Result<Array5<f32>>), ("biased", &biased)]
            {
                let whole_tiles = decode_tiled(z.view(), &cfg, decoder).unwrap();
                let streamed = decode_tiled_with(z.view(), &cfg, &mut in_chunks(decoder, 7)).unwrap();
                assert_eq!(streamed.shape(), whole_tiles.shape());
                let c = Approx::Exact.compare(streamed.as_slice().unwrap(), whole_tiles.as_slice().unwrap());
                assert!(c.ok(), "{name}, tile {tile_size} overlap {overlap}: {c:?}");
            }
        }
    }

    /// Frames quantised row of tiles by row of tiles equal the f32 decode quantised whole, for
    /// one and several tile rows, a batch of two and a seam-biased decoder.
    #[test]
    fn streamed_frames_equal_the_quantised_f32_decode() {
        let biased = |t: ArrayView5<f32>| -> Result<Array5<f32>> {
            let bias = t.sum().sin() * 0.3;
            Ok(pixel_decoder(t)?.mapv(|v| v * 1.2 + bias))
        };
        let z = Array5::from_shape_fn((2, 2, 4, 19, 13), |(b, c, t, y, x)| {
            ((y * 31 + x * 17 + c * 7 + t * 3 + b * 5) % 23) as f32 * 0.1 - 1.0
        });
        for (tile_size, overlap) in [(4, 1), (8, 3), (6, 0), (7, 5), (32, 8)] {
            let cfg = TilingConfig { tile_size, overlap };
            let f32_video = decode_tiled_with(z.view(), &cfg, &mut in_chunks(biased, 4)).unwrap();
            let frames = decode_tiled_frames(z.view(), &cfg, &mut in_chunks(biased, 4)).unwrap();
            assert_eq!(frames.len(), 2);
            for (b, f) in frames.iter().enumerate() {
                let want = crate::video::batch_to_u8_frames(f32_video.view(), b).unwrap();
                assert_eq!(f.shape(), want.shape());
                let diff = f.iter().zip(want.iter()).filter(|(a, b)| a != b).count();
                assert_eq!(diff, 0, "tile {tile_size} overlap {overlap}, video {b}: {diff} values differ");
            }
        }
        let two_channels = |t: ArrayView5<f32>| -> Result<Array5<f32>> {
            Ok(pixel_decoder(t)?.slice(s![.., ..2, .., .., ..]).to_owned())
        };
        let e = decode_tiled_frames(z.view(), &TilingConfig { tile_size: 8, overlap: 2 }, &mut FnDecoder(two_channels))
            .unwrap_err()
            .to_string();
        assert!(e.contains("3 channels"), "{e}");
    }

    /// A seam-biased decoder (so that any change of blending order would show) that sleeps a
    /// worker- and call-dependent time, so that tiles finish out of plan order; fails on the tile
    /// whose latent starts with `fail_at`.
    struct Scrambled {
        worker: usize,
        calls: usize,
        fail_at: Option<f32>,
    }

    impl LatentDecoder for Scrambled {
        fn decode_into(&mut self, z: ArrayView5<f32>, sink: &mut dyn FrameSink) -> Result<()> {
            self.calls += 1;
            std::thread::sleep(std::time::Duration::from_millis(((self.worker * 3 + self.calls * 5) % 7) as u64));
            if self.fail_at == Some(z[[0, 0, 0, 0, 0]]) {
                return Err(Error::Tiling(format!("tile starting with {} failed", z[[0, 0, 0, 0, 0]])));
            }
            let bias = z.sum().sin() * 0.3;
            let decoded = pixel_decoder(z)?.mapv(|v| v * 1.2 + bias);
            sink.frames(decoded.view(), decoded.shape()[2])
        }
    }

    fn workers(n: usize, fail_at: Option<f32>) -> Vec<Scrambled> {
        (0..n).map(|worker| Scrambled { worker, calls: 0, fail_at }).collect()
    }

    fn as_dyn(decoders: &mut [Scrambled]) -> Vec<&mut (dyn LatentDecoder + Send)> {
        decoders.iter_mut().map(|d| d as &mut (dyn LatentDecoder + Send)).collect()
    }

    /// Tiles decoded on 1..=5 workers blend bit-identically to the sequential tiler, to f32 and
    /// to uint8 frames, whatever order the workers finish in.
    #[test]
    fn tiles_on_several_workers_equal_the_sequential_decode() {
        let z = Array5::from_shape_fn((2, 2, 3, 19, 23), |(b, c, t, y, x)| {
            ((y * 31 + x * 17 + c * 7 + t * 3 + b * 5) % 23) as f32 * 0.1 - 1.0
        });
        for (tile_size, overlap) in [(6, 2), (8, 3), (19, 4)] {
            let cfg = TilingConfig { tile_size, overlap };
            let want = decode_tiled_with(z.view(), &cfg, &mut workers(1, None)[0]).unwrap();
            let want_frames = decode_tiled_frames(z.view(), &cfg, &mut workers(1, None)[0]).unwrap();
            for n in 1..=5 {
                let mut decoders = workers(n, None);
                let got = decode_tiled_parallel(z.view(), &cfg, &mut as_dyn(&mut decoders)).unwrap();
                assert_eq!(got.shape(), want.shape());
                let same = got.iter().zip(want.iter()).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "tile {tile_size} overlap {overlap}, {n} workers: f32 output differs");
                let calls: usize = decoders.iter().map(|d| d.calls).sum();
                assert_eq!(calls, cfg.tile_count(19, 23), "every tile decoded once");
                let frames = decode_tiled_frames_parallel(z.view(), &cfg, &mut as_dyn(&mut workers(n, None))).unwrap();
                assert!(frames == want_frames, "tile {tile_size} overlap {overlap}, {n} workers: frames differ");
            }
        }
    }

    #[test]
    fn a_failing_tile_on_a_worker_is_the_error() {
        // Channel 0 of frame 0 names the pixel, so a tile is known by its first value.
        let z = Array5::from_shape_fn((1, 2, 3, 19, 23), |(_, c, t, y, x)| {
            if c == 0 && t == 0 {
                (y * 100 + x) as f32 * 1e-3
            } else {
                ((y * 31 + x * 17 + c * 7 + t * 3) % 23) as f32 * 0.1 - 1.0
            }
        });
        let cfg = TilingConfig { tile_size: 6, overlap: 2 };
        // The tile at row 1, column 2 of the plan.
        let (y0, x0) = (cfg.starts(19)[1], cfg.starts(23)[2]);
        let fail_at = Some(z[[0, 0, 0, y0, x0]]);
        let sequential = decode_tiled_with(z.view(), &cfg, &mut workers(1, fail_at)[0]).unwrap_err().to_string();
        for n in [2, 4] {
            let e = decode_tiled_parallel(z.view(), &cfg, &mut as_dyn(&mut workers(n, fail_at))).unwrap_err();
            assert_eq!(e.to_string(), sequential, "{n} workers");
        }
        assert!(decode_tiled_parallel(z.view(), &cfg, &mut []).unwrap_err().to_string().contains("no decoder"));
    }

    #[test]
    fn streamed_tiles_with_the_wrong_frame_count_are_errors() {
        let z = latent(10, 10);
        let cfg = TilingConfig { tile_size: 6, overlap: 2 };
        // The plan promises 4 frames, the decoder yields 3.
        let e = decode_tiled_with(z.view(), &cfg, &mut in_chunks(pixel_decoder, 4)).unwrap_err().to_string();
        assert!(e.contains("decoded to 3 frames"), "{e}");
        // More frames than promised.
        let e = decode_tiled_with(z.view(), &cfg, &mut in_chunks(pixel_decoder, 2)).unwrap_err().to_string();
        assert!(e.contains("do not fit"), "{e}");
        let e = decode_tiled_with(z.view(), &cfg, &mut Nothing).unwrap_err().to_string();
        assert!(e.contains("no frames"), "{e}");
    }

    #[test]
    fn bad_configs_and_decoders_are_errors() {
        let z = latent(10, 10);
        let e =
            decode_tiled(z.view(), &TilingConfig { tile_size: 4, overlap: 4 }, pixel_decoder).unwrap_err().to_string();
        assert!(e.contains("smaller than the tile size"), "{e}");
        let e = decode_tiled(z.view(), &TilingConfig { tile_size: 4, overlap: 1 }, |t| {
            let (b, c, tt, h, w) = t.dim();
            Ok(Array5::zeros((b, c, tt, h * 8, w * 4)))
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("not one integer scale"), "{e}");
    }
}
