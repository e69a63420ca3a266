//! `PatchEmbed2D`: per-frame `Conv2d(in -> d, kernel = stride = patch_size)`, lowered as one 5-D
//! `Conv` with kernel `[1, p, p]` (the 4-D PyTorch weight is unsqueezed in-graph, which backends
//! constant-fold), giving tokens in (t, h, w) row-major order. No position embedding is added.
//!
//! Upstream: <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/diffusion/common.py#L20-L41>

use crate::builder::{ConvOptions, GraphBuilder, Value};
use crate::error::Result;

use super::weights::DitWeights;

/// The symbolic sizes of one call, each a 1-D i64 `[1]` value.
#[derive(Debug, Clone)]
pub(crate) struct Grid {
    pub b: Value,
    /// Latent frames.
    pub t: Value,
    /// Patches along height and width.
    pub hp: Value,
    pub wp: Value,
    /// Tokens, `t * hp * wp`.
    pub n: Value,
}

/// `[b, c, t, h, w]` -> tokens `[b, n, d]` and the grid.
pub(crate) fn patch_embed(g: &mut GraphBuilder, w: &DitWeights, latent: &Value, p: usize) -> Result<(Value, Grid)> {
    g.scoped("pos_embed", |g| {
        let weight = g.initializer("pos_embed.proj.weight", w.tensor("pos_embed.proj.weight")?)?; // [d, c, p, p]
        let bias = g.initializer("pos_embed.proj.bias", w.tensor("pos_embed.proj.bias")?)?;
        let weight = g.unsqueeze(&weight, &[2]); // [d, c, 1, p, p]
        let p = p as i64;
        let opts = ConvOptions { strides: vec![1, p, p], ..Default::default() };
        let y = g.conv(latent, &weight, Some(&bias), &opts)?; // [b, d, t, hp, wp]
        let dim = |g: &mut GraphBuilder, i: i64| g.shape(&y, Some(i), Some(i + 1));
        let grid_b = dim(g, 0);
        let t = dim(g, 2);
        let hp = dim(g, 3);
        let wp = dim(g, 4);
        let hw = g.mul(&hp, &wp)?;
        let n = g.mul(&t, &hw)?;
        let tokens = g.reshape(&y, &[0, 0, -1]); // [b, d, n]
        let tokens = g.transpose(&tokens, &[0, 2, 1])?; // [b, n, d]
        Ok((tokens, Grid { b: grid_b, t, hp, wp, n }))
    })
}
