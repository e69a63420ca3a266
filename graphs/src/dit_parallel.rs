//! The DiT's sequence-parallel segments as a protocol a runtime follows (DeepSpeed-Ulysses style):
//! the graphs between the all-to-all points, the attention cores on a head shard, and the rules of
//! the split, typed and checked in one place (like [`crate::vae::VaeStreaming`]).
//!
//! With degree `P` (dividing `heads`) and `G` CFG groups, rank `(g, s)` takes batch rows
//! `g * b/G ..` and latent frames `s * t_local .. (s + 1) * t_local` of the zero-padded latent
//! (`t_local = ceil(t / P)`, `P * t_local - t` zero frames appended at the end; every rank must hold
//! at least one real frame). Per call:
//!
//! 1. `pre` on the local frames -> `tokens` `[b, m, d]` (`m = t_local * hp * wp`), `t6`,
//!    `embedded_timestep`, `caption`, `text_bias` (the last four are the same on every rank);
//! 2. per layer `i`: `qkv` (`tokens`, `t6`) -> `q`, `k`, `v` `[b, m, heads * d_head]`; then
//!    - at `P = 1` (nothing to exchange): the layer's core `cores[1]` (`q`, `k`, `v`, `grid` =
//!      `[t, hp, wp]` of the latent) -> `attn` `[b, m, heads * d_head]`, the single graph's layouts;
//!    - at `P > 1`: `pack_qkv` (`q`, `k`, `v`, `sp_degree`) -> `qkv` `[P, 3, b, m, heads/P,
//!      d_head]` (chunk `j` holds head group `j`); all-to-all; `cores[P]` (`qkv` as received, chunk
//!      `i` = sequence shard `i`; `grid` of the real latent) -> `attn` `[P, b, m, heads/P, d_head]`
//!      (chunk `j` = sequence shard `j`; padded tokens are sliced off before RoPE and attention, so
//!      they never act as keys, and zero-filled after); all-to-all; `unpack_attn` (`attn` as
//!      received) -> `attn_rows` `[b, m, heads * d_head]`;
//!
//!    then `post` (`tokens`, `attn` = those rows, `t6`, `caption`, `text_bias`) -> `out`, the next
//!    `tokens` (cross-attention keeps the whole text on every rank);
//! 3. `final` (`tokens`, `embedded_timestep`, the local `hidden_states`) -> `sample` of the local
//!    frames; all-gather over the sequence group, drop the padded frames, concatenate the CFG groups.
//!
//! All segment graphs share the single `transformer` graph's weights (same initializer names).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::manifest::GraphSpec;

/// Metadata key under which the `pre` segment graph stores the [`DitSegments`] protocol.
pub const SEGMENTS_METADATA_KEY: &str = "dit_segments";

/// Segment graph I/O names.
pub mod io {
    pub const HIDDEN_STATES: &str = "hidden_states";
    pub const TIMESTEP: &str = "timestep";
    pub const ENCODER_HIDDEN_STATES: &str = "encoder_hidden_states";
    pub const ENCODER_ATTENTION_MASK: &str = "encoder_attention_mask";
    pub const TOKENS: &str = "tokens";
    pub const T6: &str = "t6";
    pub const EMBEDDED_TIMESTEP: &str = "embedded_timestep";
    pub const CAPTION: &str = "caption";
    pub const TEXT_BIAS: &str = "text_bias";
    pub const SP_DEGREE: &str = "sp_degree";
    pub const Q: &str = "q";
    pub const K: &str = "k";
    pub const V: &str = "v";
    pub const QKV: &str = "qkv";
    pub const GRID: &str = "grid";
    pub const ATTN: &str = "attn";
    pub const ATTN_ROWS: &str = "attn_rows";
    pub const OUT: &str = "out";
    pub const SAMPLE: &str = "sample";
}

/// How a shorter latent is made to split evenly over the sequence ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FramePadding {
    /// Zero latent frames appended at the end up to `P * ceil(t / P)`; their tokens are never keys
    /// and their output frames are dropped.
    ZeroFramesAtEnd,
}

/// One transformer block's segments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentLayer {
    /// `full`, `single{n}` or `group{n}` (the manifest's `layer_attention` names).
    pub attention: String,
    pub qkv: String,
    /// The attention core by degree: a core's head count (`heads / P`) is fixed in its graph, so
    /// that its attention reads the shard's `[b, n, heads/P * d_head]` rows as they lie.
    pub cores: BTreeMap<usize, String>,
    pub post: String,
}

impl SegmentLayer {
    /// The core this layer runs at degree `degree`.
    pub fn core(&self, degree: usize) -> Option<&str> {
        self.cores.get(&degree).map(String::as_str)
    }
}

