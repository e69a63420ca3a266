//! Command-line support shared by the osp binaries (`osp`, `osp-train`, `osp-export`).

use tracing_subscriber::EnvFilter;

/// A log filter (from a flag or `RUST_LOG`) that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{input} is not a valid log filter")]
pub struct LogFilterError {
    /// Where the filter came from, with its text: ``--log `x` `` or ``RUST_LOG=`x` ``.
    pub input: String,
    #[source]
    pub source: tracing_subscriber::filter::ParseError,
}

/// The log filter of a binary: `flag` (its `--log`) when given, else a non-blank `RUST_LOG`, else
/// `levels[verbose]` (`verbose` is the `-v` count; 3 and more take the last level).
pub fn log_filter(flag: Option<&str>, verbose: u8, levels: &[&str; 4]) -> Result<EnvFilter, LogFilterError> {
    let env = std::env::var(EnvFilter::DEFAULT_ENV).ok().filter(|s| !s.trim().is_empty());
    let (spec, input) = match (flag, env) {
        (Some(spec), _) => (spec.to_string(), format!("--log `{spec}`")),
        (None, Some(spec)) => {
            let input = format!("{}=`{spec}`", EnvFilter::DEFAULT_ENV);
            (spec, input)
        }
        (None, None) => return Ok(EnvFilter::new(levels[usize::from(verbose).min(3)])),
    };
    EnvFilter::try_new(&spec).map_err(|source| LogFilterError { input, source })
}
