//! Shared set-up for the osp criterion benches (`benches/bench_main.rs`).

use std::path::Path;

use anyhow::Result;
use osp_export::models::transformer_block::{export_transformer_block, TransformerBlockWeights};
use osp_export::ExportOptions;
use osp_graphs::config::TransformerBlockConfig;
use osp_graphs::AttentionKind;
use osp_runtime::Bundle;

/// The demo block config (`export/configs/transformer_block_demo.json`).
pub fn demo_block_config() -> Result<TransformerBlockConfig> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../export/configs/transformer_block_demo.json");
    Ok(serde_json::from_str(&std::fs::read_to_string(path)?)?)
}

/// Exports the demo block with random weights in the given attention form.
pub fn export_block(dir: &Path, attention: AttentionKind) -> Result<(Bundle, TransformerBlockConfig)> {
    let cfg = demo_block_config()?;
    let w = TransformerBlockWeights::random(&cfg, 0)?;
    export_transformer_block(&cfg, w.weights(), &ExportOptions { attention, ..ExportOptions::default() }, dir)?;
    Ok((Bundle::open(dir)?, cfg))
}
