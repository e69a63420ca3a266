//! `osp run-graph`: run one graph on tensors from a safetensors file, write its outputs by name.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use osp_runtime::{read_safetensors, write_safetensors, Bundle};

use super::BackendOpts;

#[derive(Debug, Args)]
pub struct RunGraphArgs {
    /// Bundle directory (holding manifest.json).
    pub bundle: PathBuf,
    /// Graph name in the manifest.
    pub graph: String,
    /// Safetensors file with one tensor per graph input, keyed by input name.
    #[arg(long)]
    pub inputs: PathBuf,
    /// Safetensors file to write the outputs to, keyed by output name.
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(args: &RunGraphArgs, backend: &BackendOpts) -> anyhow::Result<()> {
    let opts = backend.session_options()?;
    let bundle = Bundle::open(&args.bundle).with_context(|| format!("opening bundle {}", args.bundle.display()))?;
    let inputs = read_safetensors(&args.inputs)?;
    let mut session = bundle
        .session(&args.graph, &opts)
        .with_context(|| format!("loading graph `{}` of {} on {}", args.graph, args.bundle.display(), opts.backend))?;
    let named: Vec<(&str, &osp_runtime::Tensor)> = inputs.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let start = Instant::now();
    let outputs = session.run(&named).with_context(|| format!("running graph `{}`", args.graph))?;
    let elapsed = start.elapsed();
    write_safetensors(&args.out, outputs.iter().map(|(k, v)| (k.as_str(), v)))?;
    for (name, t) in &outputs {
        println!("{name}: {} {:?}", t.dtype(), t.shape());
    }
    println!(
        "ran `{}` on {} in {:.2} ms; wrote {}",
        args.graph,
        opts.backend,
        elapsed.as_secs_f64() * 1e3,
        args.out.display()
    );
    Ok(())
}
