//! Streaming (temporally chunked) decoding with a bundle's streaming decoder graphs
//! (`decoder_first`, `decoder_step`, `decoder_last` for WFVAE): a few latent frames per call, the
//! causal state passed from each call's `cache_out.*` outputs to the next call's `cache_in.*`
//! inputs, so memory stays bounded whatever the clip length. Everything the loop needs (graph
//! roles, state pairs, frames per call, frames to drop) comes from the graphs'
//! [`StreamProtocol`] metadata; nothing is derived from model code.
//!
//! The result equals the whole-clip `decoder` graph for every latent count and chunk size (unlike
//! upstream `--enable_tiling`, whose last 6 frames are wrong for even latent counts).

use std::collections::BTreeMap;

use ndarray::{ArrayD, Axis, Slice};
use osp_graphs::config::{StreamProtocol, StreamRole, STREAM_METADATA_KEY};

use crate::error::{Error, Result};
use crate::session::{Bundle, GraphSession, SessionOptions};
use crate::tensor::Tensor;

/// The time axis of `[b, c, t, h, w]` tensors.
const TIME: usize = 2;

fn invalid(why: String) -> Error {
    Error::Graph(osp_graphs::Error::Invalid(why))
}

pub(crate) fn parse_protocol(graph: &str, value: &serde_json::Value) -> Result<StreamProtocol> {
    serde_json::from_value(value.clone())
        .map_err(|e| invalid(format!("graph `{graph}`: `{STREAM_METADATA_KEY}` metadata: {e}")))
}

