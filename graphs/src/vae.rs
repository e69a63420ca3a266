//! What a WFVAE bundle's graph metadata tells a runtime, typed and checked in one place: the
//! whole-clip decoder's longest clip (`max_latent_frames` on the `decoder` graph) and the streaming
//! decoder graphs' [`StreamProtocol`] (under [`STREAM_METADATA_KEY`] on each of them).
//!
//! The exporter writes the metadata with [`stream_metadata`] and [`decoder_metadata`]; a runtime
//! reads it once with [`VaeGraphs::read`] and never looks at the raw JSON again.

use std::collections::BTreeMap;

use crate::config::{StreamProtocol, StreamRole, STREAM_METADATA_KEY};
use crate::error::{Error, Result};
use crate::manifest::{BundleManifest, GraphSpec};

/// Metadata key of the whole-clip `decoder` graph: the most latent frames it takes.
pub const MAX_LATENT_FRAMES_KEY: &str = "max_latent_frames";

/// Metadata key of every WFVAE graph: how the exporter wrote the video convolutions
/// (`osp-export --video-conv`: `conv3d`, `folded`, `winograd-f2`, or the approximate
/// `winograd-f4`). Informational: every form has the same inputs, outputs and streaming state.
pub const VIDEO_CONV_KEY: &str = "video_conv";

/// The whole-clip decoder graph's name.
pub const DECODER_GRAPH: &str = "decoder";

/// The metadata of one streaming graph: its protocol under [`STREAM_METADATA_KEY`].
pub fn stream_metadata(protocol: &StreamProtocol) -> Result<BTreeMap<String, serde_json::Value>> {
    let value = serde_json::to_value(protocol).map_err(|e| Error::Invalid(format!("stream protocol: {e}")))?;
    Ok(BTreeMap::from([(STREAM_METADATA_KEY.to_string(), value)]))
}

/// The metadata of the whole-clip decoder graph.
pub fn decoder_metadata(max_latent_frames: usize) -> BTreeMap<String, serde_json::Value> {
    BTreeMap::from([(MAX_LATENT_FRAMES_KEY.to_string(), serde_json::Value::from(max_latent_frames))])
}

/// A VAE bundle's decoder metadata.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VaeGraphs {
    /// Longest latent clip the whole-clip decoder graph takes, when it records one.
    pub max_latent_frames: Option<usize>,
    /// The streaming decoder graphs, when the bundle has them.
    pub streaming: Option<VaeStreaming>,
}

impl VaeGraphs {
    /// Reads and checks the decoder metadata of `manifest`.
    pub fn read(manifest: &BundleManifest) -> Result<Self> {
        Self::read_graphs(&manifest.graphs)
    }

    /// [`Self::read`] over a manifest's graphs.
    pub fn read_graphs(graphs: &BTreeMap<String, GraphSpec>) -> Result<Self> {
        let max_latent_frames = match graphs.get(DECODER_GRAPH).and_then(|g| g.metadata.get(MAX_LATENT_FRAMES_KEY)) {
            None => None,
            Some(v) => Some(v.as_u64().map(|v| v as usize).ok_or_else(|| {
                Error::Invalid(format!(
                    "graph `{DECODER_GRAPH}`: `{MAX_LATENT_FRAMES_KEY}` must be a non-negative integer, got {v}"
                ))
            })?),
        };
        Ok(Self { max_latent_frames, streaming: VaeStreaming::read(graphs)? })
    }
}

/// The streaming decoder graphs of a bundle: one protocol (the step graph's, roles aside) and the
/// `frames_offset` of each role's graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaeStreaming {
    protocol: StreamProtocol,
    frames_offsets: [i64; 3],
}

fn protocol_of(name: &str, graph: &GraphSpec) -> Result<Option<StreamProtocol>> {
    graph
        .metadata
        .get(STREAM_METADATA_KEY)
        .map(|v| {
            serde_json::from_value(v.clone())
                .map_err(|e| Error::Invalid(format!("graph `{name}`: `{STREAM_METADATA_KEY}` metadata: {e}")))
        })
        .transpose()
}

impl VaeStreaming {
    /// Finds the streaming graphs through any graph's protocol and checks that the first, step and
    /// last graphs exist and carry one protocol with their roles. `None` when no graph streams.
    pub fn read(graphs: &BTreeMap<String, GraphSpec>) -> Result<Option<Self>> {
        let mut found = None;
        for (name, g) in graphs {
            if let Some(p) = protocol_of(name, g)? {
                found = Some(p);
                break;
            }
        }
        let Some(any) = found else { return Ok(None) };
        let graph = |name: &str| {
            graphs.get(name).ok_or_else(|| {
                Error::Invalid(format!("the streaming protocol names graph `{name}`, which the bundle does not have"))
            })
        };
        let of = |name: &str| -> Result<StreamProtocol> {
            protocol_of(name, graph(name)?)?
                .ok_or_else(|| Error::Invalid(format!("graph `{name}` has no `{STREAM_METADATA_KEY}` metadata")))
        };
        let protocol = of(&any.step_graph)?;
        let mut frames_offsets = [0; 3];
        let roles = [
            (&protocol.first_graph, StreamRole::First),
            (&protocol.step_graph, StreamRole::Step),
            (&protocol.last_graph, StreamRole::Last),
        ];
        for (i, (name, role)) in roles.into_iter().enumerate() {
            let p = of(name)?;
            frames_offsets[i] = p.frames_offset;
            let same = StreamProtocol { role: protocol.role, frames_offset: protocol.frames_offset, ..p.clone() };
            if p.role != role || same != protocol {
                return Err(Error::Invalid(format!(
                    "graph `{name}` is not the {role:?} graph of the streaming protocol of `{}`",
                    protocol.step_graph
                )));
            }
        }
        Ok(Some(Self { protocol, frames_offsets }))
    }

