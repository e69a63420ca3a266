//! Autocast: mixed-precision compute for Burn modules whose parameters stay float32, the
//! counterpart of `torch.autocast` that upstream training gets from accelerate
//! `--mixed_precision bf16`.
//!
//! Torch's CUDA autocast runs the ops of its "lower precision" list (`linear`, `conv*d`,
//! `matmul`, `bmm`, `scaled_dot_product_attention`, ...) in the compute dtype and keeps its
//! "float32" list (`layer_norm`, `softmax`, `exp`, `mse_loss`, ...) in float32. Here each
//! lower-precision op casts its inputs (activations and weights) to the compute dtype, runs, and
//! casts its output back to the input's dtype, so everything between those ops (norms, softmax,
//! RoPE, embeddings, the loss) stays float32 and parameters, gradients and optimizer state are
//! float32 (Burn's `cast` backward casts the gradient back). `None` is the plain float32 path,
//! calling exactly the modules' own `forward`.
//!
//! Reference: <https://pytorch.org/docs/stable/amp.html#cuda-ops-that-can-autocast-to-float16>.

use burn::nn::conv::Conv2d;
use burn::nn::{Linear, PaddingConfig2d};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::ops::PaddedConvOptions;
use burn::tensor::{FloatDType, Tensor};

/// The autocast compute dtype of a forward pass: `None` computes in float32.
pub type ComputeDType = Option<FloatDType>;

/// `layer.forward(x)` with `x`, weight and bias in `compute`; the output has `x`'s dtype.
pub fn linear<B: Backend, const D: usize>(layer: &Linear<B>, x: Tensor<B, D>, compute: ComputeDType) -> Tensor<B, D> {
    let Some(c) = compute else {
        return layer.forward(x);
    };
    let out_dtype: FloatDType = x.dtype().into();
    let y = burn::tensor::module::linear(
        x.cast(c),
        layer.weight.val().cast(c),
        layer.bias.as_ref().map(|b| b.val().cast(c)),
    );
    y.cast(out_dtype)
}

/// `layer.forward(x)` (`[b, c, h, w]`) with `x`, weight and bias in `compute`; the output has
/// `x`'s dtype.
pub fn conv2d<B: Backend>(layer: &Conv2d<B>, x: Tensor<B, 4>, compute: ComputeDType) -> Tensor<B, 4> {
    let Some(c) = compute else {
        return layer.forward(x);
    };
    let out_dtype: FloatDType = x.dtype().into();
    let [_, _, height, width] = x.dims();
    let ((top, bottom), (left, right)) = padding_2d(layer, height, width);
    let options =
        PaddedConvOptions::asymmetric(layer.stride, [top, left], [bottom, right], layer.dilation, layer.groups);
    let y = burn::tensor::module::conv2d(
        x.cast(c),
        layer.weight.val().cast(c),
        layer.bias.as_ref().map(|b| b.val().cast(c)),
        options,
    );
    y.cast(out_dtype)
}

/// `((top, bottom), (left, right))` padding of `layer` on a `height x width` input, the rule of
/// `Conv2d::forward` (`Same` puts the odd pixel at the end, as ONNX does).
fn padding_2d<B: Backend>(layer: &Conv2d<B>, height: usize, width: usize) -> ((usize, usize), (usize, usize)) {
    let same = |kernel: usize, stride: usize, size: usize| {
        let out = size.div_ceil(stride);
        let total = if out > 0 { ((out - 1) * stride + kernel).saturating_sub(size) } else { 0 };
        (total / 2, total - total / 2)
    };
    match layer.padding {
        PaddingConfig2d::Valid => ((0, 0), (0, 0)),
        PaddingConfig2d::Same => {
            (same(layer.kernel_size[0], layer.stride[0], height), same(layer.kernel_size[1], layer.stride[1], width))
        }
        PaddingConfig2d::Explicit(top, left, bottom, right) => ((top, bottom), (left, right)),
    }
}

