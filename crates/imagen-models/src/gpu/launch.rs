//! Turning burn tensors into raw cube tensors and back, and launch geometry: what every kernel
//! launcher in this module starts from.

use burn::tensor::{DType, Shape, Tensor as BurnTensor};
use burn_cubecl::Cube;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::ir::FloatKind;
use cubecl::prelude::*;

/// The raw cube tensor of `t`; `None` when it is not one (burn's fusion, another backend).
pub(super) fn raw<const D: usize>(t: BurnTensor<D>) -> Option<CubeTensor> {
    t.try_into_primitive::<Cube>().ok()
}

/// The raw cube tensor of `t`, made contiguous; `None` when it is not one (burn's fusion).
pub(super) fn contiguous<const D: usize>(t: BurnTensor<D>) -> Option<CubeTensor> {
    Some(into_contiguous(raw(t)?))
}

/// [`contiguous`] of an optional tensor: `None` when it is present but not a raw cube tensor.
pub(super) fn contiguous_opt<const D: usize>(t: Option<BurnTensor<D>>) -> Option<Option<CubeTensor>> {
    match t {
        Some(t) => contiguous(t).map(Some),
        None => Some(None),
    }
}

/// An uninitialised tensor of `shape` on `like`'s device, in `dtype`.
pub(super) fn empty_like<const N: usize>(like: &CubeTensor, shape: [usize; N], dtype: DType) -> CubeTensor {
    empty_device_dtype(like.client.clone(), like.device.clone(), Shape::new(shape), dtype)
}

pub(super) fn elem_type(dtype: DType) -> Option<ElemType> {
    match dtype {
        DType::F32 => Some(ElemType::Float(FloatKind::F32)),
        DType::F16 => Some(ElemType::Float(FloatKind::F16)),
        DType::BF16 => Some(ElemType::Float(FloatKind::BF16)),
        _ => None,
    }
}

pub(super) fn elementwise_count(input: &CubeTensor, total: usize) -> (CubeCount, CubeDim) {
    let cube_dim = CubeDim::new_1d(256);
    (
        cubecl::calculate_cube_count_elemwise(&input.client, total, cube_dim),
        cube_dim,
    )
}

/// What every launch below starts from: the contiguous raw input, its element type and an
/// empty output of the same shape and dtype. `None` for tensors that are not raw cube tensors
/// or not floats.
pub(super) fn prepare<const D: usize>(x: BurnTensor<D>) -> Option<(CubeTensor, ElemType, CubeTensor)> {
    let shape = x.dims();
    let input = contiguous(x)?;
    let elem = elem_type(input.dtype)?;
    let output = empty_like(&input, shape, input.dtype);
    Some((input, elem, output))
}
