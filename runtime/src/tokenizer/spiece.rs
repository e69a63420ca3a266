//! Conversion of a SentencePiece `spiece.model` (protobuf `ModelProto`, as the T5 and mT5
//! releases ship it) into a `tokenizers` Unigram tokenizer, following the T5 recipe of
//! transformers' `convert_slow_tokenizer.T5Converter` (which `T5TokenizerFast` runs when a
//! repository has no `tokenizer.json`, e.g. google/mt5-xxl):
//!
//! - model: `Unigram(vocab with scores, unk_id, byte_fallback)`;
//! - normaliser: `Sequence[Precompiled(charsmap) (when non-empty), Strip(right), Replace(" {2,}" -> "▁")]`;
//! - pre-tokeniser and decoder: `Metaspace('▁', prepend Always when add_dummy_prefix else Never)`;
//! - post-processor: `TemplateProcessing("$A </s>", pair "$A </s> $B </s>")`;
//! - control and unknown pieces are special added tokens, user-defined pieces plain added tokens;
//! - a model without a `<pad>` piece gets `<pad>` as a new special token after the pieces (id =
//!   number of pieces), as `PreTrainedTokenizerFast` adds T5's missing special tokens.
//!
//! Upstream: <https://github.com/huggingface/transformers/blob/v4.44.2/src/transformers/convert_slow_tokenizer.py>
//! (`SpmConverter`, `T5Converter`). Extra ids (`<extra_id_N>`) are not appended: T5's sentinel
//! tokens are only used by span-corruption pre-training, and mT5's release sets `extra_ids` to 0.

use std::path::Path;

use prost::Message;
use tokenizers::decoders::metaspace::Metaspace as MetaspaceDecoder;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::{Precompiled, Replace, Sequence, Strip};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, NormalizerWrapper, Tokenizer};

use super::{Result, TokenizerError};

/// Types generated from the vendored `proto/sentencepiece_model.proto`.
#[allow(clippy::all, missing_docs)]
pub(crate) mod pb {
    include!(concat!(env!("OUT_DIR"), "/sentencepiece.rs"));
}

use pb::model_proto::sentence_piece::Type as PieceType;
use pb::trainer_spec::ModelType;

/// The end-of-sequence piece T5's post-processor appends.
const EOS_PIECE: &str = "</s>";
/// T5's padding piece.
const PAD_PIECE: &str = super::PAD_TOKEN;
/// SentencePiece's whitespace marker (U+2581).
const SPACE_MARKER: char = '\u{2581}';

