//! Linear layers with what follows them (activation, residual, the next layer norm), the
//! residual [`Stream`], and a spatial transformer's pointwise projections in and out of the
//! sequence layout. On GPU backends with the fused kernels: one matmul without its bias, and one
//! launch for the bias and what follows; on the CPU, imagen's GEMM kernel with the bias inside.

use burn::nn::{LayerNorm, Linear};
use burn::tensor::Tensor;

use super::kernels::GpuKernels;
use super::norm::{add_layer_norm, layer_norm};
use super::{Act, ConvAdd, ConvRoute, Gpu, Pointwise, Routes, on_gpu};
use crate::cpu;

/// `lin(x)`. x: `[.., in]` → `[.., out]`
pub fn linear<const D: usize>(lin: &Linear, x: Tensor<D>) -> Tensor<D> {
    let r = Routes::current();
    if r.cpu_kernels
        && let Some(y) = cpu::linear(lin, &x, r.cpu_bf16)
    {
        return y;
    }
    super::linear_plain(lin, x)
}

/// `x · W` with the leading dims folded into rows, no bias. x: `[.., in]` → `[rows, out]`
fn linear_rows<const D: usize>(lin: &Linear, x: &Tensor<D>) -> Tensor<2> {
    let dims = x.dims();
    let rows = dims[..D - 1].iter().product();
    x.clone().reshape([rows, dims[D - 1]]).matmul(lin.weight.val())
}

/// The layer's bias, when its bias can join a fused kernel: on a GPU backend with the fused
/// kernels on.
fn fusable_bias<const D: usize>(lin: &Linear, x: &Tensor<D>) -> Option<Tensor<1>> {
    let bias = lin.bias.as_ref()?;
    (on_gpu(x) && Routes::current().fused()).then(|| bias.val())
}

/// `act(lin(x))`. x: `[b, n, in]` → `[b, n, out]` (`out / 2` for GEGLU)
pub fn linear_act(lin: &Linear, x: Tensor<3>, act: Act) -> Tensor<3> {
    if let Some(bias) = fusable_bias(lin, &x) {
        return bias_act(lin, &x, bias, act);
    }
    let h = linear(lin, x);
    let cpu_kernels = Routes::current().cpu_kernels;
    match act {
        Act::Geglu => cpu_kernels.then(|| cpu::geglu(&h)).flatten().unwrap_or_else(|| {
            let [b, n, k] = h.dims();
            let hidden = h.clone().slice([0..b, 0..n, 0..k / 2]);
            hidden * burn::tensor::activation::gelu(h.slice([0..b, 0..n, k / 2..k]))
        }),
        Act::Gelu | Act::QuickGelu => {
            let quick = act == Act::QuickGelu;
            cpu_kernels
                .then(|| cpu::gelu(&h, quick))
                .flatten()
                .unwrap_or_else(|| act_reference(h, act))
        }
        Act::GeluTanh => cpu_kernels
            .then(|| cpu::gelu_tanh(&h))
            .flatten()
            .unwrap_or_else(|| act_reference(h, act)),
        Act::Silu => act_reference(h, act),
    }
}

/// `act(x)` as burn ops (GEGLU halves the last axis).
fn act_reference<const D: usize>(x: Tensor<D>, act: Act) -> Tensor<D> {
    use burn::tensor::activation::{gelu, sigmoid, silu};
    match act {
        Act::Geglu => {
            let k = x.dims()[D - 1];
            let hidden = x.clone().narrow(D - 1, 0, k / 2);
            hidden * gelu(x.narrow(D - 1, k / 2, k / 2))
        }
        Act::Gelu => gelu(x),
        // burn's `gelu_approximate` takes x³ by `powf`, undefined for x < 0 in WGSL
        Act::GeluTanh => {
            let cube = x.clone() * x.clone() * x.clone();
            let inner = (x.clone() + cube * 0.044715) * (2.0 / std::f64::consts::PI).sqrt();
            x * (inner.tanh() + 1.0) * 0.5
        }
        Act::QuickGelu => x.clone() * sigmoid(x * 1.702),
        Act::Silu => silu(x),
    }
}

