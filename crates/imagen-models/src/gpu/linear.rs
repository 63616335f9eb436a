//! Linear layers followed by their activation or residual on GPU backends: one matmul, then
//! one fused kernel for the bias and what follows.

use burn::nn::{LayerNorm, Linear};
use burn::tensor::Tensor;

use super::{fused, fused_kernels, norm};
use crate::fused::Act;

/// `x · W` with the leading dims folded into rows, no bias. x: `[.., in]` → `[rows, out]`
pub(super) fn linear_rows<const D: usize>(lin: &Linear, x: &Tensor<D>) -> Tensor<2> {
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
            Act::Silu => burn::tensor::activation::silu(y),
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
    let y = fused::epilogue(y.clone(), bias.clone(), None, Some((r.clone(), None)), out, 1)
        .unwrap_or_else(|| y + bias.unsqueeze() + r);
    Some(y.reshape(residual.dims()))
}

/// `lin(x) + residual` and its layer norm by `ln` (the next pre-norm of a transformer block):
/// one matmul and one launch for the bias, the residual and the norm. `None` (nothing run)
/// unless [`norm::fuses_layer_norm`] and the layer has a bias.
/// x: `[.., in]`, residual: `[.., out]` → 2 × `[.., out]`
pub(crate) fn linear_add_norm<const D: usize>(
    lin: &Linear,
    x: &Tensor<D>,
    residual: &Tensor<D>,
    ln: &LayerNorm,
    eps: f64,
) -> Option<(Tensor<D>, Tensor<D>)> {
    let bias = lin.bias.as_ref().filter(|_| norm::fuses_layer_norm(ln))?.val();
    let dims = residual.dims();
    let rows = dims[..D - 1].iter().product();
    let r = residual.clone().reshape([rows, dims[D - 1]]);
    let (sum, normed) = norm::add_layer_norm(linear_rows(lin, x), bias, Some(r), ln, eps);
    Some((sum.reshape(dims), normed.reshape(dims)))
}
