//! The prompt refiner of Open-Sora-Plan v1.3 (`OpenSoraCaptionRefiner`,
//! `opensora/sample/caption_refiner.py`, commit 9fa322fb): a Llama-3.1-8B-Instruct fine-tune that
//! rewrites each prompt before generation, run from a bundle made by `osp-export llama`.
//! <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/sample/caption_refiner.py>
//!
//! Per prompt, as upstream's `get_refiner_output`:
//! 1. user message = [`template::TEMPLATE`] with the prompt; messages = system
//!    [`template::SYSTEM`], user;
//! 2. the bundle's `chat_template` (`tokenizer_config.json`) rendered with
//!    `add_generation_prompt=True` ([`chat`]);
//! 3. that text tokenized again with special tokens, so the ids start with BOS BOS;
//! 4. `generate(max_new_tokens=512)` ([`generate`]): greedy or sampled as `generation_config.json`
//!    says ([`config`], [`warpers`]), stopping after the first eos id (kept);
//! 5. the new ids decoded with `skip_special_tokens=True` and, when the tokenizer config says so,
//!    `clean_up_tokenization_spaces`.
//!
//! `osp refine --refiner B --text_prompt P` prints `{"prompt", "refined"}` lines;
//! `osp generate --caption_refiner B` refines before the pipeline runs.

pub mod chat;
pub mod config;
pub mod generate;
pub mod model;
pub mod template;
pub mod warpers;

use std::path::{Path, PathBuf};

use osp_graphs::llama::{self, LlamaGraphs};

use self::chat::{ChatTemplate, Message};
use self::config::GenerationConfig;
use self::generate::{CausalLm, Decoding, GenerateError};
use self::model::GraphLm;
use crate::pipeline::noise::Xoshiro256;
use crate::session::{Bundle, SessionOptions};
use crate::tokenizer::{clean_up_tokenization, Tokenizer, TokenizerError};

/// upstream's `generate(..., max_new_tokens=512)`.
pub const DEFAULT_MAX_NEW_TOKENS: usize = 512;

/// Every failure of the refiner.
#[derive(Debug, thiserror::Error)]
pub enum RefinerError {
    /// A Hugging Face model folder was given where a bundle is expected.
    #[error(
        "{} is a Hugging Face model folder, not an osp bundle: export it first with \
         `osp-export llama --model-dir {} --out refiner.bundle` (see docs/refiner.md) and pass the bundle",
        dir.display(),
        dir.display()
    )]
    HuggingFaceFolder { dir: PathBuf },
    /// A file of the bundle is missing or unreadable or does not parse.
    #[error("refiner bundle file {}: {why}", path.display())]
    File { path: PathBuf, why: String },
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Runtime(#[from] crate::Error),
    #[error(transparent)]
    Graphs(#[from] osp_graphs::Error),
    #[error("refining prompt {index}: {source}")]
    Generate {
        index: usize,
        #[source]
        source: GenerateError<crate::Error>,
    },
}

pub type Result<T> = std::result::Result<T, RefinerError>;

/// Refuses `dir` when it is a Hugging Face model folder (a `config.json` and no `manifest.json`).
pub fn check_not_hf_folder(dir: &Path) -> Result<()> {
    if !dir.join(osp_graphs::MANIFEST_FILE).exists() && dir.join(llama::CONFIG_FILE).is_file() {
        return Err(RefinerError::HuggingFaceFolder { dir: dir.to_path_buf() });
    }
    Ok(())
}

/// The text side of a refiner: tokenizer, chat template and the decode clean-up flag, read from
/// a folder with `tokenizer.json` and `tokenizer_config.json` (a bundle or a Hugging Face folder).
#[derive(Debug)]
pub struct RefinerText {
    tokenizer: Tokenizer,
    chat: ChatTemplate,
    clean_up_tokenization_spaces: bool,
}

impl RefinerText {
    pub fn load(dir: &Path) -> Result<Self> {
        let tokenizer = Tokenizer::from_file(dir.join(llama::TOKENIZER_FILE))?;
        let path = dir.join(llama::TOKENIZER_CONFIG_FILE);
        let file = |why: String| RefinerError::File { path: path.clone(), why };
        let text = std::fs::read_to_string(&path).map_err(|e| file(e.to_string()))?;
        let config: serde_json::Value = serde_json::from_str(&text).map_err(|e| file(e.to_string()))?;
        let source = match config.get("chat_template") {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(_) => return Err(file("`chat_template` is not a single template string".into())),
            None => return Err(file("no `chat_template`: the refiner needs the model's chat template".into())),
        };
        let chat = ChatTemplate::new(&source, &config).map_err(|e| file(format!("chat_template: {e:#}")))?;
        // transformers 4.44's default when the key is absent.
        let clean_up_tokenization_spaces =
            config.get("clean_up_tokenization_spaces").and_then(|v| v.as_bool()).unwrap_or(true);
        Ok(RefinerText { tokenizer, chat, clean_up_tokenization_spaces })
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Upstream's messages for `prompt`.
    pub fn messages(prompt: &str) -> [Message; 2] {
        [Message::new("system", template::SYSTEM), Message::new("user", &template::user_message(prompt))]
    }

    /// `apply_chat_template(messages, tokenize=False, add_generation_prompt=True)`.
    pub fn render(&self, prompt: &str) -> Result<String> {
        self.chat.render(&Self::messages(prompt), true).map_err(|e| RefinerError::File {
            path: PathBuf::from(llama::TOKENIZER_CONFIG_FILE),
            why: format!("rendering the chat template: {e:#}"),
        })
    }

    /// `tokenizer([text]).input_ids[0]`: with special tokens (the BOS the chat template wrote, and
    /// the tokenizer's own).
    pub fn input_ids(&self, rendered: &str) -> Result<Vec<u32>> {
        Ok(self.tokenizer.encode_ids(rendered, true)?)
    }

    /// `batch_decode([new_ids], skip_special_tokens=True)[0]`.
    pub fn decode(&self, new_ids: &[u32]) -> Result<String> {
        let text = self.tokenizer.decode(new_ids, true)?;
        Ok(if self.clean_up_tokenization_spaces { clean_up_tokenization(&text) } else { text })
    }
}

/// How [`Refiner::refine`] chooses tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefineOptions {
    /// Argmax whatever `generation_config.json` says.
    pub greedy: bool,
    /// Seed of the sampling: prompt `i` draws from its own stream of this seed
    /// (`Xoshiro256::derive(seed, i)`); reproducible, not torch's random stream.
    pub seed: u64,
    pub max_new_tokens: usize,
}

impl Default for RefineOptions {
    fn default() -> Self {
        RefineOptions { greedy: false, seed: 42, max_new_tokens: DEFAULT_MAX_NEW_TOKENS }
    }
}

/// One refined prompt.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Refined {
    pub prompt: String,
    pub refined: String,
}