/// `act(x · W + bias)`: one matmul, then one fused kernel (burn ops if it declines).
fn bias_act<const D: usize>(lin: &Linear, x: &Tensor<D>, bias: Tensor<1>, act: Act) -> Tensor<D> {
    let y = linear_rows(lin, x);
    let y = Gpu::bias_act(y.clone(), bias.clone(), act).unwrap_or_else(|| act_reference(y + bias.unsqueeze(), act));
    let mut dims = x.dims();
    dims[D - 1] = y.dims()[1];
    y.reshape(dims)
}

/// `silu(lin(x))` for the time embedding's `[b, dim]` rows; off the GPU, burn's `Linear` (not
/// the CPU kernel, so CPU results stay bit-identical to the goldens). x: `[b, in]` → `[b, out]`
pub fn linear_silu(lin: &Linear, x: Tensor<2>) -> Tensor<2> {
    match fusable_bias(lin, &x) {
        Some(bias) => bias_act(lin, &x, bias, Act::Silu),
        None => burn::tensor::activation::silu(super::linear_plain(lin, x)),
    }
}

/// `lin(t)` to be added to a convolution's output per channel (a resnet's time embedding):
/// on GPU backends the product alone, its bias left to the convolution's epilogue.
/// t: `[b, in]`
pub fn projected(lin: &Linear, t: Tensor<2>) -> ConvAdd {
    match fusable_bias(lin, &t) {
        Some(bias) => ConvAdd::Projected(linear_rows(lin, &t), bias),
        None => ConvAdd::PerChannel(linear(lin, t)),
    }
}

/// A transformer's residual stream: a tensor, or on GPU backends with the fused kernels a sum
/// `product + bias (+ residual)` whose add waits for what comes next, so that the layer norm
/// after it runs in the same launch ([`layer_norm`](Self::layer_norm)).
#[derive(Clone, Debug)]
pub struct Stream<const D: usize>(Inner<D>);

// Moved once per layer: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
enum Inner<const D: usize> {
    Ready(Tensor<D>),
    /// `product + bias (+ residual)`, product and residual `[rows, n]`, the sum shaped `dims`.
    Pending {
        product: Tensor<2>,
        bias: Tensor<1>,
        residual: Option<Tensor<2>>,
        dims: [usize; D],
    },
}

impl<const D: usize> From<Tensor<D>> for Stream<D> {
    fn from(t: Tensor<D>) -> Self {
        Stream(Inner::Ready(t))
    }
}

impl<const D: usize> Stream<D> {
    /// The sum. Pending: one epilogue launch (burn's adds if it declines).
    pub fn tensor(self) -> Tensor<D> {
        match self.0 {
            Inner::Ready(t) => t,
            Inner::Pending {
                product,
                bias,
                residual,
                dims,
            } => {
                let n = dims[D - 1];
                let terms = residual.clone().map(|r| (r, None));
                let y = Gpu::epilogue(product.clone(), bias.clone(), None, terms, n, 1).unwrap_or_else(|| {
                    let y = product + bias.unsqueeze();
                    match residual {
                        Some(r) => y + r,
                        None => y,
                    }
                });
                y.reshape(dims)
            }
        }
    }

    /// The sum and its layer norm by `ln` (a transformer's pre-norm): (sum, normed). Pending, on
    /// GPU backends: the adds and the norm in one launch.
    pub fn layer_norm(self, ln: &LayerNorm, eps: f64) -> (Tensor<D>, Tensor<D>) {
        match self.0 {
            Inner::Pending {
                product,
                bias,
                residual,
                dims,
            } if ln.beta.is_some() => {
                let (sum, normed) = add_layer_norm(product, bias, residual, ln, eps);
                (sum.reshape(dims), normed.reshape(dims))
            }
            inner => {
                let sum = Stream(inner).tensor();
                let normed = layer_norm(ln, sum.clone(), eps);
                (sum, normed)
            }
        }
    }
}

/// `lin(x) + residual`, the add left to whatever reads the [`Stream`] next.
/// x: `[.., in]`, residual: `[.., out]` → `[.., out]`
pub fn linear_residual<const D: usize>(lin: &Linear, x: Tensor<D>, residual: Tensor<D>) -> Stream<D> {
    match fusable_bias(lin, &x) {
        Some(bias) => {
            let dims = residual.dims();
            let rows = dims[..D - 1].iter().product();
            Stream(Inner::Pending {
                product: linear_rows(lin, &x),
                bias,
                residual: Some(residual.reshape([rows, dims[D - 1]])),
                dims,
            })
        }
        None => Stream::from(linear(lin, x) + residual),
    }
}

