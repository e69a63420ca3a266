//! Seeded mutation fuzzing of user files: byte flips, truncation, inserted and deleted ranges,
//! and for JSON, value swaps, type changes and removed keys at random places in the tree.
//! Every mutation is a pure function of `(seed, input)`, so a failing case is reproduced by its
//! seed alone.
//!
//! ```no_run
//! use osp_tests::fuzz::{Mutator, run_bounded};
//! let original = std::fs::read("tokenizer.json").unwrap();
//! for seed in 0..300 {
//!     let (what, bytes) = Mutator::new(seed).mutate(&original, true);
//!     // write `bytes` to a file, load it under `run_bounded`, check the error names the file.
//! }
//! ```

use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::Value;

/// A seeded source of mutations (splitmix64: small, stable across crate versions).
#[derive(Debug, Clone)]
pub struct Mutator {
    state: u64,
}

impl Mutator {
    pub fn new(seed: u64) -> Self {
        Self { state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03 }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    /// One mutation of `input`; JSON-aware mutations are drawn half of the time when `json` and
    /// `input` parses. Returns a description of what was done and the mutated bytes.
    pub fn mutate(&mut self, input: &[u8], json: bool) -> (String, Vec<u8>) {
        if json && self.below(2) == 0 {
            if let Ok(value) = serde_json::from_slice::<Value>(input) {
                return self.mutate_json(&value);
            }
        }
        self.mutate_bytes(input)
    }

    /// Byte-level mutations: flips, truncation, an inserted or deleted range, an emptied file.
    pub fn mutate_bytes(&mut self, input: &[u8]) -> (String, Vec<u8>) {
        let mut b = input.to_vec();
        let n = b.len().max(1);
        match self.below(6) {
            0 | 1 => {
                // 1 to 200 flips, a few as likely as many.
                let most = [3, 15, 63, 200][self.below(4)];
                let count = 1 + self.below(most);
                for _ in 0..count {
                    let at = self.below(n);
                    if let Some(x) = b.get_mut(at) {
                        *x ^= 1 + self.below(255) as u8;
                    }
                }
                (format!("{count} flipped bytes"), b)
            }
            2 => {
                let len = self.below(n);
                b.truncate(len);
                (format!("truncated to {len} bytes"), b)
            }
            3 => {
                let at = self.below(n);
                let count = 1 + self.below(64);
                let junk: Vec<u8> = (0..count).map(|_| self.next_u64() as u8).collect();
                let at = at.min(b.len());
                b.splice(at..at, junk);
                (format!("{count} random bytes inserted at {at}"), b)
            }
            4 => {
                let at = self.below(n).min(b.len());
                let end = (at + 1 + self.below(256)).min(b.len());
                b.drain(at..end);
                (format!("bytes {at}..{end} deleted"), b)
            }
            _ => (String::from("emptied"), Vec::new()),
        }
    }

    /// One JSON-aware mutation of `value`, returned as text with a description: two nodes
    /// swapped, a key or element removed, a node replaced (another type, empty containers and
    /// strings, long strings, extreme or scaled numbers, itself repeated), or text serde_json
    /// cannot hold as a value (out-of-range numbers, deep nesting). The one JSON mutator of every
    /// fuzz suite.
    pub fn mutate_json(&mut self, value: &Value) -> (String, Vec<u8>) {
        let mut value = value.clone();
        let paths = json_paths(&value);
        let pick = |m: &mut Self| paths[m.below(paths.len())].clone();
        let mut raw = None;
        let what = match self.below(6) {
            0 if paths.len() > 2 => {
                let (a, b) = (pick(self), pick(self));
                let (va, vb) = (get(&value, &a).clone(), get(&value, &b).clone());
                // A node swapped with its own ancestor or descendant is only replaced.
                if is_prefix(&a, &b) || is_prefix(&b, &a) {
                    *get_mut(&mut value, &a) = vb;
                    format!("{} replaced by {}", show(&a), show(&b))
                } else {
                    *get_mut(&mut value, &a) = vb;
                    *get_mut(&mut value, &b) = va;
                    format!("{} and {} swapped", show(&a), show(&b))
                }
            }
            1 if paths.len() > 1 => {
                let p = pick(self);
                if let Some((last, parent)) = p.split_last() {
                    match (get_mut(&mut value, parent), last) {
                        (Value::Object(map), Step::Key(k)) => {
                            map.remove(k);
                        }
                        (Value::Array(list), Step::Index(i)) if *i < list.len() => {
                            list.remove(*i);
                        }
                        _ => {}
                    }
                }
                format!("{} removed", show(&p))
            }
            2 => {
                let p = pick(self);
                let (new, text) = if self.below(2) == 0 {
                    let s =
                        ["1e400", "-1e400", "18446744073709551616", "-9223372036854775809", "1e-400"][self.below(5)];
                    raw = Some(s.to_string());
                    (Value::String(RAW.into()), s.to_string())
                } else {
                    let depth = [20usize, 127, 129, 1000, 100_000][self.below(5)];
                    raw = Some(format!("{}{}", "[".repeat(depth), "]".repeat(depth)));
                    (Value::String(RAW.into()), format!("arrays nested {depth} deep"))
                };
                *get_mut(&mut value, &p) = new;
                format!("{} replaced by {text}", show(&p))
            }
            _ => {
                let p = pick(self);
                let node = get_mut(&mut value, &p);
                let (new, text) = self.replacement(node);
                let what = format!("{} ({}) replaced by {text}", show(&p), kind(node));
                *node = new;
                what
            }
        };
        let mut text = serde_json::to_string_pretty(&value).expect("a JSON value should serialize");
        if let Some(raw) = raw {
            text = text.replace(&format!("\"{RAW}\""), &raw);
        }
        (what, text.into_bytes())
    }

    /// A value to put in place of `node`, and its description.
    fn replacement(&mut self, node: &Value) -> (Value, String) {
        match self.below(6) {
            0 => {
                let choices = [
                    Value::Null,
                    Value::Bool(true),
                    Value::from(7),
                    Value::from(-3.5),
                    Value::from("x"),
                    Value::Array(vec![Value::from(1), Value::from("a")]),
                    serde_json::json!({"1": 2, "type": 3}),
                ];
                loop {
                    let c = choices[self.below(choices.len())].clone();
                    if kind(&c) != kind(node) {
                        let text = c.to_string();
                        return (c, text);
                    }
                }
            }
            1 => {
                let extreme = [
                    Value::from(-1),
                    Value::from(u64::MAX),
                    Value::from(i64::MIN),
                    Value::from(1e308),
                    Value::from(-1.5e300),
                    Value::from(0),
                    Value::from(0.5),
                    Value::from(4_294_967_296u64),
                ];
                let new = extreme[self.below(extreme.len())].clone();
                let text = new.to_string();
                (new, text)
            }
            2 => match self.below(4) {
                0 => (Value::String(String::new()), "an empty string".into()),
                1 => (Value::Array(Vec::new()), "an empty array".into()),
                2 => (Value::Object(Default::default()), "an empty object".into()),
                _ => (Value::String("x".repeat(1 + self.below(300))), "a long string".into()),
            },
            3 => (Value::Array(vec![node.clone(), node.clone()]), "a list of it twice".into()),
            _ => match node {
                Value::Number(n) => {
                    let v = n.as_f64().unwrap_or(0.0);
                    let s = [-1.0, 2.0, 1e6, 1e12][self.below(4)];
                    (Value::from(v * s), format!("itself x {s}"))
                }
                Value::String(s) => (Value::String(format!("{s}{s}")), "itself twice".into()),
                other => (Value::String(other.to_string()), "its own text".into()),
            },
        }
    }
}

/// Stands for raw text written into the serialised JSON (serde_json cannot hold it as a value).
const RAW: &str = "\u{1}osp-fuzz-raw\u{1}";

/// One step of a path into a JSON tree.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

/// Every node's path, the root's (empty) included. Long arrays contribute a sample of their
/// elements (the first, last and 14 spread between), so a large vocabulary does not drown the
/// structure.
fn json_paths(value: &Value) -> Vec<Vec<Step>> {
    fn walk(v: &Value, path: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
        out.push(path.clone());
        match v {
            Value::Object(map) => {
                for (k, child) in map {
                    path.push(Step::Key(k.clone()));
                    walk(child, path, out);
                    path.pop();
                }
            }
            Value::Array(list) => {
                let n = list.len();
                let picked: Vec<usize> =
                    if n <= 16 { (0..n).collect() } else { (0..16).map(|i| i * (n - 1) / 15).collect() };
                for i in picked {
                    path.push(Step::Index(i));
                    walk(&list[i], path, out);
                    path.pop();
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(value, &mut Vec::new(), &mut out);
    out.dedup();
    out
}

fn get<'a>(v: &'a Value, path: &[Step]) -> &'a Value {
    path.iter().fold(v, |v, s| match s {
        Step::Key(k) => &v[k.as_str()],
        Step::Index(i) => &v[*i],
    })
}

fn get_mut<'a>(v: &'a mut Value, path: &[Step]) -> &'a mut Value {
    path.iter().fold(v, |v, s| match s {
        Step::Key(k) => &mut v[k.as_str()],
        Step::Index(i) => &mut v[*i],
    })
}

fn is_prefix(a: &[Step], b: &[Step]) -> bool {
    a.len() <= b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

fn show(path: &[Step]) -> String {
    if path.is_empty() {
        return "the root".into();
    }
    path.iter()
        .map(|s| match s {
            Step::Key(k) => format!(".{k}"),
            Step::Index(i) => format!("[{i}]"),
        })
        .collect()
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Runs `f` on its own thread and waits at most `limit`: a hang is an error instead of a stuck
/// suite (the thread is left behind; the test fails). A panic in `f` is an error carrying its
/// message.
pub fn run_bounded<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = tx.send(r);
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(panic)) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            bail!("panicked: {msg}")
        }
        Err(_) => bail!("did not finish within {limit:?} (hang)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_are_seeded_and_change_the_input() {
        let input = br#"{"a": [1, 2, {"b": "c"}], "d": {"e": null, "f": true}}"#;
        for seed in 0..200 {
            let (what, out) = Mutator::new(seed).mutate(input, true);
            assert_eq!(Mutator::new(seed).mutate(input, true), (what.clone(), out.clone()), "seed {seed}");
            if what != "emptied" && !what.starts_with("truncated to") {
                assert!(!what.is_empty());
            }
        }
        let changed = (0..200).filter(|&s| Mutator::new(s).mutate(input, true).1 != input.to_vec()).count();
        assert!(changed > 180, "only {changed} of 200 mutations changed the input");
    }

    #[test]
    fn run_bounded_reports_panics_and_hangs() {
        assert_eq!(run_bounded(Duration::from_secs(5), || 4).unwrap(), 4);
        let err = run_bounded(Duration::from_secs(5), || -> u8 { panic!("inner") }).unwrap_err();
        assert!(err.to_string().contains("panicked: inner"), "{err}");
        let err = run_bounded(Duration::from_millis(50), || std::thread::sleep(Duration::from_secs(2))).unwrap_err();
        assert!(err.to_string().contains("hang"), "{err}");
    }
}
