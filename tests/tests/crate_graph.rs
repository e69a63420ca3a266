//! The crate graph of docs/ARCHITECTURE.md, checked for every workspace crate.
//!
//! The workspace is layered, lowest first: `osp-fs` (optional), `osp-graphs`, `osp-runtime` (the
//! shared base: bundles and sessions, video I/O, schedules, RNG, caches), `osp-trainer`,
//! `osp-export`, then `osp-tests` and `osp-benches`. A crate depends only on workspace crates of
//! lower layers; the low layers stay light; crates above the runtime take it with
//! `default-features = false`; and no crate's normal dependency tree reaches code it must not
//! link. (`runtime_deps.rs` checks the runtime's own tree with every feature.)

use std::collections::BTreeSet;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

/// Workspace crates by layer, lowest first.
const LAYERS: &[&[&str]] =
    &[&["osp-fs"], &["osp-graphs"], &["osp-runtime"], &["osp-trainer"], &["osp-export"], &["osp-tests", "osp-benches"]];

/// The only normal dependencies of the light crates (a workspace crate of a lower layer is
/// allowed as well, by the layer rule). `osp-fs`'s `tracing` is optional: its `tracing` feature,
/// which the graphs crate leaves off.
const LIGHT: &[(&str, &[&str])] =
    &[("osp-fs", &["thiserror", "tracing"]), ("osp-graphs", &["serde", "serde_json", "thiserror", "osp-fs"])];

/// Workspace crates a crate never names directly (it may still reach them through a lower layer).
const NEVER_DIRECT: &[(&str, &[&str])] = &[("osp-export", &["osp-runtime"])];

/// Crates (or crate families, `name-*`) that each crate's normal dependency tree never contains.
const NEVER: &[(&str, &[&str])] = &[
    ("osp-graphs", &["ort", "burn", "tract", "ndarray", "osp-runtime"]),
    ("osp-runtime", &["burn", "cubecl", "osp-trainer", "osp-export", "prost-build", "protox"]),
    ("osp-trainer", &["osp-export", "prost-build", "protox", "tract"]),
    ("osp-export", &["osp-tests", "osp-benches", "tract"]),
];

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(osp_tests::repo_root());
    cmd
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8(out.stdout)?)
}

/// The workspace members as `cargo metadata --no-deps` describes them.
fn members() -> Result<Vec<Value>> {
    let text = output(cargo().args(["metadata", "--offline", "--locked", "--no-deps", "--format-version", "1"]))?;
    let meta: Value = serde_json::from_str(&text)?;
    let Some(packages) = meta["packages"].as_array() else { bail!("cargo metadata: no `packages`") };
    Ok(packages.clone())
}

fn name(v: &Value) -> &str {
    v["name"].as_str().unwrap_or("")
}

/// The crate names of `package`'s normal dependency tree (default features).
fn tree(package: &str) -> Result<BTreeSet<String>> {
    let text = output(cargo().args([
        "tree",
        "--offline",
        "--locked",
        "-p",
        package,
        "-e",
        "normal",
        "--prefix",
        "none",
        "--format",
        "{p}",
    ]))?;
    Ok(text.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_string).collect())
}

fn layer(package: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&package))
}

fn matches(krate: &str, family: &str) -> bool {
    krate == family || krate.starts_with(&format!("{family}-"))
}

#[test]
fn every_crate_keeps_to_its_layer() -> Result<()> {
    let members = members()?;
    let names: BTreeSet<&str> = members.iter().map(name).collect();
    for required in ["osp-graphs", "osp-runtime", "osp-trainer", "osp-export", "osp-tests"] {
        ensure!(names.contains(required), "sanity: workspace member {required} not found in {names:?}");
    }
    for package in &members {
        let me = name(package);
        let Some(mine) = layer(me) else {
            bail!("workspace crate {me} has no layer in this test (and no place in docs/ARCHITECTURE.md)")
        };
        let deps = package["dependencies"].as_array().context("dependencies")?;
        for dep in deps {
            let (dep_name, kind) = (name(dep), dep["kind"].as_str().unwrap_or("normal"));
            if let Some(theirs) = layer(dep_name) {
                ensure!(
                    theirs < mine,
                    "{me} depends on {dep_name} ({kind}): a crate depends only on lower layers \
                     (fs < graphs < runtime < trainer < export < tests, benches)"
                );
            }
            if let Some((_, never)) = NEVER_DIRECT.iter().find(|(p, _)| *p == me) {
                ensure!(!never.contains(&dep_name), "{me} must not depend on {dep_name} directly");
            }
            if dep_name == "osp-runtime" {
                ensure!(
                    dep["uses_default_features"] == Value::Bool(false),
                    "{me} takes osp-runtime with its default features (the binary's progress bars); \
                     use `default-features = false`"
                );
            }
            if kind == "normal" {
                if let Some((_, allowed)) = LIGHT.iter().find(|(light, _)| *light == me) {
                    ensure!(allowed.contains(&dep_name), "{me} must stay light: it depends on {dep_name}");
                }
            }
        }
    }
    Ok(())
}

#[test]
fn no_crate_reaches_what_it_must_not_link() -> Result<()> {
    let members = members()?;
    for &(package, never) in NEVER {
        if !members.iter().any(|p| name(p) == package) {
            continue;
        }
        let crates = tree(package)?;
        ensure!(crates.contains(package), "sanity: {package} is missing from its own tree");
        let bad: Vec<&String> = crates.iter().filter(|c| never.iter().any(|f| matches(c, f))).collect();
        ensure!(bad.is_empty(), "{package}'s normal dependency tree contains {bad:?}");
    }
    // The rule is not vacuous: the trainer really links the runtime, and export the trainer.
    ensure!(tree("osp-trainer")?.contains("osp-runtime"), "sanity: osp-trainer should link osp-runtime");
    ensure!(tree("osp-export")?.contains("osp-trainer"), "sanity: osp-export should link osp-trainer");
    Ok(())
}
