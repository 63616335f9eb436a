//! Hand-written CPU kernels for the operations that dominate a diffusion step, used in place
//! of burn's stock `flex` ops when a tensor lives on the CPU in f32.
//!
//! A leaf: each entry point takes and returns ordinary burn tensors, and returns `None` for
//! anything it does not cover (other devices, other dtypes, strides, groups), so that the op
//! in `ops/` that called it takes its reference. It reads no route switch (the ops pass what a
//! kernel needs, e.g. the Winograd mode) and knows no model and no GPU code.
//!
//! Where to add a kernel: a file here working on slices, an entry point below that unwraps the
//! tensors, a unit test against the naive definition in that file, and the call from the op.

mod amx;
mod attention;
mod attention_amx;
mod conv;
mod conv_avx512;
mod dit;
mod dot_bf16;
mod elementwise;
mod gemm;
mod geometry;
mod linear;
mod lowp;
mod norm;
mod operands;
pub mod profile;
pub mod quant;
mod scratch;
mod simd;
mod winograd;

pub use dit::{gated_add, gelu_tanh, modulated_layer_norm, rms_norm_rope};

use burn::module::{Module, ModuleMapper, Param};
use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, LayerNorm, Linear, PaddingConfig2d};
use burn::tensor::{DType, Tensor, TensorData};
use burn_flex::{Flex, FlexTensor};

use crate::ops::types::Winograd;

/// The tensor's CPU storage when it is f32 on `flex`; made contiguous.
fn host<const D: usize>(t: &Tensor<D>) -> Option<FlexTensor> {
    let p = flex(t)?;
    Some(if p.is_contiguous() { p } else { p.to_contiguous() })
}

/// The tensor's CPU storage as it is laid out, when it is f32 on `flex`.
fn flex<const D: usize>(t: &Tensor<D>) -> Option<FlexTensor> {
    if t.dtype() != DType::F32 {
        return None;
    }
    t.clone().try_into_primitive::<Flex>().ok()
}

/// An optional parameter (bias, γ, β): `Some(None)` when absent, `None` when present but not
/// usable by the kernels (so the caller falls back).
fn host_param(p: &Option<Param<Tensor<1>>>) -> Option<Option<FlexTensor>> {
    match p {
        Some(p) => host(&p.val()).map(Some),
        None => Some(None),
    }
}

fn slice(t: &FlexTensor) -> &[f32] {
    // `host` made it contiguous and checked the dtype.
    t.as_slice::<f32>().expect("contiguous f32")
}

fn tensor<const D: usize>(data: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
    Tensor::from_primitive::<Flex>(FlexTensor::from_data(TensorData::new(data, shape)))
}

/// `conv.forward(x)` for stride-1 ungrouped convolutions (Winograd F(4×4, 3×3) for large 3×3
/// ones as `winograd` says, im2col + one GEMM for 8×8 outputs, else the AVX-512 direct kernel,
/// else shifted GEMMs; `conv.rs` picks); `None` for the rest.
/// x: `[b, cin, h, w]` → `[b, cout, ho, wo]`
pub fn conv2d(conv: &Conv2d, x: &Tensor<4>, winograd: Winograd) -> Option<Tensor<4>> {
    let fast = conv.stride == [1, 1] && conv.dilation == [1, 1] && conv.groups == 1;
    let pad = match conv.padding {
        PaddingConfig2d::Valid => [0; 4],
        PaddingConfig2d::Explicit(t, l, b, r) => [t, l, b, r],
        PaddingConfig2d::Same => return None,
    };
    let weight = conv.weight.val();
    let square_stride = conv.stride[0] == conv.stride[1] && conv.stride[0] >= 1;
    if weight.dtype() == DType::BF16 && square_stride && conv.dilation == [1, 1] && conv.groups == 1 {
        return conv2d_bf16(conv, x, &weight, pad, conv.stride[0]);
    }
    if !fast {
        return None;
    }
    let (xs, ws, bias) = (host(x)?, host(&weight)?, host_param(&conv.bias)?);
    let c = geometry::Conv::of(x.dims(), weight.dims(), pad);
    let (ho, wo) = c.out_hw();
    let (batch, cout) = (c.batch, c.cout);
    let _t = profile::Timer::new(profile::Op::Conv);
    let out = conv::conv2d(c, slice(&xs), slice(&ws), bias.as_ref().map(slice), winograd);
    Some(tensor(out, [batch, cout, ho, wo]))
}

