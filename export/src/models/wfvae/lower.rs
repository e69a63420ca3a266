//! Lowering of the WFVAE building blocks (`CausalConv3d`, `Conv2d`, channel `LayerNorm`,
//! `ResnetBlock2D/3D`, `AttnBlock3DFix`, Haar transforms, up- and downsampling) onto a
//! [`GraphBuilder`], for the whole-clip graphs and the three streaming decoder graphs.
//!
//! Video values are `[b, c, t, h, w]`. Per-frame 2-D convolutions are `Conv` with a `[1, k, k]`
//! kernel (the checkpoint's `[o, i, k, k]` weight unsqueezed in the graph), so time never folds
//! into the batch. Causal time padding is explicit: the whole-clip and first-chunk graphs prepend
//! copies of frame 0, the step and last graphs prepend the `cache_in.<path>` input; the first and
//! step graphs return the tail of every padded input as `cache_out.<path>` (see [`super::stream`]).
//!
//! Convolutions that are stride 1 in time are written as the [`VideoConv`] says: one 5-D `Conv`,
//! or 4-D `Conv`s on the frames folded into the batch, one per time tap, summed
//! ([`Lower::conv_video`]). The padding, the state inputs and outputs and the weights (sliced per
//! tap in the graph, constant-folded by the runtimes) are the same either way.

use osp_graphs::{AttentionKind, DType, Dim, TensorSpec};

use super::haar;
use super::weights::WfvaeWeights;
use crate::builder::{AttentionSpec, Attr, ConvOptions, GraphBuilder, Value};
use crate::error::{Error, Result};
use crate::options::VideoConv;
use crate::tensor::HostTensor;

/// Upstream `Normalize(.., "layernorm")` epsilon.
const NORM_EPS: f64 = 1e-6;
/// Prefixes of the streaming state inputs and outputs.
pub const CACHE_IN: &str = "cache_in.";
pub const CACHE_OUT: &str = "cache_out.";
/// Longest latent clip (whole decode) or chunk (streaming) the time-interpolation tables cover.
pub const MAX_LATENT_FRAMES: usize = 4096;

/// Which graph is being lowered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The whole clip (encoder, `decoder`).
    Whole,
    /// `decoder_first`: latent 0 alone; writes the caches.
    First,
    /// `decoder_step`: reads and writes the caches.
    Step,
    /// `decoder_last`: reads the caches and flushes.
    Last,
}

impl Mode {
    pub fn reads_cache(self) -> bool {
        matches!(self, Mode::Step | Mode::Last)
    }

    pub fn writes_cache(self) -> bool {
        matches!(self, Mode::First | Mode::Step)
    }
}

/// A video value with its channel count and its spatial size as a multiple of the graph's
/// symbolic `h`/`w` (for naming cache dims).
#[derive(Debug, Clone)]
pub struct V {
    pub v: Value,
    pub c: usize,
    pub s: usize,
}

impl V {
    fn with(&self, v: Value, c: usize) -> V {
        V { v, c, s: self.s }
    }
}

/// A streaming state entry: `cache_in.<key>` / `cache_out.<key>` (their specs are the graph's).
#[derive(Debug, Clone)]
pub struct CacheEntry {
    pub key: String,
}

/// A convolution of [`Lower`]: `(path, x, out, k, stride, (pad begin, pad end))`.
type ConvFn<L> = fn(&mut L, &str, &V, usize, usize, usize, (usize, usize)) -> Result<V>;

/// The lowering state of one graph.
pub struct Lower<'a> {
    pub b: GraphBuilder,
    w: &'a WfvaeWeights,
    attention: AttentionKind,
    video_conv: VideoConv,
    pub mode: Mode,
    /// State entries in the order the graph declares them.
    pub caches: Vec<CacheEntry>,
}

fn spatial_dim(axis: &str, s: usize) -> Dim {
    if s == 1 {
        Dim::sym(axis)
    } else {
        Dim::sym(format!("{s}*{axis}"))
    }
}

