//! Temporal caches for chunked (streaming) encode and decode.
//!
//! A chunk is processed by the same modules as a whole clip; every temporal dependency on
//! earlier chunks is an explicit tensor in [`TemporalCache::tails`], keyed by the official
//! module path (so an exporter can turn each entry into a graph input/output pair):
//!
//! | key                                         | content                                                |
//! |---------------------------------------------|--------------------------------------------------------|
//! | `<causal conv path>` (e.g. `decoder.mid.0.conv1`) | the last `k_t - 1` (stride 1) input frames after padding |
//! | `encoder.wavelet_transform_{in,l2}`         | left-over frames of the 2x2x2 stride-2 Haar (none for 4n-frame chunks) |
//! | `decoder.up2.<n>.interpolation`             | the previous frame of the time interpolation           |
//! | `decoder.inverse_wavelet_transform_l2.pending` | energy-flow frames waiting for the one-frame-delayed main path |
//!
//! Besides the tensors, only the chunk counter matters: the first chunk replicates frame 0
//! (causal padding) and its inverse Haar drops the first frame.

use std::collections::BTreeMap;

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::ops::{frames, replicate_first};

/// State carried between temporal chunks of one clip.
#[derive(Debug, Clone)]
pub struct TemporalCache<B: Backend> {
    /// Per-layer tail frames, `[b, c, t_tail, h, w]`, keyed as described in the module docs.
    pub tails: BTreeMap<String, Tensor<B, 5>>,
    /// Chunks already processed.
    pub chunks_done: usize,
    /// Whether the chunk being processed is the last one of the clip.
    pub(crate) closing: bool,
}

/// Cache of [`super::WFVAEModel::decode_chunk`].
pub type DecoderCache<B> = TemporalCache<B>;
/// Cache of [`super::WFVAEModel::encode_chunk`].
pub type EncoderCache<B> = TemporalCache<B>;

impl<B: Backend> Default for TemporalCache<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B: Backend> TemporalCache<B> {
    /// An empty cache for the first chunk of a clip.
    pub fn new() -> Self {
        TemporalCache { tails: BTreeMap::new(), chunks_done: 0, closing: false }
    }

    /// True while the first chunk is being processed.
    pub fn is_first(&self) -> bool {
        self.chunks_done == 0
    }

    /// True while the last chunk is being processed.
    pub fn is_last(&self) -> bool {
        self.closing
    }

    /// Total number of cached frames over all entries (for tests and memory accounting).
    pub fn cached_frames(&self) -> usize {
        self.tails.values().map(frames).sum()
    }

    /// The causally padded input of a time window of size `kt`, stride `st`, for this chunk,
    /// storing the frames the next chunk's windows start from under `key`.
    ///
    /// First chunk: `pad_first` copies of frame 0 go in front. Later chunks: the stored tail goes
    /// in front. Requires at least `kt` frames after padding.
    pub(crate) fn causal_window(
        &mut self,
        key: &str,
        x: Tensor<B, 5>,
        pad_first: usize,
        kt: usize,
        st: usize,
    ) -> Tensor<B, 5> {
        let padded = if self.is_first() {
            replicate_first(x, pad_first)
        } else {
            match self.tails.remove(key) {
                Some(tail) => Tensor::cat(vec![tail, x], 2),
                None => x,
            }
        };
        let n = frames(&padded);
        debug_assert!(n >= kt, "causal window `{key}` needs {kt} frames, has {n}");
        let next_start = ((n - kt) / st + 1) * st;
        if next_start < n {
            self.tails.insert(key.to_string(), padded.clone().narrow(2, next_start, n - next_start));
        }
        padded
    }
}
