//! `OpenSoraT2V_v1_3` lowered to one ONNX graph, `transformer`:
//!
//! | input | dtype | shape |
//! |---|---|---|
//! | `hidden_states` | f32 | `[b, in_channels, t, h, w]` (latent video; `h`, `w` multiples of `patch_size`) |
//! | `timestep` | f32 | `[b]` |
//! | `encoder_hidden_states` | f32 | `[b, 1, l, caption_channels]` (mT5 states) |
//! | `encoder_attention_mask` | f32 | `[b, 1, l]` (1 keep, 0 padded text token) |
//!
//! -> `sample` f32 `[b, out_channels, t, h, w]` (v-prediction). `b`, `t`, `h`, `w`, `l` are symbolic.
//! There is no video `attention_mask` input: the pipeline always passes ones, which upstream turns
//! into a zero bias (the Burn model covers other masks).
//!
//! Upstream: <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/diffusion/opensora_v1_3/modeling_opensora.py#L26-L289>
//!
//! `osp-export dit --config config.json --weights diffusion_pytorch_model.safetensors.index.json --out dit.bundle`

use std::collections::BTreeMap;
use std::path::Path;

use osp_graphs::config::{manifest_view, OpenSoraT2VConfig};
use osp_graphs::{AttentionKind, BundleManifest, DType, Dim, ModelSpec, Precision, TensorSpec};
use osp_trainer::models::opensora_v1_3::{OpenSoraT2V_v1_3Config, Skiparse, MASK_BIAS};
use tracing::info;

use crate::builder::GraphBuilder;
use crate::bundle::{provenance, BundleWriter};
use crate::error::{Error, Result};
use crate::graph::OnnxGraph;
use crate::options::{ExportOptions, Lowering};
use crate::passes;

use super::ada_layer_norm_single::adaln_single;
use super::attn_processor::SkiparseGrid;
use super::basic_transformer_block::{layer_norm, linear, modulate, transformer_block, BlockConfig, BlockInputs};
use super::patch_embed_2d::patch_embed;
use super::pixart_alpha_text_projection::caption_projection;
use super::rope3d::rope_tables;
use super::weights::DitWeights;

/// Name of the graph in the bundle.
pub const GRAPH_NAME: &str = "transformer";
/// The weights `--precision int8` quantizes: every transformer block's linear layers (attention
/// projections and feed-forward); patch and caption embedding, timestep MLP and `proj_out` stay f32.
pub const INT8_LAYERS: &str = "transformer_blocks.";
/// `norm_out` is built with a fixed eps, whatever `norm_eps` says.
pub(crate) const NORM_OUT_EPS: f64 = 1e-6;

/// The upstream config as the manifest records it (same keys).
pub fn manifest_config(config: &OpenSoraT2V_v1_3Config) -> Result<OpenSoraT2VConfig> {
    manifest_view(config).map_err(|e| Error::Config(format!("DiT config: {e}")))
}

/// The graph's input specs (see the module docs).
pub fn input_specs(config: &OpenSoraT2V_v1_3Config) -> Result<Vec<TensorSpec>> {
    let dims = config.validate()?;
    let s = Dim::sym;
    Ok(vec![
        TensorSpec::new("hidden_states", DType::F32, [s("b"), dims.in_channels.into(), s("t"), s("h"), s("w")]),
        TensorSpec::new("timestep", DType::F32, [s("b")]),
        TensorSpec::new("encoder_hidden_states", DType::F32, [s("b"), 1.into(), s("l"), dims.caption_channels.into()]),
        TensorSpec::new("encoder_attention_mask", DType::F32, [s("b"), 1.into(), s("l")]),
    ])
}

fn check_supported(config: &OpenSoraT2V_v1_3Config) -> Result<()> {
    if config.double_self_attention {
        return Err(Error::Config(
            "OpenSoraT2V: `double_self_attention` = true is not supported by the exporter (the v1.3 release uses false)"
                .into(),
        ));
    }
    Ok(())
}

