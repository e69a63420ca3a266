//! 3-D convolution for the Burn models, lowered to one matrix product on backends whose direct
//! convolution is slow.
//!
//! burn-ndarray (the CPU backend) runs `conv3d` as a loop that slices one output row at a time
//! and `conv_transpose3d` (the input gradient of `conv3d`) as a seven-deep loop of bounds-checked
//! 5-D index reads; at the trainer's small shapes these two took about 90% of a WFVAE training
//! step. There the convolution is rewritten as im2col with strided slices of the padded input
//! followed by one GEMM, so the forward and both gradients are slices, a copy and matmuls.
//! Other backends (CUDA) keep `Conv3d::forward`: the im2col buffer holds `k^3` times the input.
//! Both forms are the same arithmetic reordered (tested at `Approx::Close`, gradients included).

use burn::nn::conv::Conv3d;
use burn::nn::PaddingConfig3d;
use burn::tensor::backend::Backend;
use burn::tensor::{s, Tensor};

/// Whether [`forward`] lowers convolutions to GEMM on this backend (the pure-Rust CPU backend,
/// with or without autodiff).
pub fn uses_gemm<B: Backend>(device: &B::Device) -> bool {
    B::name(device).contains("ndarray")
}

/// `conv.forward(x)`, computed as im2col + GEMM where [`uses_gemm`] says so. Grouped or dilated
/// convolutions and `Same` padding always take `Conv3d::forward`.
pub fn forward<B: Backend>(conv: &Conv3d<B>, x: Tensor<B, 5>) -> Tensor<B, 5> {
    let padding = match conv.padding {
        PaddingConfig3d::Valid => [0; 3],
        PaddingConfig3d::Explicit(d, h, w) => [d, h, w],
        PaddingConfig3d::Same => return conv.forward(x),
    };
    if conv.groups != 1 || conv.dilation != [1, 1, 1] || !uses_gemm::<B>(&x.device()) {
        return conv.forward(x);
    }
    forward_gemm(x, conv.weight.val(), conv.bias.as_ref().map(|b| b.val()), conv.stride, padding)
}

