//! `osp-train embed`: text-encoder states of every caption of an annotation JSON, computed with
//! the trainer's mT5, in the cache layout of the runtime's `osp extract-text-embeds`
//! (`<out>/<path without extension>-<caption index>.npz` holding `text_emb` f32 `[l, d]` and
//! `mask` u8 `[l]`), plus `<out>/null.npz`, the empty caption's states for `osp-train dit --cfg`.
//! Captions are cleaned as upstream training cleans them (`--clean_caption`, on by default).
//! Existing files are kept (the command resumes); files are written atomically.

use std::path::PathBuf;

use anyhow::{bail, Context};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use clap::Args;

use osp_runtime::text::clean::clean_caption;
use osp_runtime::text::npz::{write_npz, NpyArray};
use osp_trainer::checkpoint::{Checkpoint, LoadOptions};
use osp_trainer::data::aesthetic;
use osp_trainer::data::annotation::{is_image, read_annotation, text_embed_file};
use osp_trainer::models::mt5::MT5Config;
use osp_trainer::text::CaptionTokenizer;

use super::DeviceKind;

#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// mT5 `config.json`.
    #[arg(long)]
    pub config: PathBuf,
    /// mT5 weights (official names); without, the encoder is frozen at the init seeded by --seed.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// `tokenizer.json` of the text encoder.
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Annotation JSON whose captions are encoded.
    #[arg(long)]
    pub annotation: PathBuf,
    /// Cache folder (the TEXT_EMBED_ROOT of 3-item --data lines).
    #[arg(long)]
    pub out: PathBuf,
    /// Also encode upstream's aesthetic-score notices: every caption of an item whose `aesthetic`
    /// (or `aes`) is <= 4.25 or >= 5.75 gets its 20 variants (`<stem>-<i>-aes<k>.npz`), one of
    /// which the DiT trainer draws per load, as upstream draws the text.
    #[arg(long = "aesthetic_notices")]
    pub aesthetic_notices: bool,
    /// Clean each caption as upstream's training does (`clean_caption`) before encoding.
    #[arg(long = "clean_caption", default_value_t = true, action = clap::ArgAction::Set)]
    pub clean_caption: bool,
    /// Tokens per caption (padded / truncated).
    #[arg(long = "model_max_length", default_value_t = 512)]
    pub model_max_length: usize,
    /// Captions per encoder run.
    #[arg(long = "batch_size", default_value_t = 8)]
    pub batch_size: usize,
    /// Seed of the random init when no --weights are given.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Compute device.
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    pub device: DeviceKind,
}

pub fn run(args: EmbedArgs) -> anyhow::Result<()> {
    match args.device {
        DeviceKind::Cpu => run_on::<burn::backend::NdArray<f32>>(&args, &Default::default()),
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => run_on::<burn::backend::Cuda<f32>>(&args, &Default::default()),
        #[cfg(not(feature = "cuda"))]
        DeviceKind::Cuda => bail!("--device cuda needs osp-train built with `--features cuda`"),
    }
}

fn run_on<B: Backend>(args: &EmbedArgs, device: &B::Device) -> anyhow::Result<()> {
    B::seed(device, args.seed);
    let config = MT5Config::from_json_file(&args.config)?;
    let mut model = config.init::<B>(device)?;
    match &args.weights {
        Some(w) => {
            model
                .load_official(&Checkpoint::open(w)?, LoadOptions::default())
                .with_context(|| format!("loading {}", w.display()))?;
        }
        None => tracing::warn!(seed = args.seed, "no --weights: the text encoder is a seeded random init"),
    }
    let tokenizer = CaptionTokenizer::from_file(&args.tokenizer)?;
    if tokenizer.id_limit() > config.vocab_size {
        bail!(
            "the tokenizer emits ids up to {} but the encoder's embedding table has {} rows",
            tokenizer.id_limit(),
            config.vocab_size
        );
    }
    let items = read_annotation(&args.annotation)?;
    let clean = |c: String| if args.clean_caption { clean_caption(&c, true) } else { c };
    let mut jobs: Vec<(PathBuf, String)> = vec![(args.out.join("null.npz"), String::new())];
    for item in &items {
        for (i, caption) in item.cap.as_ref().map(|c| c.all()).unwrap_or_default().into_iter().enumerate() {
            if item.path.starts_with('/') || item.path.split('/').any(|c| c == "..") {
                bail!("annotation path `{}` must be relative and stay inside --out", item.path);
            }
            if args.aesthetic_notices && aesthetic::has_notices(item.aesthetic) {
                for k in 0..aesthetic::VARIANTS {
                    let noticed = aesthetic::with_notice(&caption, item.aesthetic, is_image(&item.path), k)
                        .expect("a scored item has every variant");
                    jobs.push((args.out.join(aesthetic::variant_file(&item.path, i, k)), clean(noticed)));
                }
            }
            jobs.push((args.out.join(text_embed_file(&item.path, i)), clean(caption)));
        }
    }
    let total = jobs.len();
    jobs.retain(|(p, _)| !p.is_file());
    tracing::info!(total, skipped = total - jobs.len(), out = %args.out.display(), "encoding captions");
    let l = args.model_max_length;
    let bar = super::progress::Count::new(jobs.len(), "captions");
    for chunk in jobs.chunks(args.batch_size.max(1)) {
        let encoded = chunk.iter().map(|(_, c)| tokenizer.encode(c, l)).collect::<osp_trainer::Result<Vec<_>>>()?;
        let b = encoded.len();
        let ids: Vec<i64> = encoded.iter().flat_map(|e| e.input_ids.iter().copied()).collect();
        let mask: Vec<i64> = encoded.iter().flat_map(|e| e.attention_mask.iter().copied()).collect();
        let out = model.forward(
            Tensor::<B, 2, Int>::from_data(TensorData::new(ids, [b, l]), device),
            Some(Tensor::<B, 2, Int>::from_data(TensorData::new(mask.clone(), [b, l]), device)),
        )?;
        let d = out.dims()[2];
        let values = out.into_data().convert::<f32>().to_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        for (j, (file, _)) in chunk.iter().enumerate() {
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
            }
            let emb = NpyArray::f32(vec![l, d], &values[j * l * d..(j + 1) * l * d]);
            let m = NpyArray::u8(vec![l], mask[j * l..(j + 1) * l].iter().map(|&v| v as u8).collect());
            write_npz(file, &[("mask", &m), ("text_emb", &emb)])?;
        }
        bar.inc(chunk.len());
    }
    bar.finish();
    println!("{} caption embeddings in {} ({} written)", total, args.out.display(), jobs.len());
    Ok(())
}