/// `[b, c, frames, s*h, s*w]`.
pub fn video_dims(c: usize, frames: Dim, s: usize) -> Vec<Dim> {
    vec![Dim::sym("b"), Dim::Fixed(c), frames, spatial_dim("h", s), spatial_dim("w", s)]
}

impl<'a> Lower<'a> {
    pub fn new(name: &str, w: &'a WfvaeWeights, attention: AttentionKind, video_conv: VideoConv, mode: Mode) -> Self {
        Self { b: GraphBuilder::new(name), w, attention, video_conv, mode, caches: Vec::new() }
    }

    fn param(&mut self, key: &str, shape: &[usize]) -> Result<Value> {
        let t = self.w.get(key, shape)?;
        self.b.initializer(key, t)
    }

    /// Frames `start..end` (negative counts from the end, `i64::MAX` = to the end).
    pub fn frames(&mut self, x: &Value, start: i64, end: i64) -> Result<Value> {
        self.b.slice(x, &[start], &[end], &[2], None)
    }

    /// Channels `start..end`.
    pub fn channels(&mut self, x: &V, start: usize, end: usize) -> Result<V> {
        let v = self.b.slice(&x.v, &[start as i64], &[end as i64], &[1], None)?;
        Ok(x.with(v, end - start))
    }

    /// `n` frames of causal context in front of `x`: copies of frame 0 (whole clip, first
    /// chunk) or the `cache_in.<key>` input (later chunks); the first and step graphs output the
    /// last `n` frames of the result as `cache_out.<key>`.
    pub fn causal_pad(&mut self, key: &str, x: &V, n: usize) -> Result<Value> {
        let spec = TensorSpec::new(format!("{CACHE_IN}{key}"), DType::F32, video_dims(x.c, Dim::Fixed(n), x.s));
        let context = if self.mode.reads_cache() {
            self.b.input(spec.clone())?
        } else {
            let first = self.frames(&x.v, 0, 1)?;
            let copies = vec![&first; n];
            if n == 1 {
                first.clone()
            } else {
                self.b.concat(&copies, 2)?
            }
        };
        let padded = self.b.concat(&[&context, &x.v], 2)?;
        self.state_out(key, &padded, spec, n)?;
        Ok(padded)
    }

    /// Records a state entry and, in the first and step graphs, outputs the last `n` frames of
    /// `value` as `cache_out.<key>`.
    pub fn state_out(&mut self, key: &str, value: &Value, spec_in: TensorSpec, n: usize) -> Result<()> {
        if self.mode == Mode::Whole {
            return Ok(());
        }
        let tail = if self.mode.writes_cache() { Some(self.frames(value, -(n as i64), i64::MAX)?) } else { None };
        self.record_state(key, spec_in, tail.as_ref())
    }

    /// Records a state entry whose input spec is `spec_in`; in the first and step graphs
    /// `value` (required there) becomes the output `cache_out.<key>`.
    pub fn record_state(&mut self, key: &str, spec_in: TensorSpec, value: Option<&Value>) -> Result<()> {
        if self.mode.writes_cache() {
            let value = value.ok_or_else(|| Error::Config(format!("state `{key}` has no output in this graph")))?;
            let spec = TensorSpec { name: format!("{CACHE_OUT}{key}"), ..spec_in };
            self.b.output(value, spec)?;
        }
        self.caches.push(CacheEntry { key: key.to_string() });
        Ok(())
    }

