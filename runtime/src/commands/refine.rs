//! `osp refine`: upstream's caption refiner on prompts, one JSON line per prompt on stdout
//! (`{"prompt": ..., "refined": ...}`), and the refiner flags of `osp generate`
//! (`--caption_refiner`, `--refined_prompts`).
//!
//! `osp refine --refiner refiner.bundle --text_prompt "a dog runs on the beach" --greedy`

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use osp_runtime::refiner::{RefineOptions, Refined, Refiner, DEFAULT_MAX_NEW_TOKENS};

use super::generate::read_prompts;
use super::BackendOpts;

#[derive(Debug, Args)]
pub struct RefineArgs {
    /// The refiner bundle (`osp-export llama` of upstream's caption refiner folder).
    #[arg(long, env = "OSP_REFINER_BUNDLE")]
    pub refiner: PathBuf,
    /// Prompts, or one `.txt` file with a prompt per line (blank lines skipped).
    #[arg(long, alias = "text_prompt", num_args = 1.., required = true)]
    pub text_prompt: Vec<String>,
    /// Take the most likely token at every step, whatever the bundle's generation_config.json says.
    #[arg(long)]
    pub greedy: bool,
    /// Seed of the sampling (one stream per prompt; reproducible here, not torch's random stream).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Most new tokens per prompt (upstream: 512).
    #[arg(long, alias = "max_new_tokens", default_value_t = DEFAULT_MAX_NEW_TOKENS)]
    pub max_new_tokens: usize,
}

pub fn run(args: &RefineArgs, backend: &BackendOpts) -> anyhow::Result<()> {
    let prompts = read_prompts(&args.text_prompt)?;
    let opts = RefineOptions { greedy: args.greedy, seed: args.seed, max_new_tokens: args.max_new_tokens };
    let mut refiner = open(&args.refiner, backend, "--refiner")?;
    let stdout = std::io::stdout();
    for (index, prompt) in prompts.iter().enumerate() {
        let refined = refiner.refine(index, prompt, &opts)?;
        use std::io::Write;
        let mut out = stdout.lock();
        writeln!(out, "{}", serde_json::to_string(&refined)?)?;
        out.flush()?;
    }
    Ok(())
}

fn open(
    dir: &Path,
    backend: &BackendOpts,
    flag: &str,
) -> anyhow::Result<Refiner<osp_runtime::refiner::model::GraphLm>> {
    Refiner::open(dir, &backend.session_options()?).with_context(|| format!("{flag} {}", dir.display()))
}

/// The refiner flags of `osp generate`.
#[derive(Debug, Clone, Args)]
pub struct RefinerOpts {
    /// Refine every prompt with this refiner bundle before generating (upstream `--caption_refiner`;
    /// export the Hugging Face folder with `osp-export llama` first). The refiner is freed before
    /// the pipeline loads.
    #[arg(long, alias = "caption_refiner", conflicts_with = "refined_prompts")]
    pub caption_refiner: Option<PathBuf>,
    /// Use refinements saved by `osp refine` (its JSON lines) instead of running the refiner;
    /// every prompt must have a line.
    #[arg(long, alias = "refined_prompts")]
    pub refined_prompts: Option<PathBuf>,
    /// Refine greedily (default: as the refiner's generation_config.json says, seeded by --seed).
    #[arg(long, alias = "refiner_greedy")]
    pub refiner_greedy: bool,
}

impl RefinerOpts {
    pub fn is_set(&self) -> bool {
        self.caption_refiner.is_some() || self.refined_prompts.is_some()
    }

    /// The prompts to generate from: `prompts` refined (or replayed), or unchanged for upstream's
    /// inpaint/i2v model types. Logs upstream's "Origin prompt -> Refine prompt" lines on stderr.
    pub fn apply(
        &self,
        prompts: &[String],
        seed: u64,
        model_type: Option<&str>,
        backend: &BackendOpts,
    ) -> anyhow::Result<Vec<String>> {
        if !self.is_set() {
            return Ok(prompts.to_vec());
        }
        if matches!(model_type, Some("inpaint" | "i2v")) {
            eprintln!("Caption refiner is not available for inpainting model, use the original prompt...");
            return Ok(prompts.to_vec());
        }
        let refined = match (&self.caption_refiner, &self.refined_prompts) {
            (Some(dir), _) => {
                let opts = RefineOptions { greedy: self.refiner_greedy, seed, max_new_tokens: DEFAULT_MAX_NEW_TOKENS };
                let mut refiner = open(dir, backend, "--caption_refiner")?;
                let mut out = Vec::with_capacity(prompts.len());
                for (index, prompt) in prompts.iter().enumerate() {
                    out.push(refiner.refine(index, prompt, &opts)?.refined);
                }
                drop(refiner);
                tracing::info!("refiner freed");
                out
            }
            (None, Some(file)) => replay(file, prompts)?,
            (None, None) => unreachable!("checked by is_set"),
        };
        Ok(prompts
            .iter()
            .zip(refined)
            .enumerate()
            .map(|(index, (prompt, refined))| {
                eprintln!("\nOrigin prompt: {prompt}\n->\nRefine prompt: {refined}");
                if refined.trim().is_empty() {
                    tracing::warn!(index, "the refined prompt is empty; generating from the original prompt");
                    prompt.clone()
                } else {
                    refined
                }
            })
            .collect())
    }
}

