//! Shared pieces of the osp integration suites: paths to the shared reference material, a plain-Rust
//! reference of the proof-model transformer block, and comparison helpers.
//!
//! Suites live in `tests/tests/*.rs`; each runs its body on every CPU backend (`ort-cpu`, `tract`).

pub mod file_fuzz;
pub mod fuzz;
pub mod reference;

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use osp_graphs::{Approx, Comparison};

/// The workspace root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the workspace").to_path_buf()
}

/// `../shared/reference` beside the checkout (parity fixtures, manifests, assets).
pub fn shared_reference() -> PathBuf {
    repo_root().join("../shared/reference")
}

/// The `osp` binary of the build that runs this test (`target/<profile>/osp`). Cargo builds it for
/// `cargo test --workspace` (or `-p osp-runtime --bin osp` beside `-p osp-tests`), not for `-p osp-tests`
/// alone, so a missing binary is an error that says how to build it.
pub fn osp_binary() -> Result<PathBuf> {
    osp_binary_named("osp")
}

/// The `osp` binary ([`osp_binary`]) run with `--threads threads`, without the `OSP_*` defaults
/// and `RUST_LOG` of the calling environment. Panics when the binary is not built.
pub fn osp_command(threads: usize) -> std::process::Command {
    let mut cmd = std::process::Command::new(osp_binary().expect("the osp binary should be built"));
    for var in ["OSP_BACKEND", "OSP_THREADS", "OSP_TEXT_CACHE", "OSP_PIPELINE_BUNDLE", "OSP_VAE_BUNDLE", "RUST_LOG"] {
        cmd.env_remove(var);
    }
    cmd.args(["--threads", &threads.to_string()]);
    cmd
}

fn osp_binary_named(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let Some(dir) = exe.parent().and_then(std::path::Path::parent) else {
        bail!("test executable {} should sit in target/<profile>/deps", exe.display());
    };
    let osp = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !osp.is_file() {
        let package = if name == "osp" { "osp-runtime" } else { "osp-trainer" };
        bail!(
            "{} not built: run the tests with `--workspace` or build `-p {package} --bin {name}` first",
            osp.display()
        );
    }
    Ok(osp)
}

/// Compares two f32 slices at a named level; the error carries the full comparison report.
pub fn check_close(what: &str, actual: &[f32], expected: &[f32], level: Approx) -> Result<Comparison> {
    let c = level.compare(actual, expected);
    if !c.ok() {
        bail!("{what}: {c}");
    }
    Ok(c)
}

/// Every backend the CPU suites run on.
pub fn cpu_backends() -> Vec<osp_runtime::session::Backend> {
    vec![osp_runtime::session::Backend::OrtCpu, osp_runtime::session::Backend::Tract]
}

/// The `osp-train` binary of the build that runs this test (`target/<profile>/osp-train`), built by
/// `cargo test --workspace` or `cargo build -p osp-trainer --bin osp-train`.
pub fn osp_train_binary() -> Result<PathBuf> {
    osp_binary_named("osp-train")
}

/// The proof-model transformer block (hidden 32, 2 heads, seeded random weights) exported to
/// `dir`, its weights in an external-data file; returns `dir`.
pub fn block_bundle(dir: &Path) -> Result<PathBuf> {
    use osp_export::models::transformer_block::{export_transformer_block, TransformerBlockWeights};
    let cfg = osp_graphs::config::TransformerBlockConfig {
        hidden_size: 32,
        num_attention_heads: 2,
        attention_head_dim: 16,
        ff_inner_dim: 64,
        norm_eps: 1e-6,
        attention_mask: true,
    };
    let w = TransformerBlockWeights::random(&cfg, 0)?;
    let opts = osp_export::ExportOptions { external_data_threshold_bytes: 1024, ..Default::default() };
    export_transformer_block(&cfg, w.weights(), &opts, dir)?;
    Ok(dir.to_path_buf())
}

/// Copies the files of `from` and its sub-folders to `to`.
pub fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &dest)?;
        } else {
            std::fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}

/// The tiny e2e pipeline (`../shared/reference/e2e`) exported once per test binary, with small
/// defaults: 9 x 64 x 96 frames, 3 steps, 32 tokens.
pub fn small_e2e_pipeline() -> &'static Path {
    use osp_export::models::pipeline::{export_pipeline, PipelineExportOptions, PipelineSources};
    use osp_graphs::pipeline::PipelineDefaults;
    static DIR: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();
    &DIR.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir should be creatable");
        let out = dir.path().join("e2e.pipeline");
        let defaults = PipelineDefaults {
            num_frames: 9,
            height: 64,
            width: 96,
            num_sampling_steps: 3,
            max_sequence_length: 32,
            ..PipelineDefaults::open_sora_plan_v13()
        };
        let opts = PipelineExportOptions {
            graph: osp_export::ExportOptions::default(),
            text_encoder_precision: None,
            defaults,
        };
        let sources = PipelineSources::from_dir(&shared_reference().join("e2e"))
            .expect("the e2e folder should hold every component");
        export_pipeline(&sources, &opts, &out).expect("the pipeline should export");
        (dir, out)
    })
    .1
}
