//! Convolutions and what blocks fuse into them. CPU: imagen's kernels (`cpu/`). GPU backends:
//! the fused im2col route (windows read from the unpadded input, optionally 2× upsampled and
//! group-normalised on the way, bias and what the block adds in one epilogue), else the route
//! [`ConvRoute`] names, with burn ops as im2col's reference. burn's `conv2d` last.

use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, PaddingConfig2d};
use burn::tensor::Tensor;

use super::kernels::{GpuKernels, Windows};
use super::{ConvAdd, ConvRoute, Gpu, Routes, group_norm, on_gpu, upsample_nearest};
use crate::cpu;

/// `conv(x)`. x: `[b, cin, h, w]` → `[b, cout, ho, wo]`
pub fn conv2d(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    let r = Routes::current();
    if r.cpu_kernels
        && let Some(y) = cpu::conv2d(conv, &x, r.winograd)
    {
        return y;
    }
    if on_gpu(&x)
        && let Some(pad) = explicit_pad(conv).filter(|_| conv.dilation == [1, 1] && conv.groups == 1)
    {
        if let Some(y) = conv2d_fused(&r, conv, &x, 1, None, &ConvAdd::Nothing) {
            return y;
        }
        let pointwise = conv.weight.dims()[2..] == [1, 1] && pad == [0; 4] && conv.stride == [1, 1];
        match r.gpu_conv {
            // Without autotune burn runs every conv on its direct kernel, the heaviest in the
            // H100 profile; a 1×1 conv is a plain matmul anyway.
            ConvRoute::Burn if !pointwise => {}
            ConvRoute::Burn | ConvRoute::Im2col => return conv2d_im2col(&r, conv, x, pad),
            ConvRoute::ImplicitGemm => {
                return Gpu::conv2d_implicit_gemm(conv, &x, pad).unwrap_or_else(|| conv2d_im2col(&r, conv, x, pad));
            }
        }
    }
    super::conv_like(conv, &x).forward(x)
}

/// `conv(x) + add`. x: `[b, cin, h, w]` → `[b, cout, ho, wo]`
pub fn conv2d_add(conv: &Conv2d, x: Tensor<4>, add: ConvAdd) -> Tensor<4> {
    if on_gpu(&x)
        && let Some(y) = conv2d_fused(&Routes::current(), conv, &x, 1, None, &add)
    {
        return y;
    }
    add.apply(conv2d(conv, x))
}

/// `conv(silu(norm(x))) + add`, the resnets' and output heads' norm → conv; on GPU backends
/// and on the CPU's bf16 route the normalisation happens as the convolution reads its input.
/// x: `[b, cin, h, w]` → `[b, cout, ho, wo]`
pub fn norm_silu_conv2d_add(norm: &GroupNorm, conv: &Conv2d, x: Tensor<4>, add: ConvAdd) -> Tensor<4> {
    if on_gpu(&x)
        && let Some(y) = conv2d_fused(&Routes::current(), conv, &x, 1, Some(norm), &add)
    {
        return y;
    }
    if Routes::current().cpu_kernels
        && let Some(y) = cpu::norm_silu_conv2d(norm, conv, &x)
    {
        return add.apply(y);
    }
    conv2d_add(conv, group_norm(norm, x, true), add)
}

/// `conv(upsample_nearest(x))` to `size` (`2h × 2w` when `None`); on GPU backends and on the
/// CPU's bf16 route the 2× case reads straight from `x`, never building the upsampled tensor.
/// x: `[b, cin, h, w]` → `[b, cout, size]`
pub fn upsample_conv(conv: &Conv2d, x: Tensor<4>, size: Option<[usize; 2]>) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    let [oh, ow] = size.unwrap_or([2 * h, 2 * w]);
    if [oh, ow] == [2 * h, 2 * w]
        && on_gpu(&x)
        && let Some(y) = conv2d_fused(&Routes::current(), conv, &x, 2, None, &ConvAdd::Nothing)
    {
        return y;
    }
    if [oh, ow] == [2 * h, 2 * w]
        && Routes::current().cpu_kernels
        && let Some(y) = cpu::upsample2_conv2d(conv, &x)
    {
        return y;
    }
    conv2d(conv, upsample_nearest(x, oh, ow))
}

/// A resnet's 1×1 shortcut conv of `x`, to be added to its second convolution's output: on GPU
/// backends the product alone (one matmul), its bias left to that convolution's epilogue.
/// x: `[b, cin, h, w]`
pub fn shortcut(conv: &Conv2d, x: Tensor<4>) -> ConvAdd {
    let r = Routes::current();
    if on_gpu(&x)
        && is_pointwise(conv)
        && r.gpu_conv == ConvRoute::Im2col
        && r.fused()
        && let Some(bias) = &conv.bias
    {
        let [cout, cin, _, _] = conv.weight.dims();
        let [b, _, h, w] = x.dims();
        // [1, cout, cin] · [b, cin, h·w] -> [b, cout, h·w] -> [b, cout, h, w]
        let y = conv
            .weight
            .val()
            .reshape([1, cout, cin])
            .matmul(x.reshape([b, cin, h * w]));
        return ConvAdd::ProjectedResidual(y.reshape([b, cout, h, w]), bias.val());
    }
    ConvAdd::Residual(conv2d(conv, x))
}

