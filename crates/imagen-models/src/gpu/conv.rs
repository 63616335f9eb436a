//! Convolutions on GPU backends: the routes of [`super::ConvRoute`], and the fused im2col route
//! (windows read from the unpadded input, optionally upsampled and group-normalised on the way,
//! bias and what the block adds in one epilogue).

use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, LayerNorm, PaddingConfig2d};
use burn::tensor::Tensor;

use super::{ConvRoute, conv_route, cube, fused, fused_kernels, im2col_budget, norm};
use crate::attention::Projection;
use crate::fused::ConvAdd;

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

/// `proj_in` (a 1×1 conv or a linear layer) whose output is wanted as a sequence: one matmul
/// of the pixels as rows (a transposed view, read in place) by the `[cin, cout]` weight, so the
/// `[b, h·w, c]` result needs no transposing copy, and the bias in an epilogue. `None` (nothing
/// run) as [`conv2d_fused`]. x: `[b, cin, h, w]` → `[b, h·w, cout]`
pub(crate) fn proj_to_seq(p: &Projection, x: &Tensor<4>) -> Option<Tensor<3>> {
    let (y, bias) = seq_product(p, x)?;
    let cout = bias.dims()[0];
    let fused = fused::epilogue(y.clone(), bias.clone(), None, None, cout, 1);
    Some(fused.unwrap_or_else(|| y + bias.reshape([1, 1, cout])))
}

/// [`proj_to_seq`] and the layer norm of its output by `ln` (the first transformer block's
/// pre-norm), the bias and the norm in one launch. `None` (nothing run) unless
/// [`norm::fuses_layer_norm`] and the projection runs fused. x: `[b, cin, h, w]` → 2 × `[b, h·w, cout]`
pub(crate) fn proj_to_seq_norm(
    p: &Projection,
    x: &Tensor<4>,
    ln: &LayerNorm,
    eps: f64,
) -> Option<(Tensor<3>, Tensor<3>)> {
    if !norm::fuses_layer_norm(ln) {
        return None;
    }
    let (y, bias) = seq_product(p, x)?;
    let [b, hw, cout] = y.dims();
    // [b, h·w, cout] -> [b·h·w, cout]
    let (sum, normed) = norm::add_layer_norm(y.reshape([b * hw, cout]), bias, None, ln, eps);
    // [b·h·w, cout] -> [b, h·w, cout]
    Some((sum.reshape([b, hw, cout]), normed.reshape([b, hw, cout])))
}

/// The projection's product without its bias, as a sequence, and the bias: the matmul both
/// `proj_in` routes share. `None` (nothing run) as [`conv2d_fused`].
/// x: `[b, cin, h, w]` → (`[b, h·w, cout]`, `[cout]`)
fn seq_product(p: &Projection, x: &Tensor<4>) -> Option<(Tensor<3>, Tensor<1>)> {
    let (bias, w) = projection_parts(p)?;
    let [b, cin, h, wd] = x.dims();
    // [b, cin, h, w] -> [b, cin, h·w] -> [b, h·w, cin] (view) · [1, cin, cout]
    let seq = x.clone().reshape([b, cin, h * wd]).swap_dims(1, 2);
    Some((seq.matmul(w.unsqueeze::<3>()), bias))
}

/// `proj_out` of a sequence back to an image, plus `residual`: the transposed weight times the
/// transposed sequence (both views), bias and residual in one epilogue. `None` as
/// [`conv2d_fused`]. seq: `[b, h·w, cin]`, residual: `[b, cout, h, w]` → `[b, cout, h, w]`
pub(crate) fn seq_proj_add(p: &Projection, seq: &Tensor<3>, residual: &Tensor<4>) -> Option<Tensor<4>> {
    let (bias, w) = projection_parts(p)?;
    let [b, hw, _] = seq.dims();
    let dims = residual.dims();
    let cout = w.dims()[1];
    // [1, cout, cin] (view) · [b, cin, h·w] (view) -> [b, cout, h·w]
    let y = w.swap_dims(0, 1).unsqueeze::<3>().matmul(seq.clone().swap_dims(1, 2));
    let r = residual.clone().reshape([b, cout, hw]);
    let fused = fused::epilogue(y.clone(), bias.clone(), None, Some((r.clone(), None)), cout, hw);
    Some(
        fused
            .unwrap_or_else(|| y + bias.reshape([1, cout, 1]) + r)
            .reshape(dims),
    )
}