    /// `CausalConv3d(c -> out, k, stride)` with spatial zero padding `(begin, end)` on h and w;
    /// keys `<path>.conv.{weight,bias}`.
    pub fn causal_conv(
        &mut self,
        path: &str,
        x: &V,
        out: usize,
        k: usize,
        stride: usize,
        pad: (usize, usize),
    ) -> Result<V> {
        let w = self.param(&format!("{path}.conv.weight"), &[out, x.c, k, k, k])?;
        let bias = self.param(&format!("{path}.conv.bias"), &[out])?;
        let input = if k > 1 {
            if stride != 1 && self.mode != Mode::Whole {
                return Err(Error::Config(format!("{path}: strided causal convolutions have no streaming form")));
            }
            self.causal_pad(path, x, k - 1)?
        } else {
            x.v.clone()
        };
        let v = if stride == 1 {
            self.conv_video(&input, &w, &bias, k, pad)?
        } else {
            let (pb, pe) = (pad.0 as i64, pad.1 as i64);
            let opts =
                ConvOptions { strides: vec![stride as i64; 3], pads: vec![0, pb, pb, 0, pe, pe], ..Default::default() };
            self.b.conv(&input, &w, Some(&bias), &opts)?
        };
        Ok(V { v, c: out, s: x.s / stride.max(1) })
    }

    /// A stride-1-in-time convolution of video `x` `[b, c, t + kt - 1, h, w]` (time already
    /// padded) with `w` `[o, c, kt, k, k]`, spatial stride 1 and zero padding `(begin, end)` on
    /// h and w -> `[b, o, t, h', w']`, lowered as the graph's [`VideoConv`] says.
    fn conv_video(&mut self, x: &Value, w: &Value, bias: &Value, kt: usize, pad: (usize, usize)) -> Result<Value> {
        let (pb, pe) = (pad.0 as i64, pad.1 as i64);
        if self.video_conv == VideoConv::Conv3d {
            let opts = ConvOptions { strides: vec![1; 3], pads: vec![0, pb, pb, 0, pe, pe], ..Default::default() };
            return self.b.conv(x, w, Some(bias), &opts);
        }
        let xt = self.b.transpose(x, &[0, 2, 1, 3, 4])?; // [b, t', c, h, w]
        let minus_one = self.b.const_i64(&[-1]);
        let chw = self.b.shape(&xt, Some(2), Some(5));
        let frames_shape = self.b.concat(&[&minus_one, &chw], 0)?;
        let opts = ConvOptions { strides: vec![1; 2], pads: vec![pb, pb, pe, pe], ..Default::default() };
        let mut sum: Option<Value> = None;
        for j in 0..kt {
            // tap j reads padded frames j .. j + t
            let xs = if kt == 1 {
                xt.clone()
            } else {
                let end = j as i64 + 1 - kt as i64;
                self.b.slice(&xt, &[j as i64], &[if end == 0 { i64::MAX } else { end }], &[1], None)?
            };
            let x4 = self.b.reshape_to(&xs, &frames_shape, Some(4)); // [b*t, c, h, w]
            let wj = self.b.slice(w, &[j as i64], &[j as i64 + 1], &[2], None)?;
            let wj = self.b.squeeze(&wj, &[2]); // [o, c, k, k]
            let y = self.b.conv(&x4, &wj, (j == 0).then_some(bias), &opts)?; // [b*t, o, h', w']
            sum = Some(match sum {
                None => y,
                Some(s) => self.b.add(&s, &y)?,
            });
        }
        let y = sum.ok_or_else(|| Error::Config("a convolution needs at least one time tap".into()))?;
        let batch = self.b.shape(x, Some(0), Some(1));
        let ohw = self.b.shape(&y, Some(1), Some(4));
        let video_shape = self.b.concat(&[&batch, &minus_one, &ohw], 0)?;
        let y = self.b.reshape_to(&y, &video_shape, Some(5)); // [b, t, o, h', w']
        self.b.transpose(&y, &[0, 2, 1, 3, 4])
    }

