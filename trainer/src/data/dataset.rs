//! The training data set as upstream builds it (`T2V_dataset.define_frame_index`,
//! `get_actual_frame` and `LengthGroupedSampler` in `opensora/dataset/t2v_datasets.py`,
//! `opensora/utils/dataset_utils.py` at 9fa322fb): per item the frames a clip is cut from
//! (resampled to `--train_fps`, sped up by `--speed_factor`), the clip length (`--num_frames`
//! cut to the largest `4n+1`; shorter videos kept or dropped by `--drop_short_ratio`) and a
//! sample size (`--force_resolution` or `--max_hxw`/`--min_hxw`/`--hw_stride`); items grouped
//! into shape buckets `T x H x W`, batches drawn from one bucket, the order fixed by `--seed` and
//! the epoch. As upstream, a video longer than the clip gets a new random window each time it is
//! loaded ([`Dataset::load_batch`] with draws); without draws the window drawn at planning is used.
//!
//! Differences from upstream, each deliberate:
//! - missing media files are logged and skipped while planning; unreadable ones when loaded (the
//!   loader substitutes the next item of the same bucket, as upstream's `__getitem__` retries);
//! - a missing `resolution`, `num_frames` or `fps` is read from the file instead of dropping the item;
//! - the shortest accepted clip is `min(29, --num_frames)` frames (upstream hard-codes 29, which
//!   forbids small-frame training runs);
//! - `--train_fps 0` samples every `--sample_rate`-th frame instead of resampling by fps;
//! - when `--speed_factor` is the most a video allows, its sped-up length is kept at
//!   `--num_frames` (upstream's `int(len / factor)` can round below it and then rejects the
//!   item at load time).

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;

use ndarray::ArrayView4;
use osp_runtime::video::{center_crop_window, resize_window, CropWindow};
use serde::{Deserialize, Serialize};

use super::annotation::{is_image, read_annotation, text_embed_file, AnnotationItem, DataSource};
use super::video::{self, Frames};
use crate::error::{Error, Result};
use crate::train::Rng;

/// Data flags (upstream names).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataConfig {
    /// `--num_frames`.
    pub num_frames: usize,
    /// `--train_fps` (0: use `--sample_rate`).
    pub train_fps: f64,
    /// `--sample_rate`: frame stride when `--train_fps` is 0.
    pub sample_rate: usize,
    /// `--max_height`, `--max_width` (the size with `--force_resolution`).
    pub max_height: usize,
    pub max_width: usize,
    /// `--max_hxw`, `--min_hxw` (without `--force_resolution`).
    pub max_hxw: Option<usize>,
    pub min_hxw: Option<usize>,
    /// `--force_resolution`.
    pub force_resolution: bool,
    /// `--hw_stride`.
    pub hw_stride: usize,
    /// The VAE's temporal stride (clips must be `stride * n + 1` frames).
    pub ae_stride_t: usize,
    /// Items per optimizer update (all replicas and accumulation steps).
    pub total_batch_size: usize,
    /// Buckets with fewer than this many items are dropped (upstream: 4 x total batch size).
    pub min_bucket_items: usize,
    /// `--drop_short_ratio`: the probability that a video shorter than `num_frames` (after
    /// resampling) is dropped at planning; 0 keeps every video of at least `min(29, num_frames)`.
    pub drop_short_ratio: f64,
    /// `--speed_factor` (>= 1): a longer video is first subsampled evenly to
    /// `len / min(speed_factor, len / num_frames)` frames, so a clip spans more of it.
    pub speed_factor: f64,
    /// Clips as upstream's WFVAE training cuts them (`TrainVideoDataset`) instead of the
    /// text-to-video rules above; `None` for DiT training.
    pub vae_clips: Option<VaeClips>,
    /// `--seed`: planning and shuffling.
    pub seed: u64,
}

/// Upstream `TrainVideoDataset` (`opensora/models/causalvideovae/dataset/video_dataset.py` at
/// 9fa322fb): on each load a stride `sample_rate` (with `--dynamic_sample`, uniform in
/// `1..=sample_rate`), a `TemporalRandomCrop` window of `num_frames * stride` frames and
/// `np.linspace(begin, end - 1, num_frames, dtype=int)` in it (a shorter video repeats frames);
/// frames scaled to `[0, 1]`, `Resize(size)` (short edge, bilinear with antialiasing),
/// `CenterCropVideo(size)`, then `2x - 1`. No length, duration or aspect filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VaeClips {
    pub dynamic_sample: bool,
}

