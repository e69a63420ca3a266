//! The prompt refiner's text side and sampling against upstream's own outputs:
//! `../shared/reference/parity/llama_tiny/` (README there; generator
//! `../shared/reference/generators/refiner_fixtures.py`, transformers 4.44.2).
//! - the chat template rendering and the input ids (BOS BOS) of `refiner_e2e.json`;
//! - the Llama tokenizer (no `<pad>`) loads, and decodes like transformers (`meta.json` goldens);
//! - the warpers equal transformers' warped scores (`io.safetensors` `output.step_scores_warped*`);
//! - greedy argmax equals the fixture's greedy ids on its recorded step logits.
//!
//! The graph-level checks (greedy ids and `osp refine --greedy` strings through exported
//! bundles) are in `tests/tests/refiner_cli.rs`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use osp_graphs::tolerance::Approx;
use osp_runtime::refiner::config::GenerationConfig;
use osp_runtime::refiner::{template, warpers, RefinerText};
use osp_runtime::tokenizer::{clean_up_tokenization, Tokenizer};
use osp_runtime::{read_safetensors, Tensor};

fn fixture() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/reference/parity/llama_tiny"))
}

fn json(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture().join(name)).expect("the fixture file should exist");
    serde_json::from_str(&text).expect("the fixture file should be JSON")
}

fn io() -> BTreeMap<String, Tensor> {
    read_safetensors(&fixture().join("io.safetensors")).expect("io.safetensors should load")
}

fn f32s(t: &Tensor) -> (Vec<usize>, Vec<f32>) {
    let Tensor::F32(a) = t else { panic!("expected f32, got {}", t.describe()) };
    (a.shape().to_vec(), a.iter().copied().collect())
}

fn i64s(t: &Tensor) -> Vec<i64> {
    let Tensor::I64(a) = t else { panic!("expected i64, got {}", t.describe()) };
    a.iter().copied().collect()
}

#[test]
fn template_and_chat_rendering_match_upstream_byte_for_byte() {
    let e2e = json("refiner_e2e.json");
    assert_eq!(e2e["template"].as_str().unwrap(), template::TEMPLATE);
    assert_eq!(e2e["system"].as_str().unwrap(), template::SYSTEM);
    let text = RefinerText::load(&fixture()).unwrap();
    let runs = e2e["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    for run in runs {
        let prompt = run["prompt"].as_str().unwrap();
        assert_eq!(template::user_message(prompt), run["user_content"].as_str().unwrap());
        let rendered = text.render(prompt).unwrap();
        assert_eq!(rendered, run["rendered_chat_text"].as_str().unwrap(), "prompt {prompt:?}");
        let ids = text.input_ids(&rendered).unwrap();
        let want: Vec<u32> = serde_json::from_value(run["input_ids"].clone()).unwrap();
        assert_eq!(ids, want, "prompt {prompt:?}");
        assert_eq!(ids[..2], [600, 600], "BOS BOS");
    }
}

#[test]
fn refined_strings_decode_from_upstream_new_ids() {
    let e2e = json("refiner_e2e.json");
    let text = RefinerText::load(&fixture()).unwrap();
    for run in e2e["runs"].as_array().unwrap() {
        let new_ids: Vec<u32> = serde_json::from_value(run["new_ids"].clone()).unwrap();
        assert_eq!(text.decode(&new_ids).unwrap(), run["refined"].as_str().unwrap());
        let raw = text.tokenizer().decode(&new_ids, true).unwrap();
        assert_eq!(raw, run["refined_without_cleanup"].as_str().unwrap());
    }
}

#[test]
fn llama_tokenizer_without_pad_loads_and_matches_the_goldens() {
    let tok = Tokenizer::from_file(fixture().join("tokenizer.json")).unwrap();
    assert_eq!((tok.pad_id(), tok.eos_id()), (None, None));
    assert_eq!(tok.token_to_id("<|begin_of_text|>"), Some(600));
    // The T5 text encoder's loaders still need `</s>`.
    assert!(tok.require_eos().unwrap_err().to_string().contains("no `</s>` token"));
    let meta = json("meta.json");
    for g in meta["tokenizer"]["goldens"].as_array().unwrap() {
        let text = g["text"].as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(g["ids_add_special_tokens"].clone()).unwrap();
        let ids = tok.encode_ids(text, true).unwrap();
        assert_eq!(ids, want, "{text:?}");
        let skip = tok.decode(&ids, true).unwrap();
        assert_eq!(skip, g["decode_skip_special_no_cleanup"].as_str().unwrap(), "{text:?}");
        assert_eq!(clean_up_tokenization(&skip), g["decode_skip_special_cleanup"].as_str().unwrap(), "{text:?}");
        assert_eq!(tok.decode(&ids, false).unwrap(), g["decode_keep_special_no_cleanup"].as_str().unwrap());
    }
    // Padding needs a `<pad>`: a clear error at the point of padding, none when no padding is needed.
    let err = tok.encode("a dog", 16).unwrap_err();
    assert!(err.to_string().contains("no `<pad>` token"), "{err}");
    let n = tok.encode_ids("a dog", true).unwrap().len();
    assert_eq!(tok.encode("a dog", n).unwrap().input_ids.len(), n);
}

/// `TemperatureLogitsWarper -> TopKLogitsWarper -> TopPLogitsWarper` on every recorded step.
#[test]
fn warpers_equal_transformers_scores() {
    let io = io();
    for (suffix, b) in [("", 1), ("_b2", 2)] {
        let (shape, logits) = f32s(&io[&format!("output.step_logits{suffix}")]);
        assert_eq!(shape[0], b);
        let vocab = shape[2];
        for (name, config) in [
            (
                "step_scores_warped",
                GenerationConfig { do_sample: true, temperature: 0.6, top_k: 50, top_p: 0.9, min_p: None },
            ),
            (
                "step_scores_warped_hot",
                GenerationConfig { do_sample: true, temperature: 3.0, top_k: 20, top_p: 0.9, min_p: None },
            ),
        ] {
            let (_, want) = f32s(&io[&format!("output.{name}{suffix}")]);
            for (row, (logits, want)) in logits.chunks(vocab).zip(want.chunks(vocab)).enumerate() {
                let mut got = logits.to_vec();
                warpers::warp(&mut got, &config);
                let kept = |s: &[f32]| s.iter().map(|v| v.is_finite()).collect::<Vec<_>>();
                assert_eq!(kept(&got), kept(want), "{name}{suffix} row {row}: kept tokens");
                let finite = |s: &[f32]| s.iter().copied().filter(|v| v.is_finite()).collect::<Vec<_>>();
                let c = Approx::Exact.compare(&finite(&got), &finite(want));
                assert!(c.ok(), "{name}{suffix} row {row}: {c}");
            }
        }
    }
}

#[test]
fn greedy_argmax_equals_the_recorded_greedy_ids() {
    let io = io();
    for suffix in ["", "_b2"] {
        let (shape, logits) = f32s(&io[&format!("output.step_logits{suffix}")]);
        let ids = i64s(&io[&format!("output.greedy_ids{suffix}")]);
        let got: Vec<i64> = logits.chunks(shape[2]).map(|row| warpers::argmax(row) as i64).collect();
        assert_eq!(got, ids, "greedy{suffix}");
    }
}

#[test]
fn hf_folder_is_refused_with_the_export_command() {
    let err = osp_runtime::refiner::check_not_hf_folder(&fixture()).unwrap_err();
    assert!(err.to_string().contains("osp-export llama"), "{err}");
}
