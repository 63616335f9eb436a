//! Op sequences the models run often enough to be worth one call each: a linear layer with its
//! activation or residual, a convolution with what its block adds to it, an upsampling conv.
//! On GPU backends they take imagen's fused kernels ([`crate::gpu`]: one matmul and one launch
//! where burn's ops take up to eight); elsewhere, or with `IMAGEN_GPU_FUSED=0` /
//! `IMAGEN_GPU_KERNELS=0`, the same ops as the unfused code (the CPU kernels of [`crate::cpu`],
//! then burn's adds).

use burn::nn::conv::Conv2d;
use burn::nn::{GroupNorm, LayerNorm, Linear};
use burn::tensor::Tensor;

use crate::attention::Projection;
use crate::{cpu, gpu};

/// The activation after a feed-forward's first linear layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// diffusers' `GEGLU`: the output is hidden ‖ gate, giving `hidden · gelu(gate)` (half as wide).
    Geglu,
    /// GELU, exact (erf) form.
    Gelu,
    /// CLIP's quick GELU, `x·σ(1.702x)`.
    QuickGelu,
    /// SiLU, `x·σ(x)` (the time embedding's MLP).
    Silu,
}

/// What a block adds to a convolution's output.
// One is built per convolution call and moved once: the variants' sizes (burn tensors are
// large structs) do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum ConvAdd {
    Nothing,
    /// `[b, c]`, broadcast over the pixels (a resnet's projected time embedding).
    PerChannel(Tensor<2>),
    /// `PerChannel(t + bias)`, t `[b, c]`, bias `[c]`: a linear layer's product whose bias
    /// joins the convolution's epilogue on GPU backends (see [`projected`]).
    Projected(Tensor<2>, Tensor<1>),
    /// A tensor of the output's shape (a residual).
    Residual(Tensor<4>),
    /// `Residual(r + bias)`, r of the output's shape, bias `[c]`: a 1×1 conv's product whose
    /// bias joins the next convolution's epilogue on GPU backends (see [`shortcut`]).
    ProjectedResidual(Tensor<4>, Tensor<1>),
}

impl ConvAdd {
    /// y: `[b, c, h, w]` → `y + self`
    pub(crate) fn apply(self, y: Tensor<4>) -> Tensor<4> {
        match self {
            ConvAdd::Nothing => y,
            ConvAdd::PerChannel(t) => {
                let [b, c, _, _] = y.dims();
                // [b, c] -> [b, c, 1, 1]
                y + t.reshape([b, c, 1, 1])
            }
            ConvAdd::Projected(t, bias) => ConvAdd::PerChannel(t + bias.unsqueeze()).apply(y),
            ConvAdd::Residual(r) => y + r,
            ConvAdd::ProjectedResidual(r, bias) => {
                let c = bias.dims()[0];
                // [c] -> [1, c, 1, 1]
                ConvAdd::Residual(r + bias.reshape([1, c, 1, 1])).apply(y)
            }
        }
    }
}

/// `lin(t)` to be added to a convolution's output per channel (a resnet's time embedding):
/// on GPU backends the product alone, its bias left to the convolution's epilogue.
/// t: `[b, in]`
pub fn projected(lin: &Linear, t: Tensor<2>) -> ConvAdd {
    if gpu::on_gpu(&t)
        && let Some((product, bias)) = gpu::linear_unbiased(lin, &t)
    {
        return ConvAdd::Projected(product, bias);
    }
    ConvAdd::PerChannel(cpu::linear(lin, t))
}

/// A resnet's 1×1 shortcut conv of `x`, to be added to its second convolution's output: on GPU
/// backends the product alone, its bias left to that convolution's epilogue.
/// x: `[b, cin, h, w]`
pub fn shortcut(conv: &Conv2d, x: Tensor<4>) -> ConvAdd {
    if gpu::on_gpu(&x)
        && let Some((product, bias)) = gpu::pointwise_unbiased(conv, &x)
    {
        return ConvAdd::ProjectedResidual(product, bias);
    }
    ConvAdd::Residual(cpu::conv2d(conv, x))
}

