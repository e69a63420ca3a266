//! [`GraphLm`]: a Llama bundle's `prefill` and `decode` graphs (`osp_graphs::llama`) as a
//! [`CausalLm`] for one sequence, holding the KV cache between steps.
//!
//! The cache is the `present.{i}.*` outputs of the last run, fed back as `past_key_values.{i}.*`
//! without leaving the engine: both graphs run through [`GraphSession::run_resident`] (ONNX
//! Runtime IoBinding), so on ort-cuda / ort-tensorrt the cache stays in device memory and on
//! ort-cpu in ORT's own buffers, with no copy per step. Engines without resident values (tract)
//! hold it as host tensors. Only the token inputs go in from the host and only the logits come
//! back.

use ndarray::{ArrayD, IxDyn};
use osp_graphs::llama::{self, LlamaGraphs};

use super::generate::CausalLm;
use crate::engine::Resident;
use crate::error::{Error, Result};
use crate::session::{Bundle, GraphSession, SessionOptions};
use crate::tensor::Tensor;

/// The cache of one sequence: per layer, key and value `[1, kv_heads, len, head_dim]`.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<(Resident, Resident)>,
    len: usize,
}

impl KvCache {
    /// Tokens held.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Layer `i`'s key and value, where the engine keeps them.
    pub fn layer(&self, i: usize) -> Option<(&Resident, &Resident)> {
        self.layers.get(i).map(|(k, v)| (k, v))
    }

    /// Takes `present.{i}.key/value` out of a run's outputs.
    fn take(outputs: &mut std::collections::BTreeMap<String, Resident>, layers: usize, graph: &str) -> Result<Self> {
        let mut out = Vec::with_capacity(layers);
        for i in 0..layers {
            let mut get = |name: String| {
                outputs.remove(&name).ok_or_else(|| Error::MissingOutput {
                    graph: graph.to_string(),
                    output: name,
                    produced: "(see the manifest)".into(),
                })
            };
            out.push((get(llama::present_key(i))?, get(llama::present_value(i))?));
        }
        let len = out.first().map_or(0, |(k, _)| k.shape()[2]);
        Ok(KvCache { layers: out, len })
    }
}

/// A Llama bundle loaded for generation.
pub struct GraphLm {
    prefill: GraphSession,
    decode: GraphSession,
    layers: usize,
    vocab: usize,
    cache: KvCache,
}

fn ids_tensor(values: Vec<i64>) -> Resident {
    let n = values.len();
    Resident::host(Tensor::I64(
        ArrayD::from_shape_vec(IxDyn(&[1, n]), values).expect("the shape should match the length"),
    ))
}

impl GraphLm {
    /// Loads both graphs of `bundle` (checked against the llama contract) on `opts.backend`.
    pub fn load(bundle: &Bundle, opts: &SessionOptions) -> Result<Self> {
        let graphs = LlamaGraphs::read(bundle.manifest())?;
        let prefill = bundle.session(llama::PREFILL_GRAPH, opts)?;
        let decode = bundle.session(llama::DECODE_GRAPH, opts)?;
        Ok(GraphLm {
            prefill,
            decode,
            layers: graphs.config.config.num_hidden_layers,
            vocab: graphs.config.config.vocab_size,
            cache: KvCache::default(),
        })
    }

    /// The cache after the last call.
    pub fn cache(&self) -> &KvCache {
        &self.cache
    }

    /// The last position's logits of `logits` `[1, s, vocab]`, copied to the host.
    fn last_row(&self, graph: &str, logits: Option<Resident>) -> Result<Vec<f32>> {
        let logits = logits.map(|r| r.to_host(llama::LOGITS)).transpose()?;
        let bad = |got: String| Error::OutputMismatch {
            graph: graph.to_string(),
            output: llama::LOGITS.into(),
            expected: format!("f32 [1, s, {}]", self.vocab),
            got,
        };
        let Some(Tensor::F32(a)) = logits else {
            return Err(bad(logits.map_or("nothing".into(), |t| t.describe())));
        };
        let shape = a.shape().to_vec();
        if shape.len() != 3 || shape[0] != 1 || shape[1] == 0 || shape[2] != self.vocab {
            return Err(bad(format!("{shape:?}")));
        }
        let a = a.as_standard_layout();
        let flat = a.as_slice().expect("a standard-layout array should be contiguous");
        Ok(flat[(shape[1] - 1) * self.vocab..].to_vec())
    }
}

impl CausalLm for GraphLm {
    type Error = Error;

    fn prefill(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        let n = ids.len();
        let input_ids = ids_tensor(ids.iter().map(|&i| i64::from(i)).collect());
        let mask = ids_tensor(vec![1; n]);
        let positions = ids_tensor((0..n as i64).collect());
        let mut out = self.prefill.run_resident(&[
            (llama::INPUT_IDS, &input_ids),
            (llama::ATTENTION_MASK, &mask),
            (llama::POSITION_IDS, &positions),
        ])?;
        self.cache = KvCache::take(&mut out, self.layers, llama::PREFILL_GRAPH)?;
        self.last_row(llama::PREFILL_GRAPH, out.remove(llama::LOGITS))
    }

    fn decode(&mut self, id: u32) -> Result<Vec<f32>> {
        let past = self.cache.len;
        let input_ids = ids_tensor(vec![i64::from(id)]);
        let mask = ids_tensor(vec![1; past + 1]);
        let positions = ids_tensor(vec![past as i64]);
        let names: Vec<(String, String)> =
            (0..self.layers).map(|i| (llama::past_key(i), llama::past_value(i))).collect();
        let mut inputs: Vec<(&str, &Resident)> =
            vec![(llama::INPUT_IDS, &input_ids), (llama::ATTENTION_MASK, &mask), (llama::POSITION_IDS, &positions)];
        for ((k, v), (kn, vn)) in self.cache.layers.iter().zip(&names) {
            inputs.push((kn.as_str(), k));
            inputs.push((vn.as_str(), v));
        }
        let mut out = self.decode.run_resident(&inputs)?;
        self.cache = KvCache::take(&mut out, self.layers, llama::DECODE_GRAPH)?;
        self.last_row(llama::DECODE_GRAPH, out.remove(llama::LOGITS))
    }
}
