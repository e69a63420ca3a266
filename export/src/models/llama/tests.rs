use std::io::Write;
use std::path::Path;

use serde_json::json;

use super::*;

/// Llama-3.1-8B(-Instruct)'s `config.json` as released (one copy, `graphs/testdata/`).
fn llama31_8b() -> serde_json::Value {
    serde_json::from_str(include_str!(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../graphs/testdata/llama31_8b_config.json"
    )))
    .expect("the test config should be JSON")
}

fn tiny() -> serde_json::Value {
    json!({
        "architectures": ["LlamaForCausalLM"], "attention_bias": false, "bos_token_id": 1,
        "eos_token_id": [2, 3], "hidden_act": "silu", "hidden_size": 32, "intermediate_size": 64,
        "max_position_embeddings": 256, "mlp_bias": false, "model_type": "llama",
        "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2, "rms_norm_eps": 1e-05,
        "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 32, "rope_type": "llama3"},
        "rope_theta": 500000.0, "tie_word_embeddings": false, "vocab_size": 50
    })
}

/// A safetensors file whose header lists `entries` and whose data is a hole (sparse: nothing is
/// written or read).
fn header_only(path: &Path, entries: &[(String, &str, Vec<usize>)]) {
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for (name, dtype, shape) in entries {
        let len = shape.iter().product::<usize>() as u64 * if *dtype == "F32" { 4 } else { 2 };
        header.insert(name.clone(), json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len]}));
        offset += len;
    }
    let text = serde_json::to_vec(&header).unwrap();
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(&(text.len() as u64).to_le_bytes()).unwrap();
    f.write_all(&text).unwrap();
    f.set_len(8 + text.len() as u64 + offset).unwrap();
}

fn folder(dir: &Path, config: &serde_json::Value) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(dir.join("generation_config.json"), r#"{"eos_token_id": [2, 3], "do_sample": false}"#).unwrap();
    std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
}

/// The 8B release's names and shapes, checked from sparse shards: 291 tensors, 8,030,261,248
/// parameters, and not one data byte read.
#[test]
fn llama31_8b_names_and_shapes_are_checked_from_headers_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    folder(dir, &llama31_8b());
    let cfg: LlamaConfig = serde_json::from_value(llama31_8b()).unwrap();
    let params = parameter_shapes(&cfg);
    assert_eq!(params.len(), 291);
    let mut weight_map = serde_json::Map::new();
    for (i, chunk) in params.chunks(80).enumerate() {
        let file = format!("model-{:05}-of-00004.safetensors", i + 1);
        let entries: Vec<_> = chunk.iter().map(|(k, s)| (k.clone(), "BF16", s.clone())).collect();
        header_only(&dir.join(&file), &entries);
        for (k, _) in chunk {
            weight_map.insert(k.clone(), json!(file));
        }
    }
    std::fs::write(dir.join(WEIGHTS_INDEX), json!({"weight_map": weight_map}).to_string()).unwrap();
    let src = LlamaSource::open(dir).unwrap();
    assert_eq!(src.tensors.len(), 291);
    assert_eq!(src.parameter_count(), 8_030_261_248);
    assert_eq!(src.weight_files.len(), 5);
}

const WEIGHTS_INDEX: &str = source::WEIGHTS_INDEX_FILE;

