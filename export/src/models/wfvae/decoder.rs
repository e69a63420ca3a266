//! Lowering of the WFVAE `Decoder`, whole clip or one streaming chunk (see [`super::stream`]).
//!
//! Upstream: <https://github.com/PKU-YuanGroup/Open-Sora-Plan/blob/9fa322fbbb276e2bbe40b2f439e3d610af3d7690/opensora/models/causalvideovae/model/vae/modeling_wfvae.py#L153-L313>

use osp_graphs::{DType, Dim, TensorSpec};
use osp_trainer::models::wfvae::WFVAEModelConfig;

use super::lower::{video_dims, Lower, Mode, CACHE_IN, V};
use crate::builder::Value;
use crate::error::Result;
use crate::tensor::HostTensor;

/// State key of the energy-flow frames waiting for the one-frame-delayed main path.
pub const L2_PENDING: &str = "decoder.inverse_wavelet_transform_l2.pending";
/// Suffix of the time-interpolation state keys (`<upsample path>.interpolation`) and of their
/// neighbour weight (`<upsample path>.interpolation_weight`).
const INTERPOLATION: &str = "interpolation";

/// Latent `[b, latent, t, h, w]` -> video: `4t - 3` frames (whole clip), `1` (first chunk,
/// latent 0 alone), `4t` (step), `4t + 2` (last chunk).
pub fn decoder(l: &mut Lower, cfg: &WFVAEModelConfig, z: &V) -> Result<V> {
    let (c, e, nr, r) =
        (cfg.base_channels, cfg.decoder_energy_flow_hidden_size, cfg.decoder_num_resblocks, cfg.connect_res_layer_num);
    let drop_first = matches!(l.mode, Mode::Whole | Mode::First);
    let h = l.causal_conv("decoder.conv_in", z, 4 * c, 3, 1, (1, 1))?;
    let mut h = l.resnet3d("decoder.mid.0", &h, 4 * c)?;
    let mut next = 1;
    if cfg.use_attention {
        h = l.attention_block("decoder.mid.1", &h)?;
        next = 2;
    }
    let h = l.resnet3d(&format!("decoder.mid.{next}"), &h, 4 * c + e)?;
    let main = l.channels(&h, 0, 4 * c)?;
    let mut l2 = l.channels(&h, 4 * c, 4 * c + e)?;
    for i in 0..r {
        l2 = l.resnet3d(&format!("decoder.connect_l2.{i}"), &l2, e)?;
    }
    let l2 = l.conv2d(&format!("decoder.connect_l2.{r}"), &l2, 24, 3, 1, (1, 1))?;
    let l2 = l.inverse_haar3d(&l2, drop_first)?; // [b, 3, 2t(-1), 2h, 2w]
    let l2 = l.pending(L2_PENDING, &l2)?;

    let mut h = main;
    for i in 0..nr {
        h = l.resnet3d(&format!("decoder.up2.{i}"), &h, 4 * c)?;
    }
    h = upsample_time_space(l, &format!("decoder.up2.{nr}"), &h)?;
    let h = l.resnet3d(&format!("decoder.up2.{}", nr + 1), &h, 4 * c + e)?;
    let main = l.channels(&h, 0, 4 * c)?;
    let mut l1 = l.channels(&h, 4 * c, 4 * c + e)?;
    for i in 0..r {
        l1 = l.resnet3d(&format!("decoder.connect_l1.{i}"), &l1, e)?;
    }
    let l1 = l.conv2d(&format!("decoder.connect_l1.{r}"), &l1, 12, 3, 1, (1, 1))?;
    let l1 = l.add_to_first3(&l1, &l2.v)?;
    let l1 = l.inverse_haar2d(&l1)?; // [b, 3, t', 4h, 4w]

    let mut h = main;
    for i in 0..nr {
        h = l.resnet3d(&format!("decoder.up1.{i}"), &h, 2 * c)?;
    }
    // Upsample: nearest 2x per frame, then 3x3
    let up = l.upsample_nearest_hw(&h)?;
    h = l.conv2d(&format!("decoder.up1.{nr}.conv"), &up, 2 * c, 3, 1, (1, 1))?;
    h = l.resnet3d(&format!("decoder.up1.{}", nr + 1), &h, 2 * c)?;
    h = l.resnet3d("decoder.layer.0", &h, c)?;
    h = l.resnet3d("decoder.layer.1", &h, c)?;
    let h = l.norm("decoder.norm_out", &h)?;
    let h = l.silu(&h)?;
    let h = l.conv2d("decoder.conv_out", &h, 24, 3, 1, (1, 1))?;
    let h = l.add_to_first3(&h, &l1.v)?;
    l.inverse_haar3d(&h, drop_first)
}

