//! `osp inspect`: a readable summary of a bundle's manifest.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use osp_graphs::{BundleManifest, TensorSpec};
use osp_runtime::Bundle;

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Bundle directory (holding manifest.json).
    pub bundle: PathBuf,
}

pub fn run(args: &InspectArgs) -> anyhow::Result<()> {
    let bundle = Bundle::open(&args.bundle).with_context(|| format!("opening bundle {}", args.bundle.display()))?;
    print!("{}", summary(&args.bundle, bundle.manifest())?);
    Ok(())
}

fn summary(dir: &std::path::Path, m: &BundleManifest) -> anyhow::Result<String> {
    let mut s = String::new();
    writeln!(s, "bundle: {} (format {})", dir.display(), m.format_version)?;
    writeln!(s, "model: {}", m.model.kind())?;
    let model = serde_json::to_value(&m.model).context("serializing the model config")?;
    if let Some(config) = model.get("config") {
        writeln!(s, "  config: {config}")?;
    }
    writeln!(s, "provenance: exporter {}", m.provenance.exporter)?;
    if let Some(source) = &m.provenance.source {
        writeln!(s, "  source: {source}")?;
    }
    if let Some(sha) = &m.provenance.source_sha256 {
        writeln!(s, "  source sha256: {sha}")?;
    }
    writeln!(s, "graphs: {}", m.graphs.len())?;
    for (name, g) in &m.graphs {
        writeln!(s, "  {name}: {} (precision {}, attention {}, opset {})", g.file, g.precision, g.attention, g.opset)?;
        if !g.external_data.is_empty() {
            writeln!(s, "    external data: {}", g.external_data.join(", "))?;
        }
        for t in &g.inputs {
            writeln!(s, "    in  {}", spec_line(t))?;
        }
        for t in &g.outputs {
            writeln!(s, "    out {}", spec_line(t))?;
        }
        for (k, v) in &g.metadata {
            writeln!(s, "    {k}: {v}")?;
        }
    }
    Ok(s)
}

fn spec_line(t: &TensorSpec) -> String {
    format!("{}: {} {}", t.name, t.dtype, t.dims_string())
}
