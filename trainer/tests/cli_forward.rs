//! `osp-train forward wfvae-encode|wfvae-decode` end to end on the tiny parity fixture.

mod common;

use std::process::Command;

use common::wfvae_tiny_dir;
use osp_graphs::Approx;
use osp_trainer::io::{read_tensors, write_tensors};

fn run(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_osp-train")).args(args).output().expect("spawn osp-train");
    assert!(out.status.success(), "osp-train {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn forward_encode_and_decode_write_named_outputs() {
    let dir = wfvae_tiny_dir();
    let work = std::env::temp_dir().join(format!("osp-train-cli-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let io = read_tensors(dir.join("io.safetensors")).unwrap();
    let inputs = work.join("in.safetensors");
    write_tensors(
        &inputs,
        &[("x".to_string(), io["input.x_image"].clone()), ("z".to_string(), io["output.mean_image"].clone())],
    )
    .unwrap();
    let (config, weights) = (dir.join("config.json"), dir.join("weights.safetensors"));
    let (enc, dec) = (work.join("enc.safetensors"), work.join("dec.safetensors"));
    let s = |p: &std::path::Path| p.to_str().unwrap().to_string();
    let common =
        ["--config".to_string(), s(&config), "--weights".to_string(), s(&weights), "--inputs".to_string(), s(&inputs)];
    let mut a: Vec<String> = vec!["forward".into(), "wfvae-encode".into()];
    a.extend(common.iter().cloned());
    a.extend(["--out".to_string(), s(&enc), "--chunked".to_string()]);
    run(&a.iter().map(String::as_str).collect::<Vec<_>>());
    let mut a: Vec<String> = vec!["forward".into(), "wfvae-decode".into()];
    a.extend(common.iter().cloned());
    a.extend(["--out".to_string(), s(&dec)]);
    run(&a.iter().map(String::as_str).collect::<Vec<_>>());

    let enc_out = read_tensors(&enc).unwrap();
    let dec_out = read_tensors(&dec).unwrap();
    for (got, name) in [(&enc_out["mean"], "output.mean_image"), (&dec_out["sample"], "output.decode_image")] {
        assert_eq!(got.shape, io[name].shape, "{name}");
        let c = Approx::Approximate.compare(&got.to_vec::<f32>().unwrap(), &io[name].to_vec::<f32>().unwrap());
        assert!(c.ok(), "{name}: {c}");
    }
    assert!(enc_out.contains_key("logvar"));
    std::fs::remove_dir_all(&work).unwrap();
}
