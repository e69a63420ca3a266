//! The text tokenizer of the pipeline (mT5-xxl's `T5TokenizerFast` upstream): a `tokenizer.json`
//! loaded directly, or a SentencePiece `spiece.model` converted in Rust (see [`spiece`]).
//!
//! Upstream call (`OpenSoraPipeline.encode_prompt`, Open-Sora-Plan v1.3):
//! `tokenizer(prompt, padding="max_length", max_length=512, truncation=True, add_special_tokens=True)`,
//! i.e. `</s>` appended, truncation that keeps `</s>` last, padding with `<pad>` (id 0) and an
//! attention mask of 1 for real tokens and 0 for padding. Over-long prompts are truncated with a
//! warning naming the removed text, as upstream does.
//! <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/sample/pipeline_opensora.py>
//!
//! The `tokenizers` library panics on some malformed `tokenizer.json` files (e.g. a non-string
//! key in the `decoder` block); every call into it on a user file (loading, encoding, decoding)
//! runs under [`guard::catch`], which turns a panic into [`TokenizerError::Corrupt`] or
//! [`TokenizerError::Tokenizers`] naming the file, without printing the panic.
//!
//! `<pad>` and `</s>` are T5 conventions, not requirements: a tokenizer without them (Llama's,
//! a SentencePiece model without a `<pad>` piece) loads. A SentencePiece model without `<pad>`
//! gets `<pad>` appended as a new special token, as transformers' `T5TokenizerFast` does; a
//! `tokenizer.json` without it fails only where padding is needed ([`TokenizerError::NoPadToken`]).
//!
//! Intended CLI (wired by `osp tokenize`): `osp tokenize --tokenizer FILE --prompt TEXT
//! [--max-sequence-length 512]` prints [`tokenize_json`]'s output.

mod guard;
mod spiece;

pub use guard::catch as catch_panic;

use std::path::{Path, PathBuf};

use tokenizers::{Encoding, PaddingDirection, TruncationDirection};

/// The token sequence length Open-Sora-Plan v1.3 gives the text encoder (`--max_sequence_length`).
pub const DEFAULT_MAX_SEQUENCE_LENGTH: usize = 512;
/// The padding token of T5/mT5 vocabularies.
pub const PAD_TOKEN: &str = "<pad>";
/// The end-of-sequence token appended to every text.
pub const EOS_TOKEN: &str = "</s>";

/// Every failure of the tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The tokenizer file does not exist or cannot be read.
    #[error("tokenizer file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file exists but is not a usable tokenizer.
    #[error("tokenizer file {} is not a valid SentencePiece model or tokenizer.json: {why}", path.display())]
    Corrupt { path: PathBuf, why: String },
    /// A text or a length violates a rule.
    #[error("{name}: {rule}")]
    InvalidInput { name: String, rule: String },
    /// The tokenizer can emit ids the text encoder's embedding table has no row for.
    #[error("tokenizer vocabulary has {tokenizer} tokens but the text encoder's embedding table has {embedding} rows")]
    VocabularyMismatch { tokenizer: usize, embedding: usize },
    /// Padding was needed but the tokenizer has no `<pad>` token.
    #[error(
        "tokenizer file {} has no `{PAD_TOKEN}` token, so it cannot pad {len} tokens to {max_len} \
         (max_sequence_length); give a tokenizer with a `{PAD_TOKEN}` token or a length of at most {len}",
        path.display()
    )]
    NoPadToken { path: PathBuf, len: usize, max_len: usize },
    /// The tokenizers library failed while encoding or decoding with the tokenizer from `path`.
    #[error("tokenizer file {}: {why}", path.display())]
    Tokenizers { path: PathBuf, why: String },
}

/// Result alias of the tokenizer module.
pub type Result<T> = std::result::Result<T, TokenizerError>;

/// One text tokenized for the text encoder, padded to the requested length.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Encoded {
    /// Token ids, `max_len` long: the text's ids, `</s>`, then `<pad>`.
    pub input_ids: Vec<i64>,
    /// 1 for the text's tokens and `</s>`, 0 for padding.
    pub attention_mask: Vec<i64>,
    /// Whether the text was cut to fit `max_len`.
    pub truncated: bool,
}

/// A tokenizer; for the T5-style text encoder it appends `</s>` (its post-processor) and pads with
/// `<pad>`.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The file the tokenizer was loaded from, for error messages.
    path: PathBuf,
    pad_id: Option<u32>,
    eos_id: Option<u32>,
    /// Tokens the post-processor adds to one text (`</s>`: 1).
    added: usize,
}