/// [`conv2d`] with weights laid out by [`pack_weights_bf16`], on AMX tiles.
fn conv2d_bf16(conv: &Conv2d, x: &Tensor<4>, weight: &Tensor<4>, pad: [usize; 4], stride: usize) -> Option<Tensor<4>> {
    let xs = host(x)?;
    bf16_conv(conv, x.dims(), weight, pad, stride, lowp::Input::plain(slice(&xs)))
}

/// The AMX convolution of `input` (`dims` as the conv sees it), weights packed.
fn bf16_conv(
    conv: &Conv2d,
    dims: [usize; 4],
    weight: &Tensor<4>,
    pad: [usize; 4],
    stride: usize,
    input: lowp::Input,
) -> Option<Tensor<4>> {
    let bias = host_param(&conv.bias)?;
    let c = geometry::Conv::of(dims, weight.dims(), pad);
    let ws = packed(weight, lowp::padded(c.cout, c.cin), c.kh * c.kw)?;
    let (ho, wo) = lowp::strided_hw(&c, stride);
    let (batch, cout) = (c.batch, c.cout);
    let _t = profile::Timer::new(profile::Op::Conv);
    let out = lowp::conv2d(c, stride, input, bf16_bits(&ws), bias.as_ref().map(slice));
    Some(tensor(out, [batch, cout, ho, wo]))
}

/// The stride-1 ungrouped conv's padding, when its weights are packed for the AMX kernels.
fn packed_conv(conv: &Conv2d) -> Option<(Tensor<4>, [usize; 4])> {
    let weight = conv.weight.val();
    let pad = match conv.padding {
        PaddingConfig2d::Explicit(t, l, b, r) => [t, l, b, r],
        PaddingConfig2d::Valid => [0; 4],
        PaddingConfig2d::Same => return None,
    };
    let simple = conv.stride == [1, 1] && conv.dilation == [1, 1] && conv.groups == 1;
    (simple && weight.dtype() == DType::BF16).then_some((weight, pad))
}

/// `conv(silu(norm(x)))` on AMX tiles, the input normalised as the convolution reads it (the
/// normalised tensor is never built); `None` unless the conv's weights are packed in bf16.
/// x: `[b, cin, h, w]` → `[b, cout, h', w']`
pub fn norm_silu_conv2d(norm: &GroupNorm, conv: &Conv2d, x: &Tensor<4>) -> Option<Tensor<4>> {
    let (weight, pad) = packed_conv(conv)?;
    let xs = host(x)?;
    let params = group_norm_params(norm, &xs, x.dims())?;
    let input = lowp::Input {
        x: slice(&xs),
        affine: Some(&params),
        silu: true,
        up: 1,
    };
    bf16_conv(conv, x.dims(), &weight, pad, 1, input)
}

/// `conv(upsample_nearest_2x(x))` on AMX tiles, the input upsampled as the convolution reads it;
/// `None` unless the conv's weights are packed in bf16.
/// x: `[b, cin, h, w]` → `[b, cout, 2h', 2w']`
pub fn upsample2_conv2d(conv: &Conv2d, x: &Tensor<4>) -> Option<Tensor<4>> {
    let (weight, pad) = packed_conv(conv)?;
    let xs = host(x)?;
    let [b, c, h, w] = x.dims();
    bf16_conv(
        conv,
        [b, c, 2 * h, 2 * w],
        &weight,
        pad,
        1,
        lowp::Input {
            x: slice(&xs),
            affine: None,
            silu: false,
            up: 2,
        },
    )
}

/// The storage of a weight laid out by [`pack_weights_bf16`] (`[m_pad][taps][cin_p]` under a
/// strided `[cout, cin, kh, kw]` view; a linear weight contiguous `[d_in, d_out]`, passed as
/// `(d_in, d_out)`), checked against that layout.
fn packed<const D: usize>(t: &Tensor<D>, (m_pad, cin_p): (usize, usize), taps: usize) -> Option<FlexTensor> {
    if !amx::available() {
        return None;
    }
    let p = t.clone().try_into_primitive::<Flex>().ok()?;
    let l = p.layout();
    let want: &[isize] = match D {
        4 => &[
            (taps * cin_p) as isize,
            1,
            (t.dims()[3] * cin_p) as isize,
            cin_p as isize,
        ],
        // a linear weight `[d_in, d_out]` over its transposed `[m_pad][k_p]` storage
        2 => &[1, cin_p as isize],
        _ => return None,
    };
    let len = p.storage::<half::bf16>().len();
    (l.start_offset() == 0 && l.strides() == want && len == m_pad * taps * cin_p).then_some(p)
}