    /// Per-frame `Conv2d(c -> out, k, stride)` with zero padding `(begin, end)`; keys
    /// `<prefix>.{weight,bias}`.
    pub fn conv2d(
        &mut self,
        prefix: &str,
        x: &V,
        out: usize,
        k: usize,
        stride: usize,
        pad: (usize, usize),
    ) -> Result<V> {
        let w = self.param(&format!("{prefix}.weight"), &[out, x.c, k, k])?;
        let w = self.b.unsqueeze(&w, &[2]); // [out, c, 1, k, k]
        let bias = self.param(&format!("{prefix}.bias"), &[out])?;
        let v = if stride == 1 {
            self.conv_video(&x.v, &w, &bias, 1, pad)?
        } else {
            let (pb, pe) = (pad.0 as i64, pad.1 as i64);
            let opts = ConvOptions {
                strides: vec![1, stride as i64, stride as i64],
                pads: vec![0, pb, pb, 0, pe, pe],
                ..Default::default()
            };
            self.b.conv(&x.v, &w, Some(&bias), &opts)?
        };
        Ok(V { v, c: out, s: x.s / stride.max(1) })
    }

    /// Channel LayerNorm (eps 1e-6); keys `<prefix>.norm.{weight,bias}`.
    pub fn norm(&mut self, prefix: &str, x: &V) -> Result<V> {
        let w = self.param(&format!("{prefix}.norm.weight"), &[x.c])?;
        let bias = self.param(&format!("{prefix}.norm.bias"), &[x.c])?;
        let t = self.b.transpose(&x.v, &[0, 2, 3, 4, 1])?; // [b, t, h, w, c]
        let n = self.b.layer_norm(&t, &w, &bias, NORM_EPS)?;
        let v = self.b.transpose(&n, &[0, 4, 1, 2, 3])?;
        Ok(x.with(v, x.c))
    }

    pub fn silu(&mut self, x: &V) -> Result<V> {
        let v = self.b.silu(&x.v)?;
        Ok(x.with(v, x.c))
    }

    /// Channel concatenation.
    pub fn cat(&mut self, a: &V, b: &V) -> Result<V> {
        let v = self.b.concat(&[&a.v, &b.v], 1)?;
        Ok(a.with(v, a.c + b.c))
    }

    pub fn add(&mut self, a: &V, b: &V) -> Result<V> {
        let v = self.b.add(&a.v, &b.v)?;
        Ok(a.with(v, a.c))
    }

    /// `ResnetBlock3D(c -> out)` at `path`.
    pub fn resnet3d(&mut self, path: &str, x: &V, out: usize) -> Result<V> {
        self.resnet(path, x, out, Self::causal_conv)
    }

    /// `ResnetBlock2D(c -> out)` at `path` (per-frame convolutions).
    pub fn resnet2d(&mut self, path: &str, x: &V, out: usize) -> Result<V> {
        self.resnet(path, x, out, Self::conv2d)
    }

    /// A resnet block at `path` built with `conv` ([`Self::causal_conv`] or [`Self::conv2d`]):
    /// norm1, SiLU, conv1 (3x3), norm2, SiLU, conv2 (3x3), plus the input, through a 1x1
    /// `nin_shortcut` when the width changes.
    fn resnet(&mut self, path: &str, x: &V, out: usize, conv: ConvFn<Self>) -> Result<V> {
        let h = self.norm(&format!("{path}.norm1"), x)?;
        let h = self.silu(&h)?;
        let h = conv(self, &format!("{path}.conv1"), &h, out, 3, 1, (1, 1))?;
        let h = self.norm(&format!("{path}.norm2"), &h)?;
        let h = self.silu(&h)?;
        let h = conv(self, &format!("{path}.conv2"), &h, out, 3, 1, (1, 1))?;
        let skip =
            if x.c != out { conv(self, &format!("{path}.nin_shortcut"), x, out, 1, 1, (0, 0))? } else { x.clone() };
        self.add(&skip, &h)
    }