/// The refinement of each of `prompts` from `file` (`osp refine`'s JSON lines).
fn replay(file: &Path, prompts: &[String]) -> anyhow::Result<Vec<String>> {
    let shown = file.display();
    let text = std::fs::read_to_string(file).with_context(|| format!("reading --refined_prompts {shown}"))?;
    let mut saved: BTreeMap<String, String> = BTreeMap::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let r: Refined = serde_json::from_str(line).with_context(|| {
            format!("--refined_prompts {shown} line {}: expected {{\"prompt\": ..., \"refined\": ...}}", n + 1)
        })?;
        if let Some(earlier) = saved.get(&r.prompt) {
            anyhow::ensure!(
                *earlier == r.refined,
                "--refined_prompts {shown} line {}: prompt {:?} has two different refinements",
                n + 1,
                r.prompt
            );
        }
        saved.insert(r.prompt, r.refined);
    }
    prompts
        .iter()
        .map(|p| {
            saved.get(p).cloned().with_context(|| {
                format!("--refined_prompts {shown} has no refinement of prompt {p:?} (run `osp refine` on it)")
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::commands::{Cli, Command};

    #[test]
    fn flags_parse_in_both_spellings_and_conflict() {
        let cli = Cli::try_parse_from([
            "osp",
            "refine",
            "--refiner",
            "r",
            "--text_prompt",
            "a",
            "b",
            "--greedy",
            "--max_new_tokens",
            "7",
        ])
        .unwrap();
        let Command::Refine(r) = cli.command else { panic!("not refine") };
        assert_eq!((r.text_prompt.len(), r.greedy, r.max_new_tokens, r.seed), (2, true, 7, 42));
        assert!(Cli::try_parse_from([
            "osp",
            "refine",
            "--refiner",
            "r",
            "--text-prompt",
            "a",
            "--max-new-tokens",
            "3"
        ])
        .is_ok());

        let gen = |extra: &[&str]| {
            let mut argv = vec!["osp", "generate", "--bundle", "b", "--text_prompt", "a"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv)
        };
        let Command::Generate(g) = gen(&["--caption_refiner", "r"]).unwrap().command else { panic!() };
        assert_eq!(g.refiner.caption_refiner.as_deref(), Some(Path::new("r")));
        assert!(gen(&["--caption-refiner", "r", "--refiner-greedy"]).is_ok());
        assert!(gen(&["--refined-prompts", "f.jsonl"]).is_ok());
        let err = gen(&["--caption_refiner", "r", "--refined_prompts", "f"]).unwrap_err().to_string();
        assert!(err.contains("cannot be used with"), "{err}");
    }

    #[test]
    fn replay_needs_every_prompt_and_one_refinement_each() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("r.jsonl");
        let line = |p: &str, r: &str| serde_json::to_string(&Refined { prompt: p.into(), refined: r.into() }).unwrap();
        std::fs::write(&file, format!("{}\n\n{}\n{}\n", line("a", "A!"), line("b \"q\"", "B!"), line("a", "A!")))
            .unwrap();
        assert_eq!(replay(&file, &["b \"q\"".into(), "a".into()]).unwrap(), ["B!", "A!"]);
        let err = replay(&file, &["c".into()]).unwrap_err().to_string();
        assert!(err.contains("no refinement of prompt \"c\""), "{err}");
        std::fs::write(&file, format!("{}\n{}\n", line("a", "A!"), line("a", "other"))).unwrap();
        let err = replay(&file, &["a".into()]).unwrap_err().to_string();
        assert!(err.contains("two different refinements"), "{err}");
        std::fs::write(&file, "not json\n").unwrap();
        let err = format!("{:#}", replay(&file, &["a".into()]).unwrap_err());
        assert!(err.contains("line 1"), "{err}");
    }
}
