//! The DiT training objective: a batch of normalised latents with their text states, noised on
//! the host, run through `OpenSoraT2V_v1_3`, scored with the (min-SNR weighted) MSE.
//! Upstream: `train_t2v_diffusers.py` `run()` at commit 9fa322fb.

use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use super::diffusion::{weighted_mse, DdpmSchedule, NoisedBatch};
use super::rng::Rng;
use crate::data::aesthetic;
use crate::error::{Error, Result};
use crate::models::opensora_v1_3::OpenSoraT2V_v1_3;

/// One (shard of a) DiT training batch.
#[derive(Debug, Clone)]
pub struct DitBatch {
    pub noised: NoisedBatch,
    /// `[b, 1, l, caption_channels]` text-encoder states.
    pub text: TensorData,
    /// `[b, 1, l]` 0/1 text mask.
    pub text_mask: TensorData,
}

/// Splits a tensor along axis 0 into `n` equal parts.
fn split_rows(data: &TensorData, n: usize, name: &str) -> Result<Vec<TensorData>> {
    let b = data.shape[0];
    if n == 0 || !b.is_multiple_of(n) {
        return Err(Error::input(name, format!("batch of {b} cannot be split into {n} equal shards")));
    }
    let values = data.clone().convert::<f32>().to_vec::<f32>().map_err(|e| Error::input(name, format!("{e:?}")))?;
    let per = values.len() / n;
    let mut shape = data.shape.clone();
    shape[0] = b / n;
    Ok(values.chunks(per).map(|c| TensorData::new(c.to_vec(), shape.clone())).collect())
}

impl DitBatch {
    /// Draws noise and timesteps for `latents` `[b, c, t, h, w]` from `rng`. The batch is the
    /// union of `ranks` equal data-parallel shards ([`DitBatch::shards`]); shard `r` draws its
    /// timesteps from stratum `r` of `ranks`, as upstream's `explicit_uniform_sampling` does on
    /// process `r` (one rank: uniform over all timesteps).
    pub fn new(
        schedule: &DdpmSchedule,
        rng: &mut Rng,
        latents: TensorData,
        text: TensorData,
        text_mask: TensorData,
        ranks: usize,
    ) -> Result<Self> {
        if latents.shape.len() != 5 {
            return Err(Error::input("latents", format!("must be [b, c, t, h, w], found {:?}", latents.shape)));
        }
        let b = latents.shape[0];
        if text.shape.len() != 4 || text.shape[0] != b || text_mask.shape.to_vec() != [b, 1, text.shape[2]] {
            return Err(Error::input(
                "encoder_hidden_states",
                format!(
                    "must be [{b}, 1, l, d] with a [{b}, 1, l] mask, found {:?} and {:?}",
                    text.shape, text_mask.shape
                ),
            ));
        }
        if ranks == 0 || !b.is_multiple_of(ranks) {
            return Err(Error::input(
                "latents",
                format!("a batch of {b} cannot be split into {ranks} equal data-parallel shards"),
            ));
        }
        let n = latents.shape.iter().product();
        let noise = TensorData::new(rng.normals(n), latents.shape.clone());
        let timesteps = (0..ranks).flat_map(|r| schedule.sample_timesteps(rng, b / ranks, ranks, r)).collect();
        Ok(DitBatch { noised: NoisedBatch { latents, noise, timesteps }, text, text_mask })
    }