impl Tokenizer {
    /// Loads `path`: a `tokenizer.json` (by extension `.json`) or a SentencePiece model
    /// (anything else, e.g. `spiece.model`), which is converted in memory.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| TokenizerError::Io { path: path.to_path_buf(), source })?;
        let is_json = path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let corrupt = |why: String| TokenizerError::Corrupt { path: path.to_path_buf(), why };
        let panicked = |why: String| corrupt(format!("the tokenizers library panicked while loading it: {why}"));
        let tokenizer = guard::catch(|| {
            let inner = if is_json {
                tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| corrupt(e.to_string()))?
            } else {
                spiece::tokenizer_from_spiece(path, &bytes)?
            };
            Self::from_tokenizers(inner, path)
        })
        .map_err(panicked)??;
        tracing::info!(path = %path.display(), vocab = tokenizer.vocab_size(), "tokenizer loaded");
        Ok(tokenizer)
    }

    fn from_tokenizers(mut inner: tokenizers::Tokenizer, path: &Path) -> Result<Self> {
        let corrupt = |why: String| TokenizerError::Corrupt { path: path.to_path_buf(), why };
        let pad_id = inner.token_to_id(PAD_TOKEN);
        let eos_id = inner.token_to_id(EOS_TOKEN);
        // Padding and truncation are applied per call in `encode`; settings stored in a
        // tokenizer.json would otherwise apply twice.
        inner.with_truncation(None).map_err(|e| corrupt(e.to_string()))?;
        inner.with_padding(None);
        let added = inner.get_post_processor().map_or(0, |p| tokenizers::PostProcessor::added_tokens(p, false));
        Ok(Tokenizer { inner, path: path.to_path_buf(), pad_id, eos_id, added })
    }

    /// Number of ids the tokenizer can emit (model vocabulary plus added tokens).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The padding id (`<pad>`), if the tokenizer has one.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad_id
    }

    /// The T5 end-of-sequence id (`</s>`), if the tokenizer has one.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// Fails unless the tokenizer has T5's `</s>`, which the text encoder's texts end with (its
    /// post-processor appends it); the text encoder's loaders call this, other users need not.
    pub fn require_eos(&self) -> Result<()> {
        if self.eos_id.is_none() {
            return Err(TokenizerError::Corrupt {
                path: self.path.clone(),
                why: format!("no `{EOS_TOKEN}` token, which the T5 text encoder appends to every text"),
            });
        }
        Ok(())
    }

    /// The id of `token` (a vocabulary entry or an added token).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The file the tokenizer was loaded from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `tokenizers`' decode of `ids` (special tokens dropped when `skip_special_tokens`), without
    /// transformers' `clean_up_tokenization_spaces` (see [`clean_up_tokenization`]).
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.call("decoding", |t| t.decode(ids, skip_special_tokens))
    }

    /// Fails unless every id the tokenizer emits indexes the text encoder's embedding table
    /// (`embedding_rows` = the encoder config's `vocab_size`; mT5-xxl pads 250100 to 250112).
    pub fn check_embedding_rows(&self, embedding_rows: usize) -> Result<()> {
        let tokenizer = self.max_id().map_or(0, |m| m as usize + 1).max(self.vocab_size());
        if tokenizer > embedding_rows {
            return Err(TokenizerError::VocabularyMismatch { tokenizer, embedding: embedding_rows });
        }
        Ok(())
    }

    fn max_id(&self) -> Option<u32> {
        self.inner.get_vocab(true).values().copied().max()
    }

    /// Runs `f` on the inner tokenizer; a library error or panic becomes
    /// [`TokenizerError::Tokenizers`] naming the file and `what` was done.
    fn call<T, E: std::fmt::Display>(
        &self,
        what: &str,
        f: impl FnOnce(&tokenizers::Tokenizer) -> std::result::Result<T, E>,
    ) -> Result<T> {
        let fail = |why: String| TokenizerError::Tokenizers { path: self.path.clone(), why: format!("{what}: {why}") };
        match guard::catch(|| f(&self.inner)) {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(fail(e.to_string())),
            Err(panic) => Err(fail(format!("the tokenizers library panicked: {panic}"))),
        }
    }

    /// The raw ids of `text`, with `</s>` when `add_special_tokens`, without padding or truncation.
    /// An empty text is allowed here (upstream's unconditional branch encodes `""`).
    pub fn encode_ids(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        Ok(self.raw(text, add_special_tokens)?.get_ids().to_vec())
    }

    fn raw(&self, text: &str, add_special_tokens: bool) -> Result<Encoding> {
        self.call("encoding", |t| t.encode(text, add_special_tokens))
    }

    /// Tokenizes a user prompt for the text encoder: `</s>` appended, truncated to `max_len`
    /// (keeping `</s>` last, with a warning naming the removed text), padded to `max_len`.
    /// An empty or whitespace-only prompt is an error; use [`Tokenizer::encode_negative`] for
    /// the classifier-free-guidance text, which upstream allows to be empty.
    pub fn encode(&self, prompt: &str, max_len: usize) -> Result<Encoded> {
        if prompt.trim().is_empty() {
            return Err(TokenizerError::InvalidInput {
                name: "prompt".into(),
                rule: "must contain at least one non-whitespace character".into(),
            });
        }
        self.encode_padded(prompt, max_len)
    }

    /// Like [`Tokenizer::encode`] but accepts an empty text, which upstream encodes for the
    /// unconditional branch when no negative prompt is given (`[</s>, <pad>, ...]`).
    pub fn encode_negative(&self, negative_prompt: &str, max_len: usize) -> Result<Encoded> {
        self.encode_padded(negative_prompt, max_len)
    }

    fn encode_padded(&self, text: &str, max_len: usize) -> Result<Encoded> {
        if max_len <= self.added {
            return Err(TokenizerError::InvalidInput {
                name: "max_sequence_length".into(),
                rule: format!(
                    "must exceed the {} special token(s) tokenizer {} appends to every text, got {max_len}",
                    self.added,
                    self.path.display()
                ),
            });
        }
        let mut encoding = self.raw(text, false)?;
        let keep = max_len - self.added;
        let truncated = encoding.len() > keep;
        if truncated {
            let removed = self.call("decoding the truncated part", |t| t.decode(&encoding.get_ids()[keep..], true))?;
            tracing::warn!(
                max_sequence_length = max_len,
                tokens = encoding.len() + self.added,
                "The following part of your input was truncated because `max_sequence_length` is set to \
                 {max_len} tokens: [{removed:?}]"
            );
            encoding.truncate(keep, 0, TruncationDirection::Right);
        }
        let mut encoding = self.call("post-processing", |t| t.post_process(encoding, None, true))?;
        if encoding.len() < max_len {
            let pad_id = self.pad_id.ok_or_else(|| TokenizerError::NoPadToken {
                path: self.path.clone(),
                len: encoding.len(),
                max_len,
            })?;
            encoding.pad(max_len, pad_id, 0, PAD_TOKEN, PaddingDirection::Right);
        }
        Ok(Encoded {
            input_ids: encoding.get_ids().iter().map(|&i| i64::from(i)).collect(),
            attention_mask: encoding.get_attention_mask().iter().map(|&m| i64::from(m)).collect(),
            truncated,
        })
    }
}

