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
        if std::env::var_os("OSP_FUZZ_VERBOSE").is_some() {
            eprintln!("{file_name} seed {seed} ({what}): loaded {loaded}, errors {errors:?}");
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

/// `bytes` (a SentencePiece `ModelProto`) without `normalizer_spec.precompiled_charsmap`, which
/// is most of the seqio model's bytes; what is left (pieces, trainer and normalizer specs) is
/// still a valid model, so mutations of it reach the vocabulary instead of the charsmap.
fn without_charsmap(bytes: &[u8]) -> Result<Vec<u8>> {
    use prost::encoding::{decode_key, decode_varint, encode_key, encode_varint, WireType};
    /// `(field number, wire type, the field's bytes after its key)`.
    fn fields(mut b: &[u8]) -> Result<Vec<(u32, WireType, Vec<u8>)>> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let (tag, wire) = decode_key(&mut b)?;
            let start = b;
            match wire {
                WireType::Varint => {
                    decode_varint(&mut b)?;
                }
                WireType::SixtyFourBit => b = &b[8..],
                WireType::ThirtyTwoBit => b = &b[4..],
                WireType::LengthDelimited => {
                    let len = decode_varint(&mut b)? as usize;
                    b = &b[len..];
                }
                other => bail!("unexpected wire type {other:?}"),
            }
            out.push((tag, wire, start[..start.len() - b.len()].to_vec()));
        }
        Ok(out)
    }
    let mut out = Vec::new();
    for (tag, wire, value) in fields(bytes)? {
        encode_key(tag, wire, &mut out);
        if tag != 3 {
            out.extend_from_slice(&value);
            continue;
        }
        // normalizer_spec (field 3): drop its field 2, precompiled_charsmap.
        let mut v = value.as_slice();
        let len = decode_varint(&mut v)? as usize;
        let mut inner = Vec::new();
        for (t, w, field) in fields(&v[..len])? {
            if t != 2 {
                encode_key(t, w, &mut inner);
                inner.extend_from_slice(&field);
            }
        }
        encode_varint(inner.len() as u64, &mut out);
        out.extend_from_slice(&inner);
    }
    Ok(out)
}

#[test]
fn mutated_spiece_model_never_panics_and_names_the_file() -> Result<()> {
    let path = osp_tests::shared_reference().join("assets/seqio_t5_tiny_spiece.model");
    let original = std::fs::read(&path)?;
    let tally = fuzz(&original, "spiece.model", false, 0..100)?;
    ensure!(tally.load_errors >= 50, "only {} of 100 mutants failed to load: {tally:?}", tally.load_errors);
    // Protobuf is fragile: most mutants fail to decode; a few (flips inside scores or piece
    // strings) load and are used.
    ensure!(tally.loaded >= 3, "only {} of 100 mutants loaded: {tally:?}", tally.loaded);

    let small = without_charsmap(&original)?;
    ensure!(
        small.len() < original.len() / 2,
        "the charsmap is most of the model ({} of {} bytes left)",
        small.len(),
        original.len()
    );
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("spiece.model"), &small)?;
    Tokenizer::from_file(dir.path().join("spiece.model"))?.encode("a red circle", 16)?;
    let tally = fuzz(&small, "spiece.model", false, 100..300)?;
    ensure!(tally.load_errors >= 50, "only {} of 200 mutants failed to load: {tally:?}", tally.load_errors);
    ensure!(tally.loaded >= 3, "only {} of 200 mutants loaded: {tally:?}", tally.loaded);
    Ok(())
}
