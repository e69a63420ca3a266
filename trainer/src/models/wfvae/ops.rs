//! Tensor helpers shared by the WFVAE blocks (upstream `modules/ops.py` and the
//! interpolation/folding code inlined in the blocks).

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// `nonlinearity` upstream: SiLU.
pub(crate) fn nonlinearity<B: Backend>(x: Tensor<B, 5>) -> Tensor<B, 5> {
    burn::tensor::activation::silu(x)
}

/// Number of frames of a video tensor `[b, c, t, h, w]`.
pub(crate) fn frames<B: Backend>(x: &Tensor<B, 5>) -> usize {
    x.dims()[2]
}

/// `n` copies of frame 0 followed by `x` (causal replicate padding along time).
pub(crate) fn replicate_first<B: Backend>(x: Tensor<B, 5>, n: usize) -> Tensor<B, 5> {
    if n == 0 {
        return x;
    }
    let first = x.clone().narrow(2, 0, 1);
    let mut parts = vec![first; n];
    parts.push(x);
    Tensor::cat(parts, 2)
}

/// Runs a 2-D op on every frame: `[b, c, t, h, w]` -> `[b*t, c, h, w]` -> op -> `[b, c', t, h', w']`.
pub(crate) fn per_frame<B: Backend>(x: Tensor<B, 5>, op: impl FnOnce(Tensor<B, 4>) -> Tensor<B, 4>) -> Tensor<B, 5> {
    let [b, c, t, h, w] = x.dims();
    let y = op(x.permute([0, 2, 1, 3, 4]).reshape([b * t, c, h, w]));
    let [_, c2, h2, w2] = y.dims();
    y.reshape([b, t, c2, h2, w2]).permute([0, 2, 1, 3, 4])
}

/// 2x linear upsampling of axis `dim` with `align_corners=False` and edge clamping:
/// `out[2i] = 0.75 x[i] + 0.25 x[max(i-1, 0)]`, `out[2i+1] = 0.75 x[i] + 0.25 x[min(i+1, n-1)]`.
pub(crate) fn upsample_linear_2x<B: Backend>(x: Tensor<B, 5>, dim: usize) -> Tensor<B, 5> {
    let n = x.dims()[dim];
    let prev = if n > 1 {
        Tensor::cat(vec![x.clone().narrow(dim, 0, 1), x.clone().narrow(dim, 0, n - 1)], dim)
    } else {
        x.clone()
    };
    let next = if n > 1 {
        Tensor::cat(vec![x.clone().narrow(dim, 1, n - 1), x.clone().narrow(dim, n - 1, 1)], dim)
    } else {
        x.clone()
    };
    let even = x.clone().mul_scalar(0.75) + prev.mul_scalar(0.25);
    let odd = x.mul_scalar(0.75) + next.mul_scalar(0.25);
    interleave(even, odd, dim)
}

/// `[.., n, ..]` x2 -> `[.., 2n, ..]` with `a[i]` at `2i` and `b[i]` at `2i+1` along `dim`.
pub(crate) fn interleave<B: Backend>(a: Tensor<B, 5>, b: Tensor<B, 5>, dim: usize) -> Tensor<B, 5> {
    let mut dims = a.dims();
    let stacked: Tensor<B, 6> = Tensor::cat(vec![a.unsqueeze_dim(dim + 1), b.unsqueeze_dim(dim + 1)], dim + 1);
    dims[dim] *= 2;
    stacked.reshape(dims)
}

/// Bilinear 2x spatial upsampling (`align_corners=False`) of every frame.
pub(crate) fn upsample_bilinear_hw_2x<B: Backend>(x: Tensor<B, 5>) -> Tensor<B, 5> {
    upsample_linear_2x(upsample_linear_2x(x, 3), 4)
}

/// Nearest 2x spatial upsampling of every frame.
pub(crate) fn upsample_nearest_hw_2x<B: Backend>(x: Tensor<B, 5>) -> Tensor<B, 5> {
    let x = interleave(x.clone(), x, 3);
    interleave(x.clone(), x, 4)
}
