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

pub use attention::{attention, attention_biased, q_attention, qkv_attention, rope};
pub use conv::{conv2d, conv2d_add, norm_silu_conv2d_add, shortcut, upsample_conv};
pub use linear::{Stream, linear, linear_act, linear_residual, linear_silu, proj_in, proj_out_add, projected};
pub use norm::{gated_add, group_norm, layer_norm, layer_norm_gpu_only, modulated_layer_norm, rms_norm, rms_norm_rope};
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

/// `module` with its weights laid out for the CPU kernels: conv and linear weights in bf16 for
/// the AMX kernels when [`Routes::cpu_bf16`] (see [`crate::cpu::pack_weights_bf16`]), linear
/// weights padded (see [`crate::cpu::pad_rows`]). The loader calls it, and so must anything that
/// builds modules otherwise (`imagen bench`'s random weights). A no-op for tensors off the CPU;
/// weights already laid out are left alone.
pub fn prepare_weights<M: burn::module::Module>(module: M) -> M {
    let module = if Routes::current().cpu_bf16 {
        crate::cpu::pack_weights_bf16(module)
    } else {
        module
    };
    crate::cpu::pad_linear_weights(module)
}

/// One parameter as [`prepare_weights`] lays it out, for the loader to apply as each tensor is
/// read (so a whole f32 module is never resident before packing). `container` is the type of
/// the struct holding it as burn's `ModuleMapper` names it (`Struct:Conv2d`), `leaf` its field.
pub fn prepare_weight<const D: usize>(container: &str, leaf: &str, t: Tensor<D>) -> Tensor<D> {
    use crate::cpu::{Layout, layer_weight};
    let t = if Routes::current().cpu_bf16 {
        layer_weight(container, leaf, t, Layout::Bf16)
    } else {
        t
    };
    layer_weight(container, leaf, t, Layout::PadRows)
}

/// A linear layer's weight `[d_in, d_out]` kept block-quantized in `device`'s memory (on the
/// CPU [`crate::cpu::quant`]'s layout for its kernels, on GPU backends `gpu::quant`'s for
/// burn-cubecl's matmul), from a PyTorch-layout `[d_out, d_in]` weight's whole values and
/// per-32 (or per-16) scales; `None` when the lengths disagree, `d_in` is not a whole number
/// of blocks, or the backend has no such storage. The loader asks for it where
/// [`Routes::keep_quantized`].
pub fn quantized_linear_weight(
    q: &[i8],
    scales: &[f32],
    d_out: usize,
    d_in: usize,
    device: &Device,
) -> Option<Tensor<2>> {
    if *device == Device::flex() {
        return crate::cpu::quant::from_rows(q, scales, d_out, d_in);
    }
    #[cfg(cube_kernels)]
    return crate::gpu::quant::from_rows(q, scales, d_out, d_in, device);
    #[cfg(not(cube_kernels))]
    None
}

/// Whether this CPU runs bf16 weights (AMX-BF16 present and granted by the OS, or AVX512-BF16).
pub fn cpu_bf16_available() -> bool {
    crate::cpu::bf16_available()
}

/// The instructions the CPU's bf16 GEMM uses (`amx`, `avx512-bf16`), per [`Routes::cpu_amx`]
/// as `device::open` applied it; `None` without bf16 support.
pub fn cpu_bf16_kernel() -> Option<&'static str> {
    crate::cpu::bf16_kernel()
}

/// `w` in `like`'s float type: weights stored narrower than the activations (bf16 CPU weights)
/// for the burn ops that take both, which require one dtype.
fn same_dtype<const D: usize, const E: usize>(w: Tensor<D>, like: &Tensor<E>) -> Tensor<D> {
    // weights kept quantized (`cpu::quant`) are read through burn's own dequantisation
    let w = if matches!(w.dtype(), burn::tensor::DType::QFloat(_)) {
        w.dequantize()
    } else {
        w
    };
    if w.dtype() == like.dtype() {
        w
    } else {
        w.cast(like.dtype())
    }
}

/// `lin` with its weight in `x`'s float type (a cheap clone when it already is).
fn linear_like<'a, const D: usize>(lin: &'a burn::nn::Linear, x: &Tensor<D>) -> std::borrow::Cow<'a, burn::nn::Linear> {
    if lin.weight.val().dtype() == x.dtype() {
        return std::borrow::Cow::Borrowed(lin);
    }
    let mut l = lin.clone();
    l.weight = burn::module::Param::from_tensor(same_dtype(lin.weight.val(), x));
    std::borrow::Cow::Owned(l)
}

/// `conv` with its weight in `x`'s float type (a cheap clone when it already is).
fn conv_like<'a>(conv: &'a burn::nn::conv::Conv2d, x: &Tensor<4>) -> std::borrow::Cow<'a, burn::nn::conv::Conv2d> {
    if conv.weight.val().dtype() == x.dtype() {
        return std::borrow::Cow::Borrowed(conv);
    }
    let mut c = conv.clone();
    c.weight = burn::module::Param::from_tensor(same_dtype(conv.weight.val(), x));
    std::borrow::Cow::Owned(c)
}

/// `lin.forward(x)` as burn computes it (bit-identical to the goldens where those use it: the time
/// embedding, CLIP's projection), its weight cast to `x`'s type when stored narrower.
/// x: `[.., in]` → `[.., out]`
pub fn linear_plain<const D: usize>(lin: &burn::nn::Linear, x: Tensor<D>) -> Tensor<D> {
    let w = lin.weight.val();
    if on_gpu(&x) && matches!(w.dtype(), burn::tensor::DType::QFloat(_)) {
        // kept quantized on a GPU: burn-cubecl's matmul reads it as it is, given 2-D operands
        // (burn's `Linear` would broadcast the weight to 3-D, a copy of the quantized view)
        let dims = x.dims();
        let rows = dims[..D - 1].iter().product();
        let mut y = x.reshape([rows, dims[D - 1]]).matmul(w);
        if let Some(b) = &lin.bias {
            y = y + b.val().unsqueeze();
        }
        let mut out = dims;
        out[D - 1] = y.dims()[1];
        return y.reshape(out);
    }
    linear_like(lin, &x).forward(x)
}

/// Frees the CPU kernels' scratch buffers (a 512² VAE layer leaves ~0.5 GB there).
pub fn release_scratch() {
    crate::cpu::release_scratch();
}

/// Not on burn's CPU backend (which has `cpu/`'s kernels instead).
fn on_gpu<const D: usize>(t: &Tensor<D>) -> bool {
    t.device() != Device::flex()
}
