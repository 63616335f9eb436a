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
//! a SD 1.5 UNet step went from 1 665 to 804 launches (lavapipe profile, BENCHMARKS.md);
//! `IMAGEN_GPU_FUSED=0` turns just them off. The CPU never takes these routes (it has its own
//! kernels, [`crate::cpu`]).

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, LayerNorm, Linear, PaddingConfig2d};
use burn::tensor::activation::softmax;
use burn::tensor::{DType, Device, FloatDType, Tensor, TensorData};

use crate::fused::{Act, ConvAdd};

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

/// Not on burn's CPU backend (which has [`crate::cpu`]'s kernels instead).
pub(crate) fn on_gpu<const D: usize>(t: &Tensor<D>) -> bool {
    t.device() != Device::flex()
}

/// An ungrouped, undilated conv on the chosen route; `None` = burn's own op.
/// x: `[b, cin, h, w]`, padding `[top, left, bottom, right]` → `[b, cout, ho, wo]`
pub(crate) fn conv2d(conv: &Conv2d, x: Tensor<4>, pad: [usize; 4]) -> Option<Tensor<4>> {
    let pointwise = conv.weight.dims()[2..] == [1, 1] && pad == [0; 4] && conv.stride == [1, 1];
    match conv_route() {
        // Without autotune burn runs every conv on its direct kernel, the heaviest in the H100
        // profile; a 1×1 conv is a plain matmul anyway.
        ConvRoute::Burn if pointwise => Some(conv2d_im2col(conv, x, pad)),
        ConvRoute::Burn => None,
        ConvRoute::Im2col => Some(conv2d_im2col(conv, x, pad)),
        ConvRoute::ImplicitGemm => Some(match cube::conv2d_implicit_gemm(conv, &x, pad) {
            Some(y) => y,
            None => conv2d_im2col(conv, x, pad),
        }),
    }
}

