//! `osp-export`: writes ONNX bundles for osp models.
//!
//! `osp-export transformer-block --config block.json --seed 0 --out /tmp/block.bundle`
//! `osp-export wfvae --config vae/config.json --weights vae/diffusion_pytorch_model.safetensors --out /tmp/wfvae.bundle`
//! `osp-export dit --config config.json --weights diffusion_pytorch_model.safetensors.index.json --out dit.bundle`

mod commands;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let args = commands::Args::parse();
    commands::run(args)
}
