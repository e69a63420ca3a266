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
        let mut inner = osp_runtime::tokenizer::catch_panic(|| tokenizers::Tokenizer::from_file(path))
            .map_err(|p| bad(format!("not a tokenizer.json (the tokenizers library panicked: {p})")))?
            .map_err(|e| bad(format!("not a tokenizer.json: {e}")))?;
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
        let panicked =
            |p: String| Error::input("caption", format!("tokenization failed (the tokenizers library panicked: {p})"));
        let mut encoding = osp_runtime::tokenizer::catch_panic(|| self.inner.encode(text, false))
            .map_err(panicked)?
            .map_err(tok_err)?;
        let keep = max_len - self.added;
        if encoding.len() > keep {
            tracing::warn!(max_len, tokens = encoding.len() + self.added, "caption truncated to --model_max_length");
            encoding.truncate(keep, 0, TruncationDirection::Right);
        }
        let mut encoding = osp_runtime::tokenizer::catch_panic(|| self.inner.post_process(encoding, None, true))
            .map_err(panicked)?
            .map_err(tok_err)?;
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
///
/// The model is the maximum-likelihood unigram LM of the captions' words: every `▁word` piece
/// scored `ln(count / total)` (the most frequent `vocab_size - 3 - characters` kept), plus every
/// character and `▁` scored below all words, so that an unseen word is spelled in characters and
/// nothing maps to `<unk>` that the captions could spell. (The `tokenizers` UnigramTrainer's EM
/// pruning collapses a vocabulary this small to single characters.)
pub fn train_caption_tokenizer(captions: &[String], vocab_size: usize) -> Result<tokenizers::Tokenizer> {
    use std::collections::{BTreeMap, BTreeSet};
    use tokenizers::decoders::metaspace::Metaspace as MetaspaceDecoder;
    use tokenizers::models::unigram::Unigram;
    use tokenizers::models::ModelWrapper;
    use tokenizers::normalizers::{Lowercase, Replace, Sequence, Strip, NFKC};
    use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
    use tokenizers::processors::template::TemplateProcessing;
    use tokenizers::{AddedToken, NormalizedString, Normalizer};

    const META: char = '▁';
    let err = |what: &str, e: tokenizers::Error| Error::Config(format!("tokenizer {what}: {e}"));
    let normalizer = Sequence::new(vec![
        NFKC.into(),
        Lowercase.into(),
        Strip::new(false, true).into(),
        Replace::new(tokenizers::normalizers::replace::ReplacePattern::Regex(" {2,}".into()), " ")
            .map_err(|e| err("normaliser", e))?
            .into(),
    ]);
    let mut words: BTreeMap<String, u64> = BTreeMap::new();
    let mut chars: BTreeSet<String> = BTreeSet::new();
    for caption in captions {
        let mut n = NormalizedString::from(caption.as_str());
        normalizer.normalize(&mut n).map_err(|e| err("normaliser", e))?;
        for word in n.get().split_whitespace() {
            chars.extend(word.chars().map(String::from));
            *words.entry(format!("{META}{word}")).or_default() += 1;
        }
    }
    if words.is_empty() {
        return Err(Error::input("--captions", "holds no non-empty caption to train on"));
    }
    chars.insert(META.to_string());
    let min = SPECIAL_TOKENS.len() + chars.len();
    if vocab_size <= min {
        return Err(Error::input(
            "--vocab-size",
            format!(
                "must exceed {min} (3 special tokens + the captions' {} characters), got {vocab_size}",
                chars.len()
            ),
        ));
    }
    let total: u64 = words.values().sum();
    let mut ranked: Vec<(String, u64)> = words.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    ranked.truncate(vocab_size - min);
    let floor = (0.5 / total as f64).ln();
    let mut vocab: Vec<(String, f64)> = SPECIAL_TOKENS.iter().map(|t| (t.to_string(), 0.0)).collect();
    vocab.extend(ranked.into_iter().map(|(w, c)| (w, (c as f64 / total as f64).ln())));
    // Word pieces are `▁` + at least one character, so they never collide with single characters.
    vocab.extend(chars.into_iter().map(|c| (c, floor - 1.0)));
    let model = Unigram::from(vocab, Some(2), false).map_err(|e| err("model", e))?;

    let mut tokenizer = tokenizers::Tokenizer::new(ModelWrapper::Unigram(model));
    tokenizer.with_normalizer(Some(normalizer)).map_err(|e| err("normaliser", e))?;
    tokenizer.with_pre_tokenizer(Some(Metaspace::new(META, PrependScheme::Always, true)));
    tokenizer.with_decoder(Some(MetaspaceDecoder::new(META, PrependScheme::Always, true)));
    tokenizer
        .add_special_tokens(SPECIAL_TOKENS.map(|t| AddedToken::from(t, true)))
        .map_err(|e| err("special tokens", e))?;
    let post = TemplateProcessing::builder()
        .try_single("$A </s>")
        .map_err(|e| Error::Config(format!("post-processor: {e}")))?
        .special_tokens(vec![("</s>".to_string(), 1)])
        .build()
        .map_err(|e| Error::Config(format!("post-processor: {e}")))?;
    tokenizer.with_post_processor(Some(post));
    for (id, token) in SPECIAL_TOKENS.iter().enumerate() {
        if tokenizer.token_to_id(token) != Some(id as u32) {
            return Err(Error::Config(format!("caption tokenizer: `{token}` did not get id {id}")));
        }
    }
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

    #[test]
    fn trained_caption_tokenizer_follows_t5_conventions() {
        let caps: Vec<String> =
            ["a red circle moving to the right", "a blue square moving up", "a red triangle moving left"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        let tok = train_caption_tokenizer(&caps, 64).expect("trains");
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tokenizer.json");
        save_tokenizer(&tok, &path).expect("saves");
        let t = CaptionTokenizer::from_file(&path).expect("loads");
        let e = t.encode("A  Red circle moving to the right", 10).expect("encodes");
        let red = tok.token_to_id("▁red").expect("whole-word piece");
        assert_eq!(e.input_ids[1], i64::from(red));
        assert_eq!(e.input_ids[7], 1, "</s> after 7 words");
        assert_eq!(&e.input_ids[8..], &[0, 0]);
        // An unseen word is spelled in characters, not <unk>.
        let e = t.encode("a cat", 8).expect("encodes");
        assert!(!e.input_ids.contains(&2), "{:?}", e.input_ids);
        assert!(train_caption_tokenizer(&caps, 10).is_err());
    }
}