/// `Spatial2xTime2x3DUpsample` ("trilinear"): frame 0 alone, frames 1.. linearly x2 in time
/// (`align_corners=False`, edge clamp), bilinear x2 in space, causal 3x3x3 conv `<path>.conv`.
///
/// Whole clip, `T` frames -> `2T - 1`: with `next[k] = x[min(k + 1, T - 1)]` and a weight `a` that
/// is 0 at frame 0 and 1/4 elsewhere, `X = x + a (next - x)` (the odd output of frame `k`, and
/// `x0` at `k = 0`) and `Y = next - a (next - x)` (the even output of frame `k + 1`) interleave to
/// the upstream sequence plus one trailing frame, which is dropped. No intermediate is empty
/// for `T = 1`.
///
/// Streaming: the odd output of frame `k` needs frame `k + 1`, so the interpolation runs one
/// frame behind. State `<path>.interpolation` is the previous input frame `p` and
/// `<path>.interpolation_weight` the weight `s` its pair uses: a chunk `x1..xt` emits
/// `odd(p) = p + s (x1 - p)`, `even(x1) = x1 - s (x1 - p)`, then the regular pairs (weight 1/4):
/// `2t` frames; the last chunk adds the clamped odd output of its last frame (itself). The first
/// chunk (latent 0 alone) emits `x0` and leaves `p = x0`, `s = 0`, so the second chunk starts
/// with a repeat of frame 0 (its outputs repeat the first chunk's exactly, because every later
/// layer is causal with replicate padding or per frame; the driver drops those 2 video frames)
/// followed by `even(x1) = x1`, the upstream edge clamp.
fn upsample_time_space(l: &mut Lower, path: &str, x: &V) -> Result<V> {
    let key = format!("{path}.{INTERPOLATION}");
    let weight_key = format!("{path}.{INTERPOLATION}_weight");
    let seq = match l.mode {
        Mode::Whole => {
            let last = l.frames(&x.v, -1, i64::MAX)?;
            let extended = l.cat_frames(&[&x.v, &last])?;
            let next = l.frames(&extended, 1, i64::MAX)?;
            let a = l.frame0_table(&x.v, 0.0, 0.25)?;
            let d = l.b.sub(&next, &x.v)?;
            let ad = l.b.mul(&a, &d)?;
            let odd = l.b.add(&x.v, &ad)?;
            let even = l.b.sub(&next, &ad)?;
            let seq = l.interleave_time(&odd, &even)?;
            l.frames(&seq, 0, -1)?
        }
        Mode::First => {
            interpolation_state(l, &key, &weight_key, x, 0.0)?;
            x.v.clone()
        }
        Mode::Step | Mode::Last => {
            let (p, s) = interpolation_state(l, &key, &weight_key, x, 0.25)?
                .expect("step and last graphs read the interpolation state");
            let window = l.cat_frames(&[&p, &x.v])?;
            let before = l.frames(&window, 0, -1)?;
            // a = 1/4, except `s` at frame 0
            let base = l.frame0_table(&x.v, 0.0, 0.25)?;
            let at0 = l.frame0_table(&x.v, 1.0, 0.0)?;
            let s = l.b.reshape(&s, &[1, 1, 1, 1, 1]);
            let s0 = l.b.mul(&at0, &s)?;
            let a = l.b.add(&base, &s0)?;
            let d = l.b.sub(&x.v, &before)?;
            let ad = l.b.mul(&a, &d)?;
            let odd = l.b.add(&before, &ad)?;
            let even = l.b.sub(&x.v, &ad)?;
            let seq = l.interleave_time(&odd, &even)?;
            if l.mode == Mode::Last {
                let last = l.frames(&x.v, -1, i64::MAX)?;
                l.cat_frames(&[&seq, &last])?
            } else {
                seq
            }
        }
    };
    let seq = V { v: seq, c: x.c, s: x.s };
    let up = l.upsample_bilinear_hw(&seq)?;
    l.causal_conv(&format!("{path}.conv"), &up, x.c, 3, 1, (1, 1))
}

/// Declares the time-interpolation state: inputs `(p, s)` in the step and last graphs (returned,
/// `None` in the first graph);
/// outputs `p` = the last frame of `x` and `s = next_weight` in the first and step graphs.
fn interpolation_state(
    l: &mut Lower,
    key: &str,
    weight_key: &str,
    x: &V,
    next_weight: f32,
) -> Result<Option<(Value, Value)>> {
    let frame_spec = TensorSpec::new(format!("{CACHE_IN}{key}"), DType::F32, video_dims(x.c, Dim::Fixed(1), x.s));
    let weight_spec = TensorSpec::new(format!("{CACHE_IN}{weight_key}"), DType::F32, [Dim::Fixed(1)]);
    let inputs = if l.mode.reads_cache() {
        let p = l.b.input(frame_spec.clone())?;
        let p = l.from_bcthw(&p)?;
        let s = l.b.input(weight_spec.clone())?;
        Some((p, s))
    } else {
        None
    };
    l.state_out(key, &x.v, frame_spec, 1)?;
    let weight =
        if l.mode.writes_cache() { Some(l.b.constant(&HostTensor::from_f32(vec![1], &[next_weight])?)) } else { None };
    l.record_state(weight_key, weight_spec, weight.as_ref())?;
    Ok(inputs)
}