/// A refiner: its text side and a causal LM.
pub struct Refiner<M> {
    text: RefinerText,
    model: M,
    generation: GenerationConfig,
    eos: Vec<u32>,
}

impl Refiner<GraphLm> {
    /// Opens the refiner bundle `dir` (from `osp-export llama`) and loads its graphs.
    pub fn open(dir: &Path, opts: &SessionOptions) -> Result<Self> {
        check_not_hf_folder(dir)?;
        let bundle = Bundle::open(dir)?;
        let graphs = LlamaGraphs::read(bundle.manifest())?;
        let generation = GenerationConfig::from_file_config(&graphs.config.generation_config)
            .map_err(|why| RefinerError::File { path: dir.join(llama::GENERATION_CONFIG_FILE), why })?;
        let text = RefinerText::load(dir)?;
        let model = GraphLm::load(&bundle, opts)?;
        tracing::info!(bundle = %dir.display(), ?generation, "refiner loaded");
        Ok(Refiner::new(text, model, generation, graphs.config.eos_token_ids()))
    }
}

impl<M: CausalLm<Error = crate::Error>> Refiner<M> {
    pub fn new(text: RefinerText, model: M, generation: GenerationConfig, eos: Vec<u32>) -> Self {
        Refiner { text, model, generation, eos }
    }

    pub fn text(&self) -> &RefinerText {
        &self.text
    }

    pub fn generation_config(&self) -> &GenerationConfig {
        &self.generation
    }

    /// The model's new token ids for `prompt` (prompt `index` of the run, for the sampling stream).
    pub fn generate_ids(&mut self, index: usize, prompt: &str, opts: &RefineOptions) -> Result<generate::Generation> {
        let rendered = self.text.render(prompt)?;
        let ids = self.text.input_ids(&rendered)?;
        let mut rng = Xoshiro256::derive(opts.seed, index as u64);
        let decoding = if opts.greedy || !self.generation.do_sample {
            Decoding::Greedy
        } else {
            Decoding::Sample { config: &self.generation, rng: &mut rng }
        };
        let _span = tracing::info_span!("refine", index, prompt_tokens = ids.len()).entered();
        generate::generate(&mut self.model, &ids, opts.max_new_tokens, &self.eos, decoding)
            .map_err(|source| RefinerError::Generate { index, source })
    }

    /// Upstream's `get_refiner_output(prompt)`.
    pub fn refine(&mut self, index: usize, prompt: &str, opts: &RefineOptions) -> Result<Refined> {
        let start = std::time::Instant::now();
        let generation = self.generate_ids(index, prompt, opts)?;
        let seconds = start.elapsed().as_secs_f64();
        let refined = self.text.decode(&generation.ids)?;
        tracing::info!(
            index,
            new_tokens = generation.ids.len(),
            stopped_at_eos = generation.stopped_at_eos,
            seconds,
            tokens_per_second = generation.ids.len() as f64 / seconds.max(1e-9),
            "refined"
        );
        Ok(Refined { prompt: prompt.to_string(), refined })
    }
}