fn bf16_bits(t: &FlexTensor) -> &[u16] {
    use half::slice::HalfFloatSliceExt;
    t.storage::<half::bf16>().reinterpret_cast()
}

/// Whether this machine computes bf16 weights (on AMX tiles, or AVX512-BF16 dot products; and so
/// [`pack_weights_bf16`] applies).
pub fn bf16_available() -> bool {
    amx::available()
}

/// Whether the bf16 GEMM may use AMX tiles where they exist (`false`: AVX512-BF16 dot products,
/// as on CPUs without AMX). Process-wide; the same results within bf16's rounding.
pub fn bf16_on_tiles(on: bool) {
    amx::prefer_tiles(on)
}

/// The instructions the bf16 GEMM uses on this CPU: `amx`, `avx512-bf16`, or `None`.
pub fn bf16_kernel() -> Option<&'static str> {
    amx::available().then(|| match amx::Kernel::chosen() {
        amx::Kernel::Tiles => "amx",
        amx::Kernel::DotProducts => "avx512-bf16",
    })
}

/// `module` with every f32 CPU `Conv2d` and `Linear` weight stored in bf16 and laid out for the
/// AMX kernels (half the memory; burn's own ops still read them as strided tensors once cast).
/// Other tensors (norms, embeddings, biases) stay f32. Unchanged where AMX is not available.
pub fn pack_weights_bf16<M: Module>(module: M) -> M {
    if !amx::available() {
        return module;
    }
    map_layer_weights(module, Layout::Bf16)
}

/// How [`map_layer_weights`] lays out conv and linear weights.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Layout {
    /// linear weights' rows padded ([`pad_rows`]), conv weights untouched
    PadRows,
    /// both in bf16 for the AMX kernels ([`pack_bf16`])
    Bf16,
}

/// `module` with its `Conv2d` and `Linear` weights laid out as `layout` says.
fn map_layer_weights<M: Module>(module: M, layout: Layout) -> M {
    struct Layer {
        /// for each entered field, the type of the struct holding it
        stack: Vec<String>,
        /// the field entered last
        leaf: String,
        layout: Layout,
    }
    impl ModuleMapper for Layer {
        fn enter_module(&mut self, name: &str, container_type: &str) {
            self.stack.push(container_type.to_owned());
            self.leaf = name.to_owned();
        }
        fn exit_module(&mut self, _name: &str, _container_type: &str) {
            self.stack.pop();
        }
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
            // burn enters each field with the type of the struct holding it (as the loader reads)
            let container = self.stack.last().map(String::as_str).unwrap_or_default();
            let (container, leaf, layout) = (container.to_owned(), self.leaf.clone(), self.layout);
            param.map(|t| layer_weight(&container, &leaf, t, layout))
        }
    }
    module.map(&mut Layer {
        stack: Vec::new(),
        leaf: String::new(),
        layout,
    })
}

/// One parameter laid out as [`map_layer_weights`] lays out a module's: `container` is the type
/// of the struct holding it as burn's mapper names it (`Struct:Linear`), `leaf` its field. The
/// loader calls it as each tensor is read, so that a whole f32 module never exists at once.
pub fn layer_weight<const D: usize>(container: &str, leaf: &str, t: Tensor<D>, layout: Layout) -> Tensor<D> {
    match (container, leaf, D, layout) {
        ("Struct:Linear", "weight", 2, Layout::PadRows) => pad_rows(t),
        ("Struct:Conv2d", "weight", 4, Layout::Bf16) | ("Struct:Linear", "weight", 2, Layout::Bf16) => {
            if amx::available() {
                pack_bf16(t.clone()).unwrap_or(t)
            } else {
                t
            }
        }
        _ => t,
    }
}

