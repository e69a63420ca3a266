//! Seeded mutation fuzzing of the files users hand to osp (bundle and pipeline manifests,
//! safetensors tensors and checkpoints, annotation JSON), on [`crate::fuzz::Mutator`]'s generator:
//! byte flips, truncation at random offsets, JSON-aware mutations (huge numbers written as text,
//! deep nesting, chains of edits) and safetensors header-length corruption.
//!
//! [`run`] applies a check to each seeded mutant with a panic catcher and a watchdog, and fails
//! with every seed and mutation whose check panicked, hung or returned an error (e.g. an error
//! message that does not name the file). A check returns whether the loader accepted the mutant
//! (the summary counts both outcomes). A case is reproduced from its seed alone.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::fuzz::Mutator;

/// `items[i]` for a uniform `i`.
fn pick<'a, T>(rng: &mut Mutator, items: &'a [T]) -> &'a T {
    &items[rng.below(items.len())]
}

/// A mutated file and what was done to it.
#[derive(Debug, Clone)]
pub struct Mutant {
    pub bytes: Vec<u8>,
    pub what: String,
}

/// A byte-level mutation: [`Mutator::mutate_bytes`], the one byte mutator of the fuzz suites.
pub fn mutate_bytes(original: &[u8], rng: &mut Mutator) -> Mutant {
    let (what, bytes) = rng.mutate_bytes(original);
    Mutant { bytes, what }
}

/// A JSON-aware mutation: [`Mutator::mutate_json`], the one JSON mutator of the fuzz suites.
pub fn mutate_json(original: &Value, rng: &mut Mutator) -> Mutant {
    let (what, bytes) = rng.mutate_json(original);
    Mutant { bytes, what }
}

/// A mutation of a JSON file: mostly one to three JSON-aware mutations, otherwise bytes flipped
/// or cut.
pub fn mutate_json_file(original: &[u8], rng: &mut Mutator) -> Mutant {
    let value: Value = serde_json::from_slice(original).expect("the seed file is valid JSON");
    if rng.below(3) == 0 {
        return mutate_bytes(original, rng);
    }
    let mut m = mutate_json(&value, rng);
    for _ in 0..rng.below(3) {
        // Mutations whose text serde_json cannot read back end the chain.
        let Ok(next) = serde_json::from_slice::<Value>(&m.bytes) else { break };
        let more = mutate_json(&next, rng);
        m = Mutant { bytes: more.bytes, what: format!("{}; {}", m.what, more.what) };
    }
    m
}

/// A mutation of a safetensors file: its 8-byte header length set to a boundary or random value,
/// a JSON-aware mutation of the header (written back with the right or the old length), or bytes
/// flipped or cut anywhere.
pub fn mutate_safetensors(original: &[u8], rng: &mut Mutator) -> Mutant {
    let n = u64::from_le_bytes(original[..8].try_into().expect("8 bytes")) as usize;
    let header: Value = serde_json::from_slice(&original[8..8 + n]).expect("the seed file has a JSON header");
    let data = &original[8 + n..];
    match rng.below(4) {
        0 => {
            let len = original.len() as u64;
            let choices =
                [0, 1, 2, n as u64 - 1, n as u64 + 1, len - 8, len, len + 1, u64::MAX, 1 << 40, rng.next_u64()];
            let new = *pick(rng, &choices);
            let mut bytes = original.to_vec();
            bytes[..8].copy_from_slice(&new.to_le_bytes());
            Mutant { bytes, what: format!("header length {n} -> {new}") }
        }
        1 => {
            let m = mutate_json(&header, rng);
            let keep_length = rng.below(4) == 0;
            let length = if keep_length { n } else { m.bytes.len() };
            let mut bytes = (length as u64).to_le_bytes().to_vec();
            bytes.extend_from_slice(&m.bytes);
            bytes.extend_from_slice(data);
            Mutant { bytes, what: format!("header {}{}", m.what, if keep_length { " (old length)" } else { "" }) }
        }
        _ => mutate_bytes(original, rng),
    }
}

/// One fuzz case that went wrong.
#[derive(Debug, Clone)]
pub struct Failure {
    pub seed: u64,
    pub what: String,
    pub why: String,
}

/// Runs `check` on `mutate(seed)` for every seed in `seeds`, catching panics; a case that runs past
/// `per_case` stops the run as a hang. Panics with every failure (seed, mutation, reason).
pub fn run<M, C>(kind: &str, seeds: std::ops::Range<u64>, per_case: Duration, mutate: M, check: C)
where
    M: Fn(&mut Mutator) -> Mutant + Send + 'static,
    C: Fn(&Mutant) -> Result<bool, String> + Send + 'static,
{
    let current: Arc<Mutex<Option<(u64, String, Instant)>>> = Arc::default();
    let (done, finished) = mpsc::channel();
    let watch = current.clone();
    let started = Instant::now();
    let cases = seeds.end - seeds.start;
    std::thread::spawn(move || {
        let mut failures = Vec::new();
        let mut accepted = 0usize;
        for seed in seeds {
            let m = mutate(&mut Mutator::new(seed));
            *watch.lock().unwrap_or_else(|e| e.into_inner()) = Some((seed, m.what.clone(), Instant::now()));
            if std::env::var_os("OSP_FUZZ_VERBOSE").is_some() {
                eprintln!("fuzz {seed}: {}", m.what);
            }
            let why = match catch_unwind(AssertUnwindSafe(|| check(&m))) {
                Ok(Ok(ok)) => {
                    accepted += usize::from(ok);
                    continue;
                }
                Ok(Err(why)) => why,
                Err(panic) => {
                    let msg = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    format!("panicked: {msg}")
                }
            };
            failures.push(Failure { seed, what: m.what.clone(), why });
        }
        let _ = done.send((failures, accepted));
    });
    let (failures, accepted) = loop {
        match finished.recv_timeout(Duration::from_millis(100)) {
            Ok(f) => break f,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let now = current.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if let Some((seed, what, since)) = now {
                    if since.elapsed() > per_case {
                        panic!("{kind} fuzz: seed {seed} ({what}) hangs: still running after {per_case:?}");
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{kind} fuzz: the fuzz thread died"),
        }
    };
    eprintln!(
        "{kind} fuzz: {cases} cases in {:.2} s: {accepted} accepted, {} rejected with an error naming the file, {} failed",
        started.elapsed().as_secs_f64(),
        cases as usize - accepted - failures.len(),
        failures.len()
    );
    if !failures.is_empty() {
        let list: Vec<String> = failures.iter().map(|f| format!("  seed {}: {}: {}", f.seed, f.what, f.why)).collect();
        panic!("{kind} fuzz: {} of {cases} cases failed:\n{}", failures.len(), list.join("\n"));
    }
}

/// `Ok` when `message` names `file` (its full path or its file name), else the reason.
pub fn names_file(message: &str, file: &std::path::Path) -> Result<(), String> {
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    if message.contains(&*file.to_string_lossy()) || (!name.is_empty() && message.contains(&name)) {
        Ok(())
    } else {
        Err(format!("the error does not name {}: {message}", file.display()))
    }
}
