//! The operations model code calls. Each op decides its route in one place, from
//! [`Routes::current`]: imagen's CPU kernel (`cpu/`) for f32 tensors on burn's CPU backend, a GPU
//! route on GPU backends (imagen's fused kernels through [`Gpu`], burn-cubecl's strategies, or
//! burn ops composed as the kernels' reference), and burn's own op last.
//!
//! Layers, one direction: models → ops → {cpu, gpu} → burn. `cpu/` and `gpu/` are leaves that
//! import burn and this module's shared types ([`types`], [`kernels`]) only.
//!
//! Where to add an op: a function in the file of its kind here (`conv`, `linear`, `norm`,
//! `attention`, `resample`) that tries the kernels in order and ends with the burn-op
//! reference, re-exported below. A fused sequence (e.g. a linear layer, its residual and the
//! layer norm after it) is one op, or a [`Stream`] whose pending add the next op finishes: model
//! code asks for it and stays shaped like diffusers'.

mod attention;
mod conv;
pub mod kernels;
mod linear;
mod norm;
mod resample;
pub mod routes;
pub mod types;

use burn::tensor::{Device, Tensor};

pub use attention::{attention, q_attention, qkv_attention};
pub use conv::{conv2d, conv2d_add, norm_silu_conv2d_add, shortcut, upsample_conv};
pub use linear::{Stream, linear, linear_act, linear_residual, linear_silu, proj_in, proj_out_add, projected};
pub use norm::{group_norm, layer_norm, layer_norm_gpu_only};
pub use resample::{cat_channels, upsample_nearest};
pub use routes::{AttentionRoute, ConvRoute, Routes, Winograd};
pub use types::{Act, ConvAdd, Pointwise};

/// The GPU kernels: `gpu::Cube` where burn's tensors are raw cube tensors (a GPU backend
/// without burn's fusion: `cfg(cube_kernels)`, set by `build.rs`), else [`kernels::Declines`].
#[cfg(cube_kernels)]
pub(crate) type Gpu = crate::gpu::Cube;
#[cfg(not(cube_kernels))]
pub(crate) type Gpu = kernels::Declines;

/// Whether [`Gpu`] has kernels (the fused routes are never chosen without them).
pub const GPU_KERNELS: bool = cfg!(cube_kernels);

/// `module` with every linear weight laid out for the CPU kernels (see [`crate::cpu::pad_rows`]):
/// the loader calls it, and so must anything that builds modules otherwise (`imagen bench`'s
/// random weights). A no-op for tensors off the CPU.
pub fn prepare_weights<M: burn::module::Module>(module: M) -> M {
    crate::cpu::pad_linear_weights(module)
}

/// Frees the CPU kernels' scratch buffers (a 512² VAE layer leaves ~0.5 GB there).
pub fn release_scratch() {
    crate::cpu::release_scratch();
}

/// Not on burn's CPU backend (which has `cpu/`'s kernels instead).
fn on_gpu<const D: usize>(t: &Tensor<D>) -> bool {
    t.device() != Device::flex()
}
