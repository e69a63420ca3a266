//! A bias-free `nn.Linear` whose weight is large enough to need ONNX external data beyond 2 GiB
//! (e.g. 16384 x 36864 f32 = 2.4 GB). The weight is generated row by row from a cheap PRNG while
//! the bundle is written, so memory stays low; [`weight_row`] recomputes any row for checking.
//!
//! Graph `linear`: `x` f32 `[b, in_features]` -> `y` f32 `[b, out_features]`, `y = Gemm(x, weight, transB = 1)`.
//!
//! `osp-export big-linear --in-features 16384 --out-features 36864 --seed 0 --out /tmp/big.bundle`

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use osp_graphs::config::LinearConfig;
use osp_graphs::{AttentionKind, BundleManifest, DType, Dim, ModelSpec, TensorSpec};

use crate::builder::GraphBuilder;
use crate::bundle::{provenance, BundleWriter, DEFAULT_EXTERNAL_DATA_THRESHOLD};
use crate::error::{Error, Result};
use crate::graph::Generator;

/// Rows generated per chunk handed to the writer.
const ROWS_PER_CHUNK: usize = 64;

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Row `row` of the weight for `seed`: uniform in `[-1/sqrt(in), 1/sqrt(in))` (PyTorch's
/// `nn.Linear` init bound), so `y` stays O(|x|).
pub fn weight_row(seed: u64, row: usize, in_features: usize) -> Vec<f32> {
    let bound = 1.0 / (in_features as f32).sqrt();
    let mut state = seed ^ (row as u64).wrapping_mul(0xD134_2543_DE82_EF95);
    (0..in_features)
        .map(|_| {
            let u = (splitmix64(&mut state) >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
            (2.0 * u - 1.0) * bound
        })
        .collect()
}

/// Writes the bundle; the weight (`weight`, `[out_features, in_features]`) is streamed to
/// `linear.onnx.data`.
pub fn export_big_linear(out: &Path, in_features: usize, out_features: usize, seed: u64) -> Result<BundleManifest> {
    if in_features == 0 || out_features == 0 {
        return Err(Error::Config("big linear: in_features and out_features must be positive".into()));
    }
    let mut b = GraphBuilder::new("linear");
    let x = b.input(TensorSpec::new("x", DType::F32, [Dim::sym("b"), Dim::Fixed(in_features)]))?;
    let generator: Generator = Arc::new(move |sink| {
        let mut buf: Vec<u8> = Vec::with_capacity(ROWS_PER_CHUNK * in_features * 4);
        for start in (0..out_features).step_by(ROWS_PER_CHUNK) {
            buf.clear();
            for row in start..(start + ROWS_PER_CHUNK).min(out_features) {
                buf.extend(weight_row(seed, row, in_features).iter().flat_map(|v| v.to_le_bytes()));
            }
            sink(&buf)?;
        }
        Ok(())
    });
    let w = b.generated_initializer("weight", DType::F32, vec![out_features, in_features], generator)?;
    let y = b.linear(&x, &w, None)?; // [b, out_features]
    b.output(&y, TensorSpec::new("y", DType::F32, [Dim::sym("b"), Dim::Fixed(out_features)]))?;
    let graph = b.finish()?;
    let model = ModelSpec::Linear(LinearConfig { in_features, out_features });
    let mut writer = BundleWriter::create(out, model, provenance(None)?, DEFAULT_EXTERNAL_DATA_THRESHOLD)?;
    let mut meta = BTreeMap::new();
    meta.insert("weight_seed".to_string(), serde_json::json!(seed));
    writer.add_graph("linear", &graph, AttentionKind::None, meta)?;
    writer.finish()
}