    pub fn len(&self) -> usize {
        self.noised.timesteps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `n` equal shards along the batch (for data-parallel replicas).
    pub fn shards(&self, n: usize) -> Result<Vec<DitBatch>> {
        let lat = split_rows(&self.noised.latents, n, "latents")?;
        let noise = split_rows(&self.noised.noise, n, "noise")?;
        let text = split_rows(&self.text, n, "encoder_hidden_states")?;
        let mask = split_rows(&self.text_mask, n, "encoder_attention_mask")?;
        let per = self.len() / n;
        Ok((0..n)
            .map(|i| DitBatch {
                noised: NoisedBatch {
                    latents: lat[i].clone(),
                    noise: noise[i].clone(),
                    timesteps: self.noised.timesteps[i * per..(i + 1) * per].to_vec(),
                },
                text: text[i].clone(),
                text_mask: mask[i].clone(),
            })
            .collect())
    }
}

/// The cached embedding of aesthetic-notice variant `k` of `sample`'s caption `caption`, or
/// `None` when the cache holds no variants (written without `osp-train embed
/// --aesthetic_notices`; the plain caption is used, as noted once in the log).
fn notice_variant(sample: &crate::data::Sample, caption: usize, k: usize) -> Result<Option<std::path::PathBuf>> {
    static PLAIN: std::sync::Once = std::sync::Once::new();
    let (Some(variant), Some(first)) =
        (sample.text_embed_variant_path(caption, k), sample.text_embed_variant_path(caption, 0))
    else {
        return Ok(None);
    };
    if variant.is_file() {
        return Ok(Some(variant));
    }
    if first.is_file() {
        return Err(Error::input(
            variant.display().to_string(),
            "is missing while other aesthetic-notice variants of its caption exist; rerun `osp-train embed --aesthetic_notices`",
        ));
    }
    PLAIN.call_once(|| {
        tracing::warn!(
            "items with an aesthetic score get upstream's notices, but the text cache has no notice variants (`osp-train embed --aesthetic_notices`): their plain captions are used"
        )
    });
    Ok(None)
}

/// The loss of upstream's `run()`.
#[derive(Debug, Clone)]
pub struct DitObjective {
    pub schedule: DdpmSchedule,
    /// `--snr_gamma`.
    pub snr_gamma: Option<f32>,
}

impl DitObjective {
    /// The scalar training loss of `batch` (on the model's device).
    pub fn loss<B: Backend>(&self, model: &OpenSoraT2V_v1_3<B>, batch: &DitBatch) -> Result<Tensor<B, 1>> {
        let device = model.devices().first().cloned().unwrap_or_default();
        let targets = self.schedule.targets::<B>(&batch.noised, self.snr_gamma, &device)?;
        let timestep = Tensor::<B, 1>::from_data(
            TensorData::new(batch.noised.timesteps.iter().map(|&t| t as f32).collect::<Vec<_>>(), [batch.len()]),
            &device,
        );
        let text = Tensor::<B, 4>::from_data(batch.text.clone().convert::<f32>(), &device);
        let mask = Tensor::<B, 3>::from_data(batch.text_mask.clone().convert::<f32>(), &device);
        let pred = model.forward(targets.noisy, timestep, text, None, Some(mask))?;
        Ok(weighted_mse(pred, targets.target, &targets.weights))
    }
}

/// Cached text-encoder states of one caption: `text_emb` `[l, d]` and `mask` `[l]`, as
/// `osp extract-text-embeds` (and `osp-train embed`) write them.
#[derive(Debug, Clone, PartialEq)]
pub struct TextEmbedding {
    pub values: Vec<f32>,
    pub mask: Vec<f32>,
    pub len: usize,
    pub dim: usize,
}

impl TextEmbedding {
    /// Reads a cache file (`text_emb` f32 `[l, d]`, `mask` u8 or f32 `[l]`).
    pub fn read_npz(path: &std::path::Path) -> Result<Self> {
        let arrays = osp_runtime::text::npz::read_npz(path)?;
        let get = |name: &str| {
            arrays.iter().find(|(n, _)| n == name).map(|(_, a)| a).ok_or_else(|| {
                Error::input(path.display().to_string(), format!("text-embedding file has no `{name}` array"))
            })
        };
        let emb = get("text_emb")?;
        let mask = get("mask")?;
        let values =
            emb.to_f32().ok_or_else(|| Error::input(path.display().to_string(), "`text_emb` must be float32"))?;
        let (len, dim) = match emb.shape.as_slice() {
            [l, d] => (*l, *d),
            [1, l, d] => (*l, *d),
            other => {
                return Err(Error::input(
                    path.display().to_string(),
                    format!("`text_emb` must be [l, d], found {other:?}"),
                ))
            }
        };
        let mask: Vec<f32> = match mask.descr.as_str() {
            "|u1" | "|b1" => mask.data.iter().map(|&b| f32::from(b)).collect(),
            _ => mask
                .to_f32()
                .ok_or_else(|| Error::input(path.display().to_string(), "`mask` must be uint8 or float32"))?,
        };
        if mask.len() != len {
            return Err(Error::input(
                path.display().to_string(),
                format!("`mask` has {} values for {len} tokens", mask.len()),
            ));
        }
        Ok(TextEmbedding { values, mask, len, dim })
    }
}

/// Posterior moments of clips and text states of captions kept in memory across epochs, so each
/// clip window is decoded and VAE-encoded once per run instead of once per load (`osp-train dit
/// --cache_latents`). The frozen VAE's posterior is deterministic, so a cached item gives the
/// same batch as a fresh one (the posterior noise is still drawn every step). Bounded: once
/// `max_bytes` are held, further items are encoded every time.
#[derive(Debug, Default)]
pub struct LatentCache {
    max_bytes: usize,
    bytes: usize,
    /// (data set index, clip window start) -> posterior `mean`, `std` of `[c, t, h, w]`.
    latents: std::collections::HashMap<(usize, usize), Moments>,
    texts: std::collections::HashMap<std::path::PathBuf, TextEmbedding>,
    hits: u64,
    misses: u64,
}

impl LatentCache {
    pub fn new(max_bytes: usize) -> Self {
        Self { max_bytes, ..Default::default() }
    }