/// Upstream's aspect filter threshold (`hw_aspect_thr`).
const HW_ASPECT_THR: f64 = 2.0;
/// Upstream's `too_long_factor`.
const TOO_LONG_FACTOR: f64 = 5.0;

/// One usable item.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub media: PathBuf,
    /// `path` as the annotation gives it (names the text-embedding file).
    pub rel_path: String,
    pub captions: Vec<String>,
    pub text_embed_root: Option<PathBuf>,
    pub image: bool,
    /// The frame indices clips are cut from (`[0]` for an image).
    pub source_frames: Vec<usize>,
    /// Frames per clip.
    pub frames: usize,
    /// How many clip windows `source_frames` holds: upstream's `TemporalRandomCrop` starts a
    /// window at `0..=len - num_frames - 1` when `len > num_frames`, else only at 0.
    pub starts: usize,
    /// The clip draw made at planning, used when loading without draws.
    pub planned_draw: f64,
    /// Sample size `(height, width)`.
    pub size: (usize, usize),
    /// `crop` `[x0, x1, y0, y1]` applied before resizing.
    pub crop: Option<[usize; 4]>,
    /// `aesthetic` / `aes` (see [`super::aesthetic`]).
    pub aesthetic: Option<f64>,
}

impl Sample {
    /// Shape bucket `(frames, height, width)`.
    pub fn shape(&self) -> (usize, usize, usize) {
        (self.frames, self.size.0, self.size.1)
    }

    /// The window start chosen by a uniform draw in `[0, 1)` (`None`: the planned draw).
    pub fn start(&self, draw: Option<f64>) -> usize {
        let u = draw.unwrap_or(self.planned_draw);
        ((u * self.starts as f64) as usize).min(self.starts - 1)
    }

    /// The frame indices of the clip starting at window `start`.
    pub fn frame_indices(&self, start: usize) -> &[usize] {
        &self.source_frames[start..start + self.frames]
    }

    /// The cached text embedding of caption `index`, when the source has a cache.
    pub fn text_embed_path(&self, index: usize) -> Option<PathBuf> {
        self.text_embed_root.as_ref().map(|r| r.join(text_embed_file(&self.rel_path, index)))
    }

    /// The cached embedding of aesthetic-notice variant `k` of caption `index`.
    pub fn text_embed_variant_path(&self, index: usize, k: usize) -> Option<PathBuf> {
        self.text_embed_root.as_ref().map(|r| r.join(super::aesthetic::variant_file(&self.rel_path, index, k)))
    }
}

/// Counts of what planning dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanStats {
    pub items: usize,
    pub missing_file: usize,
    pub unreadable: usize,
    pub no_caption: usize,
    pub bad_resolution: usize,
    pub too_long: usize,
    pub too_short: usize,
    pub small_bucket: usize,
    pub kept: usize,
}

/// Where a run stands in the data: epoch and the next batch of that epoch's order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataPosition {
    pub epoch: usize,
    pub batch: usize,
}

/// The planned data set.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub config: DataConfig,
    pub samples: Vec<Sample>,
    pub stats: PlanStats,
    buckets: BTreeMap<(usize, usize, usize), Vec<usize>>,
}

/// `maxhwresize`: area-preserving downscale to at most `max_hxw` pixels.
pub fn maxhwresize(h: usize, w: usize, max_hxw: usize) -> (usize, usize) {
    if h * w > max_hxw {
        let s = (max_hxw as f64 / (h * w) as f64).sqrt();
        ((h as f64 * s) as usize, (w as f64 * s) as usize)
    } else {
        (h, w)
    }
}

fn aspect_ok(h: f64, w: f64, max_ratio: f64, min_ratio: f64) -> bool {
    let r = h / w;
    r <= max_ratio && r >= min_ratio
}

/// The largest `y <= x` with `(y - 1) % stride == 0` and `y >= min`, as upstream's `find_closest_y`.
fn closest_frames(x: usize, stride: usize, min: usize) -> Option<usize> {
    (min.max(1)..=x).rev().find(|y| (y - 1) % stride == 0)
}

impl Dataset {
    /// Plans every item of `sources` (reads the annotations, probes files lacking metadata).
    pub fn build(sources: &[DataSource], config: DataConfig) -> Result<Self> {
        let mut with_items = Vec::with_capacity(sources.len());
        for source in sources {
            let items = read_annotation(&source.annotation)?;
            tracing::info!(annotation = %source.annotation.display(), items = items.len(), "planning data");
            with_items.push((source.clone(), items));
        }
        Self::build_from_items(&with_items, config)
    }

