//! diffusers `PixArtAlphaTextProjection` (`caption_projection`): `linear_2(gelu_tanh(linear_1(x)))`,
//! projecting the mT5 states `[b, 1, l, caption_channels]` to `[b, l, d]`.
//!
//! diffusers 0.30.2 `models/embeddings.py::PixArtAlphaTextProjection`; used at
//! <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/diffusion/opensora_v1_3/modeling_opensora.py#L74-L76>.

use crate::builder::{GraphBuilder, Value};
use crate::error::Result;

use super::weights::DitWeights;

/// `[b, 1, l, caption_channels]` -> `[b, l, d]`.
pub(crate) fn caption_projection(g: &mut GraphBuilder, w: &DitWeights, caption: &Value) -> Result<Value> {
    g.scoped("caption_projection", |g| {
        let p = |g: &mut GraphBuilder, key: &str| g.initializer(key, w.tensor(key)?);
        let x = g.squeeze(caption, &[1]); // [b, l, caption_channels]
        let (w1, b1) = (p(g, "caption_projection.linear_1.weight")?, p(g, "caption_projection.linear_1.bias")?);
        let (w2, b2) = (p(g, "caption_projection.linear_2.weight")?, p(g, "caption_projection.linear_2.bias")?);
        let h = g.linear(&x, &w1, Some(&b1))?;
        let h = g.gelu_tanh(&h)?;
        g.linear(&h, &w2, Some(&b2))
    })
}
