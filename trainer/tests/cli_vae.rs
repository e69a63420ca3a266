//! `osp-train vae` end to end on CPU with a tiny WFVAE on the procedural shapes clips: a run of
//! N steps equals N/2 steps, a restart and N/2 resumed steps (every checkpoint file bit-identical,
//! GAN updates included, metrics equal), also when `latest` has to skip a broken newest
//! checkpoint, and the reconstruction loss falls over a short run.

use std::path::{Path, PathBuf};

mod common;

use common::{arg as s, osp_train as run};

/// A tiny WFVAE config (8 latent channels, 8 base channels, no attention).
fn tiny_config(path: &Path) {
    let config = serde_json::json!({
        "latent_dim": 8, "base_channels": 8, "encoder_num_resblocks": 2, "encoder_energy_flow_hidden_size": 8,
        "decoder_num_resblocks": 2, "decoder_energy_flow_hidden_size": 8, "attention_type": "AttnBlock3DFix",
        "use_attention": false, "dropout": 0.0, "norm_type": "layernorm", "t_interpolation": "trilinear",
        "connect_res_layer_num": 2, "scale": vec![1.0; 8], "shift": vec![0.0; 8]
    });
    std::fs::write(path, serde_json::to_string_pretty(&config).expect("json")).expect("write config");
}

fn setup(root: &Path) -> (PathBuf, PathBuf) {
    let shapes = root.join("shapes");
    common::shapes(&shapes, 8, 5, 16, 0);
    let config = root.join("vae_config.json");
    tiny_config(&config);
    (shapes, config)
}

fn vae_args(shapes: &Path, config: &Path, out: &Path, steps: usize, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "vae",
        "--model_config",
        &s(config),
        "--video_path",
        &s(&shapes.join("videos")),
        "--ckpt_dir",
        &s(out),
        "--resolution",
        "16",
        "--num_frames",
        "5",
        "--batch_size",
        "2",
        "--perceptual_weight",
        "0",
        "--disc_ndf",
        "4",
        "--disc_num_layers",
        "1",
        "--wavelet_loss",
        "--lr",
        "1e-3",
        "--progress",
        "off",
        "--log",
        "error",
        "--max_steps",
        &steps.to_string(),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

fn metrics(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .expect("metrics.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("metrics line"))
        .collect()
}

#[test]
fn vae_training_resumes_exactly_with_gan_ema_and_checkpoints() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (shapes, config) = setup(tmp.path());
    let common = ["--disc_start", "2", "--ema", "--save_ckpt_step", "2"];
    let straight = tmp.path().join("straight");
    run(&vae_args(&shapes, &config, &straight, 6, &common));
    let resumed = tmp.path().join("resumed");
    run(&vae_args(&shapes, &config, &resumed, 2, &common));
    let mut again = common.to_vec();
    again.extend(["--resume_from_checkpoint", "latest"]);
    run(&vae_args(&shapes, &config, &resumed, 6, &again));

    let files = [
        "model/diffusion_pytorch_model.safetensors",
        "model/config.json",
        "model_ema/diffusion_pytorch_model.safetensors",
        "discriminator/discriminator.safetensors",
        "optimizer.safetensors",
        "discriminator_optimizer.safetensors",
    ];
    for f in files {
        let a = std::fs::read(straight.join("checkpoint-6").join(f)).expect("straight checkpoint file");
        let b = std::fs::read(resumed.join("checkpoint-6").join(f)).expect("resumed checkpoint file");
        assert!(a == b, "{f} differs between the straight and the resumed run");
    }
    let (m1, m2) = (metrics(&straight), metrics(&resumed));
    assert_eq!(m1.len(), 6);
    let updates: Vec<&str> = m1.iter().map(|r| r["update"].as_str().expect("update")).collect();
    assert_eq!(updates, ["generator", "generator", "generator", "discriminator", "generator", "discriminator"]);
    for (a, b) in m1.iter().zip(&m2) {
        for key in ["total_loss", "disc_loss", "grad_norm"] {
            assert_eq!(a.get(key), b.get(key), "{key} at step {}", a["step"]);
        }
    }
    assert_eq!(m1.len(), m2.len(), "each step is logged once");
    for (a, b) in m1.iter().zip(&m2) {
        let strip = |r: &serde_json::Value| {
            let mut r = r.clone();
            r.as_object_mut().expect("object").remove("seconds");
            r
        };
        assert_eq!(strip(a), strip(b), "resumed metrics vs uninterrupted");
    }

    // A run that reached step 3 and left a broken checkpoint-3 resumes from checkpoint-2 and
    // ends like the straight run, each step logged once.
    let crashed = tmp.path().join("crashed");
    run(&vae_args(&shapes, &config, &crashed, 3, &common));
    let disc = crashed.join("checkpoint-3/discriminator_optimizer.safetensors");
    let bytes = std::fs::read(&disc).expect("read");
    std::fs::write(&disc, &bytes[..bytes.len() / 2]).expect("truncate");
    run(&vae_args(&shapes, &config, &crashed, 6, &again));
    for f in files {
        let a = std::fs::read(straight.join("checkpoint-6").join(f)).expect("straight checkpoint file");
        let b = std::fs::read(crashed.join("checkpoint-6").join(f)).expect("resumed checkpoint file");
        assert!(a == b, "{f} differs between the straight run and the one resumed after a fallback");
    }
    let m3 = metrics(&crashed);
    let steps: Vec<u64> = m3.iter().map(|r| r["step"].as_u64().expect("step")).collect();
    assert_eq!(steps, [0, 1, 2, 3, 4, 5]);
    for (a, b) in m1.iter().zip(&m3) {
        assert_eq!(a.get("total_loss"), b.get("total_loss"), "step {}", a["step"]);
    }

    // The checkpoint loads in the strict official-name loader (what osp-export reads).
    let weights = straight.join("checkpoint-6/model/diffusion_pytorch_model.safetensors");
    let cfg = osp_trainer::models::wfvae::WFVAEModelConfig::from_json_file(&config).expect("config");
    let mut model = cfg.init::<burn::backend::NdArray<f32>>(&Default::default()).expect("init");
    model
        .load_official(
            &osp_trainer::checkpoint::Checkpoint::open(&weights).expect("open"),
            osp_trainer::checkpoint::LoadOptions::default(),
        )
        .expect("strict load");
}

#[test]
fn vae_reconstruction_loss_decreases() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (shapes, config) = setup(tmp.path());
    let out = tmp.path().join("run");
    run(&vae_args(&shapes, &config, &out, 30, &["--disc_start", "1000", "--save_ckpt_step", "1000"]));
    let m = metrics(&out);
    let pixel: Vec<f64> = m.iter().map(|r| r["pixel_loss"].as_f64().expect("pixel_loss")).collect();
    let first: f64 = pixel[..5].iter().sum::<f64>() / 5.0;
    let last: f64 = pixel[pixel.len() - 5..].iter().sum::<f64>() / 5.0;
    assert!(last < 0.7 * first, "pixel loss {first} -> {last}: {pixel:?}");
    assert!(out.join("checkpoint-30/model/diffusion_pytorch_model.safetensors").is_file());
}
