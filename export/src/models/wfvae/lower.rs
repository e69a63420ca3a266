//! Lowering of the WFVAE building blocks (`CausalConv3d`, `Conv2d`, channel `LayerNorm`,
//! `ResnetBlock2D/3D`, `AttnBlock3DFix`, Haar transforms, up- and downsampling) onto a
//! [`GraphBuilder`], for the whole-clip graphs and the three streaming decoder graphs.
//!
//! Video values are laid out as the [`VideoConv`] says:
//! - `Conv3d`: `[b, c, t, h, w]`; every convolution is one 5-D `Conv` (per-frame 2-D convolutions
//!   with a `[1, k, k]` kernel, the checkpoint's `[o, i, k, k]` weight unsqueezed in the graph).
//! - `Folded`: `[b, t, c, h, w]`, i.e. `[b*t, c, h, w]` frames reshaped; every convolution is one
//!   4-D `Conv` on the frames, its `kt` time taps read as `kt` frame slices concatenated on the
//!   channel axis, with the weight stored as `[o, kt*c, k, k]` ([`fold_time_taps`]); the Haar
//!   transforms likewise (the inverse 3-D one as a 4-D `ConvTranspose` whose `2c` output channels
//!   reshape to two frames). Ops that mix time slice or reshape the frame axis ([`Lower::t_axis`]).
//!
//! Graph inputs and outputs and the streaming state are `[b, c, t, h, w]` in both layouts
//! ([`Lower::from_bcthw`], [`Lower::to_bcthw`]). Causal time padding is explicit: the whole-clip
//! and first-chunk graphs prepend copies of frame 0, the step and last graphs prepend the
//! `cache_in.<path>` input; the first and step graphs return the tail of every padded input as
//! `cache_out.<path>` (the protocol is in [`super`]).

use osp_graphs::{AttentionKind, DType, Dim, TensorSpec};