/// The f32 graph, before precision casting, in the default [`Lowering`].
pub fn build_graph(config: &OpenSoraT2V_v1_3Config, w: &DitWeights, attention: AttentionKind) -> Result<OnnxGraph> {
    build_graph_with(config, w, attention, Lowering::default())
}

/// [`build_graph`] written in the given [`Lowering`].
pub fn build_graph_with(
    config: &OpenSoraT2V_v1_3Config,
    w: &DitWeights,
    attention: AttentionKind,
    lowering: Lowering,
) -> Result<OnnxGraph> {
    check_supported(config)?;
    let dims = config.validate()?;
    if dims != w.dims() {
        return Err(Error::Config("OpenSoraT2V: the weights were checked against another config".into()));
    }
    let d = dims.hidden_size;
    let mut g = GraphBuilder::new(GRAPH_NAME).with_lowering(lowering);
    let specs = input_specs(config)?;
    let hidden_states = g.input(specs[0].clone())?;
    let timestep = g.input(specs[1].clone())?;
    let encoder_hidden_states = g.input(specs[2].clone())?;
    let encoder_attention_mask = g.input(specs[3].clone())?;

    let (tokens, grid) = patch_embed(&mut g, w, &hidden_states, dims.patch_size)?; // [b, n, d]
    let (t6, embedded_timestep) = adaln_single(&mut g, w, &timestep, d)?;
    let caption = caption_projection(&mut g, w, &encoder_hidden_states)?; // [b, l, d]
    let text_bias = g.scoped("encoder_attention_bias", |g| {
        let one = g.scalar(1.0, DType::F32)?;
        let big = g.scalar(MASK_BIAS as f64, DType::F32)?;
        let inv = g.sub(&one, &encoder_attention_mask)?;
        let bias = g.mul(&inv, &big)?; // [b, 1, l]
        Ok(g.unsqueeze(&bias, &[1])) // [b, 1, 1, l]
    })?;
    let d_head = config.attention_head_dim;
    let scales = [config.interpolation_scale_t, config.interpolation_scale_h, config.interpolation_scale_w];
    let rope = rope_tables(&mut g, &grid, d_head, scales)?;

    let kinds: Vec<Skiparse> = (0..config.num_layers).map(|i| config.attention_kind(i)).collect();
    let sparse_n = kinds.iter().map(|k| k.n()).find(|&n| n > 1);
    let skiparse = match sparse_n {
        Some(n) => Some(SkiparseGrid::new(&mut g, &grid, n, &kinds)?),
        None => None,
    };
    let block_cfg = BlockConfig {
        hidden_size: d,
        heads: config.num_attention_heads,
        d_head,
        norm_eps: config.norm_eps,
        gelu_tanh: config.activation_fn == "gelu-approximate",
        attention,
    };
    let inputs = BlockInputs { t6, caption, text_bias, rope, grid, skiparse };
    let mut x = tokens;
    for (i, &kind) in kinds.iter().enumerate() {
        x = transformer_block(&mut g, w, &block_cfg, i, kind, &inputs, &x)?;
    }

    let sample = g.scoped("proj_out", |g| {
        // shift, scale = (scale_shift_table[None] + embedded_timestep[:, None]).chunk(2, dim=1)
        let table = g.initializer("scale_shift_table", w.tensor("scale_shift_table")?)?; // [2, d]
        let table = g.unsqueeze(&table, &[0]);
        let e = g.unsqueeze(&embedded_timestep, &[1]); // [b, 1, d]
        let modulation = g.add(&table, &e)?; // [b, 2, d]
        let rows = g.split(&modulation, 1, &[1, 1])?;
        let normed = layer_norm(g, w, "norm_out", &x, d, NORM_OUT_EPS)?;
        let normed = modulate(g, &normed, &rows[0], &rows[1])?;
        let y = linear(g, w, "proj_out", &normed)?; // [b, n, p * p * c_out]
        unpatchify(g, &y, &inputs.grid, &hidden_states, dims.patch_size, dims.out_channels)
    })?;
    let out_spec = TensorSpec::new(
        "sample",
        DType::F32,
        [Dim::sym("b"), dims.out_channels.into(), Dim::sym("t"), Dim::sym("h"), Dim::sym("w")],
    );
    g.output(&sample, out_spec)?;
    g.finish()
}

