//! Text encoding: [`TextEncoder`] = the bundle's tokenizer + its `text_encoder` graph (mT5-xxl
//! upstream), with a content-addressed [`EmbeddingCache`] so a repeated prompt never re-runs the
//! encoder, and the training-time extraction of caption embeddings ([`extract`]).
//!
//! Upstream: `OpenSoraPipeline.encode_prompt` (Open-Sora-Plan v1.3,
//! <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/sample/pipeline_opensora.py>):
//! tokenizer with `padding="max_length"`, `truncation=True`, then `text_encoder(ids, attention_mask)`,
//! returning `prompt_embeds` `[b, l, d]` and `prompt_attention_mask` `[b, l]`.
//!
//! `osp encode-text --bundle mt5.bundle --prompt "a cat" --out emb.safetensors`

pub mod cache;
pub mod clean;
pub mod extract;
pub mod npz;

use std::path::{Path, PathBuf};

use ndarray::{ArrayD, Axis, IxDyn};
use osp_graphs::{DType, ModelSpec};
use sha2::{Digest, Sha256};

pub use cache::EmbeddingCache;

use crate::error::{Error, Result};
use crate::session::{Bundle, GraphSession, SessionOptions};
use crate::tensor::Tensor;
use crate::tokenizer::{Encoded, Tokenizer};

/// The text encoder's graph name in a bundle.
pub const GRAPH: &str = "text_encoder";
/// Graph metadata key naming the bundle's tokenizer file.
pub const TOKENIZER_KEY: &str = "tokenizer";
/// Graph metadata key holding the SHA-256 (hex) of the bundle's tokenizer file.
pub const TOKENIZER_SHA256_KEY: &str = "tokenizer_sha256";
/// Prompts per encoder run.
pub const DEFAULT_BATCH_SIZE: usize = 8;

/// Which text positions an encode returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TextPositions {
    /// All `max_len` positions, padding included, as upstream `encode_prompt` (the encoder runs on
    /// `max_len` tokens).
    #[default]
    Padded,
    /// Only the real tokens: the encoder runs on `L` = the longest text's tokens (`</s>` included),
    /// and the result is `[b, L, d]` with an `[b, L]` mask (shorter rows zero-filled and masked).
    /// Every real position equals the padded run's within `Close` (mT5's attention masks padded
    /// keys with `finfo.min` and its position bias depends only on `j - i`); the padded positions,
    /// which every reader masks, are not computed.
    Real,
}

/// Embeddings of a batch of texts.
#[derive(Debug, Clone, PartialEq)]
pub struct TextEmbeddings {
    /// `prompt_embeds`, f32 `[b, l, d_model]`: `l = max_len` with the padded positions computed too,
    /// as upstream ([`TextPositions::Padded`]), or the longest text's real length
    /// ([`TextPositions::Real`]).
    pub embeddings: Tensor,
    /// `prompt_attention_mask`, i64 `[b, l]`: 1 for tokens and `</s>`, 0 for padding.
    pub mask: Tensor,
}

