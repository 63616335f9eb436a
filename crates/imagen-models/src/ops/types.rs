//! Types the ops share with the kernels below them (`cpu/`, `gpu/` may import this module and
//! burn, nothing else of the crate).

use burn::nn::Linear;
use burn::nn::conv::Conv2d;
use burn::tensor::Tensor;

/// The activation after a linear layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// diffusers' `GEGLU`: the output is hidden ‖ gate, giving `hidden · gelu(gate)` (half as wide).
    Geglu,
    /// GELU, exact (erf) form.
    Gelu,
    /// CLIP's quick GELU, `x·σ(1.702x)`.
    QuickGelu,
    /// GELU's tanh approximation (`gelu(approximate="tanh")`, T5's `gelu_new`; FLUX and SD3's
    /// feed-forwards).
    GeluTanh,
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
    /// joins the convolution's epilogue on GPU backends (see `ops::projected`).
    Projected(Tensor<2>, Tensor<1>),
    /// A tensor of the output's shape (a residual).
    Residual(Tensor<4>),
    /// `Residual(r + bias)`, r of the output's shape, bias `[c]`: a 1×1 conv's product whose
    /// bias joins the next convolution's epilogue on GPU backends (see `ops::shortcut`).
    ProjectedResidual(Tensor<4>, Tensor<1>),
}

impl ConvAdd {
    /// y: `[b, c, h, w]` → `y + self`, as burn ops (the fused epilogue's reference).
    pub fn apply(self, y: Tensor<4>) -> Tensor<4> {
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

    /// The per-(batch, channel) term and the residual, each with its own bias if any: the
    /// operands of the GPU epilogue kernel.
    #[allow(clippy::type_complexity)]
    pub fn terms(
        &self,
    ) -> (
        Option<(Tensor<2>, Option<Tensor<1>>)>,
        Option<(Tensor<4>, Option<Tensor<1>>)>,
    ) {
        match self {
            ConvAdd::Nothing => (None, None),
            ConvAdd::PerChannel(t) => (Some((t.clone(), None)), None),
            ConvAdd::Projected(t, bias) => (Some((t.clone(), Some(bias.clone()))), None),
            ConvAdd::Residual(r) => (None, Some((r.clone(), None))),
            ConvAdd::ProjectedResidual(r, bias) => (None, Some((r.clone(), Some(bias.clone())))),
        }
    }
}

/// A pointwise projection between channels: a 1×1 convolution or a linear layer (a spatial
/// transformer's `proj_in`/`proj_out`).
#[derive(Clone, Copy, Debug)]
pub enum Pointwise<'a> {
    Conv(&'a Conv2d),
    Linear(&'a Linear),
}

/// Where the CPU's Winograd F(4×4, 3×3) convolution route runs (`IMAGEN_CPU_WINOGRAD=1|0|all`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Winograd {
    /// 3×3 convolutions with at least one block of tiles per thread (where it measured faster).
    WherePays,
    Off,
    /// Every 3×3 convolution (the parity tests' tiny models are below where it pays).
    Everywhere,
}
