//! The DiT split into sequence-parallel segments (DeepSpeed-Ulysses style), exported beside the
//! single `transformer` graph and sharing its weights: `sp_pre`, per block `sp_block{i}_qkv` and
//! `sp_block{i}_post`, one `sp_core_{kind}_p{P}` per attention kind (full, single{n}, group{n}) and
//! degree on a head shard, `sp_pack_qkv` / `sp_unpack_attn` around the exchanges, and `sp_final`. The protocol a runtime follows is [`osp_graphs::dit_parallel`], stored on
//! `sp_pre`'s metadata.
//!
//! Upstream shards the same way (all-to-all before and after each self-attention, RoPE and the
//! Skiparse regrouping on the whole sequence):
//! <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/diffusion/opensora_v1_3/modules.py#L128-L312>
//!
//! A core reads its head shard as `[b, N, heads/P * d_head]` rows, the layout the single graph's
//! attention reads, so it fixes `heads/P` and there is one core per kind and degree (a divisor of
//! the heads). Between the segments values keep the single graph's layouts; only degrees above 1
//! pack them for the exchanges (`sp_pack_qkv`, `sp_unpack_attn`), so degree 1 copies nothing the
//! single graph does not.

use std::collections::BTreeMap;

use osp_graphs::dit_parallel::{io, DitSegments, FramePadding, SegmentLayer, SEGMENTS_METADATA_KEY};
use osp_graphs::{AttentionKind, DType, Dim, TensorSpec};
use osp_trainer::models::opensora_v1_3::{OpenSoraT2V_v1_3Config, Skiparse, MASK_BIAS};

use crate::builder::{AttentionSpec, GraphBuilder, Value};
use crate::bundle::BundleWriter;
use crate::error::{Error, Result};
use crate::graph::OnnxGraph;
use crate::passes;

use super::ada_layer_norm_single::adaln_single;
use super::attn_processor::{self_attention, SkiparseGrid};
use super::basic_transformer_block::{gelu_erf, layer_norm, linear, modulate};
use super::modeling_opensora::{input_specs, unpatchify, NORM_OUT_EPS};
use super::patch_embed_2d::{patch_embed, Grid};
use super::pixart_alpha_text_projection::caption_projection;
use super::rope3d::{apply_rope, rope_tables};
use super::weights::DitWeights;

pub const PRE_GRAPH: &str = "sp_pre";
pub const FINAL_GRAPH: &str = "sp_final";
pub const PACK_GRAPH: &str = "sp_pack_qkv";
pub const UNPACK_GRAPH: &str = "sp_unpack_attn";

/// The manifest name of a layer kind (`full`, `single{n}`, `group{n}`).
pub fn kind_name(kind: Skiparse) -> String {
    match kind {
        Skiparse::Full => "full".to_string(),
        Skiparse::Single(n) => format!("single{n}"),
        Skiparse::Group(n) => format!("group{n}"),
    }
}

/// The sequence-parallel degrees of `heads` heads: its divisors.
fn degrees(heads: usize) -> impl Iterator<Item = usize> {
    (1..=heads).filter(move |p| heads % p == 0)
}

/// The protocol of `config`'s segments.
pub fn segments_protocol(config: &OpenSoraT2V_v1_3Config) -> Result<DitSegments> {
    let dims = config.validate()?;
    let layers = (0..config.num_layers)
        .map(|i| {
            let kind = config.attention_kind(i);
            SegmentLayer {
                attention: kind_name(kind),
                qkv: format!("sp_block{i}_qkv"),
                cores: degrees(config.num_attention_heads)
                    .map(|p| (p, format!("sp_core_{}_p{p}", kind_name(kind))))
                    .collect(),
                post: format!("sp_block{i}_post"),
            }
        })
        .collect();
    Ok(DitSegments {
        heads: config.num_attention_heads,
        head_dim: config.attention_head_dim,
        hidden_size: dims.hidden_size,
        patch_size: dims.patch_size,
        padding: FramePadding::ZeroFramesAtEnd,
        pre: PRE_GRAPH.to_string(),
        layers,
        pack_qkv: PACK_GRAPH.to_string(),
        unpack_attn: UNPACK_GRAPH.to_string(),
        final_graph: FINAL_GRAPH.to_string(),
    })
}

fn f32_spec(name: &str, dims: Vec<Dim>) -> TensorSpec {
    TensorSpec::new(name, DType::F32, dims)
}

fn s(name: &str) -> Dim {
    Dim::sym(name)
}

