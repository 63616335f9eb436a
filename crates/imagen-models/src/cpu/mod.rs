//! Hand-written CPU kernels for the operations that dominate a diffusion step, used in place
//! of burn's stock `flex` ops when a tensor lives on the CPU in f32.
//!
//! Each entry point takes and returns ordinary burn tensors and falls back to burn's op for
//! anything it does not cover (other devices, other dtypes, strides, groups), so model code
//! calls them unconditionally. `IMAGEN_CPU_KERNELS=0` (or [`set_enabled`]) turns them off,
//! which the parity tests and `imagen bench` use to compare against burn's path.

mod attention;
mod conv;
mod gemm;
mod norm;
mod scratch;
mod simd;

use std::sync::atomic::{AtomicU8, Ordering};

use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, PaddingConfig2d};
use burn::tensor::{DType, Tensor, TensorData};
use burn_flex::{Flex, FlexTensor};

/// 0 = not decided yet, 1 = on, 2 = off.
static ENABLED: AtomicU8 = AtomicU8::new(0);

/// Whether the kernels are used (default on; `IMAGEN_CPU_KERNELS=0` turns them off).
pub fn enabled() -> bool {
    match ENABLED.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let on = std::env::var("IMAGEN_CPU_KERNELS").map_or(true, |v| v != "0");
            set_enabled(on);
            on
        }
    }
}

/// Turns the kernels on or off for the whole process.
pub fn set_enabled(on: bool) {
    ENABLED.store(if on { 1 } else { 2 }, Ordering::Relaxed);
}

/// The tensor's CPU storage when it is f32 on `flex` and the kernels are on; made contiguous.
fn host<const D: usize>(t: &Tensor<D>) -> Option<FlexTensor> {
    if !enabled() || t.dtype() != DType::F32 {
        return None;
    }
    let p = t.clone().try_into_primitive::<Flex>().ok()?;
    Some(if p.is_contiguous() { p } else { p.to_contiguous() })
}

fn slice(t: &FlexTensor) -> &[f32] {
    // `host` made it contiguous and checked the dtype.
    t.as_slice::<f32>().expect("contiguous f32")
}

fn tensor<const D: usize>(data: Vec<f32>, shape: [usize; D]) -> Tensor<D> {
    Tensor::from_primitive::<Flex>(FlexTensor::from_data(TensorData::new(data, shape)))
}

/// `conv.forward(x)`; stride-1 ungrouped convolutions run as shifted GEMMs on the CPU.
/// x: `[b, cin, h, w]` → `[b, cout, ho, wo]`
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let fast = conv.stride == [1, 1] && conv.dilation == [1, 1] && conv.groups == 1;
    let pad = match conv.padding {
        PaddingConfig2d::Valid => Some([0; 4]),
        PaddingConfig2d::Explicit(t, l, b, r) => Some([t, l, b, r]),
        PaddingConfig2d::Same => None,
    };
    let weight = conv.weight.val();
    let parts = (fast, pad, host(&x), host(&weight));
    let (true, Some(pad), Some(xs), Some(ws)) = parts else {
        return conv.forward(x);
    };
    let bias = match &conv.bias {
        Some(b) => match host(&b.val()) {
            Some(b) => Some(b),
            None => return conv.forward(x),
        },
        None => None,
    };
    let [batch, cin, h, w] = x.dims();
    let [cout, _, kh, kw] = weight.dims();
    let c = conv::Conv {
        batch,
        cin,
        cout,
        h,
        w,
        kh,
        kw,
        pad,
    };
    let (ho, wo) = c.out_hw();
    let out = conv::conv2d(c, slice(&xs), slice(&ws), bias.as_ref().map(slice));
    tensor(out, [batch, cout, ho, wo])
}

/// `norm.forward(x)`, followed by SiLU when `silu`, in one pass on the CPU.
/// x: `[b, c, h, w]` → same shape
pub fn group_norm(norm: &GroupNorm, x: Tensor<4>, silu: bool) -> Tensor<4> {
    let fallback = |x: Tensor<4>| {
        let y = norm.forward(x);
        if silu { burn::tensor::activation::silu(y) } else { y }
    };
    let affine = |p: &Option<burn::module::Param<Tensor<1>>>| p.as_ref().map(|p| host(&p.val()));
    let (gamma, beta) = (affine(&norm.gamma), affine(&norm.beta));
    let (Some(xs), Some(gamma), Some(beta)) = (
        host(&x),
        gamma.map_or(Some(None), |g| g.map(Some)),
        beta.map_or(Some(None), |b| b.map(Some)),
    ) else {
        return fallback(x);
    };
    let [b, c, h, w] = x.dims();
    let out = norm::group_norm(
        slice(&xs),
        b,
        c,
        h * w,
        norm.num_groups,
        gamma.as_ref().map(slice),
        beta.as_ref().map(slice),
        norm.epsilon,
        silu,
    );
    tensor(out, [b, c, h, w])
}

/// Scaled-dot-product attention over interleaved heads.
/// q: `[b, n, h·d]`, k/v: `[b, m, h·d]` → `[b, n, h·d]`; `None` when the kernels don't apply.
pub fn attention(q: &Tensor<3>, k: &Tensor<3>, v: &Tensor<3>, heads: usize, causal: bool) -> Option<Tensor<3>> {
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
    let out = attention::attention(a, slice(&qs), slice(&ks), slice(&vs));
    Some(tensor(out, [batch, n, inner]))
}
