//! Alternative routes for ops on GPU backends, chosen at run time so one GPU session can measure
//! them against burn's own ops side by side (BENCHMARKS.md: on an H100 burn's conv and attention
//! kernels dominate a UNet step that is 27× slower than PyTorch's).
//!
//! - `IMAGEN_GPU_CONV=im2col`: convolutions as one batched matmul over the windows of the padded
//!   input (burn's matmul, on tensor cores where the device has them, instead of its conv kernels).
//! - `IMAGEN_GPU_CONV=burn`: burn's `conv2d` (1×1 convs still as a matmul).
//! - `IMAGEN_GPU_CONV=gemm`: burn-cubecl's implicit-GEMM convolution on cooperative matrices
//!   (tensor cores). Needs a device with them, which on wgpu means the SPIR-V route (`vulkan`
//!   feature); elsewhere each conv falls back to `im2col`.
//! - `IMAGEN_GPU_ATTENTION=burn`: burn's `attention`.
//! - `IMAGEN_GPU_ATTENTION=matmul`: attention as `softmax(q·kᵀ/√d)·v` with two batched matmuls
//!   (the score matrix exists in full: fine on a GPU for SD's sizes, and it is what PyTorch's
//!   math path does).
//! - `IMAGEN_GPU_ATTENTION=flash`: burn-cubecl's flash attention on cooperative matrices; falls
//!   back to `matmul` where the device has none.
//!
//! Default: `im2col` and `matmul`, by measurement (H100, SPIR-V, f16, BENCHMARKS.md): SD 1.5 UNet
//! step 0.95 s with burn's ops, 0.163 s with these; `gemm` and `flash` were no faster. Group
//! norm, layer norm and the attention softmax run on imagen's own kernels ([`kernels`]) unless
//! `IMAGEN_GPU_KERNELS=0`, which gives burn tensor ops (group norm with staged reductions, see
//! [`group_norm`]). On top of those, the fused kernels ([`fused`], reached through
//! [`crate::fused`]) put what burn runs as chains of element-wise launches into one launch each:
//! a SD 1.5 UNet step went from 1 665 to 712 launches (lavapipe profile, BENCHMARKS.md);
//! `IMAGEN_GPU_FUSED=0` turns just them off. The CPU never takes these routes (it has its own
//! kernels, [`crate::cpu`]).

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use burn::tensor::{Device, Tensor};

mod attention;
mod conv;
mod linear;
mod norm;

pub(crate) use attention::{attention, q_attention, qkv_attention};
pub(crate) use conv::{conv2d, conv2d_fused, pointwise_unbiased, proj_to_seq, proj_to_seq_norm, seq_proj_add};
pub(crate) use linear::{linear_act, linear_add, linear_add_norm, linear_unbiased};
pub(crate) use norm::{group_norm, layer_norm};

// imagen's kernels and burn-cubecl's strategies need the raw cube tensors, which builds with
// burn's fusion (or without a GPU backend) do not have: there, stubs that always decline.
#[cfg(all(feature = "wgpu", not(feature = "gpu-autotune")))]
mod cube;
#[cfg(all(feature = "wgpu", not(feature = "gpu-autotune")))]
mod fused;
#[cfg(all(feature = "wgpu", not(feature = "gpu-autotune")))]
mod kernels;
#[cfg(not(all(feature = "wgpu", not(feature = "gpu-autotune"))))]
mod stubs;
#[cfg(not(all(feature = "wgpu", not(feature = "gpu-autotune"))))]
use stubs::{cube, fused, kernels};

/// How convolutions run on GPU backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvRoute {
    /// burn's `conv2d` (its direct kernel without autotune); 1×1 convs still go through matmul.
    Burn = 1,
    /// One batched matmul over the windows of the padded input (the default).
    Im2col = 2,
    /// burn-cubecl's implicit GEMM on tensor cores, else `Im2col`.
    ImplicitGemm = 3,
}

/// How attention runs on GPU backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionRoute {
    /// burn's `attention` (without autotune: separate kernels, scores materialised).
    Burn = 1,
    /// Two batched matmuls and a softmax (the default).
    Matmul = 2,
    /// burn-cubecl's flash attention on tensor cores, else `Matmul`.
    Flash = 3,
}

/// 0 = not read from the environment yet, else the route's discriminant.
static CONV: AtomicU8 = AtomicU8::new(0);
static ATTENTION: AtomicU8 = AtomicU8::new(0);
static KERNELS: AtomicU8 = AtomicU8::new(0);

/// The route named by `var` (one of `names`, in discriminant order), else `default`.
fn route(cell: &AtomicU8, var: &str, names: [&str; 3], default: u8) -> u8 {
    match cell.load(Ordering::Relaxed) {
        0 => {
            let v = std::env::var(var).unwrap_or_default();
            let r = names.iter().position(|n| *n == v).map_or(default, |i| i as u8 + 1);
            cell.store(r, Ordering::Relaxed);
            r
        }
        r => r,
    }
}

/// The convolution route for the whole process (else from `IMAGEN_GPU_CONV`).
pub fn set_conv_route(r: ConvRoute) {
    CONV.store(r as u8, Ordering::Relaxed);
}

/// The attention route for the whole process (else from `IMAGEN_GPU_ATTENTION`).
pub fn set_attention_route(r: AttentionRoute) {
    ATTENTION.store(r as u8, Ordering::Relaxed);
}