/// The block's six modulation rows `[b, 1, d]` from its `scale_shift_table` and `t6`.
fn block_rows(g: &mut GraphBuilder, w: &DitWeights, i: usize, t6: &Value) -> Result<Vec<Value>> {
    let key = format!("transformer_blocks.{i}.scale_shift_table");
    let table = g.initializer(&key, w.tensor(&key)?)?; // [6, d]
    let table = g.unsqueeze(&table, &[0]);
    let modulation = g.add(&table, t6)?; // [b, 6, d]
    g.split(&modulation, 1, &[1; 6])
}

/// `encoder_attention_mask` `[b, 1, l]` -> key bias `[b, 1, 1, l]` (as the single graph).
fn text_bias(g: &mut GraphBuilder, mask: &Value) -> Result<Value> {
    g.scoped("encoder_attention_bias", |g| {
        let one = g.scalar(1.0, DType::F32)?;
        let big = g.scalar(MASK_BIAS as f64, DType::F32)?;
        let inv = g.sub(&one, mask)?;
        let bias = g.mul(&inv, &big)?;
        Ok(g.unsqueeze(&bias, &[1]))
    })
}

fn pre_graph(config: &OpenSoraT2V_v1_3Config, w: &DitWeights) -> Result<OnnxGraph> {
    let dims = config.validate()?;
    let d = dims.hidden_size;
    let mut g = GraphBuilder::new(PRE_GRAPH);
    let specs = input_specs(config)?;
    let hidden_states = g.input(specs[0].clone())?;
    let timestep = g.input(specs[1].clone())?;
    let encoder_hidden_states = g.input(specs[2].clone())?;
    let encoder_attention_mask = g.input(specs[3].clone())?;
    let (tokens, _) = patch_embed(&mut g, w, &hidden_states, dims.patch_size)?;
    let (t6, embedded) = adaln_single(&mut g, w, &timestep, d)?;
    let caption = caption_projection(&mut g, w, &encoder_hidden_states)?;
    let bias = text_bias(&mut g, &encoder_attention_mask)?;
    g.output(&tokens, f32_spec(io::TOKENS, vec![s("b"), s("m"), d.into()]))?;
    g.output(&t6, f32_spec(io::T6, vec![s("b"), 6.into(), d.into()]))?;
    g.output(&embedded, f32_spec(io::EMBEDDED_TIMESTEP, vec![s("b"), d.into()]))?;
    g.output(&caption, f32_spec(io::CAPTION, vec![s("b"), s("l"), d.into()]))?;
    g.output(&bias, f32_spec(io::TEXT_BIAS, vec![s("b"), 1.into(), 1.into(), s("l")]))?;
    g.finish()
}

fn qkv_graph(config: &OpenSoraT2V_v1_3Config, w: &DitWeights, i: usize, name: &str) -> Result<OnnxGraph> {
    let d = config.validate()?.hidden_size;
    let inner = config.num_attention_heads * config.attention_head_dim;
    let mut g = GraphBuilder::new(name);
    let x = g.input(f32_spec(io::TOKENS, vec![s("b"), s("m"), d.into()]))?;
    let t6 = g.input(f32_spec(io::T6, vec![s("b"), 6.into(), d.into()]))?;
    let p = format!("transformer_blocks.{i}");
    let rows = block_rows(&mut g, w, i, &t6)?;
    let normed = layer_norm(&mut g, w, &format!("{p}.norm1"), &x, d, config.norm_eps)?;
    let normed = modulate(&mut g, &normed, &rows[0], &rows[1])?;
    for (proj, out) in [("to_q", io::Q), ("to_k", io::K), ("to_v", io::V)] {
        let y = linear(&mut g, w, &format!("{p}.attn1.{proj}"), &normed)?; // [b, m, inner]
        g.output(&y, f32_spec(out, vec![s("b"), s("m"), inner.into()]))?;
    }
    g.finish()
}