/// Scaled dot-product attention `softmax(q kᵀ * scale + bias) v` on heads `[b, h, n, d_head]`
/// under autocast: both matmuls in `compute`, the scores, bias and softmax in `q`'s dtype
/// (float32), the output in `q`'s dtype. `bias` broadcasts to `[b, h, n_q, n_k]`.
pub fn attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    bias: Tensor<B, 4>,
    scale: f64,
    compute: FloatDType,
) -> Tensor<B, 4> {
    let out_dtype: FloatDType = q.dtype().into();
    let scores = q.cast(compute).matmul(k.cast(compute).swap_dims(2, 3)).cast(out_dtype);
    let probs = softmax(scores * scale + bias, 3);
    probs.cast(compute).matmul(v.cast(compute)).cast(out_dtype)
}

/// Whether `compute` can be used on `device`: `None` always, a dtype when the backend supports
/// it for general arithmetic.
pub fn supported<B: Backend>(compute: ComputeDType, device: &B::Device) -> bool {
    compute.is_none_or(|c| B::supports_dtype(device, c.into()))
}

#[cfg(test)]
mod tests {
    use burn::backend::NdArray;
    use burn::module::Module;
    use burn::nn::conv::Conv2dConfig;
    use burn::nn::LinearConfig;
    use burn::tensor::{DType, Distribution};
    use osp_graphs::Approx;

    use super::*;

    type B = NdArray<f32>;

    fn values<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
        t.into_data().convert::<f32>().to_vec::<f32>().expect("f32 data")
    }

    #[test]
    fn linear_and_conv_in_f64_match_f32_and_return_f32() {
        let device = Default::default();
        let lin = LinearConfig::new(16, 8).init::<B>(&device);
        let x = Tensor::<B, 3>::random([2, 5, 16], Distribution::Normal(0.0, 1.0), &device);
        let plain = lin.forward(x.clone());
        let cast = linear(&lin, x.clone(), Some(FloatDType::F64));
        assert_eq!(cast.dtype(), DType::F32);
        assert_eq!(values(linear(&lin, x, None)), values(plain.clone()));
        let c = Approx::Approximate.compare(&values(cast), &values(plain));
        assert!(c.ok(), "{c}");

        let conv = Conv2dConfig::new([3, 4], [3, 3])
            .with_stride([2, 1])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .init::<B>(&device);
        let x = Tensor::<B, 4>::random([2, 3, 7, 6], Distribution::Normal(0.0, 1.0), &device);
        let plain = conv.forward(x.clone());
        let cast = conv2d(&conv, x, Some(FloatDType::F64));
        assert_eq!(cast.dtype(), DType::F32);
        assert_eq!(cast.dims(), plain.dims());
        let c = Approx::Approximate.compare(&values(cast), &values(plain));
        assert!(c.ok(), "{c}");
        assert_eq!(conv.num_params(), 4 * 3 * 9 + 4);
    }

    #[test]
    fn attention_matches_the_fused_op() {
        let device = Default::default();
        let shape = [2, 3, 7, 6];
        let r = || Tensor::<B, 4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let (q, k, v) = (r(), r(), r());
        let bias = Tensor::<B, 4>::random([2, 1, 1, 7], Distribution::Uniform(-3.0, 0.0), &device);
        let fused = burn::tensor::module::attention(
            q.clone(),
            k.clone(),
            v.clone(),
            None,
            Some(bias.clone().expand([2, 3, 7, 7])),
            Default::default(),
        );
        let ours = attention(q, k, v, bias, 1.0 / 6f64.sqrt(), FloatDType::F64);
        assert_eq!(ours.dtype(), DType::F32);
        let c = Approx::Approximate.compare(&values(ours), &values(fused));
        assert!(c.ok(), "{c}");
    }

    #[test]
    fn ndarray_supports_f64_but_no_half_type() {
        let device = Default::default();
        assert!(supported::<B>(None, &device));
        assert!(supported::<B>(Some(FloatDType::F64), &device));
        assert!(!supported::<B>(Some(FloatDType::BF16), &device));
        assert!(!supported::<B>(Some(FloatDType::F16), &device));
    }
}
