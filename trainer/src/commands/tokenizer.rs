//! `osp-train tokenizer`: trains a T5-convention Unigram `tokenizer.json` on the captions of an
//! annotation JSON (every `cap`) or a text file (one caption per line), for a small text encoder
//! whose vocabulary is the captions' (the default bundle's). See
//! `osp_trainer::text::train_caption_tokenizer` for the conventions.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;

use osp_trainer::data::read_annotation;
use osp_trainer::text::{save_tokenizer, train_caption_tokenizer};

#[derive(Debug, Args)]
pub struct TokenizerArgs {
    /// Annotation JSON (its `cap` fields) or a text file with one caption per line.
    #[arg(long)]
    pub captions: PathBuf,
    /// Target vocabulary size, the 3 special tokens included (fewer when the captions hold fewer pieces).
    #[arg(long = "vocab-size", default_value_t = 256)]
    pub vocab_size: usize,
    /// Output tokenizer.json.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: TokenizerArgs) -> anyhow::Result<()> {
    let is_json = args.captions.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let captions: Vec<String> = if is_json {
        read_annotation(&args.captions)?.into_iter().filter_map(|item| item.cap).flat_map(|c| c.all()).collect()
    } else {
        std::fs::read_to_string(&args.captions)
            .with_context(|| format!("reading --captions {}", args.captions.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect()
    };
    if captions.is_empty() {
        bail!("--captions {}: no caption found", args.captions.display());
    }
    let tokenizer = train_caption_tokenizer(&captions, args.vocab_size)?;
    if let Some(parent) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    save_tokenizer(&tokenizer, &args.out)?;
    println!(
        "trained a {}-piece tokenizer on {} captions: {}",
        tokenizer.get_vocab_size(true),
        captions.len(),
        args.out.display()
    );
    Ok(())
}
