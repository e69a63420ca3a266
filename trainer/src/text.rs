//! Caption tokenization for the trainer's mT5 (a `tokenizer.json`), with the runtime's rules
//! (`runtime/src/tokenizer/mod.rs`, which the trainer may not depend on): `</s>` appended,
//! truncated to `max_len` keeping `</s>` last, padded with `<pad>` to `max_len`; an empty caption
//! (CFG's unconditional text) is `[</s>, <pad>, ...]`.

use std::path::Path;

use tokenizers::{PaddingDirection, TruncationDirection};

use crate::error::{Error, Result};

const PAD_TOKEN: &str = "<pad>";

/// Token ids and 0/1 mask of one caption, `max_len` long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    pub input_ids: Vec<i64>,
    pub attention_mask: Vec<i64>,
}

/// A T5/mT5 `tokenizer.json`.
pub struct CaptionTokenizer {
    inner: tokenizers::Tokenizer,
    pad_id: u32,
    added: usize,
}

impl CaptionTokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let bad = |why: String| Error::input(path.display().to_string(), why);
        let mut inner =
            tokenizers::Tokenizer::from_file(path).map_err(|e| bad(format!("not a tokenizer.json: {e}")))?;
        let pad_id = inner.token_to_id(PAD_TOKEN).ok_or_else(|| bad(format!("no `{PAD_TOKEN}` token")))?;
        // Padding and truncation happen per call; stored settings would apply twice.
        inner.with_truncation(None).map_err(|e| bad(e.to_string()))?;
        inner.with_padding(None);
        let added = inner.get_post_processor().map_or(0, |p| tokenizers::PostProcessor::added_tokens(p, false));
        Ok(CaptionTokenizer { inner, pad_id, added })
    }

    /// The largest id the tokenizer can emit, plus one.
    pub fn id_limit(&self) -> usize {
        let max = self.inner.get_vocab(true).values().copied().max().map_or(0, |m| m as usize + 1);
        max.max(self.inner.get_vocab_size(true))
    }

    pub fn encode(&self, text: &str, max_len: usize) -> Result<Encoded> {
        if max_len <= self.added {
            return Err(Error::input("--model_max_length", format!("must exceed {} special token(s)", self.added)));
        }
        let tok_err = |e: tokenizers::Error| Error::input("caption", format!("tokenization failed: {e}"));
        let mut encoding = self.inner.encode(text, false).map_err(tok_err)?;
        let keep = max_len - self.added;
        if encoding.len() > keep {
            tracing::warn!(max_len, tokens = encoding.len() + self.added, "caption truncated to --model_max_length");
            encoding.truncate(keep, 0, TruncationDirection::Right);
        }
        let mut encoding = self.inner.post_process(encoding, None, true).map_err(tok_err)?;
        encoding.pad(max_len, self.pad_id, 0, PAD_TOKEN, PaddingDirection::Right);
        Ok(Encoded {
            input_ids: encoding.get_ids().iter().map(|&i| i64::from(i)).collect(),
            attention_mask: encoding.get_attention_mask().iter().map(|&m| i64::from(m)).collect(),
        })
    }
}

/// The special tokens of T5/mT5 vocabularies, in id order: `<pad>` 0, `</s>` 1, `<unk>` 2.
pub const SPECIAL_TOKENS: [&str; 3] = [PAD_TOKEN, "</s>", "<unk>"];