/// The protocol stored in `session`'s graph metadata.
pub fn protocol_of(session: &GraphSession) -> Result<StreamProtocol> {
    let value = session.spec().metadata.get(STREAM_METADATA_KEY).ok_or_else(|| {
        invalid(format!("graph `{}` has no `{STREAM_METADATA_KEY}` metadata (not a streaming graph)", session.name()))
    })?;
    parse_protocol(session.name(), value)
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

/// The three streaming sessions and their protocol.
pub struct StreamingDecoder {
    /// The step graph's protocol (roles aside, the three graphs carry the same one).
    protocol: StreamProtocol,
    /// `frames_offset` of the first, step and last graphs.
    frames_offsets: [i64; 3],
    first: GraphSession,
    step: GraphSession,
    last: GraphSession,
}

impl StreamingDecoder {
    /// Loads the streaming graphs of `bundle` (found through any graph's `stream` metadata).
    pub fn load(bundle: &Bundle, opts: &SessionOptions) -> Result<Self> {
        let (name, spec) = bundle
            .manifest()
            .graphs
            .iter()
            .find(|(_, g)| g.metadata.contains_key(STREAM_METADATA_KEY))
            .ok_or_else(|| invalid(format!("bundle {} has no streaming graphs", bundle.dir().display())))?;
        let protocol = parse_protocol(name, &spec.metadata[STREAM_METADATA_KEY])?;
        // Each graph runs once per chunk of every tile with the same shapes: ORT's memory pattern
        // would allocate one whole-plan block per run on top of what the allocator still holds.
        let opts = opts.clone().with_memory_pattern(false);
        let load = |graph: &str| bundle.session(graph, &opts);
        Self::from_sessions(load(&protocol.first_graph)?, load(&protocol.step_graph)?, load(&protocol.last_graph)?)
    }

    /// Checks that the three sessions carry one protocol with the right roles.
    pub fn from_sessions(first: GraphSession, step: GraphSession, last: GraphSession) -> Result<Self> {
        let protocol = protocol_of(&step)?;
        let mut frames_offsets = [0; 3];
        let roles = [(&first, StreamRole::First), (&step, StreamRole::Step), (&last, StreamRole::Last)];
        for (i, (session, role)) in roles.into_iter().enumerate() {
            let p = protocol_of(session)?;
            frames_offsets[i] = p.frames_offset;
            let same = StreamProtocol { role: protocol.role, frames_offset: protocol.frames_offset, ..p.clone() };
            if p.role != role || same != protocol {
                return Err(invalid(format!(
                    "graph `{}` is not the {role:?} graph of the streaming protocol of `{}`",
                    session.name(),
                    step.name()
                )));
            }
        }
        Ok(Self { protocol, frames_offsets, first, step, last })
    }

    pub fn protocol(&self) -> &StreamProtocol {
        &self.protocol
    }

    /// The number of frames [`Self::decode_with`] produces for `t` latents in chunks of `chunk`.
    pub fn output_frames(&self, t: usize, chunk: usize) -> Result<usize> {
        let p = &self.protocol;
        let plan = chunk_plan(t, p.first_chunk_latents, chunk)?;
        let mut frames = 0usize;
        for (i, &(_, len, role)) in plan.iter().enumerate() {
            let role = if plan.len() == 1 { StreamRole::First } else { role };
            let offset = self.frames_offsets[role_index(role)];
            let n = usize::try_from((p.frames_per_latent * len) as i64 + offset)
                .map_err(|_| invalid(format!("the {role:?} graph yields a negative frame count for {len} latents")))?;
            frames += if i == 1 { n - p.drop_leading_frames_after_first.min(n) } else { n };
        }
        Ok(frames)
    }

    /// Decodes `z` (`[b, c, t, h, w]` f32) in chunks of `chunk` latents, handing each call's new
    /// frames to `sink` in order; returns the number of frames produced.
    pub fn decode_with(
        &mut self,
        z: &Tensor,
        chunk: usize,
        mut sink: impl FnMut(Tensor) -> Result<()>,
    ) -> Result<usize> {
        let p = &self.protocol;
        let z = match z {
            Tensor::F32(a) if a.ndim() == 5 => a,
            other => {
                return Err(Error::Tensor {
                    name: p.input.clone(),
                    why: format!("must be f32 [b, c, t, h, w], got {}", other.describe()),
                })
            }
        };
        if chunk > p.max_chunk_latents {
            return Err(invalid(format!(
                "chunk of {chunk} latents exceeds the graphs' maximum of {}",
                p.max_chunk_latents
            )));
        }
        let t = z.shape()[TIME];
        let plan = chunk_plan(t, p.first_chunk_latents, chunk)?;
        let mut state: BTreeMap<String, Tensor> = BTreeMap::new();
        let mut produced = 0;
        for (i, &(start, len, role)) in plan.iter().enumerate() {
            let _span = tracing::trace_span!("vae_stream_chunk", start, len).entered();
            let role = if plan.len() == 1 { StreamRole::First } else { role };
            let frames_offset = self.frames_offsets[role_index(role)];
            let session = match role {
                StreamRole::First => &mut self.first,
                StreamRole::Step => &mut self.step,
                StreamRole::Last => &mut self.last,
            };
            let input = Tensor::F32(z.slice_axis(Axis(TIME), Slice::from(start..start + len)).to_owned());
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
            let frames = if i == 1 { drop_leading(frames, p.drop_leading_frames_after_first)? } else { frames };
            produced += frames.shape()[TIME];
            sink(frames)?;
            state = out;
            // The call's intermediates are free now; glibc keeps such pages resident unless asked.
            crate::mem::release_free_heap();
            tracing::debug!(start, len, mem = %crate::mem::usage_str(), "streamed chunk decoded");
        }
        Ok(produced)
    }

    /// Decodes `z` in chunks of `chunk` latents into one preallocated `[b, c, frames, h, w]`
    /// tensor, each chunk copied straight into place.
    pub fn decode(&mut self, z: &Tensor, chunk: usize) -> Result<Tensor> {
        let t = z.shape().get(TIME).copied().unwrap_or(0);
        let total = self.output_frames(t, chunk)?;
        let output = self.protocol.output.clone();
        let mut whole: Option<ArrayD<f32>> = None;
        let mut next = 0;
        self.decode_with(z, chunk, |frames| {
            let Tensor::F32(a) = frames else {
                return Err(Error::unsupported(format!("streamed `{output}`"), frames.dtype()));
            };
            let n = a.shape()[TIME];
            let whole = whole.get_or_insert_with(|| {
                let mut shape = a.shape().to_vec();
                shape[TIME] = total;
                ArrayD::zeros(shape)
            });
            let fits = next + n <= total
                && a.shape().iter().zip(whole.shape()).enumerate().all(|(axis, (x, y))| axis == TIME || x == y);
            if !fits {
                return Err(Error::Tensor {
                    name: output.clone(),
                    why: format!("chunk {:?} at frame {next} does not fit the {:?} output", a.shape(), whole.shape()),
                });
            }
            whole.slice_axis_mut(Axis(TIME), Slice::from(next..next + n)).assign(&a);
            next += n;
            Ok(())
        })?;
        let whole = whole.expect("a streamed decode runs at least one call");
        if next != total {
            return Err(Error::Tensor {
                name: output,
                why: format!("the stream produced {next} frames, the protocol promised {total}"),
            });
        }
        Ok(Tensor::F32(whole))
    }
}

/// The index of `role`'s graph in `frames_offsets`.
fn role_index(role: StreamRole) -> usize {
    match role {
        StreamRole::First => 0,
        StreamRole::Step => 1,
        StreamRole::Last => 2,
    }
}

fn drop_leading(frames: Tensor, n: usize) -> Result<Tensor> {
    match frames {
        Tensor::F32(a) => {
            let t = a.shape()[TIME];
            Ok(Tensor::F32(a.slice_axis(Axis(TIME), Slice::from(n.min(t)..t)).to_owned()))
        }
        other => Err(Error::unsupported("streamed frames", other.dtype())),
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