    /// Plans the given items of each source (e.g. a folder listing instead of an annotation file).
    pub fn build_from_items(sources: &[(DataSource, Vec<AnnotationItem>)], config: DataConfig) -> Result<Self> {
        if config.num_frames == 0 || config.hw_stride == 0 || config.ae_stride_t == 0 || config.total_batch_size == 0 {
            return Err(Error::Config(
                "--num_frames, --hw_stride, the VAE stride and the batch size must all be at least 1".into(),
            ));
        }
        if !(config.num_frames - 1).is_multiple_of(config.ae_stride_t) {
            return Err(Error::input(
                "--num_frames",
                format!("must be {}n+1 (the VAE's temporal stride), got {}", config.ae_stride_t, config.num_frames),
            ));
        }
        if config.force_resolution
            && (!config.max_height.is_multiple_of(config.hw_stride)
                || !config.max_width.is_multiple_of(config.hw_stride))
        {
            return Err(Error::input(
                "--max_height/--max_width",
                format!(
                    "must be multiples of --hw_stride {}, got {}x{}",
                    config.hw_stride, config.max_height, config.max_width
                ),
            ));
        }
        if !(0.0..=1.0).contains(&config.drop_short_ratio) {
            return Err(Error::input(
                "--drop_short_ratio",
                format!("must be a probability in [0, 1], got {}", config.drop_short_ratio),
            ));
        }
        if !(config.speed_factor >= 1.0 && config.speed_factor.is_finite()) {
            return Err(Error::input("--speed_factor", format!("must be at least 1, got {}", config.speed_factor)));
        }
        if !config.force_resolution && config.max_hxw.is_none() {
            return Err(Error::input("--max_hxw", "is required without --force_resolution"));
        }
        let mut rng = Rng::derive(config.seed, 0x005E_ED0F_DA7A);
        let mut stats = PlanStats::default();
        let mut samples = Vec::new();
        for (source, items) in sources {
            for item in items.iter().cloned() {
                stats.items += 1;
                if let Some(s) = plan_item(source, item, &config, &mut rng, &mut stats) {
                    samples.push(s);
                }
            }
        }
        let mut counts: BTreeMap<(usize, usize, usize), usize> = BTreeMap::new();
        for s in &samples {
            *counts.entry(s.shape()).or_default() += 1;
        }
        let before = samples.len();
        samples.retain(|s| counts[&s.shape()] >= config.min_bucket_items);
        stats.small_bucket = before - samples.len();
        stats.kept = samples.len();
        let mut buckets: BTreeMap<_, Vec<usize>> = BTreeMap::new();
        for (i, s) in samples.iter().enumerate() {
            buckets.entry(s.shape()).or_default().push(i);
        }
        tracing::info!(?stats, buckets = ?buckets.iter().map(|(k, v)| (format!("{}x{}x{}", k.0, k.1, k.2), v.len())).collect::<Vec<_>>(), "data planned");
        if samples.is_empty() {
            let annotations: Vec<String> = sources.iter().map(|(s, _)| s.annotation.display().to_string()).collect();
            return Err(Error::input(
                "--data",
                format!(
                    "no usable item in {} after filtering ({stats:?}); check paths, --num_frames and the resolution flags",
                    annotations.join(", ")
                ),
            ));
        }
        Ok(Dataset { config, samples, stats, buckets })
    }

    /// The batches of `epoch`: each bucket shuffled (seeded by `--seed` and the epoch) and cut into
    /// full batches, then the batches shuffled.
    pub fn epoch_batches(&self, epoch: usize) -> Vec<Vec<usize>> {
        let mut rng = Rng::derive(self.config.seed, epoch as u64 + 1);
        let b = self.config.total_batch_size;
        let mut batches = Vec::new();
        for items in self.buckets.values() {
            let mut items = items.clone();
            rng.shuffle(&mut items);
            batches.extend(items.chunks_exact(b).map(<[usize]>::to_vec));
        }
        rng.shuffle(&mut batches);
        batches
    }