    /// `AttnBlock3DFix`: single-head attention over the `h*w` tokens of every frame, scale
    /// `1/sqrt(c)`.
    pub fn attention_block(&mut self, path: &str, x: &V) -> Result<V> {
        let c = x.c;
        let h = self.norm(&format!("{path}.norm"), x)?;
        let q = self.causal_conv(&format!("{path}.q"), &h, c, 1, 1, (0, 0))?;
        let k = self.causal_conv(&format!("{path}.k"), &h, c, 1, 1, (0, 0))?;
        let v = self.causal_conv(&format!("{path}.v"), &h, c, 1, 1, (0, 0))?;
        let frame_shape = {
            let t = self.b.transpose(&q.v, &[0, 2, 3, 4, 1])?;
            self.b.shape(&t, None, None) // [b, t, h, w, c]
        };
        let tokens = |b: &mut GraphBuilder, z: &Value| -> Result<Value> {
            let t = b.transpose(z, &[0, 2, 3, 4, 1])?; // [b, t, h, w, c]
            let flat =
                b.node("Flatten", "", &[Some(&t)], vec![("axis", Attr::Int(2))], &[(t.dtype(), Some(2))]).remove(0); // [b*t, h*w*c]
            Ok(b.reshape(&flat, &[0, -1, c as i64])) // [b*t, h*w, c]
        };
        let (qt, kt, vt) = (tokens(&mut self.b, &q.v)?, tokens(&mut self.b, &k.v)?, tokens(&mut self.b, &v.v)?);
        let spec = AttentionSpec { kind: self.attention, num_heads: 1, scale: 1.0 / (c as f64).sqrt() };
        let a = self.b.attention(&spec, &qt, &kt, &vt, None)?; // [b*t, h*w, c]
        let a = self.b.reshape_to(&a, &frame_shape, Some(5)); // [b, t, h, w, c]
        let a = self.b.transpose(&a, &[0, 4, 1, 2, 3])?;
        let a = x.with(a, c);
        let o = self.causal_conv(&format!("{path}.proj_out"), &a, c, 1, 1, (0, 0))?;
        self.add(x, &o)
    }

    /// `x[:, :3] += add` (the upstream in-place energy-flow add).
    pub fn add_to_first3(&mut self, x: &V, add: &Value) -> Result<V> {
        let head = self.channels(x, 0, 3)?;
        let tail = self.channels(x, 3, x.c)?;
        let head = self.b.add(&head.v, add)?;
        let v = self.b.concat(&[&head, &tail.v], 1)?;
        Ok(x.with(v, x.c))
    }

    /// Causal 3-D Haar of the whole clip: frame 0 once more in front, then 2x2x2 stride 2.
    pub fn haar3d(&mut self, x: &V) -> Result<V> {
        let first = self.frames(&x.v, 0, 1)?;
        let padded = self.b.concat(&[&first, &x.v], 2)?;
        let k = self.b.constant(&haar::dense_3d(x.c));
        let opts = ConvOptions { strides: vec![2, 2, 2], ..Default::default() };
        let v = self.b.conv(&padded, &k, None, &opts)?;
        Ok(V { v, c: 8 * x.c, s: x.s / 2 })
    }

    /// Per-frame 2-D Haar, 2x2 stride 2.
    pub fn haar2d(&mut self, x: &V) -> Result<V> {
        let k = self.b.constant(&haar::dense_2d(x.c));
        let opts = ConvOptions { strides: vec![1, 2, 2], ..Default::default() };
        let v = self.b.conv(&x.v, &k, None, &opts)?;
        Ok(V { v, c: 4 * x.c, s: x.s / 2 })
    }

    /// Inverse 3-D Haar `[b, 8c, t, h, w] -> [b, c, 2t, 2h, 2w]`, without its first frame when
    /// `drop_first` (whole clip and first chunk).
    pub fn inverse_haar3d(&mut self, x: &V, drop_first: bool) -> Result<V> {
        let c = x.c / 8;
        let k = self.b.constant(&haar::dense_3d(c));
        let opts = ConvOptions { strides: vec![2, 2, 2], ..Default::default() };
        let mut v = self.b.conv_transpose(&x.v, &k, None, &opts)?;
        if drop_first {
            v = self.frames(&v, 1, i64::MAX)?;
        }
        Ok(V { v, c, s: x.s * 2 })
    }