/// `[b, n, p * q * c]` -> `[b, c, t, h, w]` (einsum `nthwopqc->nctohpwq` with `o = pt = 1`), through
/// `[b, (t hp), wp, p, q, c]` -> `[b, c, (t hp), p, wp, q]` (rank 6 at most).
pub(crate) fn unpatchify(
    g: &mut GraphBuilder,
    x: &crate::builder::Value,
    grid: &super::patch_embed_2d::Grid,
    hidden_states: &crate::builder::Value,
    p: usize,
    c: usize,
) -> Result<crate::builder::Value> {
    let (p, c) = (p as i64, c as i64);
    let minus_one = g.const_i64(&[-1]);
    let tail = g.const_i64(&[p, p, c]);
    let shape = g.concat(&[&grid.b, &minus_one, &grid.wp, &tail], 0)?;
    let x = g.reshape_to(x, &shape, Some(6));
    let x = g.transpose(&x, &[0, 5, 1, 3, 2, 4])?;
    let thw = g.shape(hidden_states, Some(2), Some(5));
    let channels = g.const_i64(&[c]);
    let shape = g.concat(&[&grid.b, &channels, &thw], 0)?;
    Ok(g.reshape_to(&x, &shape, Some(5)))
}

/// Exports the DiT as a bundle at `out` with one graph, [`GRAPH_NAME`].
pub fn export_opensora_t2v(
    config: &OpenSoraT2V_v1_3Config,
    weights: &DitWeights,
    opts: &ExportOptions,
    out: &Path,
) -> Result<BundleManifest> {
    let mut graph = build_graph_with(config, weights, opts.attention_form(), opts.lowering)?;
    let inner = config.num_attention_heads * config.attention_head_dim;
    let (mut text_graph, mut cached_graph) = super::cached_text::cut_cached_graphs(&graph, config.num_layers, inner)?;
    let int8 = [INT8_LAYERS.to_string()];
    passes::optimize_int8(&mut graph, opts.precision, &int8)?;
    let prov = provenance(opts.source.as_deref())?;
    let model = ModelSpec::OpenSoraT2V(manifest_config(config)?);
    let mut writer = BundleWriter::create(out, model, prov, opts.external_data_threshold_bytes)?;
    let dims = weights.dims();
    let mut metadata = BTreeMap::new();
    metadata.insert("patch_size".to_string(), serde_json::json!(dims.patch_size));
    metadata.insert("patch_size_t".to_string(), serde_json::json!(dims.patch_size_t));
    let layers: Vec<String> = (0..config.num_layers)
        .map(|i| match config.attention_kind(i) {
            Skiparse::Full => "full".to_string(),
            Skiparse::Single(n) => format!("single{n}"),
            Skiparse::Group(n) => format!("group{n}"),
        })
        .collect();
    metadata.insert("layer_attention".to_string(), serde_json::json!(layers));
    writer.add_graph(GRAPH_NAME, &graph, opts.attention_form(), metadata.clone())?;
    drop(graph);
    for (name, g) in
        [(super::cached_text::TEXT_GRAPH, &mut text_graph), (super::cached_text::CACHED_GRAPH, &mut cached_graph)]
    {
        passes::optimize_int8(g, opts.precision, &int8)?;
        writer.add_graph(name, g, opts.attention_form(), metadata.clone())?;
    }
    // int8's per-tensor activation scales depend on the rows a graph sees, so sequence shards
    // could not equal one device: int8 bundles carry no parallel segments.
    if opts.precision != Precision::Int8 {
        super::segments::add_segments(&mut writer, config, weights, opts)?;
    }
    let manifest = writer.finish()?;
    info!(bundle = %out.display(), attention = %opts.attention_form(), precision = %opts.precision, lowering = %opts.lowering, layers = config.num_layers, "exported OpenSoraT2V v1.3");
    Ok(manifest)
}