/// The protocol (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DitSegments {
    pub heads: usize,
    pub head_dim: usize,
    pub hidden_size: usize,
    /// Spatial patch size of the patch embedding (`h`, `w` of the latent are multiples of it).
    pub patch_size: usize,
    pub padding: FramePadding,
    pub pre: String,
    pub layers: Vec<SegmentLayer>,
    /// Head-shard packing before the first all-to-all (degrees above 1).
    pub pack_qkv: String,
    /// Back to token rows after the second all-to-all (degrees above 1).
    pub unpack_attn: String,
    #[serde(rename = "final")]
    pub final_graph: String,
}

/// How the latent frames split over `degree` sequence ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameSplit {
    pub frames: usize,
    pub degree: usize,
    /// Frames per rank, `ceil(frames / degree)`.
    pub local: usize,
}

impl FrameSplit {
    /// The padded length `degree * local`.
    pub fn padded(&self) -> usize {
        self.degree * self.local
    }
}

impl DitSegments {
    /// The degree rule (`degree` divides the heads) and the padding rule (every rank holds at least
    /// one real frame). `Err` says which rule broke, in words a CLI can show.
    pub fn split(&self, degree: usize, frames: usize) -> std::result::Result<FrameSplit, String> {
        let split = split_frames(self.heads, degree, frames)?;
        self.check_degree(degree)?;
        Ok(split)
    }