/// `act(lin(x))`. x: `[b, n, in]` → `[b, n, out]` (`out / 2` for GEGLU)
pub fn linear_act(lin: &Linear, x: Tensor<3>, act: Act) -> Tensor<3> {
    if gpu::on_gpu(&x)
        && let Some(y) = gpu::linear_act(lin, &x, act)
    {
        return y;
    }
    let h = cpu::linear(lin, x);
    match act {
        Act::Geglu => cpu::geglu(h),
        Act::Gelu => cpu::gelu(h, false),
        Act::QuickGelu => cpu::gelu(h, true),
        Act::Silu => burn::tensor::activation::silu(h),
    }
}

/// `silu(lin(x))` for the time embedding's `[b, dim]` rows; off the GPU, burn's `Linear` as
/// before (not the CPU kernel, so CPU results stay bit-identical). x: `[b, in]` → `[b, out]`
pub fn linear_silu(lin: &Linear, x: Tensor<2>) -> Tensor<2> {
    if gpu::on_gpu(&x)
        && let Some(y) = gpu::linear_act(lin, &x, Act::Silu)
    {
        return y;
    }
    burn::tensor::activation::silu(lin.forward(x))
}

/// `lin(x) + residual`. x: `[.., in]`, residual: `[.., out]` → `[.., out]`
pub fn linear_add<const D: usize>(lin: &Linear, x: Tensor<D>, residual: Tensor<D>) -> Tensor<D> {
    if gpu::on_gpu(&x)
        && let Some(y) = gpu::linear_add(lin, &x, &residual)
    {
        return y;
    }
    cpu::linear(lin, x) + residual
}

/// `lin(x) + residual` and its layer norm by `ln` (a transformer block's next pre-norm):
/// (sum, normed). On GPU backends one matmul and one launch; elsewhere [`linear_add`], then
/// [`cpu::layer_norm`]. x: `[.., in]`, residual: `[.., out]` → 2 × `[.., out]`
pub fn linear_add_norm<const D: usize>(
    lin: &Linear,
    x: Tensor<D>,
    residual: Tensor<D>,
    ln: &LayerNorm,
    eps: f64,
) -> (Tensor<D>, Tensor<D>) {
    if gpu::on_gpu(&x)
        && let Some(out) = gpu::linear_add_norm(lin, &x, &residual, ln, eps)
    {
        return out;
    }
    let sum = linear_add(lin, x, residual);
    let normed = cpu::layer_norm(ln, sum.clone(), eps);
    (sum, normed)
}

/// Multi-head attention with its q/k/v projections (self-attention when `context` is `None`),
/// before the output projection; on GPU backends the projections' biases are added by the
/// head-split kernel. x: `[b, n, dim]`, context: `[b, m, ctx]` → `[b, n, h·d]`
pub fn qkv_attention(
    [to_q, to_k, to_v]: [&Linear; 3],
    x: Tensor<3>,
    context: Option<&Tensor<3>>,
    heads: usize,
    causal: bool,
) -> Tensor<3> {
    let ctx = context.cloned().unwrap_or_else(|| x.clone());
    if gpu::on_gpu(&x)
        && let Some(y) = gpu::qkv_attention([to_q, to_k, to_v], &x, &ctx, heads, causal)
    {
        return y;
    }
    let q = cpu::linear(to_q, x);
    let k = cpu::linear(to_k, ctx.clone());
    let v = cpu::linear(to_v, ctx);
    crate::attention::multi_head_attention(q, k, v, heads, causal)
}

/// Cross-attention with the context's keys and values already projected: `to_q(x)`, then
/// attention (before the output projection). x: `[b, n, dim]`, k/v: `[b, m, h·d]` → `[b, n, h·d]`
pub fn q_attention(to_q: &Linear, x: Tensor<3>, k: Tensor<3>, v: Tensor<3>, heads: usize) -> Tensor<3> {
    if gpu::on_gpu(&x)
        && let Some(y) = gpu::q_attention(to_q, &x, &k, &v, heads)
    {
        return y;
    }
    crate::attention::multi_head_attention(cpu::linear(to_q, x), k, v, heads, false)
}

/// `conv(x) + add`. x: `[b, cin, h, w]` → `[b, cout, ho, wo]`
pub fn conv2d_add(conv: &Conv2d, x: Tensor<4>, add: ConvAdd) -> Tensor<4> {
    if gpu::on_gpu(&x)
        && let Some(y) = gpu::conv2d_fused(conv, &x, 1, None, &add)
    {
        return y;
    }
    add.apply(cpu::conv2d(conv, x))
}

