//! `RoPE3D`: rotary position embedding over (t, y, x) latent-patch positions, applied to
//! self-attention queries and keys before any Skiparse regrouping.
//!
//! Upstream: <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/diffusion/common.py#L44-L112>
//!
//! The cos/sin tables are computed in-graph from the symbolic grid (`Range` over t, hp, wp), so one
//! graph serves every video size. Each head splits into three chunks `[t | y | x]` of size `D`;
//! chunk `c` is rotated by `pos_c / interpolation_scale_c * 10000^(-2j/D)` with the NeoX
//! "rotate_half" pairing (`x * cos + cat(-x2, x1) * sin`). Angles, cos and sin are keep-f32 nodes
//! (upstream rounds the angles to the model dtype in f16 inference; f32 is the more exact choice).

use osp_graphs::DType;

use crate::builder::{GraphBuilder, Value};
use crate::error::Result;

use super::patch_embed_2d::Grid;

/// Frequency base of the rotation.
const ROPE_BASE: f32 = 10000.0;

/// cos/sin rows for every token, `[1, n, 1, d_head]` f32.
#[derive(Debug, Clone)]
pub(crate) struct RopeTables {
    cos: Value,
    sin: Value,
}

/// `[size]` angles of one axis: `pos / scale * inv_freq`, duplicated to `[size, dim]` (`cat(freqs, freqs)`).
fn axis_angles(g: &mut GraphBuilder, size: &Value, dim: usize, scale: f64) -> Result<Value> {
    // the same f32 arithmetic as RoPE3D.get_cos_sin (and the Burn port)
    let inv_freq: Vec<f32> = (0..dim).step_by(2).map(|j| 1.0 / ROPE_BASE.powf(j as f32 / dim as f32)).collect();
    let zero = g.constant(&crate::tensor::HostTensor::from_i64(vec![], &[0])?);
    let one = g.constant(&crate::tensor::HostTensor::from_i64(vec![], &[1])?);
    let limit = g.squeeze(size, &[0]);
    let pos = g.node("Range", "", &[Some(&zero), Some(&limit), Some(&one)], vec![], &[(DType::I64, Some(1))]).remove(0);
    let pos = g.cast(&pos, DType::F32);
    let s = g.scalar(scale, DType::F32)?;
    let pos = g.div(&pos, &s)?;
    let pos = g.unsqueeze(&pos, &[1]); // [size, 1]
    let f = g.const_f32(&inv_freq);
    let angles = g.mul(&pos, &f)?; // [size, dim / 2]
    g.concat(&[&angles, &angles], 1)
}

/// Tables for the token grid and heads of `d_head` (a multiple of 6).
pub(crate) fn rope_tables(
    g: &mut GraphBuilder,
    grid: &Grid,
    d_head: usize,
    scales_thw: [f64; 3],
) -> Result<RopeTables> {
    g.scoped("rope", |g| {
        g.in_f32(|g| {
            let dim = d_head / 3;
            let at = axis_angles(g, &grid.t, dim, scales_thw[0])?;
            let ay = axis_angles(g, &grid.hp, dim, scales_thw[1])?;
            let ax = axis_angles(g, &grid.wp, dim, scales_thw[2])?;
            let at = g.unsqueeze(&at, &[1, 2]); // [t, 1, 1, dim]
            let ay = g.unsqueeze(&ay, &[0, 2]); // [1, hp, 1, dim]
            let ax = g.unsqueeze(&ax, &[0, 1]); // [1, 1, wp, dim]
            let last = g.const_i64(&[dim as i64]);
            let shape = g.concat(&[&grid.t, &grid.hp, &grid.wp, &last], 0)?;
            let at = g.expand(&at, &shape, Some(4));
            let ay = g.expand(&ay, &shape, Some(4));
            let ax = g.expand(&ax, &shape, Some(4));
            let angles = g.concat(&[&at, &ay, &ax], 3)?; // [t, hp, wp, d_head]
            let angles = g.reshape(&angles, &[1, -1, 1, d_head as i64]); // [1, n, 1, d_head]
            let cos = g.cos(&angles)?;
            let sin = g.sin(&angles)?;
            Ok(RopeTables { cos, sin })
        })
    })
}

/// Rotates `x` `[b, n, heads * d_head]`.
pub(crate) fn apply_rope(
    g: &mut GraphBuilder,
    tables: &RopeTables,
    x: &Value,
    heads: usize,
    d_head: usize,
) -> Result<Value> {
    let (h, dh, half) = (heads as i64, d_head as i64, (d_head / 6) as i64);
    let x4 = g.reshape(x, &[0, 0, h, dh]);
    // rotate_half inside each of the 3 chunks: [.., 3, 2, half] -> cat(-x2, x1)
    let parts = g.reshape(x, &[0, 0, h, 3, 2, half]);
    let halves = g.split(&parts, 4, &[1, 1])?;
    let neg = g.neg(&halves[1])?;
    let rotated = g.concat(&[&neg, &halves[0]], 4)?;
    let rotated = g.reshape(&rotated, &[0, 0, h, dh]);
    let a = g.mul(&x4, &tables.cos)?;
    let r = g.mul(&rotated, &tables.sin)?;
    let y = g.add(&a, &r)?;
    Ok(g.reshape(&y, &[0, 0, h * dh]))
}