    /// The batch at `position` and the position after it (moving to the next epoch at the end).
    pub fn batch_at(&self, position: DataPosition) -> Result<(Vec<usize>, DataPosition)> {
        let mut pos = position;
        for _ in 0..2 {
            let batches = self.epoch_batches(pos.epoch);
            if batches.is_empty() {
                return Err(Error::input(
                    "--train_batch_size",
                    format!("no bucket holds {} items; lower the batch size", self.config.total_batch_size),
                ));
            }
            if let Some(batch) = batches.get(pos.batch) {
                return Ok((batch.clone(), DataPosition { epoch: pos.epoch, batch: pos.batch + 1 }));
            }
            pos = DataPosition { epoch: pos.epoch + 1, batch: 0 };
        }
        Err(Error::input("data position", format!("{position:?} is past the data")))
    }

    /// Other items of `index`'s bucket, in bucket order after it (substitutes for a bad file).
    pub fn bucket_neighbours(&self, index: usize) -> Vec<usize> {
        let shape = self.samples[index].shape();
        let items = &self.buckets[&shape];
        let at = items.iter().position(|&i| i == index).unwrap_or(0);
        items.iter().cycle().skip(at + 1).take(items.len().saturating_sub(1)).copied().collect()
    }

    /// Loads the items of a batch; an item that fails to decode is logged, remembered in `bad`
    /// and replaced by the next loadable item of its bucket. `draws` (one uniform in `[0, 1)` per
    /// item) pick each clip's window as [`Sample::start`] does, for whichever item is loaded;
    /// `None` loads the planned windows. Returns `(item, pixels)` pairs.
    pub fn load_batch(
        &self,
        indices: &[usize],
        draws: Option<&[f64]>,
        bad: &mut std::collections::BTreeSet<usize>,
    ) -> Result<Vec<(usize, Vec<f32>)>> {
        if let Some(d) = draws {
            if d.len() != indices.len() {
                return Err(Error::input("clip draws", format!("{} draws for {} items", d.len(), indices.len())));
            }
        }
        let mut out = Vec::with_capacity(indices.len());
        for (k, &index) in indices.iter().enumerate() {
            let draw = draws.map(|d| d[k]);
            let mut loaded = None;
            for candidate in std::iter::once(index).chain(self.bucket_neighbours(index)) {
                if bad.contains(&candidate) {
                    continue;
                }
                match self.load_pixels(candidate, draw) {
                    Ok(p) => {
                        loaded = Some((candidate, p));
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(path = %self.samples[candidate].media.display(), error = %e, "unreadable media: skipped");
                        bad.insert(candidate);
                    }
                }
            }
            out.push(loaded.ok_or_else(|| {
                Error::input(
                    self.samples[index].media.display().to_string(),
                    "neither this file nor any other of its shape bucket could be decoded",
                )
            })?);
        }
        Ok(out)
    }

    /// The frame indices of item `index`'s clip for a uniform draw in `[0, 1)` (`None`: the
    /// clip planned for it).
    pub fn clip_frames(&self, index: usize, draw: Option<f64>) -> Vec<usize> {
        let s = &self.samples[index];
        match self.config.vae_clips {
            Some(v) if !s.image => {
                let rate = self.config.sample_rate.max(1);
                let within = vae_clip(
                    s.source_frames.len(),
                    self.config.num_frames,
                    rate,
                    v.dynamic_sample,
                    draw.unwrap_or(s.planned_draw),
                );
                within.into_iter().map(|i| s.source_frames[i]).collect()
            }
            _ => s.frame_indices(s.start(draw)).to_vec(),
        }
    }

    /// Decodes and transforms the clip of item `index` chosen by `draw` (see
    /// [`Dataset::clip_frames`]) to `[3, t, h, w]` values in `[-1, 1]`.
    pub fn load_pixels(&self, index: usize, draw: Option<f64>) -> Result<Vec<f32>> {
        let s = &self.samples[index];
        let frames = video::read_frames(&s.media, &self.clip_frames(index, draw))?;
        if self.config.vae_clips.is_some() {
            return Ok(vae_transform(&frames, s.crop, s.size.0));
        }
        Ok(transform(&frames, s, self.config.force_resolution, self.config.max_hxw, self.config.hw_stride))
    }
}

