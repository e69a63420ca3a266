//! `osp extract-text-embeds`: one `.npz` (`text_emb`, `mask`) per caption of an annotation JSON,
//! as upstream `sample_text_embed.py` writes them for training; resumable (existing files are skipped).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use osp_runtime::text::extract::{extract_text_embeds, read_annotations, ExtractProgress, NoProgress};
use osp_runtime::text::{TextEncoder, DEFAULT_BATCH_SIZE};
use osp_runtime::tokenizer::DEFAULT_MAX_SEQUENCE_LENGTH;
use osp_runtime::Bundle;

use super::BackendOpts;

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressArg {
    /// A progress bar on stderr (needs the `progress` feature; JSON lines otherwise).
    Bar,
    /// One JSON object per batch on stderr (`{"done": n, "total": t}`).
    Jsonl,
    /// Nothing.
    Off,
}

#[derive(Debug, Args)]
pub struct ExtractTextEmbedsArgs {
    /// Text-encoder bundle (graph `text_encoder`).
    #[arg(long)]
    pub bundle: PathBuf,
    /// Annotation JSON: a list of {"path", "cap" (string or list), ...} items.
    #[arg(long)]
    pub data: PathBuf,
    /// Output folder; caption i of `path` goes to `<path without extension>-<i>.npz` inside it.
    #[arg(long)]
    pub out_dir: PathBuf,
    /// Pad or truncate every caption to this many tokens (`</s>` included).
    #[arg(long, default_value_t = DEFAULT_MAX_SEQUENCE_LENGTH)]
    pub max_sequence_length: usize,
    /// Captions per encoder run.
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
    /// Clean each caption as upstream's training does (`clean_caption`: URLs, HTML, handles, ...)
    /// before encoding; `false` encodes captions as given.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub clean_caption: bool,
    /// Tokenizer file overriding the one the bundle names.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Progress display.
    #[arg(long, value_enum, default_value_t = ProgressArg::Bar)]
    pub progress: ProgressArg,
}

struct JsonLines {
    done: usize,
    total: usize,
}

impl ExtractProgress for JsonLines {
    fn start(&mut self, total: usize, skipped: usize) {
        self.total = total;
        self.done = skipped;
        eprintln!("{}", serde_json::json!({"done": self.done, "total": total, "skipped": skipped}));
    }
    fn advance(&mut self, n: usize) {
        self.done += n;
        eprintln!("{}", serde_json::json!({"done": self.done, "total": self.total}));
        let _ = std::io::stderr().flush();
    }
    fn finish(&mut self) {}
}

#[cfg(feature = "progress")]
struct Bar(Option<indicatif::ProgressBar>);

#[cfg(feature = "progress")]
impl ExtractProgress for Bar {
    fn start(&mut self, total: usize, skipped: usize) {
        let bar = indicatif::ProgressBar::new(total as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} captions [{elapsed} < {eta}]")
        {
            bar.set_style(style);
        }
        bar.set_position(skipped as u64);
        self.0 = Some(bar);
    }
    fn advance(&mut self, n: usize) {
        if let Some(bar) = &self.0 {
            bar.inc(n as u64);
        }
    }
    fn finish(&mut self) {
        if let Some(bar) = self.0.take() {
            bar.finish();
        }
    }
}

fn progress(arg: ProgressArg) -> Box<dyn ExtractProgress> {
    match arg {
        #[cfg(feature = "progress")]
        ProgressArg::Bar => Box::new(Bar(None)),
        #[cfg(not(feature = "progress"))]
        ProgressArg::Bar => Box::new(JsonLines { done: 0, total: 0 }),
        ProgressArg::Jsonl => Box::new(JsonLines { done: 0, total: 0 }),
        ProgressArg::Off => Box::new(NoProgress),
    }
}

pub fn run(args: &ExtractTextEmbedsArgs, backend: &BackendOpts) -> anyhow::Result<()> {
    let annotations = read_annotations(&args.data)?;
    let opts = backend.session_options()?;
    let bundle = Bundle::open(&args.bundle).with_context(|| format!("opening bundle {}", args.bundle.display()))?;
    let mut encoder = TextEncoder::open(&bundle, &opts, args.tokenizer.as_deref())?;
    std::fs::create_dir_all(&args.out_dir).with_context(|| format!("creating {}", args.out_dir.display()))?;
    let mut bar = progress(args.progress);
    let report = extract_text_embeds(
        &mut encoder,
        &annotations,
        &args.out_dir,
        args.max_sequence_length,
        args.batch_size,
        args.clean_caption,
        bar.as_mut(),
    )?;
    println!(
        "{} caption(s): wrote {}, skipped {} existing; embeddings in {}",
        report.total,
        report.written,
        report.skipped,
        args.out_dir.display()
    );
    Ok(())
}