    /// The step graph's protocol (roles aside, the three graphs carry the same one).
    pub fn protocol(&self) -> &StreamProtocol {
        &self.protocol
    }

    /// The `frames_offset` of `role`'s graph.
    pub fn frames_offset(&self, role: StreamRole) -> i64 {
        self.frames_offsets[match role {
            StreamRole::First => 0,
            StreamRole::Step => 1,
            StreamRole::Last => 2,
        }]
    }

    /// The graph serving `role`.
    pub fn graph(&self, role: StreamRole) -> &str {
        match role {
            StreamRole::First => &self.protocol.first_graph,
            StreamRole::Step => &self.protocol.step_graph,
            StreamRole::Last => &self.protocol.last_graph,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StatePair;
    use crate::manifest::{AttentionKind, Precision};

    fn protocol(role: StreamRole, frames_offset: i64) -> StreamProtocol {
        StreamProtocol {
            role,
            first_graph: "first".into(),
            step_graph: "step".into(),
            last_graph: "last".into(),
            input: "z".into(),
            output: "sample".into(),
            first_chunk_latents: 1,
            max_chunk_latents: 24,
            default_chunk_latents: 4,
            frames_per_latent: 4,
            frames_offset,
            drop_leading_frames_after_first: 2,
            state: vec![StatePair { input: "cache_in.a".into(), output: "cache_out.a".into() }],
        }
    }

    fn graph(metadata: BTreeMap<String, serde_json::Value>) -> GraphSpec {
        GraphSpec {
            file: "g.onnx".into(),
            external_data: vec![],
            inputs: vec![],
            outputs: vec![],
            attention: AttentionKind::None,
            precision: Precision::F32,
            opset: 17,
            metadata,
        }
    }

    fn graphs() -> BTreeMap<String, GraphSpec> {
        BTreeMap::from([
            (DECODER_GRAPH.to_string(), graph(decoder_metadata(24))),
            ("first".to_string(), graph(stream_metadata(&protocol(StreamRole::First, -3)).unwrap())),
            ("step".to_string(), graph(stream_metadata(&protocol(StreamRole::Step, 0)).unwrap())),
            ("last".to_string(), graph(stream_metadata(&protocol(StreamRole::Last, 2)).unwrap())),
        ])
    }

    #[test]
    fn written_metadata_reads_back() {
        let s = VaeStreaming::read(&graphs()).unwrap().expect("the graphs stream");
        assert_eq!(s.protocol(), &protocol(StreamRole::Step, 0));
        assert_eq!([StreamRole::First, StreamRole::Step, StreamRole::Last].map(|r| s.frames_offset(r)), [-3, 0, 2]);
        assert_eq!(s.graph(StreamRole::Last), "last");
        // The JSON keeps the protocol's field names (bundles on disk read unchanged).
        let meta = stream_metadata(&protocol(StreamRole::Step, 0)).unwrap();
        assert_eq!(meta[STREAM_METADATA_KEY]["default_chunk_latents"], 4);
        assert_eq!(meta[STREAM_METADATA_KEY]["role"], "step");
        assert_eq!(decoder_metadata(24)[MAX_LATENT_FRAMES_KEY], 24);
        assert_eq!(VaeStreaming::read(&BTreeMap::new()).unwrap(), None);
    }

    #[test]
    fn inconsistent_streaming_graphs_are_errors() {
        let mut g = graphs();
        g.insert("last".into(), graph(stream_metadata(&protocol(StreamRole::Step, 2)).unwrap()));
        let e = VaeStreaming::read(&g).unwrap_err().to_string();
        assert!(e.contains("`last` is not the Last graph"), "{e}");

        let mut g = graphs();
        g.remove("first");
        let e = VaeStreaming::read(&g).unwrap_err().to_string();
        assert!(e.contains("names graph `first`"), "{e}");

        let mut g = graphs();
        g.insert("step".into(), graph(BTreeMap::from([(STREAM_METADATA_KEY.to_string(), serde_json::json!(1))])));
        let e = VaeStreaming::read(&g).unwrap_err().to_string();
        assert!(e.contains("graph `step`: `stream` metadata"), "{e}");

        let mut g = graphs();
        g.insert(
            DECODER_GRAPH.into(),
            graph(BTreeMap::from([(MAX_LATENT_FRAMES_KEY.to_string(), serde_json::json!("x"))])),
        );
        let manifest_err = VaeGraphs::read_graphs(&g).unwrap_err().to_string();
        assert!(manifest_err.contains("max_latent_frames"), "{manifest_err}");
    }
}