fn plan_item(
    source: &DataSource,
    item: super::annotation::AnnotationItem,
    config: &DataConfig,
    rng: &mut Rng,
    stats: &mut PlanStats,
) -> Option<Sample> {
    let media = source.media_root.join(&item.path);
    if !media.is_file() {
        tracing::warn!(path = %media.display(), "media file missing: skipped");
        stats.missing_file += 1;
        return None;
    }
    let captions = match &item.cap {
        Some(c) if !c.all().is_empty() => c.all(),
        _ => {
            stats.no_caption += 1;
            return None;
        }
    };
    let image = is_image(&item.path);
    let needs_probe = item.resolution.is_none() || (!image && (item.num_frames.is_none() || item.fps.is_none()));
    let info = if needs_probe {
        match video::probe(&media) {
            Ok(i) => Some(i),
            Err(e) => {
                tracing::warn!(error = %e, "unreadable media file: skipped");
                stats.unreadable += 1;
                return None;
            }
        }
    } else {
        None
    };
    let (mut height, mut width) = match (item.resolution, &info) {
        (Some(r), _) => (r.height, r.width),
        (None, Some(i)) => (i.height, i.width),
        (None, None) => unreachable!("probed when the resolution is missing"),
    };
    if let Some([x0, x1, y0, y1]) = item.crop {
        if x1 <= x0 || y1 <= y0 || x1 > width || y1 > height {
            stats.bad_resolution += 1;
            return None;
        }
        (height, width) = (y1 - y0, x1 - x0);
    }
    if height == 0 || width == 0 {
        stats.bad_resolution += 1;
        return None;
    }
    // ((height, width), (source frames, frames per clip, window starts, planned draw))
    let (size, (source_frames, frames, starts, planned_draw)) = if config.vae_clips.is_some() {
        let (start, total) = frame_span(&item, info.as_ref());
        if !image && total == 0 {
            stats.too_short += 1;
            return None;
        }
        let clip = if image {
            (vec![0], 1, 1, rng.uniform())
        } else {
            ((start..start + total).collect(), config.num_frames, 1, rng.uniform())
        };
        ((config.max_height, config.max_width), clip)
    } else {
        let size = if config.force_resolution {
            let aspect = config.max_height as f64 / config.max_width as f64;
            if !aspect_ok(height as f64, width as f64, HW_ASPECT_THR * aspect, aspect / HW_ASPECT_THR) {
                stats.bad_resolution += 1;
                return None;
            }
            (config.max_height, config.max_width)
        } else {
            let (th, tw) = maxhwresize(height, width, config.max_hxw.unwrap_or(usize::MAX));
            let (sh, sw) = (th / config.hw_stride * config.hw_stride, tw / config.hw_stride * config.hw_stride);
            let too_small = config.min_hxw.is_some_and(|m| sh * sw < m);
            if sh == 0 || sw == 0 || too_small || !aspect_ok(sh as f64, sw as f64, HW_ASPECT_THR, 1.0 / HW_ASPECT_THR) {
                stats.bad_resolution += 1;
                return None;
            }
            (sh, sw)
        };
        let plan = if image {
            (vec![0], 1, 1, 0.0)
        } else {
            let fps = item.fps.or(info.as_ref().and_then(|i| i.fps)).unwrap_or(24.0);
            let (start, total) = frame_span(&item, info.as_ref());
            let interval = if config.train_fps > 0.0 {
                if (fps - config.train_fps).abs() < 0.1 {
                    1.0
                } else {
                    fps / config.train_fps
                }
            } else {
                config.sample_rate.max(1) as f64
            };
            let wanted_span = config.num_frames as f64 * interval * config.speed_factor;
            if total as f64 > TOO_LONG_FACTOR * wanted_span {
                stats.too_long += 1;
                return None;
            }
            // np.arange(start, start + total, interval).astype(int), kept below start + total.
            let idx: Vec<usize> = (0..)
                .map(|k| start as f64 + k as f64 * interval)
                .take_while(|&v| v < (start + total) as f64)
                .map(|v| v as usize)
                .collect();
            if idx.len() < config.num_frames && rng.uniform() < config.drop_short_ratio {
                stats.too_short += 1;
                return None;
            }
            let idx = speed_up(idx, config.num_frames, config.speed_factor);
            // TemporalRandomCrop: a window of num_frames starting in [0, len - num_frames - 1].
            let (window, starts) = if idx.len() > config.num_frames {
                (config.num_frames, idx.len() - config.num_frames)
            } else {
                (idx.len(), 1)
            };
            let planned_draw = rng.uniform();
            match closest_frames(window, config.ae_stride_t, config.num_frames.min(29)) {
                Some(n) => (idx, n, starts, planned_draw),
                None => {
                    stats.too_short += 1;
                    return None;
                }
            }
        };
        (size, plan)
    };
    Some(Sample {
        media,
        rel_path: item.path.clone(),
        captions,
        text_embed_root: source.text_embed_root.clone(),
        image,
        source_frames,
        frames,
        starts,
        planned_draw,
        size,
        crop: item.crop,
        aesthetic: item.aesthetic,
    })
}

