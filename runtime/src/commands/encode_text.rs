//! `osp encode-text`: encode prompts with a bundle's text encoder into a safetensors file
//! (`prompt_embeds` f32 `[n, l, d]`, `prompt_attention_mask` i64 `[n, l]`), through the embedding cache.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use osp_runtime::text::cache::{default_cache_dir, CACHE_DIR_ENV};
use osp_runtime::text::{EmbeddingCache, TextEncoder, DEFAULT_BATCH_SIZE};
use osp_runtime::tokenizer::DEFAULT_MAX_SEQUENCE_LENGTH;
use osp_runtime::{write_safetensors, Bundle};

use super::BackendOpts;

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["prompt", "prompts_file"])))]
pub struct EncodeTextArgs {
    /// Text-encoder bundle (graph `text_encoder`).
    #[arg(long)]
    pub bundle: PathBuf,
    /// A prompt to encode (repeat for several).
    #[arg(long)]
    pub prompt: Vec<String>,
    /// A text file with one prompt per line (blank lines are skipped).
    #[arg(long)]
    pub prompts_file: Option<PathBuf>,
    /// Output safetensors file.
    #[arg(long)]
    pub out: PathBuf,
    /// Pad or truncate every prompt to this many tokens (`</s>` included).
    #[arg(long, default_value_t = DEFAULT_MAX_SEQUENCE_LENGTH)]
    pub max_sequence_length: usize,
    /// Tokenizer file overriding the one the bundle names.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Embedding cache directory (default: ~/.cache/osp/text).
    #[arg(long, env = CACHE_DIR_ENV)]
    pub cache_dir: Option<PathBuf>,
    /// Do not read or write the embedding cache.
    #[arg(long)]
    pub no_cache: bool,
    /// Prompts per encoder run.
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
}

pub fn run(args: &EncodeTextArgs, backend: &BackendOpts) -> anyhow::Result<()> {
    let mut prompts = args.prompt.clone();
    if let Some(file) = &args.prompts_file {
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        prompts.extend(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string));
        anyhow::ensure!(!prompts.is_empty(), "{} holds no prompt", file.display());
    }
    let opts = backend.session_options()?;
    let bundle = Bundle::open(&args.bundle).with_context(|| format!("opening bundle {}", args.bundle.display()))?;
    let mut encoder = TextEncoder::open(&bundle, &opts, args.tokenizer.as_deref())?.with_batch_size(args.batch_size);
    if !args.no_cache {
        let dir = args.cache_dir.clone().unwrap_or_else(default_cache_dir);
        encoder = encoder.with_cache(EmbeddingCache::new(&dir).with_context(|| format!("cache {}", dir.display()))?);
    }
    let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let out = encoder.encode(&refs, args.max_sequence_length)?;
    write_safetensors(&args.out, [("prompt_embeds", &out.embeddings), ("prompt_attention_mask", &out.mask)])?;
    println!(
        "encoded {} prompt(s) to {:?} ({} encoder run(s), {} cache hit(s)); wrote {}",
        prompts.len(),
        out.embeddings.shape(),
        encoder.encoder_runs(),
        encoder.cache_hits(),
        args.out.display()
    );
    Ok(())
}