use super::haar;
use super::weights::WfvaeWeights;
use super::winograd::Tile;
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

    fn folded(&self) -> bool {
        self.video_conv == VideoConv::Folded
    }

    /// The Winograd tile of a convolution with kernel side `k`, `stride` and spatial padding
    /// `pad`, where the [`VideoConv`] asks for one and the convolution is a 3x3 stride-1 "same"
    /// one.
    fn winograd_tile(&self, k: usize, stride: usize, pad: (usize, usize)) -> Option<Tile> {
        if k != 3 || stride != 1 || pad != (1, 1) {
            return None;
        }
        Tile::of(self.video_conv)
    }

    /// The transformed kernel and bias of a Winograd convolution, as initializers under the
    /// checkpoint names (`weight_key` holds `[o, c, kt, 3, 3]` or, per frame, `[o, c, 3, 3]`).
    fn winograd_params(
        &mut self,
        tile: Tile,
        weight_key: &str,
        shape: &[usize],
        bias_key: &str,
    ) -> Result<(Value, Value)> {
        let tag = self.video_conv.name();
        // a per-frame kernel `[o, c, 3, 3]` is the one-tap `[o, c, 1, 3, 3]`
        let mut dims5 = shape.to_vec();
        if dims5.len() == 4 {
            dims5.insert(2, 1);
        }
        let kernel = self
            .w
            .derived(weight_key, shape, tag, |t| tile.weight(&HostTensor::new(t.dtype(), dims5, t.data().to_vec())?))?;
        let bias = self.w.derived(bias_key, &shape[..1], tag, |b| tile.bias(b))?;
        Ok((self.b.initializer(weight_key, &kernel)?, self.b.initializer(bias_key, &bias)?))
    }

    /// A 3x3 stride-1 "same" convolution of video `x` (`c` channels, time already padded) as
    /// Winograd `F(m x m, 3 x 3)` with the [`Tile::weight`] kernel `w` `[a^2 * o, c, kt, 1, 1]`
    /// and [`Tile::bias`] `bias`:
    /// 1. the input transform on every channel plane: one `Conv` of the `[b*c, 1, t, h, w]` planes
    ///    with the `a^2` fixed `a x a` kernels, stride `m`, zero padding 1 in front and `m` behind
    ///    on h and w (`m - 1` more than the convolution needs, so a partial last tile reads
    ///    zeros): `[b*c, a^2, t, th, tw]` with `th = ceil(h / m)`, `tw = ceil(w / m)`;
    /// 2. components to the front (`[b, a^2 * c, t, th, tw]`) and the products with the time
    ///    taps as one `Conv` with `a^2` groups: `[b, a^2 * o, t', th, tw]`;
    /// 3. the output transform as one `MatMul` by `[m^2, a^2]`, the tiles back to rows with one
    ///    `DepthToSpace` (the 7-D `Transpose` it equals runs slower on ORT), and the rows and
    ///    columns past `h` and `w` dropped.
    fn winograd_conv(&mut self, x: &Value, c: usize, w: &Value, bias: &Value, tile: Tile, out: usize) -> Result<Value> {
        let (m, k2) = (tile.m() as i64, tile.components() as i64);
        let (c, out) = (c as i64, out as i64);
        let planes = self.b.reshape(x, &[-1, 1, 0, 0, 0]);
        let input_kernel = self.b.constant(&tile.input_kernel()?);
        let opts = ConvOptions { strides: vec![1, m, m], pads: vec![0, 1, 1, 0, m, m], ..Default::default() };
        let v = self.b.conv(&planes, &input_kernel, None, &opts)?; // [b*c, a^2, t, th, tw]
        let dims = self.b.shape(&v, Some(2), Some(5)); // [t, th, tw]
        let batch = self.b.shape(x, Some(0), Some(1));
        let rest = self.b.const_i64(&[c, k2, -1]);
        let shape = self.b.concat(&[&batch, &rest], 0)?;
        let v = self.b.reshape_to(&v, &shape, Some(4)); // [b, c, a^2, t*th*tw]
        let v = self.b.transpose(&v, &[0, 2, 1, 3])?; // [b, a^2, c, t*th*tw]
        let group_channels = self.b.const_i64(&[k2 * c]);
        let shape = self.b.concat(&[&batch, &group_channels, &dims], 0)?;
        let v = self.b.reshape_to(&v, &shape, Some(5)); // [b, a^2 * c, t, th, tw]
        let opts = ConvOptions { group: k2, ..Default::default() };
        let products = self.b.conv(&v, w, Some(bias), &opts)?; // [b, a^2 * o, t', th, tw]
        let components = self.b.reshape(&products, &[0, k2, -1]); // [b, a^2, o*t'*th*tw]
        let output_matrix = self.b.constant(&tile.output_matrix()?);
        // pixel (p, q) of frame-channel j = o * t' + f lands in channel (p * m + q) * o * t' + j:
        // the layout `DepthToSpace` (DCR) reads
        let y = self.b.matmul(&output_matrix, &components)?; // [b, m^2, o*t'*th*tw]
        let grid = self.b.shape(&products, Some(3), Some(5)); // [th, tw]
        let minus_one = self.b.const_i64(&[-1]);
        let shape = self.b.concat(&[&batch, &minus_one, &grid], 0)?;
        let y = self.b.reshape_to(&y, &shape, Some(4)); // [b, m^2 * o * t', th, tw]
        let attrs = vec![("blocksize", Attr::Int(m)), ("mode", Attr::String("DCR".into()))];
        let y = self.b.node("DepthToSpace", "", &[Some(&y)], attrs, &[(y.dtype(), Some(4))]).remove(0); // [b, o * t', th*m, tw*m]
        let rows = self.b.shape(&y, Some(2), Some(4));
        let head = self.b.const_i64(&[out, -1]);
        let shape = self.b.concat(&[&batch, &head, &rows], 0)?;
        let y = self.b.reshape_to(&y, &shape, Some(5)); // [b, o, t', th*m, tw*m]
        let zeros = self.b.const_i64(&[0, 0]);
        let hw = self.b.shape(x, Some(3), Some(5));
        let axes = self.b.const_i64(&[3, 4]);
        Ok(self.b.slice_with(&y, &zeros, &hw, &axes, None))
    }

    /// The frame axis of video values.
    pub fn t_axis(&self) -> i64 {
        if self.folded() {
            1
        } else {
            2
        }
    }

    /// The channel axis of video values.
    pub fn c_axis(&self) -> i64 {
        if self.folded() {
            2
        } else {
            1
        }
    }

    /// A `[b, c, t, h, w]` value (graph or state input) in the graph's video layout.
    pub fn from_bcthw(&mut self, x: &Value) -> Result<Value> {
        if self.folded() {
            self.b.transpose(x, &[0, 2, 1, 3, 4])
        } else {
            Ok(x.clone())
        }
    }

    /// A video value as `[b, c, t, h, w]` (graph or state output).
    pub fn to_bcthw(&mut self, x: &Value) -> Result<Value> {
        // the permutation swaps axes 1 and 2: its own inverse
        self.from_bcthw(x)
    }

    /// A constant convolution kernel `[o, c, kt, k, k]` in the graph's layout (folded:
    /// `[o, kt*c, k, k]`).
    fn video_kernel(&mut self, kernel: &HostTensor) -> Result<Value> {
        if self.folded() {
            Ok(self.b.constant(&fold_time_taps(kernel)?))
        } else {
            Ok(self.b.constant(kernel))
        }
    }

    /// Frames `start..end` (negative counts from the end, `i64::MAX` = to the end).
    pub fn frames(&mut self, x: &Value, start: i64, end: i64) -> Result<Value> {
        let axis = self.t_axis();
        self.b.slice(x, &[start], &[end], &[axis], None)
    }

    /// The frames of `xs` one after the other.
    pub fn cat_frames(&mut self, xs: &[&Value]) -> Result<Value> {
        let axis = self.t_axis();
        self.b.concat(xs, axis)
    }

    /// Channels `start..end`.
    pub fn channels(&mut self, x: &V, start: usize, end: usize) -> Result<V> {
        let axis = self.c_axis();
        let v = self.b.slice(&x.v, &[start as i64], &[end as i64], &[axis], None)?;
        Ok(x.with(v, end - start))
    }

    /// Folded layout: `[b, t, c, h, w]` -> `[b*t, c, h, w]`.
    fn to_frames(&mut self, x: &Value) -> Result<Value> {
        let minus_one = self.b.const_i64(&[-1]);
        let chw = self.b.shape(x, Some(2), Some(5));
        let shape = self.b.concat(&[&minus_one, &chw], 0)?;
        Ok(self.b.reshape_to(x, &shape, Some(4)))
    }

    /// Folded layout: `[b*t, c', h', w']` -> `[b, t', c, h', w']` with `b` taken from `like`
    /// (`[b, ...]`) and `c` the given channel count (`t' * c = t * c'`) or, with none, `c'`.
    fn from_frames(&mut self, y: &Value, like: &Value, c: Option<usize>) -> Result<Value> {
        let batch = self.b.shape(like, Some(0), Some(1));
        let (mid, from) = match c {
            Some(c) => (self.b.const_i64(&[-1, c as i64]), 2),
            None => (self.b.const_i64(&[-1]), 1),
        };
        let rest = self.b.shape(y, Some(from), Some(4));
        let shape = self.b.concat(&[&batch, &mid, &rest], 0)?;
        Ok(self.b.reshape_to(y, &shape, Some(5)))
    }

    /// `n` frames of causal context in front of `x`: copies of frame 0 (whole clip, first
    /// chunk) or the `cache_in.<key>` input (later chunks); the first and step graphs output the
    /// last `n` frames of the result as `cache_out.<key>`.
    pub fn causal_pad(&mut self, key: &str, x: &V, n: usize) -> Result<Value> {
        let spec = TensorSpec::new(format!("{CACHE_IN}{key}"), DType::F32, video_dims(x.c, Dim::Fixed(n), x.s));
        let context = if self.mode.reads_cache() {
            let state = self.b.input(spec.clone())?;
            self.from_bcthw(&state)?
        } else {
            let first = self.frames(&x.v, 0, 1)?;
            let copies = vec![&first; n];
            if n == 1 {
                first.clone()
            } else {
                self.cat_frames(&copies)?
            }
        };
        let padded = self.cat_frames(&[&context, &x.v])?;
        self.state_out(key, &padded, spec, n)?;
        Ok(padded)
    }

    /// Records a state entry and, in the first and step graphs, outputs the last `n` frames of
    /// the video `value` as `cache_out.<key>` (`[b, c, n, h, w]`).
    pub fn state_out(&mut self, key: &str, value: &Value, spec_in: TensorSpec, n: usize) -> Result<()> {
        if self.mode == Mode::Whole {
            return Ok(());
        }
        let tail = if self.mode.writes_cache() {
            let tail = self.frames(value, -(n as i64), i64::MAX)?;
            Some(self.to_bcthw(&tail)?)
        } else {
            None
        };
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
        let key = format!("{path}.conv.weight");
        let shape = [out, x.c, k, k, k];
        if let Some(tile) = self.winograd_tile(k, stride, pad) {
            let (w, bias) = self.winograd_params(tile, &key, &shape, &format!("{path}.conv.bias"))?;
            let input = self.causal_pad(path, x, k - 1)?;
            let v = self.winograd_conv(&input, x.c, &w, &bias, tile, out)?;
            return Ok(V { v, c: out, s: x.s });
        }
        let w = if self.folded() {
            // the checkpoint tensor, stored `[o, kt*c, k, k]` under its own name
            let kernel = self.w.derived(&key, &shape, "folded", fold_time_taps)?;
            self.b.initializer(&key, &kernel)?
        } else {
            self.param(&key, &shape)?
        };
        let bias = self.param(&format!("{path}.conv.bias"), &[out])?;
        let input = if k > 1 {
            if stride != 1 && self.mode != Mode::Whole {
                return Err(Error::Config(format!("{path}: strided causal convolutions have no streaming form")));
            }
            self.causal_pad(path, x, k - 1)?
        } else {
            x.v.clone()
        };
        let v = self.conv_video(&input, &w, Some(&bias), k, (stride, stride), pad)?;
        Ok(V { v, c: out, s: x.s / stride.max(1) })
    }

    /// A convolution of video `x` (time already padded) with the kernel `w` `[o, c, kt, k, k]`
    /// (folded: `[o, kt*c, k, k]`), strides `(time, space)` and zero padding `(begin, end)` on h
    /// and w.
    fn conv_video(
        &mut self,
        x: &Value,
        w: &Value,
        bias: Option<&Value>,
        kt: usize,
        (st, ss): (usize, usize),
        pad: (usize, usize),
    ) -> Result<Value> {
        let (pb, pe) = (pad.0 as i64, pad.1 as i64);
        let (st, ss) = (st as i64, ss as i64);
        if !self.folded() {
            let opts =
                ConvOptions { strides: vec![st, ss, ss], pads: vec![0, pb, pb, 0, pe, pe], ..Default::default() };
            return self.b.conv(x, w, bias, &opts);
        }
        // tap j reads the padded frames j, j + st, ... (as many as the output has)
        let steps = [st];
        let mut taps = Vec::with_capacity(kt);
        for j in 0..kt as i64 {
            let end = j + 1 - kt as i64;
            let end = if end == 0 { i64::MAX } else { end };
            taps.push(if kt == 1 && st == 1 {
                x.clone()
            } else {
                self.b.slice(x, &[j], &[end], &[1], (st != 1).then_some(&steps[..]))?
            });
        }
        let stacked =
            if taps.len() == 1 { taps.remove(0) } else { self.b.concat(&taps.iter().collect::<Vec<_>>(), 2)? };
        let x4 = self.to_frames(&stacked)?; // [b*t, kt*c, h, w]
        let opts = ConvOptions { strides: vec![ss, ss], pads: vec![pb, pb, pe, pe], ..Default::default() };
        let y = self.b.conv(&x4, w, bias, &opts)?; // [b*t, o, h', w']
        self.from_frames(&y, x, None)
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
        if let Some(tile) = self.winograd_tile(k, stride, pad) {
            let (w, bias) =
                self.winograd_params(tile, &format!("{prefix}.weight"), &[out, x.c, k, k], &format!("{prefix}.bias"))?;
            let v = self.winograd_conv(&x.v, x.c, &w, &bias, tile, out)?;
            return Ok(x.with(v, out));
        }
        let w = self.param(&format!("{prefix}.weight"), &[out, x.c, k, k])?;
        let w = if self.folded() { w } else { self.b.unsqueeze(&w, &[2]) }; // [out, c, 1, k, k]
        let bias = self.param(&format!("{prefix}.bias"), &[out])?;
        let v = self.conv_video(&x.v, &w, Some(&bias), 1, (1, stride), pad)?;
        Ok(V { v, c: out, s: x.s / stride.max(1) })
    }

    /// Channel LayerNorm (eps 1e-6); keys `<prefix>.norm.{weight,bias}`.
    pub fn norm(&mut self, prefix: &str, x: &V) -> Result<V> {
        let w = self.param(&format!("{prefix}.norm.weight"), &[x.c])?;
        let bias = self.param(&format!("{prefix}.norm.bias"), &[x.c])?;
        let t = self.channels_last(&x.v)?; // [b, t, h, w, c]
        let n = self.b.layer_norm(&t, &w, &bias, NORM_EPS)?;
        let v = self.from_channels_last(&n)?;
        Ok(x.with(v, x.c))
    }

    /// A video value as `[b, t, h, w, c]`.
    fn channels_last(&mut self, x: &Value) -> Result<Value> {
        let perm: &[i64] = if self.folded() { &[0, 1, 3, 4, 2] } else { &[0, 2, 3, 4, 1] };
        self.b.transpose(x, perm)
    }

    /// `[b, t, h, w, c]` in the graph's video layout.
    fn from_channels_last(&mut self, x: &Value) -> Result<Value> {
        let perm: &[i64] = if self.folded() { &[0, 1, 4, 2, 3] } else { &[0, 4, 1, 2, 3] };
        self.b.transpose(x, perm)
    }

    pub fn silu(&mut self, x: &V) -> Result<V> {
        let v = self.b.silu(&x.v)?;
        Ok(x.with(v, x.c))
    }

    /// Channel concatenation.
    pub fn cat(&mut self, a: &V, b: &V) -> Result<V> {
        let axis = self.c_axis();
        let v = self.b.concat(&[&a.v, &b.v], axis)?;
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
        let (qt, kt, vt) = (self.channels_last(&q.v)?, self.channels_last(&k.v)?, self.channels_last(&v.v)?); // [b, t, h, w, c]
        let frame_shape = self.b.shape(&qt, None, None);
        let tokens = |b: &mut GraphBuilder, t: &Value| -> Value {
            let flat =
                b.node("Flatten", "", &[Some(t)], vec![("axis", Attr::Int(2))], &[(t.dtype(), Some(2))]).remove(0); // [b*t, h*w*c]
            b.reshape(&flat, &[0, -1, c as i64]) // [b*t, h*w, c]
        };
        let (qt, kt, vt) = (tokens(&mut self.b, &qt), tokens(&mut self.b, &kt), tokens(&mut self.b, &vt));
        let spec = AttentionSpec { kind: self.attention, num_heads: 1, scale: 1.0 / (c as f64).sqrt() };
        let a = self.b.attention(&spec, &qt, &kt, &vt, None)?; // [b*t, h*w, c]
        let a = self.b.reshape_to(&a, &frame_shape, Some(5)); // [b, t, h, w, c]
        let a = self.from_channels_last(&a)?;
        let a = x.with(a, c);
        let o = self.causal_conv(&format!("{path}.proj_out"), &a, c, 1, 1, (0, 0))?;
        self.add(x, &o)
    }

    /// `x[:, :3] += add` (the upstream in-place energy-flow add).
    pub fn add_to_first3(&mut self, x: &V, add: &Value) -> Result<V> {
        let head = self.channels(x, 0, 3)?;
        let tail = self.channels(x, 3, x.c)?;
        let head = self.b.add(&head.v, add)?;
        let axis = self.c_axis();
        let v = self.b.concat(&[&head, &tail.v], axis)?;
        Ok(x.with(v, x.c))
    }

    /// Causal 3-D Haar of the whole clip: frame 0 once more in front, then 2x2x2 stride 2.
    pub fn haar3d(&mut self, x: &V) -> Result<V> {
        let first = self.frames(&x.v, 0, 1)?;
        let padded = self.cat_frames(&[&first, &x.v])?;
        let k = self.video_kernel(&haar::dense_3d(x.c))?;
        let v = self.conv_video(&padded, &k, None, 2, (2, 2), (0, 0))?;
        Ok(V { v, c: 8 * x.c, s: x.s / 2 })
    }

    /// Per-frame 2-D Haar, 2x2 stride 2.
    pub fn haar2d(&mut self, x: &V) -> Result<V> {
        let k = self.video_kernel(&haar::dense_2d(x.c))?;
        let v = self.conv_video(&x.v, &k, None, 1, (1, 2), (0, 0))?;
        Ok(V { v, c: 4 * x.c, s: x.s / 2 })
    }

    /// Inverse 3-D Haar `[b, 8c, t, h, w] -> [b, c, 2t, 2h, 2w]`, without its first frame when
    /// `drop_first` (whole clip and first chunk).
    pub fn inverse_haar3d(&mut self, x: &V, drop_first: bool) -> Result<V> {
        let c = x.c / 8;
        let mut v = self.conv_transpose_video(x, &haar::dense_3d(c), c)?;
        if drop_first {
            v = self.frames(&v, 1, i64::MAX)?;
        }
        Ok(V { v, c, s: x.s * 2 })
    }

    /// Inverse per-frame 2-D Haar `[b, 4c, t, h, w] -> [b, c, t, 2h, 2w]`.
    pub fn inverse_haar2d(&mut self, x: &V) -> Result<V> {
        let c = x.c / 4;
        let v = self.conv_transpose_video(x, &haar::dense_2d(c), c)?;
        Ok(V { v, c, s: x.s * 2 })
    }

    /// `ConvTranspose` of video `x` with the kernel `k` `[x.c, c, kt, 2, 2]`, stride `(kt, 2, 2)`:
    /// `[.., t, ..]` -> `[.., kt*t, ..]` with `c` channels. Folded, one 4-D `ConvTranspose` whose
    /// `kt*c` output channels (tap-major) reshape to `kt` consecutive frames.
    fn conv_transpose_video(&mut self, x: &V, k: &HostTensor, c: usize) -> Result<Value> {
        let kt = k.shape()[2] as i64;
        let k = self.video_kernel(k)?;
        if !self.folded() {
            let opts = ConvOptions { strides: vec![kt, 2, 2], ..Default::default() };
            return self.b.conv_transpose(&x.v, &k, None, &opts);
        }
        let x4 = self.to_frames(&x.v)?;
        let opts = ConvOptions { strides: vec![2, 2], ..Default::default() };
        let y = self.b.conv_transpose(&x4, &k, None, &opts)?; // [b*t, kt*c, 2h, 2w]
        self.from_frames(&y, &x.v, Some(c))
    }

    /// Nearest 2x on h and w.
    pub fn upsample_nearest_hw(&mut self, x: &V) -> Result<V> {
        self.upsample_hw(x, "nearest", "asymmetric", "floor")
    }

    /// Bilinear 2x on h and w (`align_corners=False`).
    pub fn upsample_bilinear_hw(&mut self, x: &V) -> Result<V> {
        self.upsample_hw(x, "linear", "half_pixel", "round_prefer_floor")
    }

    /// `Resize` 2x on h and w: 5-D with unit scales on the other axes, or folded on the frames
    /// `[b*t, c, h, w]` (ONNX Runtime's 2-D bilinear kernel instead of its trilinear one).
    fn upsample_hw(&mut self, x: &V, mode: &str, coordinates: &str, nearest: &str) -> Result<V> {
        let v = if self.folded() {
            let x4 = self.to_frames(&x.v)?;
            let y = self.b.resize_scales(&x4, &[1.0, 1.0, 2.0, 2.0], mode, coordinates, nearest)?;
            self.from_frames(&y, &x.v, None)?
        } else {
            self.b.resize_scales(&x.v, &[1.0, 1.0, 1.0, 2.0, 2.0], mode, coordinates, nearest)?
        };
        Ok(V { v, c: x.c, s: x.s * 2 })
    }

    /// The frames `[a0, b0, a1, b1, ...]` from videos `a`, `b`.
    pub fn interleave_time(&mut self, a: &Value, b: &Value) -> Result<Value> {
        let ta = self.t_axis();
        let sa = self.b.unsqueeze(a, &[ta + 1]);
        let sb = self.b.unsqueeze(b, &[ta + 1]);
        let stacked = self.b.concat(&[&sa, &sb], ta + 1)?; // [.., t, 2, ..]
        let head = self.b.shape(a, Some(0), Some(ta));
        let minus_one = self.b.const_i64(&[-1]);
        let tail = self.b.shape(a, Some(ta + 1), Some(5));
        let target = self.b.concat(&[&head, &minus_one, &tail], 0)?;
        Ok(self.b.reshape_to(&stacked, &target, Some(5)))
    }

    /// `[1, 1, t, 1, 1]` (folded `[1, t, 1, 1, 1]`): `first` at frame 0 and `rest` elsewhere, for
    /// the `t` frames of `like`
    /// (a slice of a built-in table of [`MAX_LATENT_FRAMES`] entries, so every backend sees a
    /// plain `Slice`; longer inputs fail with a broadcast error instead of a wrong result).
    pub fn frame0_table(&mut self, like: &Value, first: f32, rest: f32) -> Result<Value> {
        let mut values = vec![rest; MAX_LATENT_FRAMES];
        values[0] = first;
        let ta = self.t_axis();
        let mut shape = vec![1; 5];
        shape[ta as usize] = MAX_LATENT_FRAMES;
        let table = HostTensor::from_f32(shape, &values)?;
        let table = self.b.constant(&table);
        let zero = self.b.const_i64(&[0]);
        let t = self.b.shape(like, Some(ta), Some(ta + 1));
        let axis = self.b.const_i64(&[ta]);
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
            let p = self.from_bcthw(&p)?;
            self.cat_frames(&[&p, &l2.v])?
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

/// `[o, c, kt, kh, kw]` -> `[o, kt*c, kh, kw]` with channel `j*c + i` = input channel `i` of time
/// tap `j` (the layout of `kt` frame slices concatenated on the channel axis).
pub(crate) fn fold_time_taps(kernel: &HostTensor) -> Result<HostTensor> {
    let &[o, c, kt, kh, kw] = kernel.shape() else {
        return Err(Error::Config(format!("a video kernel must be 5-D, got shape {:?}", kernel.shape())));
    };
    let elem = kernel.dtype().size();
    let plane = kh * kw * elem;
    let src = kernel.data();
    let mut dst = vec![0u8; src.len()];
    for oi in 0..o {
        for i in 0..c {
            for j in 0..kt {
                let from = ((oi * c + i) * kt + j) * plane;
                let to = ((oi * kt + j) * c + i) * plane;
                dst[to..to + plane].copy_from_slice(&src[from..from + plane]);
            }
        }
    }
    HostTensor::new(kernel.dtype(), vec![o, kt * c, kh, kw], dst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_time_taps_puts_each_tap_in_its_channel_block() {
        // w[o][i][j][y][x] = 1000 o + 100 i + 10 j + 2 y + x
        let (o, c, kt) = (2, 3, 3);
        let mut values = Vec::new();
        for oi in 0..o {
            for i in 0..c {
                for j in 0..kt {
                    for p in 0..4 {
                        values.push((1000 * oi + 100 * i + 10 * j + p) as f32);
                    }
                }
            }
        }
        let folded = fold_time_taps(&HostTensor::from_f32(vec![o, c, kt, 2, 2], &values).unwrap()).unwrap();
        assert_eq!(folded.shape(), &[o, kt * c, 2, 2]);
        let f = folded.to_f32().unwrap();
        for oi in 0..o {
            for j in 0..kt {
                for i in 0..c {
                    for p in 0..4 {
                        let at = ((oi * kt * c) + j * c + i) * 4 + p;
                        assert_eq!(f[at], (1000 * oi + 100 * i + 10 * j + p) as f32, "o {oi} tap {j} channel {i}");
                    }
                }
            }
        }
        assert!(fold_time_taps(&HostTensor::from_f32(vec![2, 2], &[0.0; 4]).unwrap()).is_err());
    }
}
