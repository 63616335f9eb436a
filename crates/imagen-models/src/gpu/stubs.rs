//! Builds without the raw cube tensors (burn's fusion on, or no GPU backend): every kernel and
//! route declines, and the callers take burn's ops.

/// Without the raw cube tensors (fusion on, or no GPU backend) the kernels always decline.
pub(super) mod kernels {
    use burn::tensor::Tensor;

    pub(in crate::gpu) fn group_norm(
        _: Tensor<4>,
        _: Tensor<1>,
        _: Tensor<1>,
        _: usize,
        _: f64,
        _: bool,
    ) -> Option<Tensor<4>> {
        None
    }

    pub(in crate::gpu) fn layer_norm<const D: usize>(
        _: Tensor<D>,
        _: Tensor<1>,
        _: Tensor<1>,
        _: f64,
    ) -> Option<Tensor<D>> {
        None
    }

    pub(in crate::gpu) fn softmax_last<const D: usize>(_: Tensor<D>, _: bool) -> Option<Tensor<D>> {
        None
    }

    pub(in crate::gpu) fn add_layer_norm(
        _: Tensor<2>,
        _: Tensor<1>,
        _: Option<Tensor<2>>,
        _: Tensor<1>,
        _: Tensor<1>,
        _: f64,
    ) -> Option<(Tensor<2>, Tensor<2>)> {
        None
    }
}

/// Without the raw cube tensors (fusion on, or no GPU backend) the fused kernels always decline.
pub(super) mod fused {
    use burn::tensor::Tensor;

    use crate::fused::Act;

    pub(in crate::gpu) fn epilogue<const D: usize>(
        _: Tensor<D>,
        _: Tensor<1>,
        _: Option<(Tensor<2>, Option<Tensor<1>>)>,
        _: Option<(Tensor<D>, Option<Tensor<1>>)>,
        _: usize,
        _: usize,
    ) -> Option<Tensor<D>> {
        None
    }

    pub(in crate::gpu) fn bias_act(_: Tensor<2>, _: Tensor<1>, _: Act) -> Option<Tensor<2>> {
        None
    }

    pub(in crate::gpu) fn split_heads(
        _: [Tensor<3>; 3],
        _: Option<[Tensor<1>; 3]>,
        _: usize,
        _: f32,
    ) -> Option<[Tensor<4>; 3]> {
        None
    }

    pub(in crate::gpu) struct Norm;

    pub(in crate::gpu) fn group_stats(_: &Tensor<4>, _: &burn::nn::GroupNorm) -> Option<Norm> {
        None
    }

    pub(in crate::gpu) fn im2col(_: Tensor<4>, _: &crate::gpu::conv::Windows, _: Option<&Norm>) -> Option<Tensor<3>> {
        None
    }

    pub(in crate::gpu) fn cat_channels(_: Tensor<4>, _: Tensor<4>) -> Option<Tensor<4>> {
        None
    }

    pub(in crate::gpu) fn attention_output(_: Tensor<4>, _: Tensor<4>) -> Option<Tensor<3>> {
        None
    }

    pub(in crate::gpu) fn band_output(_: &Tensor<4>, _: [usize; 3], _: &[std::ops::Range<usize>]) -> Option<Tensor<3>> {
        None
    }

    pub(in crate::gpu) fn matmul_into(
        _: Tensor<3>,
        _: Tensor<3>,
        _: &Tensor<3>,
        _: std::ops::Range<usize>,
    ) -> Option<()> {
        None
    }
}

/// Without the raw cube tensors (fusion on, or no GPU backend) these routes always decline.
pub(super) mod cube {
    use burn::nn::conv::Conv2d;
    use burn::tensor::Tensor;

    pub(in crate::gpu) fn conv2d_implicit_gemm(_: &Conv2d, _: &Tensor<4>, _: [usize; 4]) -> Option<Tensor<4>> {
        None
    }

    pub(in crate::gpu) fn flash_attention(
        _: &Tensor<3>,
        _: &Tensor<3>,
        _: &Tensor<3>,
        _: usize,
        _: bool,
    ) -> Option<Tensor<3>> {
        None
    }
}
