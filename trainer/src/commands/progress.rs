//! Training progress on stderr: an indicatif bar (feature `progress`), JSON lines, or nothing.

use clap::ValueEnum;
use serde::Serialize;

use osp_trainer::train::StepStats;

/// `--progress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ValueEnum)]
pub enum ProgressKind {
    /// A progress bar with loss and learning rate.
    Bar,
    /// One JSON object per update.
    Jsonl,
    /// Nothing (metrics still go to metrics.jsonl).
    Off,
}

pub struct Progress {
    kind: ProgressKind,
    #[cfg(feature = "progress")]
    bar: Option<indicatif::ProgressBar>,
}

impl Progress {
    pub fn new(kind: ProgressKind, total: usize, done: usize) -> Self {
        #[cfg(feature = "progress")]
        let bar = (kind == ProgressKind::Bar).then(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {per_sec} {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_position(done as u64);
            bar
        });
        #[cfg(not(feature = "progress"))]
        let _ = (total, done);
        Progress {
            kind,
            #[cfg(feature = "progress")]
            bar,
        }
    }

    pub fn step(&mut self, stats: &StepStats) {
        match self.kind {
            ProgressKind::Bar =>
            {
                #[cfg(feature = "progress")]
                if let Some(bar) = &self.bar {
                    bar.set_position(stats.step as u64);
                    bar.set_message(format!("loss {:.5} lr {:.2e}", stats.loss, stats.lr));
                }
            }
            ProgressKind::Jsonl => {
                if let Ok(line) = serde_json::to_string(stats) {
                    eprintln!("{line}");
                }
            }
            ProgressKind::Off => {}
        }
    }

    pub fn message(&mut self, text: &str) {
        match self.kind {
            ProgressKind::Off => {}
            #[cfg(feature = "progress")]
            ProgressKind::Bar if self.bar.is_some() => {
                if let Some(bar) = &self.bar {
                    bar.println(text);
                }
            }
            _ => eprintln!("{text}"),
        }
    }

    pub fn finish(&mut self) {
        #[cfg(feature = "progress")]
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }
}

/// A count bar on stderr for work without training statistics (captions encoded, clips measured);
/// indicatif draws it only when stderr is a terminal.
pub struct Count {
    #[cfg(feature = "progress")]
    bar: indicatif::ProgressBar,
}

impl Count {
    pub fn new(total: usize, unit: &str) -> Self {
        #[cfg(feature = "progress")]
        {
            let bar = indicatif::ProgressBar::new(total as u64);
            let template = format!("{{elapsed_precise}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{per_sec}}");
            bar.set_style(
                indicatif::ProgressStyle::with_template(&template)
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            Count { bar }
        }
        #[cfg(not(feature = "progress"))]
        {
            let _ = (total, unit);
            Count {}
        }
    }

    pub fn inc(&self, n: usize) {
        #[cfg(feature = "progress")]
        self.bar.inc(n as u64);
        #[cfg(not(feature = "progress"))]
        let _ = n;
    }

    pub fn finish(&self) {
        #[cfg(feature = "progress")]
        self.bar.finish_and_clear();
    }
}
