//! What the ops may ask of the GPU kernels (`gpu/`), as a trait whose every default body
//! declines (`None`): a build without the kernels (no `wgpu` feature, or burn's fusion on,
//! whose tensors are not raw cube tensors) uses [`Declines`], and each op takes its burn-op
//! reference instead. `ops::Gpu` names the implementation, by `cfg(cube_kernels)`: the one
//! gate that knows whether the kernels exist.
//!
//! The kernels compute in f32 whatever the storage type and round once; each has a burn-op
//! reference in `ops` and a parity test in `tests/wgpu_kernels.rs`.
//!
//! Why not burn 0.22's own mechanism (`#[backend_extension(Cube, …)]` on a `Backend` trait,
//! `burn/extension`): it routes by the tensor's backend and panics on an unlisted one, so the ops
//! would still choose the route (and the CPU has its own kernels, outside burn's backend); it
//! would replace the `try_into_primitive::<Cube>` downcast in `gpu/launch.rs` (one place) with
//! generated dispatch, a proc-macro and a feature to build; what it would add, fusion-aware
//! lazy kernels for the `gpu-autotune` build, needs each kernel's output metadata written again.
//! Its cost per call could only be measured against this route on a real GPU (none lent), which
//! the issue asks before adopting it: not adopted.

use std::ops::Range;

use burn::nn::GroupNorm;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;

use super::types::Act;

/// Declines everything: the kernels of a build that has none.
pub struct Declines;

impl GpuKernels for Declines {
    type Norm = ();
}

/// Where the fused im2col kernel reads a convolution's windows from.
#[derive(Clone, Debug)]
pub struct Windows {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    /// Padding on the top and left (the output size fixes the rest).
    pub pad: [usize; 2],
    /// Nearest-neighbour upsampling factor applied before padding (1 = none).
    pub up: usize,
    /// The output rows wanted, `start..end`, and the output width.
    pub rows: Range<usize>,
    pub wo: usize,
}

/// One GPU kernel per method; `None` where it declines (tensors not on a cube backend, a dtype
/// or parameter it does not take): nothing ran, and the op takes its reference.
#[allow(unused_variables, clippy::too_many_arguments, clippy::type_complexity)]
pub trait GpuKernels {
    /// Group-norm statistics and parameters as [`im2col`](Self::im2col) reads them.
    type Norm;

    /// Group norm (then SiLU when `silu`). x: `[b, c, h, w]` → same shape
    fn group_norm(
        x: Tensor<4>,
        gamma: Tensor<1>,
        beta: Tensor<1>,
        groups: usize,
        eps: f64,
        silu: bool,
    ) -> Option<Tensor<4>> {
        None
    }

    /// Layer norm over the last axis. x: `[.., n]` → same shape
    fn layer_norm<const D: usize>(x: Tensor<D>, gamma: Tensor<1>, beta: Tensor<1>, eps: f64) -> Option<Tensor<D>> {
        None
    }

    /// `y + bias (+ residual)` and its layer norm, one launch. y, residual: `[rows, n]` →
    /// (sum, normed)
    fn add_layer_norm(
        y: Tensor<2>,
        bias: Tensor<1>,
        residual: Option<Tensor<2>>,
        gamma: Tensor<1>,
        beta: Tensor<1>,
        eps: f64,
    ) -> Option<(Tensor<2>, Tensor<2>)> {
        None
    }

    /// Softmax over the last axis (causal: keys after the query's row masked).
    fn softmax_last<const D: usize>(x: Tensor<D>, causal: bool) -> Option<Tensor<D>> {
        None
    }

    /// `y + bias[c] + (per_bc[b, c] + its bias[c]) + (residual + its bias[c])`, y viewed as
    /// `[outer, channels, inner]`, per_bc `[outer, channels]`, residual y's shape.
    fn epilogue<const D: usize>(
        y: Tensor<D>,
        bias: Tensor<1>,
        per_bc: Option<(Tensor<2>, Option<Tensor<1>>)>,
        residual: Option<(Tensor<D>, Option<Tensor<1>>)>,
        channels: usize,
        inner: usize,
    ) -> Option<Tensor<D>> {
        None
    }

    /// `act(h + bias)`. h: `[rows, k]` → `[rows, k]` (`k / 2` for GEGLU)
    fn bias_act(h: Tensor<2>, bias: Tensor<1>, act: Act) -> Option<Tensor<2>> {
        None
    }

    /// q, k, v `[b, len, heads·d]` (+ biases `[heads·d]`) → contiguous `[b, heads, len, d]`,
    /// q times `scale`.
    fn split_heads(
        qkv: [Tensor<3>; 3],
        biases: Option<[Tensor<1>; 3]>,
        heads: usize,
        scale: f32,
    ) -> Option<[Tensor<4>; 3]> {
        None
    }

    /// probs `[b, h, n, m]` · v `[b, h, m, d]` written as `[b, n, h·d]` (heads merged by the write).
    fn attention_output(probs: Tensor<4>, v: Tensor<4>) -> Option<Tensor<3>> {
        None
    }

    /// The statistics of `norm` over x `[b, c, h, w]`, for [`im2col`](Self::im2col).
    fn group_stats(x: &Tensor<4>, norm: &GroupNorm) -> Option<Self::Norm> {
        None
    }

    /// The column matrix of the windows `w` of x `[b, cin, h, w]` (zero padding, upsampling and
    /// the optional group norm + SiLU applied on the way) → `[b, cin·kh·kw, rows·wo]`
    fn im2col(x: Tensor<4>, w: &Windows, norm: Option<&Self::Norm>) -> Option<Tensor<3>> {
        None
    }

    /// An empty `[b, c, n]` output (x's dtype and device) whose column ranges `cols` can each be
    /// written in place by [`matmul_into`](Self::matmul_into).
    fn band_output(x: &Tensor<4>, shape: [usize; 3], cols: &[Range<usize>]) -> Option<Tensor<3>> {
        None
    }

    /// `lhs · rhs` written into columns `cols` of `out` (from [`band_output`](Self::band_output)).
    fn matmul_into(lhs: Tensor<3>, rhs: Tensor<3>, out: &Tensor<3>, cols: Range<usize>) -> Option<()> {
        None
    }

    /// `x ‖ y` along the channels. `[b, c1, h, w]`, `[b, c2, h, w]` → `[b, c1 + c2, h, w]`
    fn cat_channels(x: Tensor<4>, y: Tensor<4>) -> Option<Tensor<4>> {
        None
    }

    /// burn-cubecl's implicit-GEMM convolution (tensor cores), padding `[top, left, bottom, right]`.
    fn conv2d_implicit_gemm(conv: &Conv2d, x: &Tensor<4>, pad: [usize; 4]) -> Option<Tensor<4>> {
        None
    }

    /// burn-cubecl's flash attention. q: `[b, n, h·d]`, k/v: `[b, m, h·d]` → `[b, n, h·d]`
    fn flash_attention(
        q: &Tensor<3>,
        k: &Tensor<3>,
        v: &Tensor<3>,
        heads: usize,
        causal: bool,
        planes: u8,
    ) -> Option<Tensor<3>> {
        None
    }
}
