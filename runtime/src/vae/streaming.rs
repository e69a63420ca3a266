//! Streaming (temporally chunked) decoding with a bundle's streaming decoder graphs
//! (`decoder_first`, `decoder_step`, `decoder_last` for WFVAE): a few latent frames per call, the
//! causal state passed from each call's `cache_out.*` outputs to the next call's `cache_in.*`
//! inputs, so memory stays bounded whatever the clip length. Everything the loop needs (graph
//! roles, state pairs, frames per call, frames to drop) comes from the graphs'
//! [`StreamProtocol`] metadata, read and checked once as [`VaeStreaming`]; nothing is derived
//! from model code. [`StreamingDecoder::stream`] hands each chunk of frames to a
//! [`FrameSink`] (the tiler's blend, or [`Collect`] for one array).
//!
//! The result equals the whole-clip `decoder` graph for every latent count and chunk size (unlike
//! upstream `--enable_tiling`, whose last 6 frames are wrong for even latent counts).

use std::collections::BTreeMap;

use ndarray::{Array5, ArrayView5, Axis, Ix5, Slice};
use osp_graphs::config::{StreamProtocol, StreamRole};
use osp_graphs::VaeStreaming;

use super::{Collect, FrameSink};
use crate::error::{Error, Result};
use crate::session::{Bundle, GraphSession, SessionOptions};
use crate::tensor::Tensor;

/// The time axis of `[b, c, t, h, w]` tensors.
const TIME: usize = 2;

fn invalid(why: String) -> Error {
    Error::Graph(osp_graphs::Error::Invalid(why))
}

/// The `(start, len, role)` of every call decoding `t` latents in chunks of `chunk` after the
/// protocol's first chunk.
pub fn chunk_plan(t: usize, first_chunk: usize, chunk: usize) -> Result<Vec<(usize, usize, StreamRole)>> {
    if chunk == 0 {
        return Err(invalid("streaming chunk size must be positive".into()));
    }
    if t < first_chunk {
        return Err(invalid(format!("a streamed clip needs at least {first_chunk} latent frames, found {t}")));
    }
    let mut plan = vec![(0, first_chunk, StreamRole::First)];
    let mut start = first_chunk;
    while start < t {
        let len = chunk.min(t - start);
        let role = if start + len == t { StreamRole::Last } else { StreamRole::Step };
        plan.push((start, len, role));
        start += len;
    }
    Ok(plan)
}

/// The three streaming sessions and their checked protocol.
pub struct StreamingDecoder {
    streaming: VaeStreaming,
    first: GraphSession,
    step: GraphSession,
    last: GraphSession,
}

impl StreamingDecoder {
    /// Loads the streaming graphs of `bundle` (an error when it has none).
    pub fn load(bundle: &Bundle, opts: &SessionOptions) -> Result<Self> {
        let streaming = VaeStreaming::read(&bundle.manifest().graphs)?
            .ok_or_else(|| invalid(format!("bundle {} has no streaming graphs", bundle.dir().display())))?;
        Self::new(bundle, streaming, opts)
    }

    /// Loads the sessions of the streaming graphs `streaming` (read from `bundle`'s manifest).
    pub fn new(bundle: &Bundle, streaming: VaeStreaming, opts: &SessionOptions) -> Result<Self> {
        // Each graph runs once per chunk of every tile with the same shapes: ORT's memory pattern
        // would allocate one whole-plan block per run on top of what the allocator still holds.
        let opts = opts.clone().with_memory_pattern(false);
        let load = |role: StreamRole| bundle.session(streaming.graph(role), &opts);
        let (first, step, last) = (load(StreamRole::First)?, load(StreamRole::Step)?, load(StreamRole::Last)?);
        Ok(Self { streaming, first, step, last })
    }

    pub fn protocol(&self) -> &StreamProtocol {
        self.streaming.protocol()
    }

    /// The number of frames [`Self::stream`] produces for `t` latents in chunks of `chunk`.
    pub fn output_frames(&self, t: usize, chunk: usize) -> Result<usize> {
        let p = self.protocol();
        let plan = chunk_plan(t, p.first_chunk_latents, chunk)?;
        let mut frames = 0usize;
        for (i, &(_, len, role)) in plan.iter().enumerate() {
            let role = if plan.len() == 1 { StreamRole::First } else { role };
            let offset = self.streaming.frames_offset(role);
            let n = usize::try_from((p.frames_per_latent * len) as i64 + offset)
                .map_err(|_| invalid(format!("the {role:?} graph yields a negative frame count for {len} latents")))?;
            frames += if i == 1 { n - p.drop_leading_frames_after_first.min(n) } else { n };
        }
        Ok(frames)
    }