/// Attention on the chosen route; `None` = burn's own op.
/// q: `[b, n, h·d]`, k/v: `[b, m, h·d]` → `[b, n, h·d]`
pub(crate) fn attention(q: &Tensor<3>, k: &Tensor<3>, v: &Tensor<3>, heads: usize, causal: bool) -> Option<Tensor<3>> {
    let two_matmuls = || attention_two_matmuls(q.clone(), k.clone(), v.clone(), heads, causal);
    match attention_route() {
        AttentionRoute::Burn => None,
        AttentionRoute::Matmul => Some(two_matmuls()),
        AttentionRoute::Flash => Some(cube::flash_attention(q, k, v, heads, causal).unwrap_or_else(two_matmuls)),
    }
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

fn im2col_budget() -> usize {
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

/// An ungrouped, undilated convolution as batched matmuls over the input's windows.
/// x: `[b, cin, h, w]`, padding `[top, left, bottom, right]` → `[b, cout, ho, wo]`
fn conv2d_im2col(conv: &Conv2d, x: Tensor<4>, pad: [usize; 4]) -> Tensor<4> {
    let [_, cin, kh, kw] = conv.weight.dims();
    let [sh, sw] = conv.stride;
    let [b, _, h, w] = x.dims();
    let [top, left, bottom, right] = pad;
    let (hp, wp) = (h + top + bottom, w + left + right);
    let (ho, wo) = ((hp - kh) / sh + 1, (wp - kw) / sw + 1);
    // Bytes of the column matrix per output row.
    let per_row = b * cin * kh * kw * wo * x.dtype().size();
    let band = (im2col_budget() / per_row).max(1);
    let padded = |x: Tensor<4>, top: usize, bottom: usize| match [top, left, bottom, right] {
        [0, 0, 0, 0] => x,
        _ => x.pad((left, right, top, bottom), 0.0),
    };
    if band >= ho {
        return im2col_matmul(conv, padded(x, top, bottom), ho, wo);
    }
    let bands: Vec<Tensor<4>> = (0..ho)
        .step_by(band)
        .map(|r0| {
            let rows = band.min(ho - r0);
            // The padded rows [p0, p1) this band reads, taken from the unpadded input and
            // padded per band (a whole padded copy of a large activation can itself exceed a
            // device's buffer limit).
            let (p0, p1) = (r0 * sh, (r0 + rows - 1) * sh + kh);
            let (u0, u1) = (p0.saturating_sub(top).min(h), p1.saturating_sub(top).min(h));
            let (band_top, band_bottom) = (top.saturating_sub(p0), p1.saturating_sub(top + h));
            let xs = padded(x.clone().slice([0..b, 0..cin, u0..u1, 0..w]), band_top, band_bottom);
            im2col_matmul(conv, xs, rows, wo)
        })
        .collect();
    // [b, cout, rows, wo] per band -> [b, cout, ho, wo]
    Tensor::cat(bands, 2)
}

/// One matmul over the windows of the already padded `x` (`[b, cin, hp, wp]`) giving `ho × wo`
/// outputs. → `[b, cout, ho, wo]`
fn im2col_matmul(conv: &Conv2d, x: Tensor<4>, ho: usize, wo: usize) -> Tensor<4> {
    let weight = conv.weight.val();
    let [cout, cin, kh, kw] = weight.dims();
    let [sh, sw] = conv.stride;
    let b = x.dims()[0];
    let cols = if kh * kw == 1 && [sh, sw] == [1, 1] {
        // [b, cin, ho, wo] -> [b, cin, ho·wo]
        x.reshape([b, cin, ho * wo])
    } else {
        // The windows as a strided view, no copy (two launches fewer per tap than slicing):
        // [b, cin, hp, wp] -> [b, cin, ho, wp, kh] -> [b, cin, ho, wo, kh, kw]
        let windows: Tensor<6> = x.unfold::<5, _>(2, kh, sh).unfold(3, kw, sw);
        // [b, cin, ho, wo, kh, kw] -> [b, cin, kh, kw, ho, wo] -> [b, cin·kh·kw, ho·wo]: one copy,
        // in the order of the weight's [cin, kh, kw] flattening.
        windows.permute([0, 1, 4, 5, 2, 3]).reshape([b, cin * kh * kw, ho * wo])
    };
    // [cout, cin, kh, kw] -> [1, cout, cin·kh·kw] · [b, cin·kh·kw, ho·wo] -> [b, cout, ho·wo]
    let y = weight.reshape([1, cout, cin * kh * kw]).matmul(cols);
    let y = match &conv.bias {
        // [cout] -> [1, cout, 1]
        Some(bias) => y + bias.val().reshape([1, cout, 1]),
        None => y,
    };
    // [b, cout, ho·wo] -> [b, cout, ho, wo]
    y.reshape([b, cout, ho, wo])
}

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

/// `softmax(q·kᵀ/√d)·v` per head, with two batched matmuls.
/// q: `[b, n, h·d]`, k/v: `[b, m, h·d]` → `[b, n, h·d]`
fn attention_two_matmuls(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, heads: usize, causal: bool) -> Tensor<3> {
    if fused_kernels()
        && let Some(out) = attention_fused([q.clone(), k.clone(), v.clone()], None, heads, causal)
    {
        return out;
    }
    let [b, n, inner] = q.dims();
    let m = k.dims()[1];
    let d = inner / heads;
    let scale = (1.0 / (d as f64).sqrt()) as f32;
    // [b, len, h·d] -> [b, len, h, d] -> [b, h, len, d]
    let split = |t: Tensor<3>, len: usize| t.reshape([b, len, heads, d]).swap_dims(1, 2);
    let (q, k, v) = (split(q, n), split(k, m), split(v, m));
    let q = q * scale;
    // [b, h, n, d] · [b, h, d, m] -> [b, h, n, m]
    let mut scores = q.matmul(k.swap_dims(2, 3));
    if causal {
        // -inf above the diagonal: position i sees keys 0..=i. [n, m] -> [1, 1, n, m]
        let mask: Vec<f32> = (0..n)
            .flat_map(|i| (0..m).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        let device = scores.device();
        scores = scores + Tensor::<2>::from_data(TensorData::new(mask, [n, m]), &device).reshape([1, 1, n, m]);
    }
    let probs = own_kernels()
        .then(|| kernels::softmax_last(scores.clone(), false))
        .flatten()
        .unwrap_or_else(|| softmax(scores, 3));
    // [b, h, n, m] · [b, h, m, d] -> [b, h, n, d] -> [b, n, h, d] -> [b, n, h·d]
    probs.matmul(v).swap_dims(1, 2).reshape([b, n, inner])
}

/// [`attention_two_matmuls`] on the fused kernels: q, k, v (plus their biases) split into
/// contiguous heads in one launch, q scaled, the causal mask inside the softmax kernel.
/// `None` where the kernels decline. q: `[b, n, h·d]`, k/v: `[b, m, h·d]` → `[b, n, h·d]`
fn attention_fused(
    qkv: [Tensor<3>; 3],
    biases: Option<[Tensor<1>; 3]>,
    heads: usize,
    causal: bool,
) -> Option<Tensor<3>> {
    let [b, n, inner] = qkv[0].dims();
    // Scale q before the product (as PyTorch's math path), so f16 scores stay small.
    let scale = (1.0 / ((inner / heads) as f64).sqrt()) as f32;
    let [qh, kh, vh] = fused::split_heads(qkv, biases, heads, scale)?;
    // Contiguous heads: kᵀ is a column-major view the matmul reads as it is.
    // [b, h, n, d] · [b, h, d, m] -> [b, h, n, m]
    let probs = kernels::softmax_last(qh.matmul(kh.swap_dims(2, 3)), causal)?;
    // [b, h, n, m] · [b, h, m, d] -> [b, n, h, d] -> [b, n, h·d], merged by the matmul's write
    fused::attention_output(probs.clone(), vh.clone())
        .or_else(|| Some(probs.matmul(vh).swap_dims(1, 2).reshape([b, n, inner])))
}

/// Attention with its q/k/v projections: the three matmuls without their biases, which the
/// head split adds. `None` (nothing run) off the matmul route or with the fused kernels off,
/// or when only some of the projections have a bias. x: `[b, n, dim]`, context: `[b, m, ctx]`
/// → `[b, n, h·d]` (before the output projection)
pub(crate) fn qkv_attention(
    [to_q, to_k, to_v]: [&Linear; 3],
    x: &Tensor<3>,
    context: &Tensor<3>,
    heads: usize,
    causal: bool,
) -> Option<Tensor<3>> {
    if attention_route() != AttentionRoute::Matmul || !fused_kernels() {
        return None;
    }
    let biases = match [&to_q.bias, &to_k.bias, &to_v.bias] {
        [Some(q), Some(k), Some(v)] => Some([q.val(), k.val(), v.val()]),
        [None, None, None] => None,
        _ => return None,
    };
    let [b, n, _] = x.dims();
    let m = context.dims()[1];
    let project = |lin: &Linear, t: &Tensor<3>, len: usize| {
        let y = linear_rows(lin, t);
        // [b·len, h·d] -> [b, len, h·d]
        let inner = y.dims()[1];
        y.reshape([b, len, inner])
    };
    let qkv = [
        project(to_q, x, n),
        project(to_k, context, m),
        project(to_v, context, m),
    ];
    Some(match attention_fused(qkv.clone(), biases.clone(), heads, causal) {
        Some(out) => out,
        None => {
            let [q, k, v] = qkv;
            let [q, k, v] = match biases {
                Some([qb, kb, vb]) => [q + qb.unsqueeze(), k + kb.unsqueeze(), v + vb.unsqueeze()],
                None => [q, k, v],
            };
            attention_two_matmuls(q, k, v, heads, causal)
        }
    })
}

/// `x · W` with the leading dims folded into rows, no bias. x: `[.., in]` → `[rows, out]`
fn linear_rows<const D: usize>(lin: &Linear, x: &Tensor<D>) -> Tensor<2> {
    let dims = x.dims();
    let rows = dims[..D - 1].iter().product();
    x.clone().reshape([rows, dims[D - 1]]).matmul(lin.weight.val())
}

/// `x · W` and the layer's bias apart, for a kernel that adds the bias itself; `None` (nothing
/// run) as [`linear_act`]. x: `[.., in]` → (`[rows, out]`, `[out]`)
pub(crate) fn linear_unbiased<const D: usize>(lin: &Linear, x: &Tensor<D>) -> Option<(Tensor<2>, Tensor<1>)> {
    let bias = lin.bias.as_ref().filter(|_| fused_kernels())?.val();
    Some((linear_rows(lin, x), bias))
}

/// `act(lin(x))` as one matmul and one fused kernel; `None` (nothing run) where the fused
/// kernels are off or the layer has no bias: the caller takes the unfused route.
/// x: `[.., in]` → `[.., out]` (`out / 2` for GEGLU)
pub(crate) fn linear_act<const D: usize>(lin: &Linear, x: &Tensor<D>, act: Act) -> Option<Tensor<D>> {
    let bias = lin.bias.as_ref().filter(|_| fused_kernels())?.val();
    let y = linear_rows(lin, x);
    let y = fused::bias_act(y.clone(), bias.clone(), act).unwrap_or_else(|| {
        let y = y + bias.unsqueeze();
        let [rows, k] = y.dims();
        match act {
            Act::Geglu => {
                y.clone().slice([0..rows, 0..k / 2]) * burn::tensor::activation::gelu(y.slice([0..rows, k / 2..k]))
            }
            Act::Gelu => burn::tensor::activation::gelu(y),
            Act::QuickGelu => y.clone() * burn::tensor::activation::sigmoid(y * 1.702),
        }
    });
    let mut dims = x.dims();
    dims[D - 1] = y.dims()[1];
    Some(y.reshape(dims))
}

/// `lin(x) + residual` as one matmul and one fused kernel; `None` as [`linear_act`].
/// x: `[.., in]`, residual: `[.., out]` → `[.., out]`
pub(crate) fn linear_add<const D: usize>(lin: &Linear, x: &Tensor<D>, residual: &Tensor<D>) -> Option<Tensor<D>> {
    let bias = lin.bias.as_ref().filter(|_| fused_kernels())?.val();
    let y = linear_rows(lin, x);
    let [rows, out] = y.dims();
    let r = residual.clone().reshape([rows, out]);
    let y = fused::epilogue(y.clone(), bias.clone(), None, Some(r.clone()), out, 1)
        .unwrap_or_else(|| y + bias.unsqueeze() + r);
    Some(y.reshape(residual.dims()))
}

/// A 1×1 conv (`proj_in`) whose output is wanted as a sequence: one matmul of the pixels as
/// rows (a transposed view, read in place) by the transposed weight, so the `[b, h·w, c]`
/// result needs no transposing copy. `None` as [`conv2d_fused`].
/// x: `[b, cin, h, w]` → `[b, h·w, cout]`
pub(crate) fn conv1x1_to_seq(conv: &Conv2d, x: &Tensor<4>) -> Option<Tensor<3>> {
    let (bias, w) = pointwise(conv)?;
    let [b, cin, h, wd] = x.dims();
    let cout = w.dims()[0];
    // [b, cin, h, w] -> [b, cin, h·w] -> [b, h·w, cin] (view) · [1, cin, cout] (view)
    let seq = x.clone().reshape([b, cin, h * wd]).swap_dims(1, 2);
    let y = seq.matmul(w.swap_dims(0, 1).unsqueeze::<3>());
    let fused = fused::epilogue(y.clone(), bias.clone(), None, None, cout, 1);
    Some(fused.unwrap_or_else(|| y + bias.reshape([1, 1, cout])))
}

/// A 1×1 conv (`proj_out`) of a sequence back to an image, plus `residual`: the weight times
/// the transposed sequence (a view), bias and residual in one epilogue. `None` as
/// [`conv2d_fused`]. seq: `[b, h·w, cin]`, residual: `[b, cout, h, w]` → `[b, cout, h, w]`
pub(crate) fn seq_conv1x1_add(conv: &Conv2d, seq: &Tensor<3>, residual: &Tensor<4>) -> Option<Tensor<4>> {
    let (bias, w) = pointwise(conv)?;
    let [b, hw, _] = seq.dims();
    let dims = residual.dims();
    let cout = w.dims()[0];
    // [1, cout, cin] · [b, cin, h·w] (view) -> [b, cout, h·w]
    let y = w.unsqueeze::<3>().matmul(seq.clone().swap_dims(1, 2));
    let r = residual.clone().reshape([b, cout, hw]);
    let fused = fused::epilogue(y.clone(), bias.clone(), None, Some(r.clone()), cout, hw);
    Some(
        fused
            .unwrap_or_else(|| y + bias.reshape([1, cout, 1]) + r)
            .reshape(dims),
    )
}

/// A plain 1×1 conv's bias and `[cout, cin]` weight, when the fused kernels run.
fn pointwise(conv: &Conv2d) -> Option<(Tensor<1>, Tensor<2>)> {
    let [cout, cin, kh, kw] = conv.weight.dims();
    let plain = [kh, kw] == [1, 1] && conv.stride == [1, 1] && conv.dilation == [1, 1] && conv.groups == 1;
    if !plain || explicit_pad(conv)? != [0; 4] || conv_route() == ConvRoute::ImplicitGemm || !fused_kernels() {
        return None;
    }
    let bias = conv.bias.as_ref()?.val();
    Some((bias, conv.weight.val().reshape([cout, cin])))
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

/// A conv's padding as `[top, left, bottom, right]`, when explicit.
fn explicit_pad(conv: &Conv2d) -> Option<[usize; 4]> {
    match conv.padding {
        PaddingConfig2d::Valid => Some([0; 4]),
        PaddingConfig2d::Explicit(t, l, b, r) => Some([t, l, b, r]),
        PaddingConfig2d::Same => None,
    }
}

/// `conv(silu(norm(upsample_nearest(x, up)))) + add` with the column matrix built by the
/// fused im2col kernel (from `x` as it is: no padded, upsampled or normalised copy; `norm`
/// optional) and the bias and `add` in one epilogue; `None` (nothing run) off the im2col
/// route, with the fused kernels off, or for convs it does not cover (grouped, dilated, no
/// bias). x: `[b, cin, h, w]` → `[b, cout, ho, wo]`
pub(crate) fn conv2d_fused(
    conv: &Conv2d,
    x: &Tensor<4>,
    up: usize,
    norm: Option<&GroupNorm>,
    add: &ConvAdd,
) -> Option<Tensor<4>> {
    let plain = conv.dilation == [1, 1] && conv.groups == 1;
    if !plain || conv_route() != ConvRoute::Im2col || !fused_kernels() {
        return None;
    }
    let [top, left, bottom, right] = explicit_pad(conv)?;
    let bias = conv.bias.as_ref()?.val();
    let norm = match norm {
        Some(n) => Some(fused::group_stats(x, n)?),
        None => None,
    };
    let weight = conv.weight.val();
    let [cout, cin, kh, kw] = weight.dims();
    let [sh, sw] = conv.stride;
    let [b, _, h, w] = x.dims();
    let (hp, wp) = (up * h + top + bottom, up * w + left + right);
    let (ho, wo) = ((hp - kh) / sh + 1, (wp - kw) / sw + 1);
    // [cout, cin, kh, kw] -> [1, cout, cin·kh·kw]
    let weight = weight.reshape([1, cout, cin * kh * kw]);
    let pointwise = kh * kw == 1 && up == 1 && conv.stride == [1, 1] && [top, left, bottom, right] == [0; 4];
    let y = if pointwise && norm.is_none() {
        // [b, cin, h, w] -> [b, cin, h·w]: already the column matrix
        weight.matmul(x.clone().reshape([b, cin, h * w]))
    } else {
        let per_row = b * cin * kh * kw * wo * x.dtype().size();
        let band = (im2col_budget() / per_row).max(1);
        let bands = (0..ho).step_by(band).map(|r0| {
            let windows = fused::Windows {
                kernel: [kh, kw],
                stride: [sh, sw],
                pad: [top, left],
                up,
                rows: r0..(r0 + band).min(ho),
                wo,
            };
            // [b, cin·kh·kw, rows·wo] -> [b, cout, rows·wo] -> [b, cout, rows, wo]
            fused::im2col(x.clone(), &windows, norm.as_ref()).map(|cols| {
                let rows = windows.rows.len();
                weight.clone().matmul(cols).reshape([b, cout, rows, wo])
            })
        });
        let mut bands: Vec<Tensor<4>> = bands.collect::<Option<_>>()?;
        // [b, cout, rows, wo] per band -> [b, cout, ho, wo]
        match bands.len() {
            1 => bands.remove(0),
            _ => Tensor::cat(bands, 2),
        }
        .reshape([b, cout, ho * wo])
    };
    // [b, cout, ho·wo] -> [b, cout, ho, wo]
    let y = y.reshape([b, cout, ho, wo]);
    let (per_bc, residual) = match add {
        ConvAdd::Nothing => (None, None),
        ConvAdd::PerChannel(t) => (Some((t.clone(), None)), None),
        ConvAdd::Projected(t, bias) => (Some((t.clone(), Some(bias.clone()))), None),
        ConvAdd::Residual(r) => (None, Some(r.clone())),
    };
    let fused = fused::epilogue(y.clone(), bias.clone(), per_bc, residual, cout, ho * wo);
    Some(fused.unwrap_or_else(|| add.clone().apply(y + bias.reshape([1, cout, 1, 1]))))
}

/// burn-cubecl's kernels called with a chosen strategy, on the raw cube tensors (not available
/// with burn's fusion on, whose tensors are fusion handles).
#[cfg(all(feature = "wgpu", not(feature = "gpu-autotune")))]
mod cube {
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

    /// q: `[b, n, h·d]`, k/v: `[b, m, h·d]` → `[b, n, h·d]`; `None` where burn-cubecl declines.
    pub(super) fn flash_attention(
        q: &Tensor<3>,
        k: &Tensor<3>,
        v: &Tensor<3>,
        heads: usize,
        causal: bool,
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
        // read once: this runs for every attention call
        static PLANES: std::sync::LazyLock<u8> = std::sync::LazyLock::new(|| {
            std::env::var("IMAGEN_GPU_FLASH_PLANES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(4)
        });
        let planes = *PLANES;
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
}

#[cfg(all(feature = "wgpu", not(feature = "gpu-autotune")))]
mod fused;
#[cfg(all(feature = "wgpu", not(feature = "gpu-autotune")))]
mod kernels;

/// Without the raw cube tensors (fusion on, or no GPU backend) the kernels always decline.
#[cfg(not(all(feature = "wgpu", not(feature = "gpu-autotune"))))]
mod kernels {
    use burn::tensor::Tensor;

    pub(super) fn group_norm(_: Tensor<4>, _: Tensor<1>, _: Tensor<1>, _: usize, _: f64, _: bool) -> Option<Tensor<4>> {
        None
    }

    pub(super) fn layer_norm<const D: usize>(_: Tensor<D>, _: Tensor<1>, _: Tensor<1>, _: f64) -> Option<Tensor<D>> {
        None
    }

    pub(super) fn softmax_last<const D: usize>(_: Tensor<D>, _: bool) -> Option<Tensor<D>> {
        None
    }
}

/// Without the raw cube tensors (fusion on, or no GPU backend) the fused kernels always decline.
#[cfg(not(all(feature = "wgpu", not(feature = "gpu-autotune"))))]
mod fused {
    use burn::tensor::Tensor;

    use crate::fused::Act;

    #[allow(dead_code)]
    pub(super) struct Windows {
        pub kernel: [usize; 2],
        pub stride: [usize; 2],
        pub pad: [usize; 2],
        pub up: usize,
        pub rows: std::ops::Range<usize>,
        pub wo: usize,
    }

    pub(super) fn epilogue<const D: usize>(
        _: Tensor<D>,
        _: Tensor<1>,
        _: Option<(Tensor<2>, Option<Tensor<1>>)>,
        _: Option<Tensor<D>>,
        _: usize,
        _: usize,
    ) -> Option<Tensor<D>> {
        None
    }

    pub(super) fn bias_act(_: Tensor<2>, _: Tensor<1>, _: Act) -> Option<Tensor<2>> {
        None
    }

    pub(super) fn split_heads(
        _: [Tensor<3>; 3],
        _: Option<[Tensor<1>; 3]>,
        _: usize,
        _: f32,
    ) -> Option<[Tensor<4>; 3]> {
        None
    }

    pub(super) struct Norm;

    pub(super) fn group_stats(_: &Tensor<4>, _: &burn::nn::GroupNorm) -> Option<Norm> {
        None
    }

    pub(super) fn im2col(_: Tensor<4>, _: &Windows, _: Option<&Norm>) -> Option<Tensor<3>> {
        None
    }

    pub(super) fn attention_output(_: Tensor<4>, _: Tensor<4>) -> Option<Tensor<3>> {
        None
    }
}

/// Without the raw cube tensors (fusion on, or no GPU backend) these routes always decline.
#[cfg(not(all(feature = "wgpu", not(feature = "gpu-autotune"))))]
mod cube {
    use burn::nn::conv::Conv2d;
    use burn::tensor::Tensor;

    pub(super) fn conv2d_implicit_gemm(_: &Conv2d, _: &Tensor<4>, _: [usize; 4]) -> Option<Tensor<4>> {
        None
    }

    pub(super) fn flash_attention(_: &Tensor<3>, _: &Tensor<3>, _: &Tensor<3>, _: usize, _: bool) -> Option<Tensor<3>> {
        None
    }
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