/// The first frame and the frame count of an item's video: its `cut` `[start, end]` of
/// `num_frames` (read from the file when the annotation lacks it).
fn frame_span(item: &AnnotationItem, info: Option<&video::VideoInfo>) -> (usize, usize) {
    let total = item.num_frames.or(info.map(|i| i.frames)).unwrap_or(0);
    let start = item.cut.map_or(0, |c| c[0]);
    match item.cut {
        Some([a, b]) if b > a => (start, total.min(b - a)),
        _ => (start, total),
    }
}

/// [`VaeClips`] frame choice within a video of `total` frames (indices into it): the stride and the
/// window start both come from the one draw `u` (its integer and fractional parts when dynamic).
fn vae_clip(total: usize, num_frames: usize, sample_rate: usize, dynamic: bool, u: f64) -> Vec<usize> {
    let (rate, v) = if dynamic {
        let x = u * sample_rate as f64;
        let k = (x as usize).min(sample_rate - 1);
        (k + 1, x - k as f64)
    } else {
        (sample_rate, u)
    };
    let size = num_frames * rate;
    let rand_end = total.saturating_sub(size + 1);
    let begin = ((v * (rand_end + 1) as f64) as usize).min(rand_end);
    let end = (begin + size).min(total);
    linspace_floor(begin, end - 1, num_frames)
}

/// `np.linspace(a, b, n, dtype=int)` for `0 <= a <= b`.
fn linspace_floor(a: usize, b: usize, n: usize) -> Vec<usize> {
    if n <= 1 {
        return vec![a; n];
    }
    let step = (b - a) as f64 / (n - 1) as f64;
    (0..n).map(|i| if i + 1 == n { b } else { (a as f64 + i as f64 * step).floor() as usize }).collect()
}

/// `get_actual_frame`'s speed-up: when `speed_factor > 1` and the video is longer than a clip,
/// `np.linspace(0, len - 1, int(len / min(speed_factor, len / num_frames)), dtype=int)` of its
/// frames (at least `num_frames` of them, see the module docs).
fn speed_up(idx: Vec<usize>, num_frames: usize, speed_factor: f64) -> Vec<usize> {
    let len = idx.len();
    let most = len as f64 / num_frames as f64;
    if speed_factor <= 1.0 || most <= 1.0 {
        return idx;
    }
    let target = ((len as f64 / speed_factor.min(most)) as usize).max(num_frames);
    if target >= len {
        return idx;
    }
    linspace_floor(0, len - 1, target).into_iter().map(|i| idx[i]).collect()
}

/// `2 * interpolate(x / 255, (oh, ow), bilinear, antialias) - 1` of the `window` of each frame
/// (the runtime's [`resize_window`], which inference uses too), computing only `rows` and `cols`
/// of the resized frame; as `[3, t, rows.len(), cols.len()]`.
fn resample(
    frames: &Frames,
    window: CropWindow,
    out: (usize, usize),
    align_corners: bool,
    rows: Range<usize>,
    cols: Range<usize>,
) -> Vec<f32> {
    let view = ArrayView4::from_shape((frames.t, frames.h, frames.w, 3), &frames.data)
        .expect("Frames::new checks that the data fills [t, h, w, 3]");
    let x = resize_window(view, window, out, align_corners, rows, cols);
    // [t, h, w, 3] -> [3, t, h, w]
    x.permuted_axes([3, 0, 1, 2]).iter().map(|&v| 2.0 * v - 1.0).collect()
}

/// The part of each frame an item uses: its annotation `crop` `[x0, x1, y0, y1]`, else all of it.
fn crop_window(crop: Option<[usize; 4]>, frames: &Frames) -> CropWindow {
    match crop {
        Some([x0, x1, y0, y1]) => CropWindow { top: y0, left: x0, height: y1 - y0, width: x1 - x0 },
        None => CropWindow { top: 0, left: 0, height: frames.h, width: frames.w },
    }
}

