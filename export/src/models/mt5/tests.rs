use super::*;

fn tiny() -> MT5Config {
    MT5Config { vocab_size: 40, d_model: 16, d_kv: 4, d_ff: 24, num_layers: 2, num_heads: 4, ..MT5Config::default() }
}

fn host_weights(cfg: &MT5Config) -> Weights {
    let mut w = Weights::new();
    for (key, shape) in parameter_shapes(cfg) {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n).map(|i| (i % 7) as f32 * 0.1).collect();
        w.insert(key, HostTensor::from_f32(shape, &values).unwrap());
    }
    w
}

#[test]
fn xxl_has_the_official_parameter_count() {
    // 5,655,173,120 parameters with the tied embedding counted once (trainer's manifest test).
    let total: usize = parameter_shapes(&MT5Config::mt5_xxl()).iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    assert_eq!(total, 5_655_173_120);
    assert_eq!(parameter_shapes(&MT5Config::mt5_xxl()).len(), 219);
}

#[test]
fn strict_loading_accepts_the_tie_and_rejects_the_rest() {
    let cfg = tiny();
    let good = host_weights(&cfg);
    assert!(Mt5Weights::from_weights(&cfg, good.clone()).is_ok());

    let mut tied_only = good.clone();
    let shared = tied_only.remove(SHARED).unwrap();
    tied_only.insert(TIED_EMBED_TOKENS, shared.clone());
    tied_only.insert("decoder.block.0.layer.0.SelfAttention.q.weight", shared.clone());
    assert!(Mt5Weights::from_weights(&cfg, tied_only).is_ok());

    let mut differing = good.clone();
    differing.insert(TIED_EMBED_TOKENS, HostTensor::from_f32(vec![40, 16], &[0.5; 640]).unwrap());
    let err = Mt5Weights::from_weights(&cfg, differing).unwrap_err().to_string();
    assert!(err.contains("must equal the tied"), "{err}");

    let mut missing = good.clone();
    missing.remove("encoder.block.1.layer.1.DenseReluDense.wo.weight");
    let err = Mt5Weights::from_weights(&cfg, missing).unwrap_err().to_string();
    assert!(err.contains("missing tensor `encoder.block.1.layer.1.DenseReluDense.wo.weight`"), "{err}");

    let mut extra = good.clone();
    extra.insert("encoder.block.9.bogus", HostTensor::from_f32(vec![1], &[0.0]).unwrap());
    let err = Mt5Weights::from_weights(&cfg, extra).unwrap_err().to_string();
    assert!(err.contains("encoder.block.9.bogus"), "{err}");

    let mut wrong = good;
    wrong.insert("encoder.final_layer_norm.weight", HostTensor::from_f32(vec![15], &[1.0; 15]).unwrap());
    let err = Mt5Weights::from_weights(&cfg, wrong).unwrap_err().to_string();
    assert!(err.contains("must have shape [16]"), "{err}");
}

#[test]
fn half_precision_keeps_wo_norms_and_buckets_in_f32() {
    let cfg = tiny();
    let w = Mt5Weights::Random { seed: 1 };
    for precision in [Precision::F16, Precision::Bf16] {
        let low = match precision {
            Precision::F16 => DType::F16,
            _ => DType::Bf16,
        };
        let mut g = build_graph(&cfg, &w, AttentionKind::OnnxAttention, precision).unwrap();
        crate::passes::optimize(&mut g, precision).unwrap();
        let dtype = |k: &str| g.initializer(k).unwrap_or_else(|| panic!("no initializer {k}")).dtype;
        for i in 0..cfg.num_layers {
            assert_eq!(dtype(&format!("encoder.block.{i}.layer.1.DenseReluDense.wo.weight")), DType::F32);
            assert_eq!(dtype(&format!("encoder.block.{i}.layer.0.layer_norm.weight")), DType::F32);
            assert_eq!(dtype(&format!("encoder.block.{i}.layer.0.SelfAttention.q.weight")), low);
            assert_eq!(dtype(&format!("encoder.block.{i}.layer.1.DenseReluDense.wi_0.weight")), low);
        }
        assert_eq!(dtype(SHARED), low);
        assert_eq!(g.precision, precision);
        let log = g.nodes.iter().find(|n| n.op_type.as_deref() == Some("Log")).unwrap();
        assert_eq!(g.value_dtypes[&log.output[0]], DType::F32, "bucket arithmetic stays f32");
        assert_eq!(g.outputs[0].dtype, DType::F32);
    }
}

#[test]
fn tokenizer_names_are_plain_and_do_not_collide() {
    assert_eq!(tokenizer_file_name(Path::new("/x/t5_tokenizer.JSON")).unwrap(), "tokenizer.json");
    assert_eq!(tokenizer_file_name(Path::new("/x/spiece.model")).unwrap(), "spiece.model");
    assert!(tokenizer_file_name(Path::new("/x/manifest.json")).is_ok(), "JSON files are renamed");
    assert!(tokenizer_file_name(Path::new("/x/text_encoder.onnx.data")).is_err());
}
