//! `osp-train forward <model>`: loads a config and official weights, reads named inputs, runs the
//! forward pass and writes named outputs (safetensors, written atomically).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use burn::tensor::backend::Backend;
use clap::{Args, ValueEnum};

use burn::tensor::TensorData;
use osp_trainer::checkpoint::{Checkpoint, LoadOptions, LoadReport};
use osp_trainer::io::{read_tensors, take_tensor, write_tensors};
use osp_trainer::models::wfvae::WFVAEModelConfig;

use super::DeviceKind;

/// Which forward pass to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ForwardModel {
    /// WFVAE encoder: input `x` [b,3,4n+1,h,w] -> `mean`, `logvar` [b,latent,n+1,h/8,w/8].
    WfvaeEncode,
    /// WFVAE decoder: input `z` [b,latent,t,h,w] -> `sample` [b,3,4t-3,8h,8w].
    WfvaeDecode,
    /// OpenSoraT2V v1.3 DiT: `hidden_states`, `timestep`, `encoder_hidden_states` (+ optional
    /// `attention_mask`, `encoder_attention_mask`) -> `sample`.
    Dit,
    /// mT5 encoder: `input_ids` (+ optional `attention_mask`) -> `last_hidden_state`.
    Mt5,
}

#[derive(Debug, Args)]
pub struct ForwardArgs {
    /// Model and direction.
    pub model: ForwardModel,
    /// Upstream `config.json` of the model.
    #[arg(long)]
    pub config: PathBuf,
    /// Official weights (.safetensors, .safetensors.index.json, .ckpt, .pt, .bin).
    #[arg(long)]
    pub weights: PathBuf,
    /// Safetensors file holding the named inputs.
    #[arg(long)]
    pub inputs: PathBuf,
    /// Safetensors file to write the named outputs to.
    #[arg(long)]
    pub out: PathBuf,
    /// Temporal chunking with explicit caches (equal results, bounded memory).
    #[arg(long)]
    pub chunked: bool,
    /// Frames per encode chunk after the first (multiple of 4).
    #[arg(long, default_value_t = 8)]
    pub t_chunk_enc: usize,
    /// Latents per decode chunk after the first.
    #[arg(long, default_value_t = 2)]
    pub t_chunk_dec: usize,
    /// Load checkpoints with missing or unused tensors and print the report instead of failing.
    #[arg(long)]
    pub allow_partial: bool,
    /// Compute device.
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    pub device: DeviceKind,
}

pub fn run(args: ForwardArgs) -> anyhow::Result<()> {
    with_backend!(args.device, |B| run_on::<B>(&args, &Default::default()))
}

fn run_on<B: Backend>(args: &ForwardArgs, device: &B::Device) -> anyhow::Result<()> {
    let files = ForwardFiles {
        config: &args.config,
        weights: &args.weights,
        inputs: &args.inputs,
        out: &args.out,
        options: LoadOptions { allow_partial: args.allow_partial },
    };
    match args.model {
        ForwardModel::WfvaeEncode => run_wfvae::<B>(args, &files, WfvaeDirection::Encode, device),
        ForwardModel::WfvaeDecode => run_wfvae::<B>(args, &files, WfvaeDirection::Decode, device),
        ForwardModel::Dit => super::forward_dit::run_on::<B>(&files, device),
        ForwardModel::Mt5 => super::forward_mt5::run_on::<B>(&files, device),
    }
}

/// The files of one forward pass and how strictly its weights load.
pub struct ForwardFiles<'a> {
    /// Upstream `config.json` of the model.
    pub config: &'a Path,
    /// Official weights.
    pub weights: &'a Path,
    /// Safetensors file of named inputs.
    pub inputs: &'a Path,
    /// Safetensors file the named outputs are written to.
    pub out: &'a Path,
    pub options: LoadOptions,
}

impl ForwardFiles<'_> {
    /// Loads the weights into a model through `load` (its `load_official`); with
    /// `allow_partial`, prints the load report.
    pub fn load_weights(
        &self,
        load: impl FnOnce(&Checkpoint, LoadOptions) -> osp_trainer::Result<LoadReport>,
    ) -> anyhow::Result<()> {
        let checkpoint = Checkpoint::open(self.weights)?;
        let report = load(&checkpoint, self.options).with_context(|| format!("loading {}", self.weights.display()))?;
        if self.options.allow_partial {
            eprint!("{report}");
        }
        Ok(())
    }

    /// Writes the named `outputs` to the output file.
    pub fn write_outputs(&self, outputs: &[(String, TensorData)]) -> anyhow::Result<()> {
        write_tensors(self.out, outputs).with_context(|| format!("writing {}", self.out.display()))?;
        let names: Vec<&str> = outputs.iter().map(|(name, _)| name.as_str()).collect();
        tracing::info!(out = %self.out.display(), "wrote {}", names.join(", "));
        Ok(())
    }
}

/// The two WFVAE forward passes.
#[derive(Debug, Clone, Copy)]
enum WfvaeDirection {
    Encode,
    Decode,
}

fn run_wfvae<B: Backend>(
    args: &ForwardArgs,
    files: &ForwardFiles,
    direction: WfvaeDirection,
    device: &B::Device,
) -> anyhow::Result<()> {
    let config = WFVAEModelConfig::from_json_file(files.config)?;
    let mut model =
        config.init::<B>(device).with_context(|| format!("building the model of {}", files.config.display()))?;
    files.load_weights(|c, o| model.load_official(c, o))?;
    let inputs = read_tensors(files.inputs)?;
    let outputs = match direction {
        WfvaeDirection::Encode => {
            let x = take_tensor::<B, 5>(&inputs, "x", device)?;
            let posterior = if args.chunked { model.encode_chunked(x, args.t_chunk_enc)? } else { model.encode(x)? };
            vec![("mean".to_string(), posterior.mean.into_data()), ("logvar".to_string(), posterior.logvar.into_data())]
        }
        WfvaeDirection::Decode => {
            let z = take_tensor::<B, 5>(&inputs, "z", device)?;
            let sample = if args.chunked { model.decode_chunked(z, args.t_chunk_dec)? } else { model.decode(z)? };
            vec![("sample".to_string(), sample.into_data())]
        }
    };
    if outputs.is_empty() {
        bail!("no outputs produced");
    }
    files.write_outputs(&outputs)
}