#[test]
fn every_kind_of_bad_folder_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg: LlamaConfig = serde_json::from_value(tiny()).unwrap();
    let good: Vec<(String, &str, Vec<usize>)> =
        parameter_shapes(&cfg).into_iter().map(|(k, s)| (k, "F16", s)).collect();
    let case = |name: &str, config: serde_json::Value, entries: Vec<(String, &str, Vec<usize>)>| -> String {
        let dir = tmp.path().join(name);
        folder(&dir, &config);
        header_only(&dir.join("model.safetensors"), &entries);
        match LlamaSource::open(&dir) {
            Ok(_) => String::from("ok"),
            Err(e) => e.to_string(),
        }
    };
    assert_eq!(case("good", tiny(), good.clone()), "ok");
    let missing = good[1..].to_vec();
    assert!(case("missing", tiny(), missing).contains("missing tensor `model.embed_tokens.weight`"));
    let mut shape = good.clone();
    shape[1].2 = vec![32, 31];
    assert!(case("shape", tiny(), shape).contains("`model.layers.0.self_attn.q_proj.weight` must have shape [32, 32]"));
    let mut extra = good.clone();
    extra.push(("model.layers.0.self_attn.rotary_emb.inv_freq".into(), "F32", vec![4]));
    assert!(case("extra", tiny(), extra)
        .contains("unexpected tensor(s) [\"model.layers.0.self_attn.rotary_emb.inv_freq\"]"));
    let mut tied = tiny();
    tied["tie_word_embeddings"] = json!(true);
    assert!(case("tied", tied, good.clone()).contains("unexpected tensor(s) [\"lm_head.weight\"]"));
    let mut bias = tiny();
    bias["attention_bias"] = json!(true);
    assert!(case("bias", bias, good.clone()).contains("`attention_bias` must be false"));
    let mut heads = tiny();
    heads["num_key_value_heads"] = json!(3);
    assert!(case("heads", heads, good.clone()).contains("multiple of `num_key_value_heads`"));

    let dir = tmp.path().join("no_tokenizer");
    folder(&dir, &tiny());
    std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    assert!(LlamaSource::open(&dir).unwrap_err().to_string().contains("has no `tokenizer.json`"));
}

/// Graphs declare exactly the contract's I/O; quantized graphs read `MatMulNBits` weights under
/// `{key}.q{bits}` / `.scales` / `.zero_points`; both graphs share one set of generators.
#[test]
fn graphs_follow_the_contract_in_every_form() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("tiny");
    random::write_random_folder(&dir, &tiny(), DType::Bf16, 3, 1 << 30).unwrap();
    std::fs::write(dir.join("tokenizer.json"), "{}").unwrap();
    let src = LlamaSource::open(&dir).unwrap();
    for (precision, quant) in [
        (Precision::F32, None),
        (Precision::F16, None),
        (Precision::Bf16, None),
        (Precision::F32, Some(WeightQuantization { bits: 4, block_size: 16, symmetric: false, lm_head: true })),
    ] {
        let opts = LlamaExportOptions { precision, quant, ..Default::default() };
        let plan = WeightPlan::new(&src, &opts);
        for role in [Role::Prefill, Role::Decode] {
            let g = build_graph(&src.config, &plan, role, &opts).unwrap();
            let (inputs, outputs) = io_specs(&src.config, &opts, role);
            assert_eq!((g.inputs.clone(), g.outputs.clone()), (inputs, outputs), "{precision} {role:?}");
            let names: Vec<&str> = g.initializers.iter().map(|i| i.name.as_str()).collect();
            if quant.is_some() {
                assert!(names.contains(&"model.layers.1.mlp.down_proj.weight.q4"), "{names:?}");
                assert!(names.contains(&"lm_head.weight.zero_points"));
                assert!(!names.contains(&"model.layers.1.mlp.down_proj.weight"));
                assert_eq!(g.nodes.iter().filter(|n| n.op_type.as_deref() == Some("MatMulNBits")).count(), 15);
            } else {
                assert!(names.contains(&"model.layers.1.mlp.down_proj.weight"));
            }
            let stored = g.initializer("model.embed_tokens.weight").unwrap();
            assert_eq!(stored.dtype, opts.storage_dtype());
        }
    }
}

#[test]
fn llama3_inv_freq_keeps_high_frequencies_and_divides_low_ones() {
    let cfg: LlamaConfig = serde_json::from_value(llama31_8b()).unwrap();
    let scaled = rope_inv_freq(&cfg);
    let mut plain = cfg.clone();
    plain.rope_scaling = None;
    let base = rope_inv_freq(&plain);
    assert_eq!(scaled.len(), 64);
    assert_eq!(scaled[0], base[0], "wavelength below 8192/4: unchanged");
    assert_eq!(scaled[63], base[63] / 8.0, "wavelength above 8192: divided by the factor");
    let medium = (0..64).filter(|&i| scaled[i] != base[i] && scaled[i] != base[i] / 8.0).count();
    assert!(medium > 0 && medium < 20, "a band in between is smoothed ({medium})");
}