/// transformers' `clean_up_tokenization` (4.44), applied by `decode` when the tokenizer's
/// `clean_up_tokenization_spaces` is set: removes the space before `. ? ! ,` and in English
/// contractions, in this order.
pub fn clean_up_tokenization(text: &str) -> String {
    const RULES: [(&str, &str); 10] = [
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ];
    RULES.iter().fold(text.to_string(), |s, (from, to)| s.replace(from, to))
}

/// `osp tokenize`: loads `tokenizer`, encodes `prompt` to `max_len` tokens and returns
/// `{"input_ids": [...], "attention_mask": [...], "truncated": bool}` as pretty JSON.
pub fn tokenize_json(tokenizer: impl AsRef<Path>, prompt: &str, max_len: usize) -> Result<String> {
    let tokenizer = Tokenizer::from_file(tokenizer)?;
    tokenizer.require_eos()?;
    let encoded = tokenizer.encode(prompt, max_len)?;
    serde_json::to_string_pretty(&encoded)
        .map_err(|e| TokenizerError::Tokenizers { path: tokenizer.path.clone(), why: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asset(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference/assets").join(name)
    }

    #[test]
    fn padding_truncation_and_mask_follow_upstream() {
        let tok = Tokenizer::from_file(asset("t5_v1_1_tokenizer.json")).expect("tokenizer should load");
        let raw = tok.encode_ids("A litter of golden retriever puppies playing in the snow.", true).unwrap();
        assert_eq!(raw.last().copied(), tok.eos_id());

        let padded = tok.encode("A litter of golden retriever puppies playing in the snow.", 32).unwrap();
        assert!(!padded.truncated);
        assert_eq!(padded.input_ids.len(), 32);
        assert_eq!(padded.input_ids[..raw.len()], raw.iter().map(|&i| i64::from(i)).collect::<Vec<_>>()[..]);
        assert!(padded.input_ids[raw.len()..].iter().all(|&i| Some(i) == tok.pad_id().map(i64::from)));
        let ones = padded.attention_mask.iter().filter(|&&m| m == 1).count();
        assert_eq!(ones, raw.len());
        assert!(padded.attention_mask[..raw.len()].iter().all(|&m| m == 1));

        let cut = tok.encode("A litter of golden retriever puppies playing in the snow.", 5).unwrap();
        assert!(cut.truncated);
        let mut want: Vec<i64> = raw[..4].iter().map(|&i| i64::from(i)).collect();
        want.push(i64::from(tok.eos_id().unwrap()));
        assert_eq!(cut.input_ids, want);
        assert_eq!(cut.attention_mask, vec![1; 5]);
    }

    #[test]
    fn negative_prompt_may_be_empty_but_prompt_may_not() {
        let tok = Tokenizer::from_file(asset("t5_v1_1_tokenizer.json")).unwrap();
        let neg = tok.encode_negative("", 4).unwrap();
        assert_eq!(neg.input_ids, vec![i64::from(tok.eos_id().unwrap()), 0, 0, 0]);
        assert_eq!(neg.attention_mask, vec![1, 0, 0, 0]);
        for empty in ["", "   "] {
            let err = tok.encode(empty, 16).unwrap_err();
            assert!(matches!(err, TokenizerError::InvalidInput { ref name, .. } if name == "prompt"), "{err}");
        }
        let err = tok.encode("hello", 1).unwrap_err();
        assert!(matches!(err, TokenizerError::InvalidInput { ref name, .. } if name == "max_sequence_length"), "{err}");
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err = Tokenizer::from_file(dir.path().join("missing.model")).unwrap_err();
        assert!(matches!(err, TokenizerError::Io { .. }), "{err}");
        assert!(err.to_string().contains("missing.model"), "{err}");

        let garbage = dir.path().join("spiece.model");
        std::fs::write(&garbage, b"\xff\xff\xff\xff not a protobuf").unwrap();
        let err = Tokenizer::from_file(&garbage).unwrap_err();
        assert!(matches!(err, TokenizerError::Corrupt { .. }), "{err}");

        let empty = dir.path().join("empty.model");
        std::fs::write(&empty, b"").unwrap();
        let err = Tokenizer::from_file(&empty).unwrap_err();
        assert!(err.to_string().contains("no pieces"), "{err}");

        let json = dir.path().join("tokenizer.json");
        std::fs::write(&json, b"{\"model\": 3}").unwrap();
        let err = Tokenizer::from_file(&json).unwrap_err();
        assert!(matches!(err, TokenizerError::Corrupt { .. }), "{err}");

        let mut cut = std::fs::read(asset("seqio_t5_tiny_spiece.model")).unwrap();
        cut.truncate(cut.len() / 2);
        let half = dir.path().join("half.model");
        std::fs::write(&half, &cut).unwrap();
        let err = Tokenizer::from_file(&half).unwrap_err();
        assert!(matches!(err, TokenizerError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn vocabulary_must_fit_the_embedding_table() {
        let tok = Tokenizer::from_file(asset("t5_v1_1_tokenizer.json")).unwrap();
        let n = tok.vocab_size();
        tok.check_embedding_rows(n).unwrap();
        tok.check_embedding_rows(n + 28).unwrap();
        let err = tok.check_embedding_rows(n - 1).unwrap_err();
        assert!(
            matches!(err, TokenizerError::VocabularyMismatch { tokenizer, embedding } if tokenizer == n && embedding == n - 1)
        );
    }

    #[test]
    fn tokenize_json_prints_ids_and_mask() {
        let out = tokenize_json(asset("t5_v1_1_tokenizer.json"), "hello world", 8).unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["input_ids"].as_array().unwrap().len(), 8);
        assert_eq!(v["attention_mask"].as_array().unwrap().len(), 8);
        assert_eq!(v["truncated"], false);
    }
}
