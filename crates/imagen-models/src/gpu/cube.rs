//! burn-cubecl's kernels called with a chosen strategy, on the raw cube tensors (not available
//! with burn's fusion on, whose tensors are fusion handles).

use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;
use burn::tensor::ops::{AttentionModuleOptions, ConvOptions};
use burn_cubecl::Cube;
use burn_cubecl::kernel::attention::{AttentionStrategy, attention};
use burn_cubecl::kernel::conv::{ConvStrategy, conv_forward};
use burn_cubecl::tensor::CubeTensor;
use cubek::attention::forward::routines::blackbox_accelerated::BlackboxAcceleratedStrategy;

/// Says once per process why a route declined (so a GPU run shows it in its log).
fn declined(what: &str, why: String) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| eprintln!("imagen: {what} declined, falling back: {why}"));
}

fn raw<const D: usize>(t: &Tensor<D>) -> Option<CubeTensor> {
    t.clone().try_into_primitive::<Cube>().ok()
}

/// `None` where burn-cubecl declines (no cooperative matrices, or an unsupported shape).
pub(super) fn conv2d_implicit_gemm(conv: &Conv2d, x: &Tensor<4>, pad: [usize; 4]) -> Option<Tensor<4>> {
    let [top, left, bottom, right] = pad;
    // burn-cubecl takes symmetric padding only (the VAE encoder's (0, 1, 0, 1) downsampler
    // goes to im2col).
    if top != bottom || left != right {
        return None;
    }
    let bias = match &conv.bias {
        Some(b) => Some(raw(&b.val())?),
        None => None,
    };
    // conv.stride: this route takes the stride-2 downsamplers too.
    let options = ConvOptions::new(conv.stride, [top, left], [1, 1], 1);
    let weight = raw(&conv.weight.val())?;
    match conv_forward::<2>(raw(x)?, weight, bias, options, ConvStrategy::ImplicitGemm) {
        Ok(y) => Some(Tensor::from_primitive::<Cube>(y)),
        Err(e) => {
            declined("implicit-GEMM conv", format!("{e:?}"));
            None
        }
    }
}

/// q: `[b, n, h·d]`, k/v: `[b, m, h·d]` → `[b, n, h·d]` on `planes` planes; `None` where
/// burn-cubecl declines.
pub(super) fn flash_attention(
    q: &Tensor<3>,
    k: &Tensor<3>,
    v: &Tensor<3>,
    heads: usize,
    causal: bool,
    planes: u8,
) -> Option<Tensor<3>> {
    let [b, n, inner] = q.dims();
    let m = k.dims()[1];
    let d = inner / heads;
    // [b, len, h·d] -> [b, len, h, d] -> [b, h, len, d]
    let split = |t: &Tensor<3>, len: usize| raw(&t.clone().reshape([b, len, heads, d]).swap_dims(1, 2));
    let options = AttentionModuleOptions {
        is_causal: causal,
        ..Default::default()
    };
    let strategy = AttentionStrategy::FlashBlackboxAccelerated(BlackboxAcceleratedStrategy {
        num_planes: planes,
        seq_q: 1,
        seq_kv: 1,
    });
    let y = match attention(split(q, n)?, split(k, m)?, split(v, m)?, None, None, options, strategy) {
        Ok(y) => y,
        Err(e) => {
            declined("flash attention", format!("{e:?}"));
            return None;
        }
    };
    // [b, h, n, d] -> [b, n, h, d] -> [b, n, h·d]
    Some(
        Tensor::<4>::from_primitive::<Cube>(y)
            .swap_dims(1, 2)
            .reshape([b, n, inner]),
    )
}
