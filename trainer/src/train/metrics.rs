//! Training metrics, one JSON object per line (`<output_dir>/metrics.jsonl`), flushed after each
//! record so a crashed run keeps everything logged before the crash.
//!
//! Each record carries the `step` it belongs to. A run opens the log with the `step` of the first
//! record it will write ([`MetricsLog::open_from`]): records of that step or later, left by an
//! earlier run that went further than the checkpoint this run resumes from (or by an earlier run
//! in the same folder when this one starts fresh), are removed first, so every step appears once
//! and a resumed run's log equals an uninterrupted run's.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};

/// Appends records to a JSONL file.
pub struct MetricsLog {
    path: PathBuf,
    file: File,
}

impl MetricsLog {
    /// Opens `path` for appending, keeping every record already there.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        Ok(MetricsLog { path, file })
    }

    /// Opens `path` for a run whose first record has step `next_step`: records with a `step` of
    /// `next_step` or more, and lines that are not JSON objects (a line cut short by a crash),
    /// are dropped first by rewriting the file atomically; earlier records are kept in order.
    pub fn open_from(path: impl AsRef<Path>, next_step: u64) -> Result<Self> {
        let path = path.as_ref();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let (kept, dropped, torn) = records_before(&text, next_step);
                if dropped + torn > 0 {
                    tracing::info!(
                        path = %path.display(),
                        next_step,
                        dropped,
                        torn,
                        "metrics: removing records this run writes again (and lines cut short)"
                    );
                    rewrite(path, &kept)?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(path, e)),
        }
        Self::open(path)
    }

    /// Writes one record (a JSON object) as a line.
    pub fn log<T: Serialize>(&mut self, record: &T) -> Result<()> {
        let mut line = serde_json::to_string(record).map_err(|e| Error::Json { path: self.path.clone(), source: e })?;
        line.push('\n');
        self.file.write_all(line.as_bytes()).map_err(|e| Error::io(&self.path, e))?;
        self.file.flush().map_err(|e| Error::io(&self.path, e))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The lines of `text` to keep before step `next_step`, and how many records were dropped for
/// their step and how many lines for not being JSON objects. A record without a `step` is kept.
fn records_before(text: &str, next_step: u64) -> (String, usize, usize) {
    let (mut kept, mut dropped, mut torn) = (String::new(), 0, 0);
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(serde_json::Value::Object(record)) => {
                if record.get("step").and_then(serde_json::Value::as_u64).is_some_and(|s| s >= next_step) {
                    dropped += 1;
                } else {
                    kept.push_str(line);
                    kept.push('\n');
                }
            }
            _ => torn += 1,
        }
    }
    (kept, dropped, torn)
}

/// Replaces `path` by `text` through a temporary file in the same folder.
fn rewrite(path: &Path, text: &str) -> Result<()> {
    let file_name = path.file_name().and_then(|n| n.to_str()).unwrap_or("metrics.jsonl");
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    };
    write().map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopening_drops_the_steps_the_run_writes_again() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("metrics.jsonl");
        let mut log = MetricsLog::open_from(&path, 1).expect("fresh");
        for step in 1..=5u64 {
            log.log(&serde_json::json!({"step": step, "loss": step as f64})).expect("log");
            if step % 2 == 0 {
                log.log(&serde_json::json!({"step": step, "val_loss": 0.5})).expect("log");
            }
        }
        drop(log);
        // A crash mid-line leaves a torn last line.
        let mut text = std::fs::read_to_string(&path).expect("read");
        text.push_str("{\"step\": 6, \"lo");
        std::fs::write(&path, text).expect("write");

        let mut log = MetricsLog::open_from(&path, 5).expect("resume after step 4");
        log.log(&serde_json::json!({"step": 5, "loss": 5.0})).expect("log");
        let steps: Vec<u64> = std::fs::read_to_string(&path)
            .expect("read")
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json")["step"].as_u64().expect("step"))
            .collect();
        assert_eq!(steps, [1, 2, 2, 3, 4, 4, 5]);
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1, "no temporary file is left");

        MetricsLog::open_from(&path, 1).expect("fresh run in the same folder");
        assert_eq!(std::fs::read_to_string(&path).expect("read"), "");
    }
}