/// imagen's own kernels ([`kernels`]: group norm, layer norm, softmax) on or off for the whole
/// process (else from `IMAGEN_GPU_KERNELS`: `0` turns them off; on by default). Off, the same
/// ops run as burn tensor ops: the kernels' reference.
pub fn set_own_kernels(on: bool) {
    KERNELS.store(if on { 2 } else { 1 }, Ordering::Relaxed);
}

pub fn own_kernels() -> bool {
    match KERNELS.load(Ordering::Relaxed) {
        0 => {
            let on = std::env::var("IMAGEN_GPU_KERNELS").map_or(true, |v| v != "0");
            set_own_kernels(on);
            on
        }
        r => r == 2,
    }
}

pub fn conv_route() -> ConvRoute {
    match route(
        &CONV,
        "IMAGEN_GPU_CONV",
        ["burn", "im2col", "gemm"],
        ConvRoute::Im2col as u8,
    ) {
        2 => ConvRoute::Im2col,
        3 => ConvRoute::ImplicitGemm,
        _ => ConvRoute::Burn,
    }
}

pub fn attention_route() -> AttentionRoute {
    match route(
        &ATTENTION,
        "IMAGEN_GPU_ATTENTION",
        ["burn", "matmul", "flash"],
        AttentionRoute::Matmul as u8,
    ) {
        2 => AttentionRoute::Matmul,
        3 => AttentionRoute::Flash,
        _ => AttentionRoute::Burn,
    }
}

/// `x ‖ y` along the channels in one fused kernel; `None` (nothing run) with the fused kernels
/// off. x: `[b, c1, h, w]`, y: `[b, c2, h, w]` → `[b, c1 + c2, h, w]`
pub(crate) fn cat_channels(x: &Tensor<4>, y: &Tensor<4>) -> Option<Tensor<4>> {
    if !fused_kernels() {
        return None;
    }
    fused::cat_channels(x.clone(), y.clone())
}

/// Not on burn's CPU backend (which has [`crate::cpu`]'s kernels instead).
pub(crate) fn on_gpu<const D: usize>(t: &Tensor<D>) -> bool {
    t.device() != Device::flex()
}

/// Column matrices larger than this many bytes are built one band of output rows at a time.
/// Unbanded, a 512² VAE decode held 3.7 GB of GPU memory on the H100 (burn's direct conv: 0.9 GB),
/// and on Mesa's lavapipe a 256² decode failed outright: a 151 MB column matrix is over the
/// 128 MiB storage-buffer binding Vulkan guarantees. 64 MiB: the UNet's f16 matrices (≤ 47 MB at
/// 512²) stay whole; the VAE's 512² convs take 10 bands in f16. 0 = not read from the
/// environment yet.
static IM2COL_BUDGET: AtomicUsize = AtomicUsize::new(0);

/// The im2col column-matrix budget in bytes, for the whole process (else from
/// `IMAGEN_GPU_IM2COL_BYTES`, default 64 MiB).
pub fn set_im2col_budget(bytes: usize) {
    IM2COL_BUDGET.store(bytes.max(1), Ordering::Relaxed);
}

pub(super) fn im2col_budget() -> usize {
    match IM2COL_BUDGET.load(Ordering::Relaxed) {
        0 => {
            let v = std::env::var("IMAGEN_GPU_IM2COL_BYTES")
                .ok()
                .and_then(|v| v.parse().ok());
            set_im2col_budget(v.unwrap_or(64 << 20));
            IM2COL_BUDGET.load(Ordering::Relaxed)
        }
        v => v,
    }
}

/// 0 = not read from the environment yet, 1 = off, 2 = on.
static FUSED: AtomicU8 = AtomicU8::new(0);

/// The fused kernels ([`crate::fused`]'s GPU routes: epilogues, fused im2col, head split) on
/// or off for the whole process (else from `IMAGEN_GPU_FUSED`: `0` turns them off; on by
/// default). Off, the models run the unfused ops with imagen's norm and softmax kernels: the
/// routes measured before them, for an A/B with one binary.
pub fn set_fused_kernels(on: bool) {
    FUSED.store(if on { 2 } else { 1 }, Ordering::Relaxed);
}

/// Whether the fused kernels run: compiled in (not with burn's fusion), imagen's kernels on
/// ([`own_kernels`]) and the fused ones not turned off ([`set_fused_kernels`]).
pub fn fused_kernels() -> bool {
    let on = match FUSED.load(Ordering::Relaxed) {
        0 => {
            let on = std::env::var("IMAGEN_GPU_FUSED").map_or(true, |v| v != "0");
            set_fused_kernels(on);
            on
        }
        r => r == 2,
    };
    cfg!(all(feature = "wgpu", not(feature = "gpu-autotune"))) && own_kernels() && on
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unset variables give the routes BENCHMARKS.md measured fastest (a lookup bug once
    /// turned the kernels off by default without any test noticing).
    #[test]
    fn defaults_are_the_measured_routes() {
        let unset = |v| std::env::var(v).is_err();
        if unset("IMAGEN_GPU_KERNELS") {
            assert!(own_kernels());
        }
        if unset("IMAGEN_GPU_CONV") {
            assert_eq!(conv_route(), ConvRoute::Im2col);
        }
        if unset("IMAGEN_GPU_ATTENTION") {
            assert_eq!(attention_route(), AttentionRoute::Matmul);
        }
        if unset("IMAGEN_GPU_FUSED") && unset("IMAGEN_GPU_KERNELS") {
            assert_eq!(
                fused_kernels(),
                cfg!(all(feature = "wgpu", not(feature = "gpu-autotune")))
            );
        }
    }
}
