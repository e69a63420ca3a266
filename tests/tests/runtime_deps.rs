//! The runtime never links the training stack or the ONNX-building code (STYLE rule 8): checks the
//! normal dependency tree of `osp-runtime`, with no features and with every feature.

use std::process::Command;

use anyhow::{ensure, Context, Result};

const FORBIDDEN: &[&str] = &["burn", "osp-trainer", "osp-export", "prost-build", "protox", "cubecl"];

fn runtime_tree(features: &[&str]) -> Result<Vec<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(osp_tests::repo_root())
        .args(["tree", "--offline", "--locked", "-p", "osp-runtime", "-e", "normal", "--prefix", "none"])
        .args(["--format", "{p}"]);
    if !features.is_empty() {
        cmd.args(["--features", &features.join(",")]);
    }
    let out = cmd.output().context("running cargo tree")?;
    ensure!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?.lines().map(|l| l.split_whitespace().next().unwrap_or("").to_string()).collect())
}

#[test]
fn runtime_tree_has_no_training_or_onnx_building_code() -> Result<()> {
    for features in [&[][..], &["tract", "cuda", "tensorrt", "nccl"][..]] {
        let crates = runtime_tree(features)?;
        ensure!(crates.iter().any(|c| c == "ort"), "sanity: ort should be in the runtime tree ({features:?})");
        let bad: Vec<&String> = crates
            .iter()
            .filter(|c| FORBIDDEN.iter().any(|f| c.as_str() == *f || c.starts_with(&format!("{f}-"))))
            .collect();
        ensure!(bad.is_empty(), "osp-runtime (features {features:?}) depends on forbidden crates: {bad:?}");
    }
    // tract (31 MB) stays out of the default build; prost is there only to decode spiece.model.
    let default = runtime_tree(&[])?;
    ensure!(!default.iter().any(|c| c.starts_with("tract")), "default osp-runtime links tract");
    Ok(())
}
