//! Bounded mutation fuzzing of the tokenizer files osp reads (issue 14): seeded mutations
//! ([`osp_tests::fuzz::Mutator`]: byte flips, truncation, inserted/deleted ranges, JSON value
//! swaps, type changes and removed keys) of the default bundle's `tokenizer.json` and of the
//! seqio tiny T5 `spiece.model` (`../shared/reference/assets/`). Each mutant is loaded and, when
//! it loads, used to encode (with truncation, which decodes the cut part): no panic, no hang, and
//! every error names the file. A failing seed is printed with its mutation.
//!
//! `cargo test --release --locked -p osp-tests --test tokenizer_fuzz`

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use osp_runtime::tokenizer::Tokenizer;
use osp_tests::fuzz::{run_bounded, Mutator};

/// Longest a single load-and-encode may take before it counts as a hang.
const CASE_LIMIT: Duration = Duration::from_secs(10);
const PROMPTS: [&str; 3] = ["a red circle moving to the right", "", "Ünïcödé  spaces\tand\nnewlines <pad> </s>"];

#[derive(Debug, Default)]
struct Tally {
    loaded: usize,
    load_errors: usize,
    encode_errors: usize,
    caught_panics: usize,
}

/// Loads `path` and encodes [`PROMPTS`]; returns every error's text (empty when all succeeded).
fn exercise(path: PathBuf) -> Result<(bool, Vec<String>)> {
    run_bounded(CASE_LIMIT, move || match Tokenizer::from_file(&path) {
        Err(e) => (false, vec![e.to_string()]),
        Ok(tok) => {
            let mut errors = Vec::new();
            for prompt in PROMPTS {
                for max_len in [3, 64] {
                    if let Err(e) = tok.encode_negative(prompt, max_len) {
                        errors.push(e.to_string());
                    }
                }
            }
            (true, errors)
        }
    })
}

fn fuzz(original: &[u8], file_name: &str, json: bool, seeds: std::ops::Range<u64>) -> Result<Tally> {
    let tmp = tempfile::tempdir()?;
    let mut tally = Tally::default();
    let start = Instant::now();
    for seed in seeds {
        let (what, bytes) = Mutator::new(seed).mutate(original, json);
        let dir = tmp.path().join(format!("seed-{seed}"));
        std::fs::create_dir(&dir)?;
        let path = dir.join(file_name);
        std::fs::write(&path, &bytes)?;
        let (loaded, errors) = match exercise(path.clone()) {
            Ok(r) => r,
            Err(e) => bail!("{file_name} seed {seed} ({what}): {e}"),
        };
        if loaded {
            tally.loaded += 1;
            tally.encode_errors += errors.len();
        } else {
            tally.load_errors += 1;
        }
        for e in &errors {
            ensure!(
                e.contains(&path.display().to_string()),
                "{file_name} seed {seed} ({what}): error does not name the file: {e}"
            );
            tally.caught_panics += usize::from(e.contains("panicked"));
        }
        std::fs::remove_dir_all(&dir)?;
    }
    eprintln!("{file_name}: {tally:?} in {:.2} s", start.elapsed().as_secs_f64());
    Ok(tally)
}

#[test]
fn mutated_tokenizer_json_never_panics_and_names_the_file() -> Result<()> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../assets/default/text_encoder/tokenizer.json");
    let original = std::fs::read(&path)?;
    let tally = fuzz(&original, "tokenizer.json", true, 0..400)?;
    // The mutations must bite: most mutants fail to load, and some load and still encode.
    ensure!(tally.load_errors >= 200, "only {} of 400 mutants failed to load: {tally:?}", tally.load_errors);
    ensure!(tally.loaded >= 10, "only {} of 400 mutants loaded: {tally:?}", tally.loaded);
    Ok(())
}

#[test]
fn mutated_spiece_model_never_panics_and_names_the_file() -> Result<()> {
    let path = osp_tests::shared_reference().join("assets/seqio_t5_tiny_spiece.model");
    let original = std::fs::read(&path)?;
    let tally = fuzz(&original, "spiece.model", false, 0..200)?;
    ensure!(tally.load_errors >= 50, "only {} of 200 mutants failed to load: {tally:?}", tally.load_errors);
    ensure!(tally.loaded >= 10, "only {} of 200 mutants loaded: {tally:?}", tally.loaded);
    Ok(())
}