impl TextEmbeddings {
    /// Positions per row (`l`).
    pub fn len(&self) -> usize {
        self.mask.shape().get(1).copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The tokenizer and `text_encoder` graph of one bundle, with an optional embedding cache.
#[derive(Debug)]
pub struct TextEncoder {
    tokenizer: Tokenizer,
    session: GraphSession,
    d_model: usize,
    identity: [u8; 32],
    cache: Option<EmbeddingCache>,
    batch_size: usize,
    encoder_runs: usize,
    cache_hits: usize,
}

fn sha256_file(path: &Path) -> Result<[u8; 32]> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    Ok(Sha256::digest(&bytes).into())
}

/// The tokenizer file the `text_encoder` graph of `bundle` names (graph metadata `"tokenizer"`),
/// with the SHA-256 recorded at export (`"tokenizer_sha256"`) when there is one; `None` when the
/// graph names no tokenizer.
pub fn bundle_tokenizer(bundle: &Bundle) -> Result<Option<(PathBuf, Option<String>)>> {
    let fail = |why: String| Error::TextEncoder { bundle: bundle.dir().to_path_buf(), why };
    let spec = bundle.manifest().graph(GRAPH)?;
    let Some(name) = spec.metadata.get(TOKENIZER_KEY) else {
        return Ok(None);
    };
    let name = name.as_str().ok_or_else(|| fail(format!("graph metadata `{TOKENIZER_KEY}` must be a file name")))?;
    if Path::new(name).file_name().map(|f| f != name).unwrap_or(true) {
        return Err(fail(format!("tokenizer file `{name}` must be a plain name inside the bundle")));
    }
    let digest = spec.metadata.get(TOKENIZER_SHA256_KEY).and_then(|v| v.as_str()).map(str::to_string);
    Ok(Some((bundle.dir().join(name), digest)))
}

/// Fails unless `digest` (the tokenizer file's SHA-256) is the one the bundle recorded.
fn check_tokenizer_digest(path: &Path, recorded: Option<&str>, digest: &[u8; 32]) -> Result<()> {
    match recorded {
        Some(expected) if expected != hex::encode(digest) => Err(Error::DigestMismatch {
            path: path.to_path_buf(),
            expected: expected.to_string(),
            found: hex::encode(digest),
        }),
        _ => Ok(()),
    }
}

/// Loads the tokenizer `bundle` ships and checks it: it parses, its ids fit the encoder's
/// embedding table, and its SHA-256 is the one recorded at export. Returns the tokenizer and
/// its path, or `None` when the bundle names no tokenizer.
pub fn load_bundle_tokenizer(bundle: &Bundle) -> Result<Option<(Tokenizer, PathBuf)>> {
    let Some((path, recorded)) = bundle_tokenizer(bundle)? else {
        return Ok(None);
    };
    let tok = Tokenizer::from_file(&path)?;
    tok.require_eos()?;
    if let ModelSpec::Mt5Encoder(cfg) = &bundle.manifest().model {
        tok.check_embedding_rows(cfg.vocab_size)?;
    }
    check_tokenizer_digest(&path, recorded.as_deref(), &sha256_file(&path)?)?;
    Ok(Some((tok, path)))
}

impl TextEncoder {
    /// Loads the `text_encoder` graph of `bundle` and its tokenizer: `tokenizer` when given,
    /// otherwise the file the graph metadata names (`"tokenizer"`). Fails unless every id the
    /// tokenizer emits has a row in the encoder's embedding table.
    pub fn open(bundle: &Bundle, opts: &SessionOptions, tokenizer: Option<&Path>) -> Result<Self> {
        let fail = |why: String| Error::TextEncoder { bundle: bundle.dir().to_path_buf(), why };
        let manifest = bundle.manifest();
        let ModelSpec::Mt5Encoder(cfg) = &manifest.model else {
            return Err(fail(format!("holds a `{}` model, not a text encoder (mt5_encoder)", manifest.model.kind())));
        };
        let spec = manifest.graph(GRAPH)?;
        let (tokenizer_path, recorded) = match tokenizer {
            Some(p) => (p.to_path_buf(), None),
            None => bundle_tokenizer(bundle)?.ok_or_else(|| {
                fail("names no tokenizer (export it with --tokenizer, or pass --tokenizer here)".into())
            })?,
        };
        let tok = Tokenizer::from_file(&tokenizer_path)?;
        tok.require_eos()?;
        tok.check_embedding_rows(cfg.vocab_size)?;
        let tokenizer_digest = sha256_file(&tokenizer_path)?;
        check_tokenizer_digest(&tokenizer_path, recorded.as_deref(), &tokenizer_digest)?;
        let session = bundle.session(GRAPH, opts)?;

        let mut id = Sha256::new();
        id.update(b"osp-text-embedding-cache-v1\0");
        id.update(tokenizer_digest);
        id.update(manifest.provenance.source_sha256.as_deref().unwrap_or("-").as_bytes());
        id.update(sha256_file(&bundle.graph_path(GRAPH)?)?);
        let meta = serde_json::to_string(&spec.metadata).map_err(|e| fail(e.to_string()))?;
        id.update(meta.as_bytes());
        id.update(spec.precision.to_string().as_bytes());
        Ok(Self {
            tokenizer: tok,
            session,
            d_model: cfg.d_model,
            identity: id.finalize().into(),
            cache: None,
            batch_size: DEFAULT_BATCH_SIZE,
            encoder_runs: 0,
            cache_hits: 0,
        })
    }

