//! Group and layer norm on GPU backends: imagen's kernels, else burn tensor ops with staged
//! f32 reductions (the kernels' reference).

use burn::nn::{GroupNorm, LayerNorm};
use burn::tensor::{DType, FloatDType, Tensor};

use super::{fused_kernels, kernels, own_kernels};

/// Group norm, then SiLU when `silu`: imagen's kernel, else tensor ops with the statistics in f32
/// reduced in stages of at most 256 elements (burn's reduce gives each (batch, group) row to one
/// cube, 64 rows of 40 960 (UNet) to 1 M (VAE) elements, and took 39% of an H100 UNet step).
/// x: `[b, c, h, w]` → same shape
pub(crate) fn group_norm(norm: &GroupNorm, x: Tensor<4>, silu: bool) -> Tensor<4> {
    if let (true, Some(gamma), Some(beta)) = (own_kernels(), &norm.gamma, &norm.beta) {
        let g = norm.num_groups;
        if let Some(y) = kernels::group_norm(x.clone(), gamma.val(), beta.val(), g, norm.epsilon, silu) {
            return y;
        }
    }
    let [b, c, h, w] = x.dims();
    let g = norm.num_groups;
    let dtype = x.dtype();
    // [b, c, h, w] -> [b·g, c/g·h·w]
    let x = x.reshape([b * g, c / g * h * w]);
    let x = if dtype == DType::F32 {
        x
    } else {
        x.cast(FloatDType::F32)
    };
    let mean = mean_rows(x.clone());
    let centred = x - mean;
    let var = mean_rows(centred.clone().square());
    let y = centred / (var + norm.epsilon).sqrt();
    let y = if dtype == DType::F32 { y } else { y.cast(dtype) };
    // [b·g, c/g·h·w] -> [b, c, h, w]
    let mut y = y.reshape([b, c, h, w]);
    if let Some(gamma) = &norm.gamma {
        // [c] -> [1, c, 1, 1]
        y = y * gamma.val().reshape([1, c, 1, 1]);
    }
    if let Some(beta) = &norm.beta {
        y = y + beta.val().reshape([1, c, 1, 1]);
    }
    if silu { burn::tensor::activation::silu(y) } else { y }
}

/// Layer norm over the last axis (`eps` as the CPU kernels take it).
pub(crate) fn layer_norm<const D: usize>(ln: &LayerNorm, x: Tensor<D>, eps: f64) -> Tensor<D> {
    if let (true, Some(beta)) = (own_kernels(), &ln.beta)
        && let Some(y) = kernels::layer_norm(x.clone(), ln.gamma.val(), beta.val(), eps)
    {
        return y;
    }
    ln.forward(x)
}

/// Whether [`add_layer_norm`] runs as one kernel: imagen's kernels and the fused kernels both
/// on, and a norm with β. Callers ask before running the matmul that feeds it.
pub(crate) fn fuses_layer_norm(ln: &LayerNorm) -> bool {
    own_kernels() && fused_kernels() && ln.beta.is_some()
}

/// `y + bias (+ residual)` and its layer norm: (sum, normed). One launch where
/// [`fuses_layer_norm`]; else (or if the kernel declines) the adds, then [`layer_norm`].
/// y, residual: `[rows, n]` → 2 × `[rows, n]`
pub(crate) fn add_layer_norm(
    y: Tensor<2>,
    bias: Tensor<1>,
    residual: Option<Tensor<2>>,
    ln: &LayerNorm,
    eps: f64,
) -> (Tensor<2>, Tensor<2>) {
    if fuses_layer_norm(ln)
        && let Some(beta) = &ln.beta
        && let Some(out) = kernels::add_layer_norm(
            y.clone(),
            bias.clone(),
            residual.clone(),
            ln.gamma.val(),
            beta.val(),
            eps,
        )
    {
        return out;
    }
    let sum = y + bias.unsqueeze();
    let sum = match residual {
        Some(r) => sum + r,
        None => sum,
    };
    let normed = layer_norm(ln, sum.clone(), eps);
    (sum, normed)
}

/// Mean over the last axis, `[r, n]` → `[r, 1]`, in stages of at most 256 elements (the mean
/// of equal-sized chunks' means is the mean).
fn mean_rows(mut t: Tensor<2>) -> Tensor<2> {
    let [r, mut n] = t.dims();
    while n > 256 {
        let Some(m) = (16..=256).rev().find(|m| n % m == 0) else {
            break;
        };
        // [r, n] -> [r·n/m, m] -> [r·n/m, 1] -> [r, n/m]
        t = t.reshape([r * n / m, m]).mean_dim(1).reshape([r, n / m]);
        n /= m;
    }
    t.mean_dim(1)
}