    /// `(hits, misses, bytes held)` of the clip latents.
    pub fn stats(&self) -> (u64, u64, usize) {
        (self.hits, self.misses, self.bytes)
    }

    fn fits(&self, bytes: usize) -> bool {
        self.bytes + bytes <= self.max_bytes
    }
}

/// One clip's posterior moments `[c, t, h, w]`.
type Moments = std::sync::Arc<(Vec<f32>, Vec<f32>, [usize; 4])>;

/// What turns planned data items into DiT batches: the frozen VAE encoder (latents sampled from
/// the posterior and normalised `(z - shift) * scale`, as upstream's `WFVAEModelWrapper.encode`),
/// the text cache, and CFG text dropout (`--cfg`: the caption replaced by the empty caption's
/// embedding, as upstream replaces the text by `""` before encoding).
pub struct DitBatcher<'a, B: Backend> {
    pub dataset: &'a crate::data::Dataset,
    pub vae: &'a crate::models::wfvae::WFVAEModel<B>,
    /// Per latent channel.
    pub vae_scale: Vec<f32>,
    pub vae_shift: Vec<f32>,
    /// The empty caption's embedding (needed when `cfg > 0`).
    pub null_text: Option<TextEmbedding>,
    pub cfg: f64,
    pub schedule: &'a DdpmSchedule,
    /// Data-parallel shards each batch is split into (timestep strata, see [`DitBatch::new`]).
    pub timestep_ranks: usize,
    pub device: B::Device,
    /// Keeps encoded clips and read captions in memory (`None`: encode every step).
    pub cache: Option<std::sync::Mutex<LatentCache>>,
}