/// Convolution of `x` `[b, c, t, h, w]` with `weight` `[o, c, kt, kh, kw]` (groups 1, dilation
/// 1), zero padding `padding` on both sides of each axis, as im2col + GEMM.
pub fn forward_gemm<B: Backend>(
    x: Tensor<B, 5>,
    weight: Tensor<B, 5>,
    bias: Option<Tensor<B, 1>>,
    stride: [usize; 3],
    padding: [usize; 3],
) -> Tensor<B, 5> {
    let x = if padding == [0; 3] {
        x
    } else {
        x.pad([(padding[0], padding[0]), (padding[1], padding[1]), (padding[2], padding[2])], 0.0)
    };
    let [b, c, t, h, w] = x.dims();
    let [o, _, kt, kh, kw] = weight.dims();
    let [st, sh, sw] = stride;
    let out = |len: usize, k: usize, s: usize| (len - k) / s + 1;
    let (t2, h2, w2) = (out(t, kt, st), out(h, kh, sh), out(w, kw, sw));
    let k = kt * kh * kw;
    let mut cols = Vec::with_capacity(k);
    for dt in 0..kt {
        for dh in 0..kh {
            for dw in 0..kw {
                cols.push(x.clone().slice(s![
                    ..,
                    ..,
                    dt..dt + st * (t2 - 1) + 1;st,
                    dh..dh + sh * (h2 - 1) + 1;sh,
                    dw..dw + sw * (w2 - 1) + 1;sw
                ]));
            }
        }
    }
    // [b, c, k, t2, h2, w2] -> [c * k, b * n], row order matching the weight's `[o, c, kt, kh, kw]`.
    let n = t2 * h2 * w2;
    let cols = Tensor::<B, 5>::stack::<6>(cols, 2).permute([1, 2, 0, 3, 4, 5]).reshape([c * k, b * n]);
    let y = weight.reshape([o, c * k]).matmul(cols);
    let y = match bias {
        Some(bias) => y + bias.reshape([o, 1]),
        None => y,
    };
    y.reshape([o, b, t2, h2, w2]).swap_dims(0, 1)
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, NdArray};
    use burn::module::Param;
    use burn::nn::conv::Conv3dConfig;
    use burn::tensor::{Distribution, Tensor};
    use osp_graphs::Approx;

    use super::*;

    type B = Autodiff<NdArray<f32>>;

    fn close(name: &str, a: Tensor<NdArray<f32>, 5>, b: Tensor<NdArray<f32>, 5>) {
        let (a, b) = (a.into_data().to_vec::<f32>().unwrap(), b.into_data().to_vec::<f32>().unwrap());
        let cmp = Approx::Close.compare(&a, &b);
        assert!(cmp.ok(), "{name}: {cmp}");
    }

    #[test]
    fn gemm_lowering_matches_direct_convolution_and_its_gradients() {
        let device = Default::default();
        // (in, out, kernel, stride, padding, input t/h/w): the shapes the WFVAE and discriminator use.
        let cases = [
            (3, 5, [3, 3, 3], [1, 1, 1], [0, 1, 1], [5, 6, 7]),
            (2, 4, [3, 3, 3], [2, 2, 2], [0, 0, 0], [5, 9, 8]),
            (1, 1, [2, 2, 2], [2, 2, 2], [0, 0, 0], [4, 6, 6]),
            (4, 3, [1, 1, 1], [1, 1, 1], [0, 0, 0], [3, 4, 5]),
            (2, 3, [4, 4, 4], [2, 2, 2], [1, 1, 1], [6, 8, 8]),
        ];
        for (i, (cin, cout, kernel, stride, pad, [t, h, w])) in cases.into_iter().enumerate() {
            for bias in [true, false] {
                let mut conv = Conv3dConfig::new([cin, cout], kernel)
                    .with_stride(stride)
                    .with_padding(PaddingConfig3d::Explicit(pad[0], pad[1], pad[2]))
                    .with_bias(bias)
                    .init::<B>(&device);
                if let Some(b) = conv.bias.take() {
                    conv.bias = Some(Param::from_tensor(b.val().random_like(Distribution::Normal(0.0, 1.0))));
                }
                let x =
                    Tensor::<B, 5>::random([2, cin, t, h, w], Distribution::Normal(0.0, 1.0), &device).require_grad();
                let direct = conv.forward(x.clone());
                let gemm = forward_gemm(x.clone(), conv.weight.val(), conv.bias.as_ref().map(|b| b.val()), stride, pad);
                assert!(uses_gemm::<B>(&device));
                assert_eq!(direct.dims(), gemm.dims(), "case {i}");
                close(&format!("case {i} forward"), direct.clone().inner(), gemm.clone().inner());
                // `Close` bounds the reordering error of sums of O(1) values: the weight and bias
                // gradients sum `x * up` over every output position, so `up` is scaled to keep
                // those sums O(1) (unit `up` makes them ~sqrt(positions), about 20 here).
                let [b, _, to, ho, wo] = direct.dims();
                let positions = (b * to * ho * wo) as f64;
                let up = direct.random_like(Distribution::Normal(0.0, 1.0 / positions.sqrt()));
                let gd = (direct * up.clone()).sum().backward();
                let gg = (gemm * up).sum().backward();
                close(
                    &format!("case {i} d/dx"),
                    x.grad(&gd).expect("x should have a gradient"),
                    x.grad(&gg).expect("x should have a gradient"),
                );
                close(
                    &format!("case {i} d/dweight"),
                    conv.weight.val().grad(&gd).expect("weight should have a gradient"),
                    conv.weight.val().grad(&gg).expect("weight should have a gradient"),
                );
                if let Some(b) = &conv.bias {
                    let (a, g) = (
                        b.val().grad(&gd).expect("bias should have a gradient"),
                        b.val().grad(&gg).expect("bias should have a gradient"),
                    );
                    let cmp = Approx::Close
                        .compare(&a.to_data().to_vec::<f32>().unwrap(), &g.to_data().to_vec::<f32>().unwrap());
                    assert!(cmp.ok(), "case {i} d/dbias: {cmp}");
                }
            }
        }
    }
}
