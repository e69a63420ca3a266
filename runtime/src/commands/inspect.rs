//! `osp inspect`: a readable summary of a bundle's manifest, or of a pipeline bundle
//! (`pipeline.json`, checked for consistency, then each component bundle).

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use osp_graphs::{BundleManifest, TensorSpec};
use osp_runtime::Bundle;

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Bundle directory (holding manifest.json, or pipeline.json for a pipeline bundle).
    pub bundle: PathBuf,
}

pub fn run(args: &InspectArgs) -> anyhow::Result<()> {
    if args.bundle.join(osp_graphs::PIPELINE_FILE).is_file() {
        let spec = osp_runtime::pipeline::PipelineSpec::open(&args.bundle)
            .with_context(|| format!("opening pipeline bundle {}", args.bundle.display()))?;
        let m = spec.manifest();
        let d = spec.dims();
        println!("pipeline bundle: {} (format {})", args.bundle.display(), m.format_version);
        println!(
            "  latent channels {}, caption channels {}, patch {}x{}, VAE compression {}x{}x{}",
            d.latent_channels,
            d.caption_channels,
            d.patch_size_t,
            d.patch_size,
            d.vae_temporal,
            d.vae_spatial,
            d.vae_spatial
        );
        println!("  scheduler: {}", serde_json::to_string(&m.scheduler)?);
        println!("  defaults: {}", serde_json::to_string(&m.defaults)?);
        let c = &m.components;
        for (role, sub) in [("text_encoder", &c.text_encoder), ("transformer", &c.transformer), ("vae", &c.vae)] {
            let dir = args.bundle.join(sub);
            let bundle = Bundle::open(&dir).with_context(|| format!("opening component {}", dir.display()))?;
            println!("component {role}:");
            print!("{}", summary(&dir, bundle.manifest())?);
        }
        return Ok(());
    }
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
