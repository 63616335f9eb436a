//! Group norm and layer norm: the CPU kernels, imagen's GPU kernels, else burn tensor ops (on
//! GPU backends with the statistics in f32 reduced in stages: the kernels' reference).

use burn::nn::{GroupNorm, LayerNorm};
use burn::tensor::{DType, FloatDType, Tensor};

use super::kernels::GpuKernels;
use super::{Gpu, Routes, on_gpu};
use crate::cpu;

/// `norm(x)`, then SiLU when `silu`. x: `[b, c, h, w]` → same shape
pub fn group_norm(norm: &GroupNorm, x: Tensor<4>, silu: bool) -> Tensor<4> {
    let r = Routes::current();
    if r.cpu_kernels
        && let Some(y) = cpu::group_norm(norm, &x, silu)
    {
        return y;
    }
    if on_gpu(&x) {
        if let (true, Some(gamma), Some(beta)) = (r.gpu_kernels, &norm.gamma, &norm.beta)
            && let Some(y) = Gpu::group_norm(x.clone(), gamma.val(), beta.val(), norm.num_groups, norm.epsilon, silu)
        {
            return y;
        }
        return group_norm_staged(norm, x, silu);
    }
    let y = norm.forward(x);
    if silu { burn::tensor::activation::silu(y) } else { y }
}

/// Group norm (+ SiLU) as tensor ops with the statistics in f32 reduced in stages of at most
/// 256 elements (burn's reduce gives each (batch, group) row to one cube, 64 rows of 40 960
/// (UNet) to 1 M (VAE) elements, and took 39% of an H100 UNet step). x: `[b, c, h, w]`
fn group_norm_staged(norm: &GroupNorm, x: Tensor<4>, silu: bool) -> Tensor<4> {
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

/// `ln(x)`; burn keeps `LayerNorm`'s epsilon private, so the caller passes the one it built
/// the module with. x: `[.., dim]` → same shape
pub fn layer_norm<const D: usize>(ln: &LayerNorm, x: Tensor<D>, eps: f64) -> Tensor<D> {
    if Routes::current().cpu_kernels
        && let Some(y) = cpu::layer_norm(ln, &x, eps)
    {
        return y;
    }
    layer_norm_gpu_only(ln, x, eps)
}

/// `ln(x)` on imagen's kernel on GPU backends, burn's `LayerNorm` everywhere else, also where
/// the CPU kernels could run (CLIP's final norm: its CPU results stay bit-identical to burn's).
pub fn layer_norm_gpu_only<const D: usize>(ln: &LayerNorm, x: Tensor<D>, eps: f64) -> Tensor<D> {
    if on_gpu(&x)
        && let (true, Some(beta)) = (Routes::current().gpu_kernels, &ln.beta)
        && let Some(y) = Gpu::layer_norm(x.clone(), ln.gamma.val(), beta.val(), eps)
    {
        return y;
    }
    ln.forward(x)
}

/// `y + bias (+ residual)` and its layer norm: (sum, normed). One launch on GPU backends with
/// the fused kernels and a norm with β; else the adds, then [`layer_norm`].
/// y, residual: `[rows, n]` → 2 × `[rows, n]`
pub(super) fn add_layer_norm(
    y: Tensor<2>,
    bias: Tensor<1>,
    residual: Option<Tensor<2>>,
    ln: &LayerNorm,
    eps: f64,
) -> (Tensor<2>, Tensor<2>) {
    if Routes::current().fused()
        && on_gpu(&y)
        && let Some(beta) = &ln.beta
        && let Some(out) = Gpu::add_layer_norm(
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

/// RMS norm (T5's `T5LayerNorm`, torch's `RMSNorm`): `x / √(mean(x²) + ε) · γ`, the statistics
/// over the last axis. x: `[.., dim]` → same shape
pub fn rms_norm<const D: usize>(norm: &burn::nn::RmsNorm, x: Tensor<D>) -> Tensor<D> {
    let gamma = super::same_dtype(norm.gamma.val(), &x);
    let ms = x.clone().powi_scalar(2).mean_dim(D - 1);
    x * (ms + norm.epsilon).sqrt().recip() * gamma.unsqueeze()
}

/// A layer norm without affine parameters (`elementwise_affine=False`), then adaLN's
/// modulation: `norm(x) · (1 + scale) + shift`, per sample.
/// x: `[b, n, dim]`, shift/scale: `[b, dim]` → `[b, n, dim]`
pub fn modulated_layer_norm(x: Tensor<3>, shift: Tensor<2>, scale: Tensor<2>, eps: f64) -> Tensor<3> {
    if Routes::current().cpu_kernels
        && let Some(y) = cpu::modulated_layer_norm(&x, &shift, &scale, eps)
    {
        return y;
    }
    let mean = x.clone().mean_dim(2);
    let centred = x - mean;
    let var = centred.clone().powi_scalar(2).mean_dim(2);
    let normed = centred * (var + eps).sqrt().recip();
    normed * (scale.unsqueeze_dim::<3>(1) + 1.0) + shift.unsqueeze_dim::<3>(1)
}

/// Per head: [`rms_norm`], then the rotary embedding ([`super::rope`]) of positions
/// `offset..offset + n` of the tables (a stream placed after `offset` tokens of a joint
/// sequence). x: `[b, n, h, d]`, cos/sin: `[≥ offset + n, d]` → `[b, n, h, d]`
pub fn rms_norm_rope(
    norm: &burn::nn::RmsNorm,
    x: Tensor<4>,
    cos: &Tensor<2>,
    sin: &Tensor<2>,
    offset: usize,
) -> Tensor<4> {
    if Routes::current().cpu_kernels
        && let Some(y) = cpu::rms_norm_rope(&x, &norm.gamma.val(), norm.epsilon, cos, sin, offset)
    {
        return y;
    }
    let n = x.dims()[1];
    let d = cos.dims()[1];
    let (c, s) = (
        cos.clone().slice([offset..offset + n, 0..d]),
        sin.clone().slice([offset..offset + n, 0..d]),
    );
    super::rope(rms_norm(norm, x), &c, &s)
}

/// `x + gate · y`, the gate per sample (adaLN-Zero's gated residuals).
/// x/y: `[b, n, dim]`, gate: `[b, dim]` → `[b, n, dim]`
pub fn gated_add(x: Tensor<3>, gate: &Tensor<2>, y: Tensor<3>) -> Tensor<3> {
    if Routes::current().cpu_kernels
        && let Some(out) = cpu::gated_add(&x, gate, &y)
    {
        return out;
    }
    x + y * gate.clone().unsqueeze_dim::<3>(1)
}
