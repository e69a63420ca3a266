//! `osp inspect`: a readable summary of a bundle's manifest, or of a pipeline bundle
//! (`pipeline.json`, checked for consistency, then each component bundle). Every graph file is
//! decoded and checked against the manifest and a text encoder's tokenizer is loaded, so a bundle
//! `inspect` accepts is one the other commands can load; `--verify` also checks the SHA-256 of
//! every graph and data file (docs/integrity.md).

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use osp_graphs::{BundleManifest, ModelSpec, TensorSpec};
use osp_runtime::{integrity, Bundle};

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Bundle directory (holding manifest.json, or pipeline.json for a pipeline bundle).
    pub bundle: PathBuf,
    /// Also hash every graph and external-data file and compare with the digests the manifest
    /// recorded at export (reads every byte; fails for bundles exported without digests).
    #[arg(long)]
    pub verify: bool,
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
            check(&bundle, args.verify).with_context(|| format!("checking component {}", dir.display()))?;
        }
        return Ok(());
    }
    let bundle = Bundle::open(&args.bundle).with_context(|| format!("opening bundle {}", args.bundle.display()))?;
    print!("{}", summary(&args.bundle, bundle.manifest())?);
    check(&bundle, args.verify).with_context(|| format!("checking bundle {}", args.bundle.display()))?;
    Ok(())
}

/// Decodes every graph, loads the tokenizer a text encoder ships, and with `verify` checks the
/// file digests; prints one line per check.
fn check(bundle: &Bundle, verify: bool) -> anyhow::Result<()> {
    for name in bundle.manifest().graphs.keys() {
        let f = integrity::check_graph(bundle, name)?;
        println!(
            "  checked graph {name}: {} nodes, {} initializers ({} external)",
            f.nodes, f.initializers, f.external
        );
    }
    if matches!(bundle.manifest().model, ModelSpec::Mt5Encoder(_)) {
        if let Some((tok, path)) = osp_runtime::text::load_bundle_tokenizer(bundle)? {
            println!("  checked tokenizer {}: {} ids", path.display(), tok.vocab_size());
        }
    }
    if verify {
        let r = integrity::verify_digests(bundle)?;
        let mb = r.bytes as f64 / 1e6;
        println!(
            "  verified: {} files, {mb:.1} MB, SHA-256 as recorded ({:.2} s, {:.0} MB/s)",
            r.files.len(),
            r.seconds,
            mb / r.seconds.max(1e-9)
        );
    }
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
    match m.file_sha256.len() {
        0 => writeln!(s, "file digests: none recorded (re-export to enable --verify)")?,
        n => writeln!(s, "file digests: {n} files (SHA-256; checked by --verify)")?,
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
