//! The WFVAE whole-clip decode in f64 on Burn's ndarray backend: the reference for measuring how
//! far an f32 graph form (e.g. `osp-export wfvae --video-conv winograd-f4`) rounds
//! (docs/benchmarks.md, "Winograd convolutions for the WFVAE").
//!
//! `cargo run --release -p osp-trainer --example wfvae_decode_f64 -- CONFIG WEIGHTS LATENTS OUT`:
//! the upstream `config.json`, official weights (any float dtype, widened exactly, loaded
//! strictly), a safetensors file with the f32 latents `z`; writes `sample` (rounded to f32) to OUT.

use std::path::PathBuf;

use anyhow::{bail, Context};
use burn::module::ParamId;
use burn_store::TensorSnapshot;
use osp_trainer::checkpoint::{Checkpoint, LoadOptions};
use osp_trainer::io::{read_tensors, take_tensor, write_tensors};
use osp_trainer::models::wfvae::WFVAEModelConfig;

type B = burn::backend::NdArray<f64>;

fn main() -> anyhow::Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [config, weights, latents, out] = args.as_slice() else {
        bail!("usage: wfvae_decode_f64 CONFIG WEIGHTS LATENTS OUT (got {} arguments)", args.len());
    };
    let device = Default::default();
    let cfg = WFVAEModelConfig::from_json_file(config)?;
    let mut model = cfg.init::<B>(&device)?;
    let checkpoint = Checkpoint::open(weights)?;
    let mut widened = Vec::with_capacity(checkpoint.len());
    for name in checkpoint.names() {
        let snapshot = checkpoint.get(name).context("a listed tensor should be present")?;
        let data = snapshot.to_data().map_err(|e| anyhow::anyhow!("tensor `{name}`: {e:?}"))?.convert::<f64>();
        let path = snapshot.path_stack.clone().unwrap_or_else(|| name.split('.').map(String::from).collect());
        let containers = snapshot.container_stack.clone().unwrap_or_default();
        widened.push(TensorSnapshot::from_data(data, path, containers, ParamId::new()));
    }
    let checkpoint = Checkpoint::from_snapshots(weights.clone(), "widened to f64", widened);
    model.load_official(&checkpoint, LoadOptions { allow_partial: false })?;
    let inputs = read_tensors(latents)?;
    let z = take_tensor::<B, 5>(&inputs, "z", &device)?;
    let sample = model.decode(z)?;
    write_tensors(out, &[("sample".to_string(), sample.into_data())])?;
    Ok(())
}
