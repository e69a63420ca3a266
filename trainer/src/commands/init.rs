//! `osp-train init`: a seeded initialisation of a model written with its official parameter names
//! (what the strict loader, `osp-train` and `osp-export` read), with the model's config copied
//! next to it as `<stem>_config.json` (the flat e2e layout: `text_encoder.safetensors` +
//! `text_encoder_config.json`). The default bundle's text encoder is an mT5 encoder frozen at
//! such an init.

use std::path::{Path, PathBuf};

use anyhow::Context;
use burn::backend::NdArray;
use burn::tensor::backend::Backend;
use clap::{Args, ValueEnum};

use osp_trainer::io::write_tensors;
use osp_trainer::models::mt5::MT5Config;
use osp_trainer::models::opensora_v1_3::OpenSoraT2V_v1_3Config;
use osp_trainer::models::wfvae::WFVAEModelConfig;
use osp_trainer::train::official_tensors;

/// Which model to initialise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InitModel {
    /// WFVAE (upstream `config.json` keys).
    Wfvae,
    /// OpenSoraT2V v1.3 DiT (diffusers `config.json` keys).
    Dit,
    /// mT5 encoder (Hugging Face `config.json` keys).
    Mt5,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Model kind.
    #[arg(long, value_enum)]
    pub model: InitModel,
    /// The model's config.json.
    #[arg(long)]
    pub config: PathBuf,
    /// Seed of every initial weight (the same seed writes the same file).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output safetensors file (official names).
    #[arg(long)]
    pub out: PathBuf,
}

type B = NdArray<f32>;

pub fn run(args: InitArgs) -> anyhow::Result<()> {
    let device = Default::default();
    B::seed(&device, args.seed);
    let tensors = match args.model {
        InitModel::Wfvae => {
            official_tensors::<B, _>(&WFVAEModelConfig::from_json_file(&args.config)?.init::<B>(&device)?)?
        }
        InitModel::Dit => {
            official_tensors::<B, _>(&OpenSoraT2V_v1_3Config::from_json_file(&args.config)?.init::<B>(&device)?)?
        }
        InitModel::Mt5 => official_tensors::<B, _>(&MT5Config::from_json_file(&args.config)?.init::<B>(&device)?)?,
    };
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    write_tensors(&args.out, &tensors)?;
    let config_out = config_path(&args.out);
    if std::fs::canonicalize(&args.config).ok() != std::fs::canonicalize(&config_out).ok() {
        let text =
            std::fs::read_to_string(&args.config).with_context(|| format!("reading {}", args.config.display()))?;
        osp_fs::write_bytes(&config_out, text)?;
    }
    let params: usize = tensors.iter().map(|(_, d)| d.num_elements()).sum();
    println!(
        "wrote {} tensors ({params} values) to {} and {}",
        tensors.len(),
        args.out.display(),
        config_out.display()
    );
    Ok(())
}

/// `<dir>/<stem>_config.json` for `<dir>/<stem>.safetensors`.
fn config_path(weights: &Path) -> PathBuf {
    let stem = weights.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
    weights.with_file_name(format!("{stem}_config.json"))
}