/// A spatial transformer's `proj_in` (1×1 conv or linear), its output as a sequence. On GPU
/// backends one matmul of the pixels as rows (a transposed view, read in place) by the
/// `[cin, cout]` weight, so the sequence needs no transposing copy; its bias pending.
/// x: `[b, cin, h, w]` → `[b, h·w, cout]`
pub fn proj_in(p: Pointwise, x: Tensor<4>) -> Stream<3> {
    let [b, c, h, w] = x.dims();
    if let Some((bias, weight)) = fusable_projection(p, &x) {
        // [b, cin, h, w] -> [b, cin, h·w] -> [b, h·w, cin] (view) · [1, cin, cout]
        let seq = x.reshape([b, c, h * w]).swap_dims(1, 2);
        let y = seq.matmul(weight.unsqueeze::<3>());
        let cout = bias.dims()[0];
        return Stream(Inner::Pending {
            product: y.reshape([b * h * w, cout]),
            bias,
            residual: None,
            dims: [b, h * w, cout],
        });
    }
    // [b, c, h, w] -> [b, c, h·w] -> [b, h·w, c]
    let to_seq = |t: Tensor<4>, c: usize| t.reshape([b, c, h * w]).swap_dims(1, 2);
    Stream::from(match p {
        Pointwise::Conv(conv) => {
            let y = super::conv2d(conv, x);
            let c = y.dims()[1];
            to_seq(y, c)
        }
        Pointwise::Linear(lin) => linear(lin, to_seq(x, c)),
    })
}

/// A spatial transformer's `proj_out` of a sequence back to an image, plus `residual`. On GPU
/// backends the transposed weight times the transposed sequence (both views), bias and
/// residual in one epilogue. seq: `[b, h·w, cin]`, residual: `[b, cout, h, w]` → `[b, cout, h, w]`
pub fn proj_out_add(p: Pointwise, seq: Tensor<3>, residual: Tensor<4>) -> Tensor<4> {
    let [b, cout, h, w] = residual.dims();
    if let Some((bias, weight)) = fusable_projection(p, &seq) {
        // [1, cout, cin] (view) · [b, cin, h·w] (view) -> [b, cout, h·w]
        let y = weight.swap_dims(0, 1).unsqueeze::<3>().matmul(seq.swap_dims(1, 2));
        let r = residual.reshape([b, cout, h * w]);
        let sum = Gpu::epilogue(y.clone(), bias.clone(), None, Some((r.clone(), None)), cout, h * w)
            .unwrap_or_else(|| y + bias.reshape([1, cout, 1]) + r);
        return sum.reshape([b, cout, h, w]);
    }
    // [b, h·w, c] -> [b, c, h·w] -> [b, c, h, w]
    let to_img = |t: Tensor<3>| {
        let c = t.dims()[2];
        t.swap_dims(1, 2).reshape([b, c, h, w])
    };
    let out = match p {
        Pointwise::Conv(conv) => super::conv2d(conv, to_img(seq)),
        Pointwise::Linear(lin) => to_img(linear(lin, seq)),
    };
    out + residual
}

/// A projection's bias and `[cin, cout]` weight (a view of a 1×1 conv's), when it runs as one
/// matmul with a fused epilogue: a GPU backend with the fused kernels, a plain biased 1×1 conv
/// (not on the implicit-GEMM route) or a biased linear layer.
fn fusable_projection<const D: usize>(p: Pointwise, x: &Tensor<D>) -> Option<(Tensor<1>, Tensor<2>)> {
    let r = Routes::current();
    if !on_gpu(x) || !r.fused() {
        return None;
    }
    match p {
        Pointwise::Conv(conv) => {
            let [cout, cin, _, _] = conv.weight.dims();
            if !super::conv::is_pointwise(conv) || r.gpu_conv == ConvRoute::ImplicitGemm {
                return None;
            }
            // [cout, cin, 1, 1] -> [cout, cin] -> [cin, cout] (view)
            let w = conv.weight.val().reshape([cout, cin]).swap_dims(0, 1);
            Some((conv.bias.as_ref()?.val(), w))
        }
        Pointwise::Linear(lin) => Some((lin.bias.as_ref()?.val(), lin.weight.val())),
    }
}