    /// Decodes `z` (`[b, c, t, h, w]`) in chunks of `chunk` latents, handing each call's new
    /// frames to `sink` in order (with the total [`Self::output_frames`] promises); returns the
    /// number of frames produced.
    pub fn stream(&mut self, z: ArrayView5<f32>, chunk: usize, sink: &mut dyn FrameSink) -> Result<usize> {
        let p = self.streaming.protocol();
        if chunk > p.max_chunk_latents {
            return Err(invalid(format!(
                "chunk of {chunk} latents exceeds the graphs' maximum of {}",
                p.max_chunk_latents
            )));
        }
        let t = z.shape()[TIME];
        let total = self.output_frames(t, chunk)?;
        let plan = chunk_plan(t, p.first_chunk_latents, chunk)?;
        let mut state: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut produced = 0;
        for (i, &(start, len, role)) in plan.iter().enumerate() {
            let _span = tracing::trace_span!("vae_stream_chunk", start, len).entered();
            let role = if plan.len() == 1 { StreamRole::First } else { role };
            let frames_offset = self.streaming.frames_offset(role);
            let session = match role {
                StreamRole::First => &mut self.first,
                StreamRole::Step => &mut self.step,
                StreamRole::Last => &mut self.last,
            };
            let input = Tensor::F32(z.slice_axis(Axis(TIME), Slice::from(start..start + len)).to_owned().into_dyn());
            let mut inputs: Vec<(&str, &Tensor)> = vec![(p.input.as_str(), &input)];
            if role != StreamRole::First {
                for pair in &p.state {
                    let value = state
                        .get(&pair.output)
                        .ok_or_else(|| invalid(format!("state `{}` was not produced", pair.output)))?;
                    inputs.push((pair.input.as_str(), value));
                }
            }
            let mut out = session.run(&inputs)?;
            let frames = out.remove(&p.output).ok_or_else(|| Error::MissingOutput {
                graph: session.name().to_string(),
                output: p.output.clone(),
                produced: out.keys().cloned().collect::<Vec<_>>().join(", "),
            })?;
            let expected = (p.frames_per_latent * len) as i64 + frames_offset;
            if frames.shape().get(TIME).map(|&n| n as i64) != Some(expected) {
                return Err(Error::OutputMismatch {
                    graph: session.name().to_string(),
                    output: p.output.clone(),
                    expected: format!("{expected} frames for {len} latents"),
                    got: frames.describe(),
                });
            }
            let frames = match frames {
                Tensor::F32(a) => a.into_dimensionality::<Ix5>().map_err(|_| Error::Tensor {
                    name: p.output.clone(),
                    why: "streamed frames must be [b, c, t, h, w]".into(),
                })?,
                other => return Err(Error::unsupported(format!("streamed `{}`", p.output), other.dtype())),
            };
            let drop = if i == 1 { p.drop_leading_frames_after_first.min(frames.shape()[TIME]) } else { 0 };
            let frames = frames.slice_axis(Axis(TIME), Slice::from(drop..));
            produced += frames.shape()[TIME];
            sink.frames(frames, total)?;
            state = out;
            // The call's intermediates are free now; glibc keeps such pages resident unless asked.
            crate::mem::release_free_heap();
            tracing::debug!(start, len, mem = %crate::mem::usage_str(), "streamed chunk decoded");
        }
        Ok(produced)
    }

    /// Decodes `z` in chunks of `chunk` latents into one preallocated `[b, c, frames, h, w]`
    /// array, each chunk copied straight into place.
    pub fn decode_array(&mut self, z: ArrayView5<f32>, chunk: usize) -> Result<Array5<f32>> {
        let mut whole = Collect::new(self.protocol().output.clone());
        self.stream(z, chunk, &mut whole)?;
        whole.finish()
    }

    /// [`Self::decode_array`] of a `[b, c, t, h, w]` f32 tensor.
    pub fn decode(&mut self, z: &Tensor, chunk: usize) -> Result<Tensor> {
        let view = match z {
            Tensor::F32(a) => a.view().into_dimensionality::<Ix5>().ok(),
            _ => None,
        };
        let Some(z) = view else {
            return Err(Error::Tensor {
                name: self.protocol().input.clone(),
                why: format!("must be f32 [b, c, t, h, w], got {}", z.describe()),
            });
        };
        Ok(Tensor::F32(self.decode_array(z, chunk)?.into_dyn()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_cover_every_latent_once() {
        for t in 1..=9 {
            for chunk in 1..=4 {
                let plan = chunk_plan(t, 1, chunk).unwrap();
                assert_eq!(plan[0], (0, 1, StreamRole::First));
                let mut next = 0;
                for &(start, len, _) in &plan {
                    assert_eq!(start, next);
                    assert!(len >= 1 && len <= chunk.max(1));
                    next = start + len;
                }
                assert_eq!(next, t);
                if t > 1 {
                    assert_eq!(plan.last().unwrap().2, StreamRole::Last);
                    assert!(plan[1..plan.len() - 1].iter().all(|c| c.2 == StreamRole::Step));
                }
            }
        }
        assert!(chunk_plan(3, 1, 0).is_err());
        assert!(chunk_plan(0, 1, 2).is_err());
    }
}