/// A conv's padding as `[top, left, bottom, right]`, when explicit.
fn explicit_pad(conv: &Conv2d) -> Option<[usize; 4]> {
    match conv.padding {
        PaddingConfig2d::Valid => Some([0; 4]),
        PaddingConfig2d::Explicit(t, l, b, r) => Some([t, l, b, r]),
        PaddingConfig2d::Same => None,
    }
}

/// A plain 1×1 convolution: unpadded, stride 1, ungrouped, undilated (a matmul).
pub(super) fn is_pointwise(conv: &Conv2d) -> bool {
    let [_, _, kh, kw] = conv.weight.dims();
    [kh, kw] == [1, 1]
        && conv.stride == [1, 1]
        && conv.dilation == [1, 1]
        && conv.groups == 1
        && explicit_pad(conv) == Some([0; 4])
}

/// `conv(silu(norm(upsample_nearest(x, up)))) + add` with the column matrix built by the fused
/// im2col kernel (from `x` as it is: no padded, upsampled or normalised copy; `norm` optional)
/// and the bias and `add` in one epilogue; `None` (nothing run) off the im2col route, with the
/// fused kernels off, or for convs it does not cover (grouped, dilated, no bias).
/// x: `[b, cin, h, w]` → `[b, cout, ho, wo]`
fn conv2d_fused(
    r: &Routes,
    conv: &Conv2d,
    x: &Tensor<4>,
    up: usize,
    norm: Option<&GroupNorm>,
    add: &ConvAdd,
) -> Option<Tensor<4>> {
    let plain = conv.dilation == [1, 1] && conv.groups == 1;
    if !plain || r.gpu_conv != ConvRoute::Im2col || !r.fused() {
        return None;
    }
    let [top, left, bottom, right] = explicit_pad(conv)?;
    let bias = conv.bias.as_ref()?.val();
    let norm = match norm {
        Some(n) => Some(Gpu::group_stats(x, n)?),
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
        let band = (r.im2col_bytes / per_row).max(1);
        let bands: Vec<_> = (0..ho).step_by(band).map(|r0| r0..(r0 + band).min(ho)).collect();
        let windows = |rows| Windows {
            kernel: [kh, kw],
            stride: [sh, sw],
            pad: [top, left],
            up,
            rows,
            wo,
        };
        // [b, cin·kh·kw, rows·wo] for output rows `rows`
        let cols = |rows| Gpu::im2col(x.clone(), &windows(rows), norm.as_ref());
        let columns: Vec<_> = bands.iter().map(|r| r.start * wo..r.end * wo).collect();
        if let [rows] = bands.as_slice() {
            // [1, cout, cin·kh·kw] · [b, cin·kh·kw, ho·wo] -> [b, cout, ho·wo]
            weight.matmul(cols(rows.clone())?)
        } else if let Some(out) = Gpu::band_output(x, [b, cout, ho * wo], &columns) {
            // Each band's matmul writes its columns of the output in place: no concatenation.
            for (rows, columns) in bands.into_iter().zip(columns) {
                Gpu::matmul_into(weight.clone(), cols(rows)?, &out, columns)?;
            }
            out
        } else {
            // [b, cout, rows·wo] per band -> [b, cout, ho·wo]
            let parts = bands
                .into_iter()
                .map(|rows| cols(rows).map(|c| weight.clone().matmul(c)));
            Tensor::cat(parts.collect::<Option<Vec<_>>>()?, 2)
        }
    };
    // [b, cout, ho·wo] -> [b, cout, ho, wo]
    let y = y.reshape([b, cout, ho, wo]);
    let (per_bc, residual) = add.terms();
    let fused = Gpu::epilogue(y.clone(), bias.clone(), per_bc, residual, cout, ho * wo);
    Some(fused.unwrap_or_else(|| add.clone().apply(y + bias.reshape([1, cout, 1, 1]))))
}

/// An ungrouped, undilated convolution as batched matmuls over the input's windows (burn ops:
/// the fused route's reference), a band of output rows at a time past the im2col budget.
/// x: `[b, cin, h, w]`, padding `[top, left, bottom, right]` → `[b, cout, ho, wo]`
fn conv2d_im2col(r: &Routes, conv: &Conv2d, x: Tensor<4>, pad: [usize; 4]) -> Tensor<4> {
    let [_, cin, kh, kw] = conv.weight.dims();
    let [sh, sw] = conv.stride;
    let [b, _, h, w] = x.dims();
    let [top, left, bottom, right] = pad;
    let (hp, wp) = (h + top + bottom, w + left + right);
    let (ho, wo) = ((hp - kh) / sh + 1, (wp - kw) / sw + 1);
    // Bytes of the column matrix per output row.
    let per_row = b * cin * kh * kw * wo * x.dtype().size();
    let band = (r.im2col_bytes / per_row).max(1);
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