/// One weight as [`pack_weights_bf16`] lays it out; `None` when it is not f32 on the CPU.
fn pack_bf16<const D: usize>(t: Tensor<D>) -> Option<Tensor<D>> {
    use half::vec::HalfBitsVecExt;
    let p = host(&t)?;
    let dims = t.dims();
    let view = match D {
        4 => {
            let [cout, cin, kh, kw] = [dims[0], dims[1], dims[2], dims[3]];
            let (m_pad, cin_p) = lowp::padded(cout, cin);
            let bits = lowp::pack_conv(slice(&p), cout, cin, kh, kw);
            FlexTensor::from_data(TensorData::new(
                bits.reinterpret_into::<half::bf16>(),
                [m_pad, kh, kw, cin_p],
            ))
            .narrow(0, 0, cout)
            .narrow(3, 0, cin)
            .permute(&[0, 3, 1, 2])
        }
        2 => {
            let [d_in, d_out] = [dims[0], dims[1]];
            let (m_pad, k_p) = lowp::padded(d_out, d_in);
            let bits = lowp::pack_linear(slice(&p), d_in, d_out);
            FlexTensor::from_data(TensorData::new(bits.reinterpret_into::<half::bf16>(), [m_pad, k_p]))
                .narrow(0, 0, d_out)
                .narrow(1, 0, d_in)
                .permute(&[1, 0])
        }
        _ => return None,
    };
    Some(Tensor::from_primitive::<Flex>(view))
}

/// `norm.forward(x)`, followed by SiLU when `silu`, in one pass on the CPU.
/// x: `[b, c, h, w]` → same shape
pub fn group_norm(norm: &GroupNorm, x: &Tensor<4>, silu: bool) -> Option<Tensor<4>> {
    let xs = host(x)?;
    let params = group_norm_params(norm, &xs, x.dims())?;
    let [b, c, h, w] = x.dims();
    let _t = profile::Timer::new(profile::Op::GroupNorm);
    let out = norm::normalise(slice(&xs), h * w, &params, silu);
    Some(tensor(out, [b, c, h, w]))
}

/// `norm`'s per-(batch, channel) `(scale, shift)` over `xs` (`dims` `[b, c, h, w]`), as
/// [`norm::affine_params`] computes them; `None` when γ or β is not usable.
fn group_norm_params(norm: &GroupNorm, xs: &FlexTensor, [b, c, h, w]: [usize; 4]) -> Option<Vec<(f32, f32)>> {
    let (gamma, beta) = (host_param(&norm.gamma)?, host_param(&norm.beta)?);
    let _t = profile::Timer::new(profile::Op::GroupNorm);
    Some(norm::affine_params(
        slice(xs),
        b,
        c,
        h * w,
        norm.num_groups,
        gamma.as_ref().map(slice),
        beta.as_ref().map(slice),
        norm.epsilon,
    ))
}

/// Scaled-dot-product attention over interleaved heads.
/// q: `[b, n, h·d]`, k/v: `[b, m, h·d]` → `[b, n, h·d]`; `None` when the kernels don't apply.
/// With `bf16` (and AMX present) the products run in bf16 on AMX tiles, statistics in f32.
pub fn attention(
    q: &Tensor<3>,
    k: &Tensor<3>,
    v: &Tensor<3>,
    heads: usize,
    causal: bool,
    bf16: bool,
) -> Option<Tensor<3>> {
    let (qs, ks, vs) = (host(q)?, host(k)?, host(v)?);
    let [batch, n, inner] = q.dims();
    let m = k.dims()[1];
    let a = attention::Attn {
        batch,
        heads,
        n,
        m,
        d: inner / heads,
        causal,
    };
    let _t = profile::Timer::new(profile::Op::Attention);
    // bf16 only where the products dominate: self-attention over image positions. With few
    // keys (CLIP's 77, cross-attention) f32 costs little, and bf16 probabilities cost CLIP accuracy.
    let out = if bf16 && m >= 256 && amx::available() {
        attention_amx::attention(a, slice(&qs), slice(&ks), slice(&vs))
    } else {
        attention::attention(a, slice(&qs), slice(&ks), slice(&vs))
    };
    Some(tensor(out, [batch, n, inner]))
}