/// `q`, `k`, `v` `[b, m, inner]` -> `qkv` `[P, 3, b, m, heads/P, dh]` (chunk `j` = head group `j`).
fn pack_graph(config: &OpenSoraT2V_v1_3Config) -> Result<OnnxGraph> {
    let inner = config.num_attention_heads * config.attention_head_dim;
    let dh = config.attention_head_dim;
    let mut g = GraphBuilder::new(PACK_GRAPH);
    let mut parts = vec![];
    for name in [io::Q, io::K, io::V] {
        let x = g.input(f32_spec(name, vec![s("b"), s("m"), inner.into()]))?;
        parts.push(g.unsqueeze(&x, &[0]));
    }
    let degree = g.input(TensorSpec::new(io::SP_DEGREE, DType::I64, [1.into()]))?;
    let bm = g.shape(&parts[0], Some(1), Some(3));
    let qkv = g.concat(&[&parts[0], &parts[1], &parts[2]], 0)?; // [3, b, m, inner]
    let three = g.const_i64(&[3]);
    let tail = g.const_i64(&[-1, dh as i64]);
    let shape = g.concat(&[&three, &bm, &degree, &tail], 0)?;
    let qkv = g.reshape_to(&qkv, &shape, Some(6)); // [3, b, m, P, heads/P, dh]
    let qkv = g.transpose(&qkv, &[3, 0, 1, 2, 4, 5])?; // [P, 3, b, m, heads/P, dh]
    let out = f32_spec(io::QKV, vec![s("p"), 3.into(), s("b"), s("m"), s("hp"), dh.into()]);
    g.output(&qkv, out)?;
    g.finish()
}

/// `attn` as received `[P, b, m, heads/P, dh]` (chunk `j` = head group `j`) -> `attn_rows`
/// `[b, m, heads * dh]`.
fn unpack_graph(config: &OpenSoraT2V_v1_3Config) -> Result<OnnxGraph> {
    let inner = config.num_attention_heads * config.attention_head_dim;
    let dh = config.attention_head_dim;
    let mut g = GraphBuilder::new(UNPACK_GRAPH);
    let attn = g.input(f32_spec(io::ATTN, vec![s("p"), s("b"), s("m"), s("hp"), dh.into()]))?;
    let a = g.transpose(&attn, &[1, 2, 0, 3, 4])?; // [b, m, P, heads/P, dh]
    let a = g.reshape(&a, &[0, 0, inner as i64]);
    g.output(&a, f32_spec(io::ATTN_ROWS, vec![s("b"), s("m"), inner.into()]))?;
    g.finish()
}

fn core_graph(
    config: &OpenSoraT2V_v1_3Config,
    kind: Skiparse,
    attention: AttentionKind,
    degree: usize,
    name: &str,
) -> Result<OnnxGraph> {
    let dh = config.attention_head_dim;
    let heads = config.num_attention_heads / degree;
    let inner = heads * dh;
    let mut g = GraphBuilder::new(name);
    // degree 1: the qkv segment's rows as they are (no padding: the whole latent is one shard)
    let (packed, rows_in) = if degree == 1 {
        let mut rows = vec![];
        for name in [io::Q, io::K, io::V] {
            rows.push(g.input(f32_spec(name, vec![s("b"), s("m"), inner.into()]))?);
        }
        (None, rows)
    } else {
        let spec = f32_spec(io::QKV, vec![degree.into(), 3.into(), s("b"), s("m"), heads.into(), dh.into()]);
        (Some(g.input(spec)?), vec![])
    };
    let grid_in = g.input(TensorSpec::new(io::GRID, DType::I64, [3.into()]))?;
    let part = |g: &mut GraphBuilder, i: i64| g.slice(&grid_in, &[i], &[i + 1], &[0], None);
    let t = part(&mut g, 0)?;
    let hp = part(&mut g, 1)?;
    let wp = part(&mut g, 2)?;
    let hw = g.mul(&hp, &wp)?;
    let n = g.mul(&t, &hw)?;
    let qkv_rows = match &packed {
        None => rows_in,
        Some(qkv) => {
            // [P, 3, b, m, heads/P, dh] -> [3, b, P * m, heads/P * dh]: shard s's tokens follow shard s - 1's
            let x = g.transpose(qkv, &[1, 2, 0, 3, 4, 5])?;
            let x = g.reshape(&x, &[3, 0, -1, inner as i64]);
            // q, k and v of the real tokens only: padded tokens are never keys
            let axes = g.const_i64(&[0, 2]);
            let mut rows = vec![];
            for j in 0..3 {
                let start = g.const_i64(&[j, 0]);
                let j1 = g.const_i64(&[j + 1]);
                let end = g.concat(&[&j1, &n], 0)?;
                let sliced = g.slice_with(&x, &start, &end, &axes, None);
                rows.push(g.squeeze(&sliced, &[0])); // [b, N, heads/P * dh]
            }
            rows
        }
    };
    let b = g.shape(&qkv_rows[0], Some(0), Some(1));
    let grid = Grid { b: b.clone(), t, hp, wp, n: n.clone() };
    let scales = [config.interpolation_scale_t, config.interpolation_scale_h, config.interpolation_scale_w];
    let rope = rope_tables(&mut g, &grid, dh, scales)?;
    let q = apply_rope(&mut g, &rope, &qkv_rows[0], heads, dh)?;
    let k = apply_rope(&mut g, &rope, &qkv_rows[1], heads, dh)?;
    let skiparse = match kind {
        Skiparse::Full => None,
        _ => Some(SkiparseGrid::new(&mut g, &grid, kind.n(), &[kind])?),
    };
    let spec = AttentionSpec { kind: attention, num_heads: heads, scale: 1.0 / (dh as f64).sqrt() };
    let o = self_attention(&mut g, &spec, &grid, skiparse.as_ref(), kind, (&q, &k, &qkv_rows[2]), inner)?;
    let Some(qkv) = packed else {
        g.output(&o, f32_spec(io::ATTN, vec![s("b"), s("m"), inner.into()]))?;
        return g.finish();
    };
    let dim = |g: &mut GraphBuilder, i: i64| g.shape(&qkv, Some(i), Some(i + 1));
    let p = dim(&mut g, 0);
    let m = dim(&mut g, 3);
    let pm = g.mul(&p, &m)?;
    // zero rows for the padded tokens (fewer than m: every rank holds a real frame)
    let padded = g.sub(&pm, &n)?;
    let inner_v = g.const_i64(&[inner as i64]);
    let zshape = g.concat(&[&b, &padded, &inner_v], 0)?;
    let zf = g.scalar(0.0, DType::F32)?;
    let zeros = g.expand(&zf, &zshape, Some(3));
    let o = g.concat(&[&o, &zeros], 1)?; // [b, P * m, inner]
    let tail = g.const_i64(&[heads as i64, dh as i64]);
    let shape = g.concat(&[&b, &p, &m, &tail], 0)?;
    let o = g.reshape_to(&o, &shape, Some(5)); // [b, P, m, heads/P, dh]
    let o = g.transpose(&o, &[1, 0, 2, 3, 4])?; // [P, b, m, heads/P, dh]
    g.output(&o, f32_spec(io::ATTN, vec![degree.into(), s("b"), s("m"), heads.into(), dh.into()]))?;
    g.finish()
}