/// [`VaeClips`]' transform: `x / 255`, `Resize(size)` (the short edge to `size`, the long edge
/// `int(size * long / short)`, antialiased bilinear), `CenterCropVideo(size)` (offsets
/// `round((l - size) / 2)`, half to even), `2x - 1`; as `[3, t, size, size]`. Only the cropped
/// part of the resized frame is computed.
fn vae_transform(frames: &Frames, crop: Option<[usize; 4]>, size: usize) -> Vec<f32> {
    let window = crop_window(crop, frames);
    let (h, w) = (window.height, window.width);
    let (rh, rw) = if w <= h {
        ((size as f64 * h as f64 / w as f64) as usize, size)
    } else {
        (size, (size as f64 * w as f64 / h as f64) as usize)
    };
    let crop = |l: usize| {
        let offset = ((l - size) as f64 / 2.0).round_ties_even() as usize;
        offset..offset + size
    };
    resample(frames, window, (rh, rw), false, crop(rh), crop(rw))
}

/// Upstream's T2V training transform: `x / 255`; with `--force_resolution`
/// `CenterCropResizeVideo(size)`, else `MaxHWResizeVideo(max_hxw)` then
/// `SpatialStrideCropVideo(hw_stride)` (only the cropped part of the resized frame is computed);
/// `2x - 1`. Its `resize` is `interpolate(mode="bilinear", align_corners=True, antialias=True)`.
fn transform(frames: &Frames, s: &Sample, force: bool, max_hxw: Option<usize>, stride: usize) -> Vec<f32> {
    let base = crop_window(s.crop, frames);
    let (oh, ow) = s.size;
    if force {
        let c = center_crop_window(base.height, base.width, oh, ow);
        let window = CropWindow { top: base.top + c.top, left: base.left + c.left, ..c };
        return resample(frames, window, (oh, ow), true, 0..oh, 0..ow);
    }
    let (rh, rw) = maxhwresize(base.height, base.width, max_hxw.unwrap_or(usize::MAX));
    // SpatialStrideCropVideo: centre crop to multiples of the stride (= the planned size).
    let crop = |l: usize| {
        let kept = l / stride * stride;
        (l - kept) / 2..(l - kept) / 2 + kept
    };
    resample(frames, base, (rh, rw), true, crop(rh), crop(rw))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_count_rules() {
        assert_eq!(closest_frames(30, 4, 29), Some(29));
        assert_eq!(closest_frames(28, 4, 29), None);
        assert_eq!(closest_frames(12, 4, 9), Some(9));
        assert_eq!(maxhwresize(720, 1280, 640 * 360), (360, 640));
        assert_eq!(center_crop_window(720, 1280, 480, 640), CropWindow { top: 0, left: 160, height: 720, width: 960 });
    }

    #[test]
    fn linspace_and_vae_clips_follow_numpy_and_upstream() {
        // np.linspace(a, b, n, dtype=int).
        assert_eq!(linspace_floor(3, 40, 9), [3, 7, 12, 16, 21, 26, 30, 35, 40]);
        assert_eq!(linspace_floor(0, 7, 17), [0, 0, 0, 1, 1, 2, 2, 3, 3, 3, 4, 4, 5, 5, 6, 6, 7]);
        assert_eq!(linspace_floor(5, 5, 4), [5, 5, 5, 5]);
        // 100 frames, 9 per clip at stride 2: windows of 18 frames starting in 0..=81.
        assert_eq!(vae_clip(100, 9, 2, false, 0.0), linspace_floor(0, 17, 9));
        assert_eq!(vae_clip(100, 9, 2, false, 0.999_999), linspace_floor(81, 98, 9));
        // Dynamic: the integer part of 3u picks stride 1, 2 or 3.
        assert_eq!(vae_clip(100, 9, 3, true, 0.0), linspace_floor(0, 8, 9));
        assert_eq!(vae_clip(100, 9, 3, true, 0.5), linspace_floor(41, 58, 9), "stride 2, start 0.5 of 82");
        assert_eq!(vae_clip(100, 9, 3, true, 0.999_999), linspace_floor(72, 98, 9));
        // A video shorter than the window: the whole video, frames repeated.
        assert_eq!(vae_clip(5, 9, 1, false, 0.7), [0, 0, 1, 1, 2, 2, 3, 3, 4]);
    }

    /// The transforms fixture is exact (float64); ours is two f32 weighted sums over values in
    /// [0, 1], doubled.
    const TRANSFORM_TOL: f32 = 1e-6;

    /// Random frames and upstream's output for them (`rgb` `[t, h, w, 3]`, `expected`
    /// `[3, t, out_h, out_w]`).
    #[derive(serde::Deserialize)]
    struct FixtureFrames {
        t: usize,
        h: usize,
        w: usize,
        rgb: Vec<u8>,
        expected: Vec<f32>,
    }

    impl FixtureFrames {
        fn frames(&self) -> Frames {
            Frames::new(self.t, self.h, self.w, self.rgb.clone()).expect("valid frames")
        }

        /// `got` has the expected length and is within [`TRANSFORM_TOL`] of `expected`.
        fn check(&self, got: &[f32], what: &str) {
            assert_eq!(got.len(), self.expected.len(), "{what} {}x{}", self.h, self.w);
            let worst = got.iter().zip(&self.expected).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(worst <= TRANSFORM_TOL, "{what} {}x{}: max |diff| {worst}", self.h, self.w);
        }
    }

    #[derive(serde::Deserialize)]
    struct VaeCase {
        #[serde(flatten)]
        frames: FixtureFrames,
        size: usize,
    }

    #[derive(serde::Deserialize)]
    struct T2vCase {
        #[serde(flatten)]
        frames: FixtureFrames,
        mode: String,
        a: usize,
        b: Option<usize>,
        stride: usize,
        out: [usize; 2],
    }

    #[derive(serde::Deserialize)]
    struct TransformsFixture {
        cases: Vec<VaeCase>,
        t2v_cases: Vec<T2vCase>,
    }

    fn transforms_fixture() -> TransformsFixture {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/transforms/cases.json");
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("fixture json")
    }

    #[test]
    fn vae_transform_matches_upstream_resize_and_centre_crop() {
        let fixture = transforms_fixture();
        assert_eq!(fixture.cases.len(), 6);
        for c in fixture.cases {
            let got = vae_transform(&c.frames.frames(), None, c.size);
            c.frames.check(&got, &format!("wfvae -> {}", c.size));
        }
    }

    #[test]
    fn t2v_transform_matches_upstream_crop_resize_and_stride_crop() {
        let fixture = transforms_fixture();
        assert_eq!(fixture.t2v_cases.len(), 5);
        for c in fixture.t2v_cases {
            let t = c.frames.t;
            let force = c.mode == "force";
            let sample = whole_clip(t, (c.out[0], c.out[1]));
            let max_hxw = if force { None } else { Some(c.a) };
            if force {
                assert_eq!((c.a, c.b), (c.out[0], Some(c.out[1])));
            }
            let got = transform(&c.frames.frames(), &sample, force, max_hxw, c.stride);
            c.frames.check(&got, &format!("{} -> {:?}", c.mode, c.out));
        }
    }

    /// A sample of all `t` frames of one clip, planned at `size`.
    fn whole_clip(t: usize, size: (usize, usize)) -> Sample {
        Sample {
            media: PathBuf::new(),
            rel_path: String::new(),
            captions: Vec::new(),
            text_embed_root: None,
            image: t == 1,
            source_frames: (0..t).collect(),
            frames: t,
            starts: 1,
            planned_draw: 0.0,
            size,
            crop: None,
            aesthetic: None,
        }
    }

    /// Training with `--force_resolution` and inference (`osp reconstruct`'s `preprocess`) both
    /// apply upstream's `CenterCropResizeVideo`: the same video gives bit-identical pixels.
    #[test]
    fn training_and_inference_transforms_give_identical_pixels() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference/assets/bikes.mp4");
        let (num_frames, sample_rate) = (3, 2);
        let inference = osp_runtime::video::read_video(&path, num_frames, sample_rate).expect("bikes.mp4");
        let training =
            video::read_frames(&path, &osp_runtime::video::sample_indices(num_frames, sample_rate)).expect("bikes.mp4");
        // Downscales (square and wide) and an upscale of the 272x640 frames.
        for (h, w) in [(64, 96), (48, 48), (320, 400)] {
            let train = transform(&training, &whole_clip(num_frames, (h, w)), true, None, 16);
            let infer = osp_runtime::video::preprocess(inference.view(), h, w);
            assert_eq!(infer.shape(), [1, 3, num_frames, h, w]);
            assert!(infer.iter().eq(train.iter()), "{h}x{w}: training and inference pixels differ");
        }
    }

    #[test]
    fn resize_keeps_a_constant_image_and_maps_to_unit_range() {
        let frames = Frames::new(1, 4, 6, vec![255; 4 * 6 * 3]).expect("valid frames");
        let out = resample(&frames, CropWindow { top: 0, left: 0, height: 4, width: 6 }, (2, 3), true, 0..2, 0..3);
        assert!(out.iter().all(|&v| v == 1.0));
    }
}
