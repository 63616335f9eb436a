//! Alternative routes for ops on GPU backends, chosen at run time so one GPU session can measure
//! them against burn's own ops side by side (BENCHMARKS.md: on an H100 burn's conv and attention
//! kernels dominate a UNet step that is 27× slower than PyTorch's).
//!
//! - `IMAGEN_GPU_CONV=im2col`: stride-1 convolutions as one batched matmul over the `kh·kw`
//!   shifted views of the padded input (burn's matmul instead of its conv kernels).
//! - `IMAGEN_GPU_ATTENTION=matmul`: attention as `softmax(q·kᵀ/√d)·v` with two batched matmuls
//!   (the score matrix exists in full: fine on a GPU for SD's sizes, and it is what PyTorch's
//!   math path does).
//!
//! Default: burn's ops for both, until a GPU measurement says otherwise. The CPU never takes
//! these routes (it has its own kernels, [`crate::cpu`]).

use std::sync::atomic::{AtomicU8, Ordering};

use burn::nn::conv::Conv2d;
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor, TensorData};

/// 0 = not read yet, 1 = burn's op, 2 = the alternative.
static CONV: AtomicU8 = AtomicU8::new(0);
static ATTENTION: AtomicU8 = AtomicU8::new(0);

fn route(cell: &AtomicU8, var: &str, alternative: &str) -> bool {
    match cell.load(Ordering::Relaxed) {
        1 => false,
        2 => true,
        _ => {
            let on = std::env::var(var).is_ok_and(|v| v == alternative);
            cell.store(if on { 2 } else { 1 }, Ordering::Relaxed);
            on
        }
    }
}

/// Convolutions as im2col + matmul on GPU backends (for the whole process).
pub fn set_conv_im2col(on: bool) {
    CONV.store(if on { 2 } else { 1 }, Ordering::Relaxed);
}

/// Attention as two matmuls on GPU backends (for the whole process).
pub fn set_attention_matmul(on: bool) {
    ATTENTION.store(if on { 2 } else { 1 }, Ordering::Relaxed);
}

/// Not on burn's CPU backend (which has [`crate::cpu`]'s kernels instead).
pub(crate) fn on_gpu<const D: usize>(t: &Tensor<D>) -> bool {
    t.device() != Device::flex()
}

pub(crate) fn conv_im2col() -> bool {
    route(&CONV, "IMAGEN_GPU_CONV", "im2col")
}

pub(crate) fn attention_matmul() -> bool {
    route(&ATTENTION, "IMAGEN_GPU_ATTENTION", "matmul")
}

/// A stride-1, ungrouped, undilated convolution as one batched matmul.
/// x: `[b, cin, h, w]`, padding `[top, left, bottom, right]` → `[b, cout, ho, wo]`
pub(crate) fn conv2d_im2col(conv: &Conv2d, x: Tensor<4>, pad: [usize; 4]) -> Tensor<4> {
    let weight = conv.weight.val();
    let [cout, cin, kh, kw] = weight.dims();
    let [b, _, h, w] = x.dims();
    let [top, left, bottom, right] = pad;
    let x = if pad == [0; 4] {
        x
    } else {
        x.pad((left, right, top, bottom), 0.0)
    };
    let (ho, wo) = (h + top + bottom + 1 - kh, w + left + right + 1 - kw);
    let cols = if kh * kw == 1 {
        // [b, cin, ho, wo] -> [b, cin, ho·wo]
        x.reshape([b, cin, ho * wo])
    } else {
        // kh·kw views [b, cin, ho, wo], stacked -> [b, cin, kh·kw, ho, wo]: the order of
        // the weight's [cin, kh, kw] flattening.
        let views: Vec<Tensor<4>> = (0..kh)
            .flat_map(|i| (0..kw).map(move |j| (i, j)))
            .map(|(i, j)| x.clone().slice([0..b, 0..cin, i..i + ho, j..j + wo]))
            .collect();
        // [b, cin, kh·kw, ho, wo] -> [b, cin·kh·kw, ho·wo]
        Tensor::stack::<5>(views, 2).reshape([b, cin * kh * kw, ho * wo])
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

/// `softmax(q·kᵀ/√d)·v` per head, with two batched matmuls.
/// q: `[b, n, h·d]`, k/v: `[b, m, h·d]` → `[b, n, h·d]`
pub(crate) fn attention_two_matmuls(q: Tensor<3>, k: Tensor<3>, v: Tensor<3>, heads: usize, causal: bool) -> Tensor<3> {
    let [b, n, inner] = q.dims();
    let m = k.dims()[1];
    let d = inner / heads;
    // [b, len, h·d] -> [b, len, h, d] -> [b, h, len, d]
    let split = |t: Tensor<3>, len: usize| t.reshape([b, len, heads, d]).swap_dims(1, 2);
    let (q, k, v) = (split(q, n), split(k, m), split(v, m));
    // Scale q before the product (as PyTorch's math path), so f16 scores stay small.
    let q = q * (1.0 / (d as f64).sqrt()) as f32;
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
    // [b, h, n, m] · [b, h, m, d] -> [b, h, n, d] -> [b, n, h, d] -> [b, n, h·d]
    softmax(scores, 3).matmul(v).swap_dims(1, 2).reshape([b, n, inner])
}