/// `conv(silu(norm(x))) + add`, the resnets' and output heads' norm → conv; on GPU backends
/// the normalisation happens as the convolution reads its windows.
/// x: `[b, cin, h, w]` → `[b, cout, ho, wo]`
pub fn norm_silu_conv2d_add(norm: &GroupNorm, conv: &Conv2d, x: Tensor<4>, add: ConvAdd) -> Tensor<4> {
    if gpu::on_gpu(&x)
        && let Some(y) = gpu::conv2d_fused(conv, &x, 1, Some(norm), &add)
    {
        return y;
    }
    conv2d_add(conv, cpu::group_norm(norm, x, true), add)
}

/// `conv(upsample_nearest(x))` to `size` (`2h × 2w` when `None`); on GPU backends the 2× case
/// reads the windows straight from `x`, never building the upsampled tensor.
/// x: `[b, cin, h, w]` → `[b, cout, size]`
pub fn upsample_conv(conv: &Conv2d, x: Tensor<4>, size: Option<[usize; 2]>) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    let [oh, ow] = size.unwrap_or([2 * h, 2 * w]);
    if [oh, ow] == [2 * h, 2 * w]
        && gpu::on_gpu(&x)
        && let Some(y) = gpu::conv2d_fused(conv, &x, 2, None, &ConvAdd::Nothing)
    {
        return y;
    }
    cpu::conv2d(conv, crate::layers::upsample_nearest(x, oh, ow))
}

/// A spatial transformer's `proj_in` (1×1 conv or linear), its output as a sequence.
/// x: `[b, cin, h, w]` → `[b, h·w, cout]`
pub fn proj_in(p: &Projection, x: Tensor<4>) -> Tensor<3> {
    if gpu::on_gpu(&x)
        && let Some(y) = gpu::proj_to_seq(p, &x)
    {
        return y;
    }
    let [b, c, h, w] = x.dims();
    // [b, c, h, w] -> [b, c, h·w] -> [b, h·w, c]
    let to_seq = |t: Tensor<4>, c: usize| t.reshape([b, c, h * w]).swap_dims(1, 2);
    match p {
        Projection::Conv(conv) => {
            let y = cpu::conv2d(conv, x);
            let c = y.dims()[1];
            to_seq(y, c)
        }
        Projection::Linear(lin) => cpu::linear(lin, to_seq(x, c)),
    }
}

/// [`proj_in`] and the layer norm of its output by `ln` (the first transformer block's
/// pre-norm): (seq, normed). On GPU backends the bias and the norm in one launch.
/// x: `[b, c, h, w]` → 2 × `[b, h·w, c]`
pub fn proj_in_norm(p: &Projection, x: Tensor<4>, ln: &LayerNorm, eps: f64) -> (Tensor<3>, Tensor<3>) {
    if gpu::on_gpu(&x)
        && let Some(out) = gpu::proj_to_seq_norm(p, &x, ln, eps)
    {
        return out;
    }
    let seq = proj_in(p, x);
    let normed = cpu::layer_norm(ln, seq.clone(), eps);
    (seq, normed)
}

/// A spatial transformer's `proj_out` of a sequence back to an image, plus `residual`.
/// seq: `[b, h·w, cin]`, residual: `[b, cout, h, w]` → `[b, cout, h, w]`
pub fn proj_out_add(p: &Projection, seq: Tensor<3>, residual: Tensor<4>) -> Tensor<4> {
    if gpu::on_gpu(&seq)
        && let Some(y) = gpu::seq_proj_add(p, &seq, &residual)
    {
        return y;
    }
    let [b, _, h, w] = residual.dims();
    // [b, h·w, c] -> [b, c, h·w] -> [b, c, h, w]
    let to_img = |t: Tensor<3>| {
        let c = t.dims()[2];
        t.swap_dims(1, 2).reshape([b, c, h, w])
    };
    let out = match p {
        Projection::Conv(conv) => cpu::conv2d(conv, to_img(seq)),
        Projection::Linear(lin) => to_img(cpu::linear(lin, seq)),
    };
    out + residual
}

/// `x ‖ y` along the channels (the UNet's skip connections).
/// x: `[b, c1, h, w]`, y: `[b, c2, h, w]` → `[b, c1 + c2, h, w]`
pub fn cat_channels(x: Tensor<4>, y: Tensor<4>) -> Tensor<4> {
    if gpu::on_gpu(&x)
        && let Some(out) = gpu::cat_channels(&x, &y)
    {
        return out;
    }
    Tensor::cat(vec![x, y], 1)
}