/// `lin.forward(x)` as one GEMM over all leading dims on the CPU. Weights kept quantized
/// ([`quant`]) run in bf16 on AMX tiles when `bf16` (and AMX is present), else in f32.
/// x: `[.., in]` → `[.., out]`
pub fn linear<const D: usize>(lin: &Linear, x: &Tensor<D>, bf16: bool) -> Option<Tensor<D>> {
    let weight = lin.weight.val();
    let [d_in, d_out] = weight.dims();
    let mut shape = x.dims();
    let rows = shape[..D - 1].iter().product();
    shape[D - 1] = d_out;
    if let Some(stored) = quant::storage(&weight) {
        let (xs, bias) = (host(x)?, host_param(&lin.bias)?);
        let w = quant::parts(&stored, [d_in, d_out])?;
        let bias = bias.as_ref().map(slice);
        let _t = profile::Timer::new(profile::Op::Linear);
        let out = if bf16 && amx::available() {
            lowp::linear(slice(&xs), rows, lowp::Weight::Q8(w), bias)
        } else {
            let stride = padded_stride(d_out);
            let mut f = scratch::take(scratch::DEQUANTISED, d_in * stride);
            for k in 0..d_in {
                w.row_into(k, &mut f[k * stride..]);
            }
            let out = linear::linear(slice(&xs), rows, d_in, d_out, (&f, stride), bias);
            scratch::give(scratch::DEQUANTISED, f);
            out
        };
        return Some(tensor(out, shape));
    }
    if weight.dtype() == DType::BF16 {
        let (xs, bias) = (host(x)?, host_param(&lin.bias)?);
        let ws = packed(&weight, lowp::padded(d_out, d_in), 1)?;
        let _t = profile::Timer::new(profile::Op::Linear);
        let w = lowp::Weight::Bf16 {
            bits: bf16_bits(&ws),
            d_in,
            d_out,
        };
        let out = lowp::linear(slice(&xs), rows, w, bias.as_ref().map(slice));
        return Some(tensor(out, shape));
    }
    let (xs, (ws, w_rs), bias) = (host(x)?, host_rows(&weight)?, host_param(&lin.bias)?);
    let _t = profile::Timer::new(profile::Op::Linear);
    let w = &ws.storage::<f32>()[ws.layout().start_offset()..];
    let out = linear::linear(slice(&xs), rows, d_in, d_out, (w, w_rs), bias.as_ref().map(slice));
    Some(tensor(out, shape))
}

/// A 2-D f32 CPU tensor whose rows are contiguous, possibly `stride ≥ cols` apart (see
/// [`pad_rows`]): the storage and the row stride. Other layouts are made contiguous.
fn host_rows(t: &Tensor<2>) -> Option<(FlexTensor, usize)> {
    let p = flex(t)?;
    match p.layout().as_2d_strides() {
        Some((_, cols, rs, 1)) if rs >= cols as isize => Some((p, rs as usize)),
        _ => {
            let [_, cols] = t.dims();
            Some((p.to_contiguous(), cols))
        }
    }
}

/// `module` with every `Linear` weight passed through [`pad_rows`]: the loader calls it, and so
/// must anything that builds modules otherwise (`imagen bench`'s random weights).
pub fn pad_linear_weights<M: Module>(module: M) -> M {
    map_layer_weights(module, Layout::PadRows)
}

/// A `[rows, cols]` (`D = 2`) f32 CPU matrix that GEMMs read in place (linear weights), re-laid out with
/// its rows one cache line further apart when `cols` is a multiple of 32: a row stride with a
/// large power-of-two factor puts successive rows in the same few L1 sets (CLIP's 3072-wide
/// weights: every row in one set). The tensor is a view of the padded storage, so burn's own
/// ops still see `[rows, cols]`. Other tensors are returned unchanged.
pub fn pad_rows<const D: usize>(t: Tensor<D>) -> Tensor<D> {
    let dims = t.dims();
    if D != 2 || !dims[1].is_multiple_of(32) || t.dtype() != DType::F32 {
        return t;
    }
    let (rows, cols) = (dims[0], dims[1]);
    let Ok(p) = t.clone().try_into_primitive::<Flex>() else {
        return t;
    };
    let Some(src) = p.as_slice::<f32>() else {
        return t;
    };
    let stride = padded_stride(cols);
    let mut padded = vec![0f32; rows * stride];
    for (d, s) in padded.chunks_mut(stride).zip(src.chunks(cols)) {
        d[..cols].copy_from_slice(s);
    }
    let wide = FlexTensor::from_data(TensorData::new(padded, [rows, stride]));
    Tensor::from_primitive::<Flex>(wide.narrow(1, 0, cols))
}