fn post_graph(
    config: &OpenSoraT2V_v1_3Config,
    w: &DitWeights,
    i: usize,
    attention: AttentionKind,
    name: &str,
) -> Result<OnnxGraph> {
    let d = config.validate()?.hidden_size;
    let (heads, dh) = (config.num_attention_heads, config.attention_head_dim);
    let mut g = GraphBuilder::new(name);
    let x = g.input(f32_spec(io::TOKENS, vec![s("b"), s("m"), d.into()]))?;
    let a = g.input(f32_spec(io::ATTN, vec![s("b"), s("m"), (heads * dh).into()]))?;
    let t6 = g.input(f32_spec(io::T6, vec![s("b"), 6.into(), d.into()]))?;
    let caption = g.input(f32_spec(io::CAPTION, vec![s("b"), s("l"), d.into()]))?;
    let bias = g.input(f32_spec(io::TEXT_BIAS, vec![s("b"), 1.into(), 1.into(), s("l")]))?;
    let p = format!("transformer_blocks.{i}");
    let rows = block_rows(&mut g, w, i, &t6)?;
    let spec = AttentionSpec { kind: attention, num_heads: heads, scale: 1.0 / (dh as f64).sqrt() };
    let o = linear(&mut g, w, &format!("{p}.attn1.to_out.0"), &a)?;
    let gated = g.mul(&rows[2], &o)?;
    let x = g.add(&x, &gated)?;
    let q = linear(&mut g, w, &format!("{p}.attn2.to_q"), &x)?;
    let k = linear(&mut g, w, &format!("{p}.attn2.to_k"), &caption)?;
    let v = linear(&mut g, w, &format!("{p}.attn2.to_v"), &caption)?;
    let o = g.attention(&spec, &q, &k, &v, Some(&bias))?;
    let cross = linear(&mut g, w, &format!("{p}.attn2.to_out.0"), &o)?;
    let x = g.add(&x, &cross)?;
    let normed = layer_norm(&mut g, w, &format!("{p}.norm2"), &x, d, config.norm_eps)?;
    let normed = modulate(&mut g, &normed, &rows[3], &rows[4])?;
    let up = linear(&mut g, w, &format!("{p}.ff.net.0.proj"), &normed)?;
    let act = if config.activation_fn == "gelu-approximate" { g.gelu_tanh(&up)? } else { gelu_erf(&mut g, &up)? };
    let ff = linear(&mut g, w, &format!("{p}.ff.net.2"), &act)?;
    let gated = g.mul(&rows[5], &ff)?;
    let y = g.add(&x, &gated)?;
    g.output(&y, f32_spec(io::OUT, vec![s("b"), s("m"), d.into()]))?;
    g.finish()
}

