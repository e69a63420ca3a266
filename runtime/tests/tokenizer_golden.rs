//! Golden ids: `../shared/reference/assets/tokenizer_golden.json` was written by Python
//! `sentencepiece` (`seqio_t5_tiny_spiece.model`, ids without `</s>`) and by HF `tokenizers`
//! (`t5_v1_1_tokenizer.json`, `add_special_tokens=True`); see `../shared/reference/generators/`.
//! Every prompt must match exactly (CJK, accents, emoji, repeated spaces, empty text).

use std::path::PathBuf;

use osp_runtime::tokenizer::Tokenizer;

fn assets() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/reference/assets"))
}

fn golden() -> serde_json::Value {
    let text = std::fs::read_to_string(assets().join("tokenizer_golden.json")).expect("golden file should exist");
    serde_json::from_str(&text).expect("golden file should be JSON")
}

fn ids(v: &serde_json::Value) -> Vec<Vec<u32>> {
    serde_json::from_value(v.clone()).expect("ids should be lists of integers")
}

fn prompts(g: &serde_json::Value) -> Vec<String> {
    serde_json::from_value(g["prompts"].clone()).expect("prompts should be strings")
}

#[test]
fn spiece_model_conversion_matches_sentencepiece() {
    let g = golden();
    let tok = Tokenizer::from_file(assets().join("seqio_t5_tiny_spiece.model")).unwrap();
    let want = ids(&g["seqio_t5_tiny_spiece.model"]["ids"]);
    let prompts = prompts(&g);
    assert_eq!(prompts.len(), want.len());
    for (prompt, want) in prompts.iter().zip(&want) {
        assert_eq!(&tok.encode_ids(prompt, false).unwrap(), want, "prompt {prompt:?}");
        let mut with_eos = want.clone();
        with_eos.push(tok.eos_id().unwrap());
        assert_eq!(tok.encode_ids(prompt, true).unwrap(), with_eos, "prompt {prompt:?} with </s>");
    }
}

#[test]
fn tokenizer_json_matches_hf_tokenizers() {
    let g = golden();
    let tok = Tokenizer::from_file(assets().join("t5_v1_1_tokenizer.json")).unwrap();
    let want = ids(&g["t5_v1_1_tokenizer.json"]["ids"]);
    let prompts = prompts(&g);
    assert_eq!(prompts.len(), want.len());
    for (prompt, want) in prompts.iter().zip(&want) {
        assert_eq!(&tok.encode_ids(prompt, true).unwrap(), want, "prompt {prompt:?}");
    }
    assert_eq!((tok.pad_id(), tok.eos_id()), (Some(0), Some(1)));
}

#[test]
fn padded_prompt_matches_golden_then_pads() {
    let g = golden();
    let tok = Tokenizer::from_file(assets().join("t5_v1_1_tokenizer.json")).unwrap();
    let want = ids(&g["t5_v1_1_tokenizer.json"]["ids"]);
    let prompts = prompts(&g);
    for (prompt, want) in prompts.iter().zip(&want).filter(|(p, _)| !p.trim().is_empty()) {
        let enc = tok.encode(prompt, 512).unwrap();
        assert_eq!(enc.input_ids.len(), 512);
        let n = want.len();
        assert_eq!(enc.input_ids[..n].iter().map(|&i| i as u32).collect::<Vec<_>>(), *want, "prompt {prompt:?}");
        assert!(enc.input_ids[n..].iter().all(|&i| i == 0));
        assert_eq!(enc.attention_mask.iter().sum::<i64>(), n as i64);
    }
}
