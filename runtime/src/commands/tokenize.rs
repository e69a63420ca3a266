//! `osp tokenize`: print a prompt's token ids and attention mask as JSON.

use std::path::PathBuf;

use clap::Args;
use osp_runtime::tokenizer::{tokenize_json, DEFAULT_MAX_SEQUENCE_LENGTH};

#[derive(Debug, Args)]
pub struct TokenizeArgs {
    /// `tokenizer.json` or SentencePiece `spiece.model`.
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// The text to tokenize.
    #[arg(long)]
    pub prompt: String,
    /// Pad or truncate to this many tokens (`</s>` included).
    #[arg(long, default_value_t = DEFAULT_MAX_SEQUENCE_LENGTH)]
    pub max_sequence_length: usize,
}

pub fn run(args: &TokenizeArgs) -> anyhow::Result<()> {
    println!("{}", tokenize_json(&args.tokenizer, &args.prompt, args.max_sequence_length)?);
    Ok(())
}