/// The row stride [`pad_rows`] gives a matrix `cols` wide (a quantized weight dequantised per
/// call gets the same): one cache line more when `cols` is a multiple of 32.
fn padded_stride(cols: usize) -> usize {
    if cols.is_multiple_of(32) { cols + 16 } else { cols }
}

/// `ln.forward(x)`; burn keeps `LayerNorm`'s epsilon private, so the caller passes the one it
/// built the module with. x: `[.., dim]` → same shape
pub fn layer_norm<const D: usize>(ln: &LayerNorm, x: &Tensor<D>, eps: f64) -> Option<Tensor<D>> {
    let (xs, gs, beta) = (host(x)?, host(&ln.gamma.val())?, host_param(&ln.beta)?);
    let shape = x.dims();
    let _t = profile::Timer::new(profile::Op::Other);
    let out = elementwise::layer_norm(slice(&xs), shape[D - 1], slice(&gs), beta.as_ref().map(slice), eps);
    Some(tensor(out, shape))
}

/// GELU (`quick`: CLIP's `x·σ(1.702x)`, else the exact erf form) on the CPU in one pass.
pub fn gelu<const D: usize>(x: &Tensor<D>, quick: bool) -> Option<Tensor<D>> {
    let xs = host(x)?;
    let _t = profile::Timer::new(profile::Op::Other);
    Some(tensor(elementwise::gelu(slice(&xs), quick), x.dims()))
}

/// GEGLU: h `[b, n, 2·inner]` (hidden ‖ gate) → `hidden · gelu(gate)`, `[b, n, inner]`.
pub fn geglu(h: &Tensor<3>) -> Option<Tensor<3>> {
    let [b, n, two_inner] = h.dims();
    let inner = two_inner / 2;
    let hs = host(h)?;
    let _t = profile::Timer::new(profile::Op::Other);
    Some(tensor(elementwise::geglu(slice(&hs), inner), [b, n, inner]))
}

/// Nearest-neighbour 2× upsampling on the CPU; `None` when the kernels don't apply.
/// x: `[b, c, h, w]` → `[b, c, 2h, 2w]`
pub fn upsample_2x(x: &Tensor<4>) -> Option<Tensor<4>> {
    let xs = host(x)?;
    let [b, c, h, w] = x.dims();
    let _t = profile::Timer::new(profile::Op::Other);
    Some(tensor(elementwise::upsample_2x(slice(&xs), w), [b, c, 2 * h, 2 * w]))
}

/// Frees the kernel scratch buffers of the calling thread and of rayon's threads (a 512² VAE
/// layer leaves ~0.5 GB there).
pub fn release_scratch() {
    scratch::release();
    lowp::release();
    rayon::broadcast(|_| scratch::release());
    trim_heap();
}

/// Hands freed heap pages back to the OS. glibc keeps blocks under its (self-raising, up to
/// 32 MB) mmap threshold in its arenas after `free`, so without this a dropped model or
/// scratch buffer stays in the process's resident set.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use burn::nn::LinearConfig;
    use burn::tensor::{Device, Distribution};

    use super::*;

    /// Padded linear weights: a strided view that burn's own forward and imagen's kernel read
    /// alike, and that the kernel reads without a contiguous copy.
    #[test]
    fn padded_linear_weights() {
        let device = Device::flex();
        for (d_in, d_out, stride) in [(48, 64, 80), (48, 40, 40)] {
            let lin = pad_linear_weights(LinearConfig::new(d_in, d_out).init(&device));
            let (_, rs) = host_rows(&lin.weight.val()).expect("f32 on flex");
            assert_eq!(rs, stride);
            let x = Tensor::<3>::random([2, 37, d_in], Distribution::Normal(0.0, 1.0), &device);
            let want = lin.forward(x.clone()).into_data().try_to_vec::<f32>().expect("f32");
            let got = linear(&lin, &x, false)
                .expect("f32 on flex")
                .into_data()
                .try_to_vec::<f32>()
                .expect("f32");
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-4, "{g} vs {w}");
            }
        }
    }
}