fn final_graph(config: &OpenSoraT2V_v1_3Config, w: &DitWeights) -> Result<OnnxGraph> {
    let dims = config.validate()?;
    let d = dims.hidden_size;
    let mut g = GraphBuilder::new(FINAL_GRAPH);
    let x = g.input(f32_spec(io::TOKENS, vec![s("b"), s("m"), d.into()]))?;
    let embedded = g.input(f32_spec(io::EMBEDDED_TIMESTEP, vec![s("b"), d.into()]))?;
    let hidden_states = g.input(input_specs(config)?[0].clone())?;
    let dim = |g: &mut GraphBuilder, i: i64| g.shape(&hidden_states, Some(i), Some(i + 1));
    let (b, t, h, wd) = (dim(&mut g, 0), dim(&mut g, 2), dim(&mut g, 3), dim(&mut g, 4));
    let patch = g.const_i64(&[dims.patch_size as i64]);
    let hp = g.div(&h, &patch)?;
    let wp = g.div(&wd, &patch)?;
    let hw = g.mul(&hp, &wp)?;
    let n = g.mul(&t, &hw)?;
    let grid = Grid { b, t, hp, wp, n };
    let table = g.initializer("scale_shift_table", w.tensor("scale_shift_table")?)?; // [2, d]
    let table = g.unsqueeze(&table, &[0]);
    let e = g.unsqueeze(&embedded, &[1]);
    let modulation = g.add(&table, &e)?;
    let rows = g.split(&modulation, 1, &[1, 1])?;
    let normed = layer_norm(&mut g, w, "norm_out", &x, d, NORM_OUT_EPS)?;
    let normed = modulate(&mut g, &normed, &rows[0], &rows[1])?;
    let y = linear(&mut g, w, "proj_out", &normed)?;
    let sample = unpatchify(&mut g, &y, &grid, &hidden_states, dims.patch_size, dims.out_channels)?;
    let out = f32_spec(io::SAMPLE, vec![s("b"), dims.out_channels.into(), s("t"), s("h"), s("w")]);
    g.output(&sample, out)?;
    g.finish()
}

/// Every segment graph of `config`, by name, in protocol order (cores once per kind and degree).
pub fn build_segments(
    config: &OpenSoraT2V_v1_3Config,
    w: &DitWeights,
    attention: AttentionKind,
) -> Result<(DitSegments, Vec<(String, OnnxGraph)>)> {
    if config.validate()? != w.dims() {
        return Err(Error::Config("OpenSoraT2V: the weights were checked against another config".into()));
    }
    let protocol = segments_protocol(config)?;
    let mut graphs = vec![(PRE_GRAPH.to_string(), pre_graph(config, w)?)];
    for (i, layer) in protocol.layers.iter().enumerate() {
        graphs.push((layer.qkv.clone(), qkv_graph(config, w, i, &layer.qkv)?));
        for (&degree, core) in &layer.cores {
            if !graphs.iter().any(|(n, _)| n == core) {
                graphs.push((core.clone(), core_graph(config, config.attention_kind(i), attention, degree, core)?));
            }
        }
        graphs.push((layer.post.clone(), post_graph(config, w, i, attention, &layer.post)?));
    }
    graphs.push((PACK_GRAPH.to_string(), pack_graph(config)?));
    graphs.push((UNPACK_GRAPH.to_string(), unpack_graph(config)?));
    graphs.push((FINAL_GRAPH.to_string(), final_graph(config, w)?));
    Ok((protocol, graphs))
}

/// Adds the segment graphs to a DiT bundle being written (after the `transformer` graph, so their
/// initializers point into its data file).
pub fn add_segments(
    writer: &mut BundleWriter,
    config: &OpenSoraT2V_v1_3Config,
    w: &DitWeights,
    opts: &crate::options::ExportOptions,
) -> Result<DitSegments> {
    let (protocol, graphs) = build_segments(config, w, opts.attention_form())?;
    let value = serde_json::to_value(&protocol).map_err(|e| Error::Config(format!("dit_segments: {e}")))?;
    for (name, mut graph) in graphs {
        passes::optimize(&mut graph, opts.precision)?;
        let mut metadata = BTreeMap::new();
        if name == PRE_GRAPH {
            metadata.insert(SEGMENTS_METADATA_KEY.to_string(), value.clone());
        }
        writer.add_graph(&name, &graph, opts.attention_form(), metadata)?;
    }
    Ok(protocol)
}