    /// Inverse per-frame 2-D Haar `[b, 4c, t, h, w] -> [b, c, t, 2h, 2w]`.
    pub fn inverse_haar2d(&mut self, x: &V) -> Result<V> {
        let c = x.c / 4;
        let k = self.b.constant(&haar::dense_2d(c));
        let opts = ConvOptions { strides: vec![1, 2, 2], ..Default::default() };
        let v = self.b.conv_transpose(&x.v, &k, None, &opts)?;
        Ok(V { v, c, s: x.s * 2 })
    }

    /// Nearest 2x on h and w.
    pub fn upsample_nearest_hw(&mut self, x: &V) -> Result<V> {
        let v = self.b.resize_scales(&x.v, &[1.0, 1.0, 1.0, 2.0, 2.0], "nearest", "asymmetric", "floor")?;
        Ok(V { v, c: x.c, s: x.s * 2 })
    }

    /// Bilinear 2x on h and w (`align_corners=False`).
    pub fn upsample_bilinear_hw(&mut self, x: &V) -> Result<V> {
        let v = self.b.resize_scales(&x.v, &[1.0, 1.0, 1.0, 2.0, 2.0], "linear", "half_pixel", "round_prefer_floor")?;
        Ok(V { v, c: x.c, s: x.s * 2 })
    }

    /// `[a0, b0, a1, b1, ...]` from `a`, `b` `[b, c, t, h, w]`.
    pub fn interleave_time(&mut self, a: &Value, b: &Value) -> Result<Value> {
        let sa = self.b.unsqueeze(a, &[3]);
        let sb = self.b.unsqueeze(b, &[3]);
        let stacked = self.b.concat(&[&sa, &sb], 3)?; // [b, c, t, 2, h, w]
        let head = self.b.shape(a, Some(0), Some(2));
        let minus_one = self.b.const_i64(&[-1]);
        let tail = self.b.shape(a, Some(3), Some(5));
        let target = self.b.concat(&[&head, &minus_one, &tail], 0)?;
        Ok(self.b.reshape_to(&stacked, &target, Some(5)))
    }

    /// `[1, 1, t, 1, 1]`: `first` at frame 0 and `rest` elsewhere, for the `t` frames of `like`
    /// (a slice of a built-in table of [`MAX_LATENT_FRAMES`] entries, so every backend sees a
    /// plain `Slice`; longer inputs fail with a broadcast error instead of a wrong result).
    pub fn frame0_table(&mut self, like: &Value, first: f32, rest: f32) -> Result<Value> {
        let mut values = vec![rest; MAX_LATENT_FRAMES];
        values[0] = first;
        let table = HostTensor::from_f32(vec![1, 1, MAX_LATENT_FRAMES, 1, 1], &values)?;
        let table = self.b.constant(&table);
        let zero = self.b.const_i64(&[0]);
        let t = self.b.shape(like, Some(2), Some(3));
        let axis = self.b.const_i64(&[2]);
        Ok(self.b.slice_with(&table, &zero, &t, &axis, None))
    }

    /// The energy-flow frames that wait one chunk for the (one frame delayed) main path:
    /// `cache_in.<key>` in front of `l2`; the step graph keeps the last frame for the next chunk,
    /// the first graph keeps a copy of its only frame (paired with the repeated frame 0 that the
    /// second chunk's time interpolation emits first).
    pub fn pending(&mut self, key: &str, l2: &V) -> Result<V> {
        let spec = TensorSpec::new(format!("{CACHE_IN}{key}"), DType::F32, video_dims(l2.c, Dim::Fixed(1), l2.s));
        let available = if self.mode.reads_cache() {
            let p = self.b.input(spec.clone())?;
            self.b.concat(&[&p, &l2.v], 2)?
        } else {
            l2.v.clone()
        };
        self.state_out(key, &available, spec, 1)?;
        let used = match self.mode {
            Mode::Step => self.frames(&available, 0, -1)?,
            _ => available,
        };
        Ok(l2.with(used, l2.c))
    }
}