    /// Every layer has an attention core for `degree` (the exporter writes one per divisor of the
    /// heads).
    pub fn check_degree(&self, degree: usize) -> std::result::Result<(), String> {
        for (i, l) in self.layers.iter().enumerate() {
            if l.core(degree).is_none() {
                let have: Vec<_> = l.cores.keys().map(usize::to_string).collect();
                return Err(format!(
                    "the bundle's layer {i} has no attention core for a sequence-parallel degree of {degree} \
                     (it has degrees {}; re-export it with this osp-export)",
                    have.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// Reads the protocol from whichever graph carries it and checks that every graph it names
    /// exists with the segment's inputs and outputs. `None` when the bundle has no segments.
    pub fn read(graphs: &BTreeMap<String, GraphSpec>) -> Result<Option<Self>> {
        let mut found = None;
        for (name, g) in graphs {
            if let Some(v) = g.metadata.get(SEGMENTS_METADATA_KEY) {
                let p: DitSegments = serde_json::from_value(v.clone()).map_err(|e| {
                    Error::Invalid(format!(
                        "graph `{name}`: `{SEGMENTS_METADATA_KEY}` metadata: {e} (a bundle from an older osp-export: \
                         re-export it)"
                    ))
                })?;
                found = Some(p);
                break;
            }
        }
        let Some(p) = found else { return Ok(None) };
        p.check(graphs)?;
        Ok(Some(p))
    }

    /// Checks the protocol against the graphs (names, I/O) and its own sizes.
    pub fn check(&self, graphs: &BTreeMap<String, GraphSpec>) -> Result<()> {
        use io::*;
        if self.heads == 0 || self.head_dim == 0 || self.patch_size == 0 || self.layers.is_empty() {
            return Err(Error::Invalid(
                "dit_segments: heads, head_dim, patch_size and layers must be non-empty".into(),
            ));
        }
        let has = |graph: &str, inputs: &[&str], outputs: &[&str]| -> Result<()> {
            let g = graphs.get(graph).ok_or_else(|| {
                Error::Invalid(format!("dit_segments names graph `{graph}`, which the bundle does not have"))
            })?;
            for i in inputs {
                if g.input(i).is_none() {
                    return Err(Error::Invalid(format!("dit_segments: graph `{graph}` has no input `{i}`")));
                }
            }
            for o in outputs {
                if g.output(o).is_none() {
                    return Err(Error::Invalid(format!("dit_segments: graph `{graph}` has no output `{o}`")));
                }
            }
            if g.inputs.len() != inputs.len() || g.outputs.len() != outputs.len() {
                return Err(Error::Invalid(format!(
                    "dit_segments: graph `{graph}` must have exactly inputs {inputs:?} and outputs {outputs:?}"
                )));
            }
            Ok(())
        };
        has(
            &self.pre,
            &[HIDDEN_STATES, TIMESTEP, ENCODER_HIDDEN_STATES, ENCODER_ATTENTION_MASK],
            &[TOKENS, T6, EMBEDDED_TIMESTEP, CAPTION, TEXT_BIAS],
        )?;
        for l in &self.layers {
            if !(l.attention == "full" || l.attention.starts_with("single") || l.attention.starts_with("group")) {
                return Err(Error::Invalid(format!("dit_segments: unknown layer attention `{}`", l.attention)));
            }
            has(&l.qkv, &[TOKENS, T6], &[Q, K, V])?;
            if l.cores.is_empty() {
                return Err(Error::Invalid(format!("dit_segments: layer `{}` has no attention core", l.qkv)));
            }
            for (&degree, core) in &l.cores {
                if degree == 0 || self.heads % degree != 0 {
                    return Err(Error::Invalid(format!(
                        "dit_segments: core `{core}` is for degree {degree}, which does not divide the {} heads",
                        self.heads
                    )));
                }
                if degree == 1 {
                    has(core, &[Q, K, V, GRID], &[ATTN])?;
                } else {
                    has(core, &[QKV, GRID], &[ATTN])?;
                }
            }
            has(&l.post, &[TOKENS, ATTN, T6, CAPTION, TEXT_BIAS], &[OUT])?;
        }
        if self.layers.iter().any(|l| l.cores.keys().any(|&p| p > 1)) {
            has(&self.pack_qkv, &[Q, K, V, SP_DEGREE], &[QKV])?;
            has(&self.unpack_attn, &[ATTN], &[ATTN_ROWS])?;
        }
        has(&self.final_graph, &[TOKENS, EMBEDDED_TIMESTEP, HIDDEN_STATES], &[SAMPLE])
    }

    /// Every graph the protocol runs at `degree`, each once (layers without a core for `degree`
    /// contribute their other graphs; [`Self::check_degree`] refuses such a degree).
    pub fn graph_names(&self, degree: usize) -> Vec<String> {
        let mut names = vec![self.pre.clone()];
        for l in &self.layers {
            for g in [Some(l.qkv.as_str()), l.core(degree), Some(l.post.as_str())].into_iter().flatten() {
                if !names.iter().any(|n| n == g) {
                    names.push(g.to_string());
                }
            }
        }
        if degree > 1 {
            names.push(self.pack_qkv.clone());
            names.push(self.unpack_attn.clone());
        }
        names.push(self.final_graph.clone());
        names
    }
}

/// See [`DitSegments::split`].
pub fn split_frames(heads: usize, degree: usize, frames: usize) -> std::result::Result<FrameSplit, String> {
    if degree == 0 {
        return Err("the sequence-parallel degree must be at least 1".into());
    }
    if heads % degree != 0 {
        return Err(format!("the sequence-parallel degree must divide the {heads} attention heads, got {degree}"));
    }
    if frames == 0 {
        return Err("the latent has no frames".into());
    }
    let local = frames.div_ceil(degree);
    if (degree - 1) * local >= frames {
        return Err(format!(
            "{frames} latent frames cannot be split over {degree} ranks: padded to {} frames of {local} per rank, \
             the last rank would hold only padding (use a degree that leaves every rank a real frame)",
            degree * local
        ));
    }
    Ok(FrameSplit { frames, degree, local })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_rules() {
        assert_eq!(split_frames(24, 2, 5).unwrap(), FrameSplit { frames: 5, degree: 2, local: 3 });
        assert_eq!(split_frames(24, 4, 8).unwrap().padded(), 8);
        assert_eq!(split_frames(12, 3, 5).unwrap().padded(), 6);
        assert!(split_frames(12, 3, 4).unwrap_err().contains("only padding"));
        assert!(split_frames(24, 5, 10).unwrap_err().contains("divide the 24"));
        assert!(split_frames(24, 4, 5).unwrap_err().contains("only padding"));
        assert!(split_frames(24, 0, 5).is_err());
        assert_eq!(split_frames(24, 1, 1).unwrap().local, 1);
    }

    fn protocol(cores: &[usize]) -> DitSegments {
        DitSegments {
            heads: 4,
            head_dim: 8,
            hidden_size: 32,
            patch_size: 2,
            padding: FramePadding::ZeroFramesAtEnd,
            pre: "sp_pre".into(),
            layers: vec![SegmentLayer {
                attention: "full".into(),
                qkv: "sp_block0_qkv".into(),
                cores: cores.iter().map(|&p| (p, format!("sp_core_full_p{p}"))).collect(),
                post: "sp_block0_post".into(),
            }],
            pack_qkv: "sp_pack_qkv".into(),
            unpack_attn: "sp_unpack_attn".into(),
            final_graph: "sp_final".into(),
        }
    }

    #[test]
    fn cores_are_chosen_by_degree() {
        let p = protocol(&[1, 2]);
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["layers"][0]["cores"]["2"], "sp_core_full_p2");
        assert_eq!(serde_json::from_value::<DitSegments>(json).unwrap(), p);
        assert_eq!(
            p.graph_names(2),
            [
                "sp_pre",
                "sp_block0_qkv",
                "sp_core_full_p2",
                "sp_block0_post",
                "sp_pack_qkv",
                "sp_unpack_attn",
                "sp_final"
            ]
        );
        assert_eq!(p.graph_names(1), ["sp_pre", "sp_block0_qkv", "sp_core_full_p1", "sp_block0_post", "sp_final"]);
        assert_eq!(p.split(2, 4).unwrap().local, 2);
        let err = p.split(4, 4).unwrap_err();
        assert!(err.contains("no attention core for a sequence-parallel degree of 4") && err.contains("1, 2"), "{err}");
    }
}