/// Trains a T5-convention Unigram `tokenizer.json` on `captions` (upstream T5 tokenizers are
/// sentencepiece Unigram models): ids 0/1/2 are `<pad>`, `</s>`, `<unk>`; the normaliser is NFKC,
/// lower-casing, right strip and runs of spaces collapsed (T5's precompiled charsmap cannot be
/// rebuilt here, and a caption vocabulary is lower-case); Metaspace `▁` with prepend "always"
/// pre-tokenisation and decoding; the post-processor appends `</s>` (`$A </s>`), which is what
/// the runtime's tokenizer expects.
pub fn train_caption_tokenizer(captions: &[String], vocab_size: usize) -> Result<tokenizers::Tokenizer> {
    use tokenizers::decoders::metaspace::Metaspace as MetaspaceDecoder;
    use tokenizers::models::unigram::{Unigram, UnigramTrainer};
    use tokenizers::models::{ModelWrapper, TrainerWrapper};
    use tokenizers::normalizers::{Lowercase, Replace, Sequence, Strip, NFKC};
    use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
    use tokenizers::processors::template::TemplateProcessing;
    use tokenizers::AddedToken;

    let min = SPECIAL_TOKENS.len() + 1;
    if vocab_size < min {
        return Err(Error::input("--vocab-size", format!("must be at least {min} (3 special tokens + pieces), got {vocab_size}")));
    }
    if captions.iter().all(|c| c.trim().is_empty()) {
        return Err(Error::input("--captions", "holds no non-empty caption to train on"));
    }
    let err = |what: &str, e: tokenizers::Error| Error::Config(format!("tokenizer {what}: {e}"));
    let specials: Vec<AddedToken> = SPECIAL_TOKENS.iter().map(|t| AddedToken::from(*t, true)).collect();
    let trainer = UnigramTrainer::builder()
        .show_progress(false)
        .vocab_size(u32::try_from(vocab_size).map_err(|_| Error::input("--vocab-size", "is too large"))?)
        .special_tokens(specials)
        .unk_token(Some("<unk>".to_string()))
        .build()
        .map_err(|e| Error::Config(format!("tokenizer trainer: {e}")))?;
    let mut tokenizer = tokenizers::Tokenizer::new(ModelWrapper::Unigram(Unigram::default()));
    let normalizer = Sequence::new(vec![
        NFKC.into(),
        Lowercase.into(),
        Strip::new(false, true).into(),
        Replace::new(tokenizers::normalizers::replace::ReplacePattern::Regex(" {2,}".into()), " ")
            .map_err(|e| err("normaliser", e))?
            .into(),
    ]);
    tokenizer.with_normalizer(Some(normalizer)).map_err(|e| err("normaliser", e))?;
    tokenizer.with_pre_tokenizer(Some(Metaspace::new('▁', PrependScheme::Always, true)));
    tokenizer.with_decoder(Some(MetaspaceDecoder::new('▁', PrependScheme::Always, true)));
    let mut trainer = TrainerWrapper::UnigramTrainer(trainer);
    tokenizer.train(&mut trainer, captions.iter().map(String::as_str)).map_err(|e| err("training", e))?;
    for (id, token) in SPECIAL_TOKENS.iter().enumerate() {
        if tokenizer.token_to_id(token) != Some(id as u32) {
            return Err(Error::Config(format!("trained tokenizer: `{token}` did not get id {id}")));
        }
    }
    let post = TemplateProcessing::builder()
        .try_single("$A </s>")
        .map_err(|e| Error::Config(format!("post-processor: {e}")))?
        .special_tokens(vec![("</s>".to_string(), 1)])
        .build()
        .map_err(|e| Error::Config(format!("post-processor: {e}")))?;
    tokenizer.with_post_processor(Some(post));
    Ok(tokenizer)
}

/// Writes `tokenizer` as `tokenizer.json` at `path` (temporary name, then rename).
pub fn save_tokenizer(tokenizer: &tokenizers::Tokenizer, path: &Path) -> Result<()> {
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("tokenizer.json");
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    tokenizer
        .save(&tmp, true)
        .map_err(|e| Error::input(path.display().to_string(), format!("writing the tokenizer failed: {e}")))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pads_truncates_and_keeps_eos() {
        let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/reference/assets/t5_v1_1_tokenizer.json");
        let t = CaptionTokenizer::from_file(&path).expect("the shared T5 tokenizer.json should load");
        let e = t.encode("a red circle moving to the right", 16).expect("encodes");
        assert_eq!(e.input_ids.len(), 16);
        let n = e.attention_mask.iter().sum::<i64>() as usize;
        assert_eq!(e.input_ids[n - 1], 1, "</s> ends the caption");
        assert!(e.input_ids[n..].iter().all(|&i| i == 0));
        let empty = t.encode("", 4).expect("empty caption");
        assert_eq!(empty.input_ids, vec![1, 0, 0, 0]);
        let short = t.encode("a red circle moving to the right", 4).expect("truncates");
        assert_eq!(short.input_ids[3], 1);
        assert_eq!(short.attention_mask, vec![1, 1, 1, 1]);
    }
}