impl<B: Backend> DitBatcher<'_, B> {
    /// Loads `indices` (bad files replaced, see [`crate::data::Dataset::load_batch`]), encodes them
    /// and draws clip windows, captions, CFG dropout, posterior noise, diffusion noise and
    /// timesteps from `rng`. With a cache, cached clips are neither decoded nor encoded; the
    /// draws are the same.
    pub fn batch(
        &self,
        indices: &[usize],
        bad: &mut std::collections::BTreeSet<usize>,
        rng: &mut Rng,
    ) -> Result<DitBatch> {
        let draws: Vec<f64> = indices.iter().map(|_| rng.uniform()).collect();
        let samples = &self.dataset.samples;
        let mut cache = self.cache.as_ref().map(|c| c.lock().unwrap_or_else(|e| e.into_inner()));
        // Each position: its data set item and, when cached, its moments.
        // The latent cache key of item `i` at batch position `p`: the item and its clip window.
        let key = |i: usize, p: usize| (i, samples[i].start(Some(draws[p])));
        let mut items: Vec<(usize, Option<Moments>)> = indices
            .iter()
            .enumerate()
            .map(|(p, &i)| (i, cache.as_ref().and_then(|c| c.latents.get(&key(i, p)).cloned())))
            .collect();
        let missing: Vec<usize> = (0..items.len()).filter(|&p| items[p].1.is_none()).collect();
        if let Some(c) = cache.as_mut() {
            c.hits += (items.len() - missing.len()) as u64;
            c.misses += missing.len() as u64;
        }
        let loaded = if missing.is_empty() {
            Vec::new()
        } else {
            let missing_draws: Vec<f64> = missing.iter().map(|&p| draws[p]).collect();
            self.dataset.load_batch(
                &missing.iter().map(|&p| indices[p]).collect::<Vec<_>>(),
                Some(&missing_draws),
                bad,
            )?
        };
        for (&p, (index, _)) in missing.iter().zip(&loaded) {
            items[p].0 = *index;
        }

        let mut texts = Vec::with_capacity(items.len());
        for (index, _) in &items {
            let sample = &self.dataset.samples[*index];
            let caption = rng.below(sample.captions.len() as u64) as usize;
            let dropped = rng.uniform() < self.cfg;
            let notice =
                aesthetic::has_notices(sample.aesthetic).then(|| rng.below(aesthetic::VARIANTS as u64) as usize);
            let text = if dropped {
                self.null_text.clone().ok_or_else(|| {
                    Error::input(
                        "--null_text_embed",
                        "is required with --cfg > 0 (the empty caption's cached embedding)",
                    )
                })?
            } else {
                let mut path = sample.text_embed_path(caption).ok_or_else(|| {
                    Error::input(
                        sample.rel_path.clone(),
                        "its --data line has 2 items (no text-embedding cache); write the cache with `osp extract-text-embeds` or `osp-train embed` and use MEDIA_ROOT,TEXT_EMBED_ROOT,ANNOTATION lines",
                    )
                })?;
                if let Some(k) = notice {
                    path = notice_variant(sample, caption, k)?.unwrap_or(path);
                }
                match cache.as_mut() {
                    Some(c) => match c.texts.get(&path) {
                        Some(t) => t.clone(),
                        None => {
                            let t = TextEmbedding::read_npz(&path)?;
                            let bytes = 4 * (t.values.len() + t.mask.len());
                            if c.fits(bytes) {
                                c.bytes += bytes;
                                c.texts.insert(path, t.clone());
                            }
                            t
                        }
                    },
                    None => TextEmbedding::read_npz(&path)?,
                }
            };
            texts.push(text);
        }
        let (l, d) = (texts[0].len, texts[0].dim);
        if let Some(bad_text) = texts.iter().find(|e| e.len != l || e.dim != d) {
            return Err(Error::input(
                "text embeddings",
                format!(
                    "a batch mixes [{l}, {d}] and [{}, {}] embeddings; extract all with one max length",
                    bad_text.len, bad_text.dim
                ),
            ));
        }

        if !loaded.is_empty() {
            let (t, h, w) = self.dataset.samples[loaded[0].0].shape();
            let pixels: Vec<f32> = loaded.iter().flat_map(|(_, p)| p.iter().copied()).collect();
            let x = Tensor::<B, 5>::from_data(TensorData::new(pixels, [loaded.len(), 3, t, h, w]), &self.device);
            let posterior = self.vae.encode(x)?;
            let [_, c, lt, lh, lw] = posterior.mean.dims();
            let to_vec =
                |t: Tensor<B, 5>| t.into_data().to_vec::<f32>().map_err(|e| Error::input("latents", format!("{e:?}")));
            let std = to_vec(posterior.std())?;
            let mean = to_vec(posterior.mean)?;
            let per = c * lt * lh * lw;
            for (k, &p) in missing.iter().enumerate() {
                let m: Moments = std::sync::Arc::new((
                    mean[k * per..(k + 1) * per].to_vec(),
                    std[k * per..(k + 1) * per].to_vec(),
                    [c, lt, lh, lw],
                ));
                if let Some(cache) = cache.as_mut() {
                    let key = key(items[p].0, p);
                    if cache.fits(8 * per) && !cache.latents.contains_key(&key) {
                        cache.bytes += 8 * per;
                        cache.latents.insert(key, m.clone());
                    }
                }
                items[p].1 = Some(m);
            }
        }
        drop(cache);

        let b = items.len();
        let moments: Vec<Moments> =
            items.into_iter().map(|(_, m)| m.expect("every item is cached or was just encoded")).collect();
        let [c, lt, lh, lw] = moments[0].2;
        if let Some(m) = moments.iter().find(|m| m.2 != [c, lt, lh, lw]) {
            return Err(Error::input(
                "latents",
                format!("a batch mixes latent shapes {:?} and {:?}", [c, lt, lh, lw], m.2),
            ));
        }
        if self.vae_scale.len() != c || self.vae_shift.len() != c {
            return Err(Error::Config(format!(
                "the VAE config has {} scale and {} shift values for {c} latent channels",
                self.vae_scale.len(),
                self.vae_shift.len()
            )));
        }
        let shape = [b, c, lt, lh, lw];
        let mean = Tensor::<B, 5>::from_data(
            TensorData::new(moments.iter().flat_map(|m| m.0.iter().copied()).collect::<Vec<f32>>(), shape),
            &self.device,
        );
        let std = Tensor::<B, 5>::from_data(
            TensorData::new(moments.iter().flat_map(|m| m.1.iter().copied()).collect::<Vec<f32>>(), shape),
            &self.device,
        );
        let eps = Tensor::<B, 5>::from_data(TensorData::new(rng.normals(b * c * lt * lh * lw), shape), &self.device);
        let z = mean + std * eps;
        let per_channel = |v: &[f32]| {
            Tensor::<B, 1>::from_data(TensorData::new(v.to_vec(), [c]), &self.device).reshape([1, c, 1, 1, 1])
        };
        let latents = ((z - per_channel(&self.vae_shift)) * per_channel(&self.vae_scale)).into_data();
        let text =
            TensorData::new(texts.iter().flat_map(|e| e.values.iter().copied()).collect::<Vec<f32>>(), [b, 1, l, d]);
        let mask = TensorData::new(texts.iter().flat_map(|e| e.mask.iter().copied()).collect::<Vec<f32>>(), [b, 1, l]);
        DitBatch::new(self.schedule, rng, latents, text, mask, self.timestep_ranks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(b: usize, ranks: usize, seed: u64) -> Result<DitBatch> {
        let mut rng = Rng::new(seed);
        DitBatch::new(
            &DdpmSchedule::open_sora_plan_v13(),
            &mut rng,
            TensorData::new(vec![0f32; b * 2], [b, 2, 1, 1, 1]),
            TensorData::new(vec![0f32; b * 3], [b, 1, 1, 3]),
            TensorData::new(vec![1f32; b], [b, 1, 1]),
            ranks,
        )
    }

    #[test]
    fn a_scored_item_reads_its_drawn_notice_variant_from_the_cache() {
        let dir = tempfile::tempdir().expect("temp dir");
        let sample = crate::data::Sample {
            media: dir.path().join("v/a.mp4"),
            rel_path: "v/a.mp4".into(),
            captions: vec!["a cat".into()],
            text_embed_root: Some(dir.path().to_path_buf()),
            image: false,
            source_frames: vec![0],
            frames: 1,
            starts: 1,
            planned_draw: 0.0,
            size: (8, 8),
            crop: None,
            aesthetic: Some(6.0),
        };
        assert_eq!(notice_variant(&sample, 0, 5).expect("no variants: plain caption"), None);
        std::fs::create_dir_all(dir.path().join("v")).expect("mkdir");
        std::fs::write(dir.path().join("v/a-0-aes0.npz"), b"").expect("write");
        let e = notice_variant(&sample, 0, 5).expect_err("variant 5 missing");
        assert!(e.to_string().contains("a-0-aes5.npz"), "{e}");
        std::fs::write(dir.path().join("v/a-0-aes5.npz"), b"").expect("write");
        assert_eq!(notice_variant(&sample, 0, 5).expect("present"), Some(dir.path().join("v/a-0-aes5.npz")));
    }

    #[test]
    fn each_data_parallel_shard_draws_timesteps_from_its_own_stratum() {
        let whole = batch(64, 2, 7).expect("valid batch");
        let shards = whole.shards(2).expect("two shards");
        assert!(shards[0].noised.timesteps.iter().all(|&t| t < 500), "{:?}", shards[0].noised.timesteps);
        assert!(shards[1].noised.timesteps.iter().all(|&t| t >= 500), "{:?}", shards[1].noised.timesteps);
        let four = batch(64, 4, 7).expect("valid batch");
        for (r, shard) in four.shards(4).expect("four shards").iter().enumerate() {
            assert!(shard.noised.timesteps.iter().all(|&t| (250 * r..250 * (r + 1)).contains(&t)), "rank {r}");
        }
        // One rank: the draws of a plain uniform sample over all timesteps.
        let one = batch(64, 1, 7).expect("valid batch");
        let mut rng = Rng::new(7);
        let _noise = rng.normals(128);
        assert_eq!(one.noised.timesteps, DdpmSchedule::open_sora_plan_v13().sample_timesteps(&mut rng, 64, 1, 0));
        let e = batch(6, 4, 7).expect_err("6 items do not split into 4 shards");
        assert!(e.to_string().contains("4 equal data-parallel shards"), "{e}");
    }
}
