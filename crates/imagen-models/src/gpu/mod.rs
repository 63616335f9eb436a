//! imagen's GPU kernels, in CubeCL's Rust dialect so that one source serves both wgpu routes
//! (WGSL on lavapipe and the default build, SPIR-V with the `vulkan` feature), and burn-cubecl's
//! kernels called with a chosen strategy. A leaf: it implements [`GpuKernels`] for the ops and
//! knows no model, no route switch and no CPU code. Compiled only where burn's tensors are raw
//! cube tensors (a GPU backend without burn's fusion): `cfg(cube_kernels)`, set by `build.rs`.
//!
//! - [`kernels`]: group norm, layer norm (also fused with the residual add before it), softmax;
//! - [`fused`]: what burn runs as chains of element-wise launches, in one launch each (matmul
//!   epilogues, bias + activation, the attention head split and merge, im2col with padding,
//!   upsampling and group norm folded in, in-place band writes, channel concatenation);
//! - [`cube`]: burn-cubecl's implicit-GEMM convolution and flash attention;
//! - [`quant`]: linear weights kept block-quantized for burn-cubecl's matmul.
//!
//! Where to add a kernel: write it in one of these files, add a method to [`GpuKernels`] (its
//! default declines), implement it below, and call it from the op in `ops/` that owns the route,
//! with the burn-op reference as the fallback; test it against that reference and the CPU in
//! `tests/wgpu_kernels.rs`.

use std::ops::Range;

use burn::nn::GroupNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;

use crate::ops::kernels::{GpuKernels, Windows};
use crate::ops::types::Act;

mod cube;
mod fused;
mod kernels;
mod launch;
pub(crate) mod quant;

/// The kernels of this module, as the ops reach them.
pub struct Cube;

impl GpuKernels for Cube {
    type Norm = fused::Norm;

    fn group_norm(
        x: Tensor<4>,
        gamma: Tensor<1>,
        beta: Tensor<1>,
        groups: usize,
        eps: f64,
        silu: bool,
    ) -> Option<Tensor<4>> {
        kernels::group_norm(x, gamma, beta, groups, eps, silu)
    }

    fn layer_norm<const D: usize>(x: Tensor<D>, gamma: Tensor<1>, beta: Tensor<1>, eps: f64) -> Option<Tensor<D>> {
        kernels::layer_norm(x, gamma, beta, eps)
    }

    fn add_layer_norm(
        y: Tensor<2>,
        bias: Tensor<1>,
        residual: Option<Tensor<2>>,
        gamma: Tensor<1>,
        beta: Tensor<1>,
        eps: f64,
    ) -> Option<(Tensor<2>, Tensor<2>)> {
        kernels::add_layer_norm(y, bias, residual, gamma, beta, eps)
    }

    fn softmax_last<const D: usize>(x: Tensor<D>, causal: bool) -> Option<Tensor<D>> {
        kernels::softmax_last(x, causal)
    }

    fn epilogue<const D: usize>(
        y: Tensor<D>,
        bias: Tensor<1>,
        per_bc: Option<(Tensor<2>, Option<Tensor<1>>)>,
        residual: Option<(Tensor<D>, Option<Tensor<1>>)>,
        channels: usize,
        inner: usize,
    ) -> Option<Tensor<D>> {
        fused::epilogue(y, bias, per_bc, residual, channels, inner)
    }

    fn bias_act(h: Tensor<2>, bias: Tensor<1>, act: Act) -> Option<Tensor<2>> {
        fused::bias_act(h, bias, act)
    }

    fn split_heads(
        qkv: [Tensor<3>; 3],
        biases: Option<[Tensor<1>; 3]>,
        heads: usize,
        scale: f32,
    ) -> Option<[Tensor<4>; 3]> {
        fused::split_heads(qkv, biases, heads, scale)
    }

    fn attention_output(probs: Tensor<4>, v: Tensor<4>) -> Option<Tensor<3>> {
        fused::attention_output(probs, v)
    }

    fn group_stats(x: &Tensor<4>, norm: &GroupNorm) -> Option<Self::Norm> {
        fused::group_stats(x, norm)
    }

    fn im2col(x: Tensor<4>, w: &Windows, norm: Option<&Self::Norm>) -> Option<Tensor<3>> {
        fused::im2col(x, w, norm)
    }

    fn band_output(x: &Tensor<4>, shape: [usize; 3], cols: &[Range<usize>]) -> Option<Tensor<3>> {
        fused::band_output(x, shape, cols)
    }

    fn matmul_into(lhs: Tensor<3>, rhs: Tensor<3>, out: &Tensor<3>, cols: Range<usize>) -> Option<()> {
        fused::matmul_into(lhs, rhs, out, cols)
    }

    fn cat_channels(x: Tensor<4>, y: Tensor<4>) -> Option<Tensor<4>> {
        fused::cat_channels(x, y)
    }

    fn conv2d_implicit_gemm(conv: &Conv2d, x: &Tensor<4>, pad: [usize; 4]) -> Option<Tensor<4>> {
        cube::conv2d_implicit_gemm(conv, x, pad)
    }

    fn flash_attention(
        q: &Tensor<3>,
        k: &Tensor<3>,
        v: &Tensor<3>,
        heads: usize,
        causal: bool,
        planes: u8,
    ) -> Option<Tensor<3>> {
        cube::flash_attention(q, k, v, heads, causal, planes)
    }
}
