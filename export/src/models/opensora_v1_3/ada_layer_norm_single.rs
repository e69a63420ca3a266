//! diffusers `AdaLayerNormSingle` with its `PixArtAlphaCombinedTimestepSizeEmbeddings`
//! (`Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)` + `TimestepEmbedding`):
//! `embedded_timestep = linear_2(silu(linear_1([cos(t f), sin(t f)])))`,
//! `t6 = linear(silu(embedded_timestep))`.
//!
//! The sinusoid is computed in f32 whatever the graph precision (keep-f32 nodes): timesteps reach
//! 999, where an f16 angle would be off by up to 0.25 rad.
//!
//! diffusers 0.30.2 `models/normalization.py::AdaLayerNormSingle`, `models/embeddings.py`.

use crate::builder::{GraphBuilder, Value};
use crate::error::Result;

use super::weights::DitWeights;

/// Channels of the sinusoidal timestep projection.
const TIMESTEP_CHANNELS: usize = 256;

/// `timestep` `[b]` -> (`t6` `[b, 6, d]`, `embedded_timestep` `[b, d]`).
pub(crate) fn adaln_single(g: &mut GraphBuilder, w: &DitWeights, timestep: &Value, d: usize) -> Result<(Value, Value)> {
    g.scoped("adaln_single", |g| {
        let half = TIMESTEP_CHANNELS / 2;
        let ln_period = 10000f64.ln() as f32;
        // the same f32 arithmetic as diffusers' get_timestep_embedding (and the Burn port)
        let freqs: Vec<f32> = (0..half).map(|i| (-ln_period * i as f32 / half as f32).exp()).collect();
        let features = g.in_f32(|g| {
            let t = g.unsqueeze(timestep, &[1]); // [b, 1]
            let f = g.const_f32(&freqs);
            let angles = g.mul(&t, &f)?; // [b, half]
            let cos = g.cos(&angles)?;
            let sin = g.sin(&angles)?;
            g.concat(&[&cos, &sin], 1) // [b, 256]
        })?;
        let p = |g: &mut GraphBuilder, key: &str| g.initializer(key, w.tensor(key)?);
        let prefix = "adaln_single.emb.timestep_embedder";
        let (w1, b1) = (p(g, &format!("{prefix}.linear_1.weight"))?, p(g, &format!("{prefix}.linear_1.bias"))?);
        let (w2, b2) = (p(g, &format!("{prefix}.linear_2.weight"))?, p(g, &format!("{prefix}.linear_2.bias"))?);
        let h = g.linear(&features, &w1, Some(&b1))?;
        let h = g.silu(&h)?;
        let embedded = g.linear(&h, &w2, Some(&b2))?; // [b, d]
        let (wl, bl) = (p(g, "adaln_single.linear.weight")?, p(g, "adaln_single.linear.bias")?);
        let act = g.silu(&embedded)?;
        let t6 = g.linear(&act, &wl, Some(&bl))?; // [b, 6 d]
        let t6 = g.reshape(&t6, &[0, 6, d as i64]);
        Ok((t6, embedded))
    })
}