    /// Looks embeddings up in (and adds them to) `cache`.
    pub fn with_cache(mut self, cache: EmbeddingCache) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Prompts per encoder run (at least 1).
    pub fn with_batch_size(mut self, batch_size: usize) -> Self {
        self.batch_size = batch_size.max(1);
        self
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn d_model(&self) -> usize {
        self.d_model
    }

    /// How many times the encoder graph has run (cache hits do not run it).
    pub fn encoder_runs(&self) -> usize {
        self.encoder_runs
    }

    /// How many texts were served from the cache.
    pub fn cache_hits(&self) -> usize {
        self.cache_hits
    }

    /// The cache key of `text` at `max_len`: SHA-256 over the tokenizer file's hash, the weights
    /// and graph identity (provenance `source_sha256`, the graph file's hash, its metadata and
    /// precision), `max_len` and the text.
    pub fn cache_key(&self, text: &str, max_len: usize) -> String {
        let mut h = Sha256::new();
        h.update(self.identity);
        h.update((max_len as u64).to_le_bytes());
        h.update(text.as_bytes());
        hex::encode(h.finalize())
    }

    /// The cache key of `text`'s real-token embedding ([`TextPositions::Real`]): like
    /// [`Self::cache_key`] under its own domain tag, so real-token entries (`[l_real, d]`) and
    /// padded entries (`[max_len, d]`) never answer for each other.
    pub fn real_cache_key(&self, text: &str, max_len: usize) -> String {
        let mut h = Sha256::new();
        h.update(b"osp-text-real-tokens-v1\0");
        h.update(self.identity);
        h.update((max_len as u64).to_le_bytes());
        h.update(text.as_bytes());
        hex::encode(h.finalize())
    }

    /// [`Self::encode`] or [`Self::encode_allow_empty`] returning `positions`.
    pub fn encode_positions(
        &mut self,
        texts: &[&str],
        max_len: usize,
        allow_empty: bool,
        positions: TextPositions,
    ) -> Result<TextEmbeddings> {
        match positions {
            TextPositions::Padded => self.encode_texts(texts, max_len, allow_empty),
            TextPositions::Real => self.encode_real(texts, max_len, allow_empty),
        }
    }

    /// Encodes user prompts (each must contain a non-whitespace character); over-long prompts are
    /// truncated to `max_len` with a warning naming the removed text.
    pub fn encode(&mut self, prompts: &[&str], max_len: usize) -> Result<TextEmbeddings> {
        self.encode_texts(prompts, max_len, false)
    }

    /// Like [`TextEncoder::encode`] but accepts empty texts, which upstream encodes as `[</s>, <pad>, ...]`
    /// (the unconditional branch, dropped captions in training).
    pub fn encode_allow_empty(&mut self, texts: &[&str], max_len: usize) -> Result<TextEmbeddings> {
        self.encode_texts(texts, max_len, true)
    }

    fn tokenize(&self, texts: &[&str], max_len: usize, allow_empty: bool) -> Result<Vec<Encoded>> {
        if texts.is_empty() {
            return Err(Error::InvalidInput { name: "prompts".into(), rule: "at least one prompt is required".into() });
        }
        Ok(texts
            .iter()
            .map(|t| {
                if allow_empty {
                    self.tokenizer.encode_negative(t, max_len)
                } else {
                    self.tokenizer.encode(t, max_len)
                }
            })
            .collect::<std::result::Result<_, _>>()?)
    }

    /// [`TextPositions::Real`]: each text's `[l_i, d]` real-token rows, from the cache (entries under
    /// [`Self::real_cache_key`]) or from encoder runs on the chunk's longest real length only.
    /// The cache's entry for `key` (`mask`: the tokens it was encoded with), or `None` (no cache,
    /// a miss, or an entry holding NaN or infinite values, which is recomputed with a warning).
    fn cached_row(&self, key: &str, mask: &[i64]) -> Option<Vec<f32>> {
        let cache = self.cache.as_ref()?;
        cache.get(key, mask, self.d_model).filter(|row| {
            let finite = row.iter().all(|v| v.is_finite());
            if !finite {
                let path = cache.entry_path(key);
                tracing::warn!(path = %path.display(), "text cache entry holds NaN or infinite values; recomputing");
            }
            finite
        })
    }

    fn encode_real(&mut self, texts: &[&str], max_len: usize, allow_empty: bool) -> Result<TextEmbeddings> {
        let encoded = self.tokenize(texts, max_len, allow_empty)?;
        let d = self.d_model;
        // The tokenizer pads on the right: the real tokens are a prefix.
        let real: Vec<usize> =
            encoded.iter().map(|e| e.attention_mask.iter().take_while(|&&m| m != 0).count()).collect();
        let keys: Vec<String> = texts.iter().map(|t| self.real_cache_key(t, max_len)).collect();
        let mut rows: Vec<Option<Vec<f32>>> = keys
            .iter()
            .enumerate()
            .map(|(i, key)| self.cached_row(key, &encoded[i].attention_mask[..real[i]]))
            .collect();
        let misses: Vec<usize> = (0..texts.len()).filter(|&i| rows[i].is_none()).collect();
        self.cache_hits += texts.len() - misses.len();
        tracing::info!(texts = texts.len(), cached = texts.len() - misses.len(), "encoding text (real tokens)");
        for chunk in misses.chunks(self.batch_size) {
            let l = chunk.iter().map(|&i| real[i]).max().unwrap_or(1);
            let batch: Vec<&Encoded> = chunk.iter().map(|&i| &encoded[i]).collect();
            let out = self.run_encoder(&batch, l)?;
            for (mut row, &i) in out.into_iter().zip(chunk) {
                row.truncate(real[i] * d);
                let view = ndarray::ArrayView::from_shape(IxDyn(&[real[i], d]), &row)
                    .map_err(|e| Error::Tensor { name: "last_hidden_state".into(), why: e.to_string() })?;
                crate::finite::check(&format!("text encoder output for {:?}", texts[i]), view)?;
                if let Some(cache) = &self.cache {
                    cache.put(&keys[i], &row, &encoded[i].attention_mask[..real[i]], d)?;
                }
                rows[i] = Some(row);
            }
        }
        let n = texts.len();
        let l = real.iter().copied().max().unwrap_or(0);
        let mut emb = vec![0f32; n * l * d];
        let mut mask = vec![0i64; n * l];
        for (i, row) in rows.into_iter().enumerate() {
            let row = row.expect("every text should be encoded or cached");
            emb[i * l * d..][..row.len()].copy_from_slice(&row);
            mask[i * l..][..real[i]].fill(1);
        }
        let shaped = |e: ndarray::ShapeError| Error::Tensor { name: "prompt_embeds".into(), why: e.to_string() };
        Ok(TextEmbeddings {
            embeddings: Tensor::F32(ArrayD::from_shape_vec(IxDyn(&[n, l, d]), emb).map_err(shaped)?),
            mask: Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[n, l]), mask).map_err(shaped)?),
        })
    }

    fn encode_texts(&mut self, texts: &[&str], max_len: usize, allow_empty: bool) -> Result<TextEmbeddings> {
        let encoded = self.tokenize(texts, max_len, allow_empty)?;
        let d = self.d_model;
        let keys: Vec<String> = texts.iter().map(|t| self.cache_key(t, max_len)).collect();
        let mut rows: Vec<Option<Vec<f32>>> =
            keys.iter().enumerate().map(|(i, key)| self.cached_row(key, &encoded[i].attention_mask)).collect();
        let misses: Vec<usize> = (0..texts.len()).filter(|&i| rows[i].is_none()).collect();
        self.cache_hits += texts.len() - misses.len();
        tracing::info!(texts = texts.len(), cached = texts.len() - misses.len(), "encoding text");
        for chunk in misses.chunks(self.batch_size) {
            let batch: Vec<&Encoded> = chunk.iter().map(|&i| &encoded[i]).collect();
            let out = self.run_encoder(&batch, max_len)?;
            for (row, &i) in out.into_iter().zip(chunk) {
                let view = ndarray::ArrayView::from_shape(IxDyn(&[max_len, d]), &row)
                    .map_err(|e| Error::Tensor { name: "last_hidden_state".into(), why: e.to_string() })?;
                crate::finite::check(&format!("text encoder output for {:?}", texts[i]), view)?;
                if let Some(cache) = &self.cache {
                    cache.put(&keys[i], &row, &encoded[i].attention_mask, d)?;
                }
                rows[i] = Some(row);
            }
        }
        let n = texts.len();
        let mut emb = Vec::with_capacity(n * max_len * d);
        let mut mask = Vec::with_capacity(n * max_len);
        for (row, enc) in rows.into_iter().zip(&encoded) {
            emb.extend(row.expect("every text should be encoded or cached"));
            mask.extend_from_slice(&enc.attention_mask);
        }
        let shaped = |e: ndarray::ShapeError| Error::Tensor { name: "prompt_embeds".into(), why: e.to_string() };
        Ok(TextEmbeddings {
            embeddings: Tensor::F32(ArrayD::from_shape_vec(IxDyn(&[n, max_len, d]), emb).map_err(shaped)?),
            mask: Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[n, max_len]), mask).map_err(shaped)?),
        })
    }

    /// One run of the graph on the first `max_len` positions of each text; returns each text's
    /// `[max_len * d]` embedding.
    fn run_encoder(&mut self, batch: &[&Encoded], max_len: usize) -> Result<Vec<Vec<f32>>> {
        let b = batch.len();
        let ids: Vec<i64> = batch.iter().flat_map(|e| e.input_ids[..max_len].iter().copied()).collect();
        let mask: Vec<i64> = batch.iter().flat_map(|e| e.attention_mask[..max_len].iter().copied()).collect();
        let shaped = |e: ndarray::ShapeError| Error::Tensor { name: "input_ids".into(), why: e.to_string() };
        let ids = Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[b, max_len]), ids).map_err(shaped)?);
        let mask = Tensor::I64(ArrayD::from_shape_vec(IxDyn(&[b, max_len]), mask).map_err(shaped)?);
        let mut out = self.session.run(&[("input_ids", &ids), ("attention_mask", &mask)])?;
        self.encoder_runs += 1;
        let y = out.remove("last_hidden_state").ok_or_else(|| Error::MissingOutput {
            graph: GRAPH.into(),
            output: "last_hidden_state".into(),
            produced: String::new(),
        })?;
        if y.dtype() != DType::F32 {
            return Err(Error::OutputMismatch {
                graph: GRAPH.into(),
                output: "last_hidden_state".into(),
                expected: "f32".into(),
                got: y.dtype().to_string(),
            });
        }
        let y = y.as_f32().expect("an f32 tensor should view as f32");
        Ok(y.axis_iter(Axis(0)).map(|row| row.iter().copied().collect()).collect())
    }
}