/// Parses `bytes` (the content of `path`) as a SentencePiece model and builds the tokenizer.
pub(crate) fn tokenizer_from_spiece(path: &Path, bytes: &[u8]) -> Result<Tokenizer> {
    let corrupt = |why: String| TokenizerError::Corrupt { path: path.to_path_buf(), why };
    let model = pb::ModelProto::decode(bytes).map_err(|e| corrupt(format!("not a SentencePiece ModelProto ({e})")))?;
    if model.pieces.is_empty() {
        return Err(corrupt("the model holds no pieces".into()));
    }
    let trainer = model.trainer_spec.clone().unwrap_or_default();
    if trainer.model_type() != ModelType::Unigram {
        return Err(corrupt(format!(
            "model_type is {:?}; only Unigram SentencePiece models (T5, mT5) are supported",
            trainer.model_type()
        )));
    }
    let normalizer_spec = model.normalizer_spec.clone().unwrap_or_default();

    let vocab: Vec<(String, f64)> =
        model.pieces.iter().map(|p| (p.piece().to_string(), f64::from(p.score()))).collect();
    let unk_id = usize::try_from(trainer.unk_id())
        .ok()
        .filter(|&id| id < vocab.len())
        .ok_or_else(|| corrupt(format!("unk_id {} is outside the vocabulary of {}", trainer.unk_id(), vocab.len())))?;
    let unigram = Unigram::from(vocab, Some(unk_id), trainer.byte_fallback())
        .map_err(|e| corrupt(format!("invalid Unigram vocabulary: {e}")))?;

    let mut normalizers: Vec<NormalizerWrapper> = Vec::with_capacity(3);
    let charsmap = normalizer_spec.precompiled_charsmap();
    if !charsmap.is_empty() {
        check_charsmap(charsmap).map_err(corrupt)?;
        let precompiled = Precompiled::from(charsmap).map_err(|e| corrupt(format!("precompiled_charsmap: {e}")))?;
        normalizers.push(precompiled.into());
    }
    normalizers.push(Strip::new(false, true).into());
    let collapse = Replace::new(tokenizers::normalizers::replace::ReplacePattern::Regex(" {2,}".into()), SPACE_MARKER)
        .map_err(|e| corrupt(format!("whitespace normaliser: {e}")))?;
    normalizers.push(collapse.into());

    let prepend = if normalizer_spec.add_dummy_prefix() { PrependScheme::Always } else { PrependScheme::Never };
    let eos_id =
        model.pieces.iter().position(|p| p.piece() == EOS_PIECE).ok_or_else(|| {
            corrupt(format!("the vocabulary has no `{EOS_PIECE}` piece, which T5 appends to every text"))
        })?;
    let eos_id = u32::try_from(eos_id).map_err(|_| corrupt("vocabulary larger than u32".into()))?;
    let template = TemplateProcessing::builder()
        .try_single(format!("$A {EOS_PIECE}"))
        .and_then(|b| b.try_pair(format!("$A {EOS_PIECE} $B {EOS_PIECE}")))
        .map_err(|e| corrupt(format!("post-processor template: {e}")))?
        .special_tokens(vec![(EOS_PIECE, eos_id)])
        .build()
        .map_err(|e| corrupt(format!("post-processor: {e}")))?;

    let mut tokenizer = Tokenizer::new(unigram);
    tokenizer.with_normalizer(Some(Sequence::new(normalizers))).map_err(|e| corrupt(format!("normaliser: {e}")))?;
    tokenizer.with_pre_tokenizer(Some(Metaspace::new(SPACE_MARKER, prepend, true)));
    tokenizer.with_post_processor(Some(template));
    tokenizer.with_decoder(Some(MetaspaceDecoder::new(SPACE_MARKER, prepend, true)));

    let mut special: Vec<AddedToken> = model
        .pieces
        .iter()
        .filter(|p| matches!(p.r#type(), PieceType::Control | PieceType::Unknown))
        .map(|p| AddedToken::from(p.piece().to_string(), true).normalized(false))
        .collect();
    if !model.pieces.iter().any(|p| p.piece() == PAD_PIECE) {
        tracing::warn!(
            path = %path.display(),
            id = model.pieces.len(),
            "the SentencePiece model has no `{PAD_PIECE}` piece; `{PAD_PIECE}` is added after its pieces, as \
             transformers' T5 tokenizer does"
        );
        special.push(AddedToken::from(PAD_PIECE, true).normalized(false));
    }
    let user: Vec<AddedToken> = model
        .pieces
        .iter()
        .filter(|p| p.r#type() == PieceType::UserDefined)
        .map(|p| AddedToken::from(p.piece().to_string(), false).normalized(false))
        .collect();
    tokenizer.add_special_tokens(special).map_err(|e| corrupt(format!("special tokens: {e}")))?;
    tokenizer.add_tokens(user).map_err(|e| corrupt(format!("user-defined tokens: {e}")))?;
    tracing::debug!(
        path = %path.display(),
        pieces = model.pieces.len(),
        unk_id,
        eos_id,
        byte_fallback = trainer.byte_fallback(),
        add_dummy_prefix = normalizer_spec.add_dummy_prefix(),
        "converted SentencePiece model"
    );
    Ok(tokenizer)
}

/// The charsmap layout is `u32 trie_size | trie (trie_size bytes) | normalized strings`; a corrupt
/// size would otherwise make the parser reserve gigabytes before failing.
fn check_charsmap(charsmap: &[u8]) -> std::result::Result<(), String> {
    let Some(size) = charsmap.get(..4) else {
        return Err(format!("precompiled_charsmap has {} bytes, fewer than its 4-byte header", charsmap.len()));
    };
    let trie = u32::from_le_bytes([size[0], size[1], size[2], size[3]]) as usize;
    if !trie.is_multiple_of(4) || trie > charsmap.len() - 4 {
        return Err(format!(
            "precompiled_charsmap declares a {trie}-byte trie but holds {} bytes after its header",
            charsmap.len() - 4
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real T5 model minus its `<pad>` piece (id 0): every other id moves down by one, and
    /// `<pad>` comes back as a new token after the pieces.
    #[test]
    fn a_model_without_pad_loads_and_gets_pad_appended() {
        let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/reference/assets");
        let original = std::fs::read(assets.join("seqio_t5_tiny_spiece.model")).unwrap();
        let mut model = pb::ModelProto::decode(original.as_slice()).unwrap();
        assert_eq!(model.pieces[0].piece(), PAD_PIECE);
        model.pieces.remove(0);
        let trainer = model.trainer_spec.as_mut().unwrap();
        trainer.unk_id = Some(trainer.unk_id() - 1);
        trainer.eos_id = Some(trainer.eos_id() - 1);
        trainer.bos_id = Some(-1);
        trainer.pad_id = Some(-1);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nopad.model");
        std::fs::write(&path, model.encode_to_vec()).unwrap();

        let with = super::super::Tokenizer::from_file(assets.join("seqio_t5_tiny_spiece.model")).unwrap();
        let without = super::super::Tokenizer::from_file(&path).unwrap();
        assert_eq!(without.pad_id(), Some(model.pieces.len() as u32));
        assert_eq!(without.vocab_size(), with.vocab_size());
        for text in ["A cat plays with a ball.", "Ünïcödé  spaces", ""] {
            let a = with.encode_ids(text, true).unwrap();
            let b = without.encode_ids(text, true).unwrap();
            assert_eq!(a.iter().map(|&i| i - 1).collect::<Vec<_>>(), b, "{text:?}");
        }
        let padded = without.encode("A cat.", 16).unwrap();
        assert_eq!(*padded.input_ids.last().unwrap(), i64::from(without.pad_id().unwrap()));
        assert_eq!(
            padded.attention_mask.iter().sum::<i64>() as usize,
            without.encode_ids("A cat.", true).unwrap().len()
        );
    }

    #[test]
    fn charsmap_header_is_checked() {
        assert!(check_charsmap(&[1, 2]).is_err());
        assert!(check_charsmap(&[8, 0, 0, 0, 1, 2, 3, 4]).is_err());
        assert!(check_charsmap(&[3, 0, 0, 0, 1, 2, 3]).is_err());
        assert!(check_charsmap(&[4, 0, 0, 0, 1, 2, 3, 4, b'a', 0]).is_ok());
    }
}