/// A projection's bias and `[cin, cout]` weight (a view of a 1×1 conv's), when the fused
/// kernels run.
fn projection_parts(p: &Projection) -> Option<(Tensor<1>, Tensor<2>)> {
    if !fused_kernels() {
        return None;
    }
    match p {
        Projection::Conv(conv) => {
            let [cout, cin, kh, kw] = conv.weight.dims();
            let plain = [kh, kw] == [1, 1] && conv.stride == [1, 1] && conv.dilation == [1, 1] && conv.groups == 1;
            if !plain || explicit_pad(conv)? != [0; 4] || conv_route() == ConvRoute::ImplicitGemm {
                return None;
            }
            // [cout, cin, 1, 1] -> [cout, cin] -> [cin, cout] (view)
            let w = conv.weight.val().reshape([cout, cin]).swap_dims(0, 1);
            Some((conv.bias.as_ref()?.val(), w))
        }
        Projection::Linear(lin) => Some((lin.bias.as_ref()?.val(), lin.weight.val())),
    }
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
        let cols = |rows| fused::im2col(x.clone(), &windows(rows), norm.as_ref());
        let columns: Vec<_> = bands.iter().map(|r| r.start * wo..r.end * wo).collect();
        if let [rows] = bands.as_slice() {
            // [1, cout, cin·kh·kw] · [b, cin·kh·kw, ho·wo] -> [b, cout, ho·wo]
            weight.matmul(cols(rows.clone())?)
        } else if let Some(out) = fused::band_output(x, [b, cout, ho * wo], &columns) {
            // Each band's matmul writes its columns of the output in place: no concatenation.
            for (rows, columns) in bands.into_iter().zip(columns) {
                fused::matmul_into(weight.clone(), cols(rows)?, &out, columns)?;
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
    let (per_bc, residual) = match add {
        ConvAdd::Nothing => (None, None),
        ConvAdd::PerChannel(t) => (Some((t.clone(), None)), None),
        ConvAdd::Projected(t, bias) => (Some((t.clone(), Some(bias.clone()))), None),
        ConvAdd::Residual(r) => (None, Some((r.clone(), None))),
        ConvAdd::ProjectedResidual(r, r_bias) => (None, Some((r.clone(), Some(r_bias.clone())))),
    };
    let fused = fused::epilogue(y.clone(), bias.clone(), per_bc, residual, cout, ho * wo);
    Some(fused.unwrap_or_else(|| add.clone().apply(y + bias.reshape([1, cout, 1, 1]))))
}

/// A 1×1 convolution's product and its bias apart (a resnet's shortcut, whose bias joins the
/// next convolution's epilogue): one matmul. `None` (nothing run) off the im2col route, with
/// the fused kernels off, or for a conv that is not a plain biased 1×1.
/// x: `[b, cin, h, w]` → (`[b, cout, h, w]`, `[cout]`)
pub(crate) fn pointwise_unbiased(conv: &Conv2d, x: &Tensor<4>) -> Option<(Tensor<4>, Tensor<1>)> {
    let weight = conv.weight.val();
    let [cout, cin, kh, kw] = weight.dims();
    let plain = [kh, kw] == [1, 1] && conv.stride == [1, 1] && conv.dilation == [1, 1] && conv.groups == 1;
    if !plain || explicit_pad(conv)? != [0; 4] || conv_route() != ConvRoute::Im2col || !fused_kernels() {
        return None;
    }
    let bias = conv.bias.as_ref()?.val();
    let [b, _, h, w] = x.dims();
    // [1, cout, cin] · [b, cin, h·w] -> [b, cout, h·w] -> [b, cout, h, w]
    let y = weight
        .reshape([1, cout, cin])
        .matmul(x.clone().reshape([b, cin, h * w]));
    Some((y.reshape([b, cout, h, w]), bias))
}

/// Where the fused im2col kernel (`fused::im2col`) reads its windows from.
// Read only by the real kernel: builds with the stubs construct it and never look inside.
#[cfg_attr(not(all(feature = "wgpu", not(feature = "gpu-autotune"))), allow(dead_code))]
#[derive(Clone, Debug)]
pub(crate) struct Windows {
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    /// Padding on the top and left (the output size fixes the rest).
    pub pad: [usize; 2],
    /// Nearest-neighbour upsampling factor applied before padding (1 = none).
    pub up: usize,
    /// The output rows wanted, `start..end`, and the output width.
    pub rows: std::ops::Range<usize>,
    pub wo: usize,
}
