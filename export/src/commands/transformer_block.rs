//! `osp-export transformer-block`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use osp_export::models::transformer_block::{example_inputs, export_transformer_block, TransformerBlockWeights};
use osp_graphs::config::TransformerBlockConfig;

use super::{ModelArgs, WeightSource};

#[derive(Debug, Args)]
pub struct TransformerBlockArgs {
    /// Block config JSON (`hidden_size`, `num_attention_heads`, `attention_head_dim`, `ff_inner_dim`, `norm_eps`, `attention_mask`: false for a block without a mask input).
    #[arg(long)]
    config: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    /// Also write the weights used (e.g. the random ones) to this safetensors file.
    #[arg(long)]
    save_weights: Option<PathBuf>,
    /// Also write example inputs (`hidden_states` ~ N(0, 1), all-ones `attention_mask` when the block takes one) to this safetensors file.
    #[arg(long)]
    example_inputs: Option<PathBuf>,
    /// Batch size of the example inputs.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Token count of the example inputs.
    #[arg(long, default_value_t = 16)]
    tokens: usize,
    /// Seed of the example inputs.
    #[arg(long, default_value_t = 0)]
    input_seed: u64,
}

pub fn run(args: TransformerBlockArgs) -> anyhow::Result<PathBuf> {
    let text = std::fs::read_to_string(&args.config).with_context(|| format!("reading {}", args.config.display()))?;
    let cfg: TransformerBlockConfig =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", args.config.display()))?;
    let weights = match args.model.source()? {
        WeightSource::File(path) => {
            TransformerBlockWeights::load(&cfg, path).with_context(|| format!("loading {}", path.display()))?
        }
        WeightSource::Seed(seed) => TransformerBlockWeights::random(&cfg, seed)?,
    };
    if let Some(path) = &args.save_weights {
        weights.save(path).with_context(|| format!("writing {}", path.display()))?;
    }
    let out = &args.model.out;
    export_transformer_block(&cfg, weights.weights(), &args.model.export_options(), out)
        .with_context(|| format!("exporting to {}", out.display()))?;
    if let Some(path) = &args.example_inputs {
        example_inputs(&cfg, args.batch, args.tokens, args.input_seed)?
            .save_safetensors(path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(args.model.out)
}
