//! Resizing and joining feature maps: nearest-neighbour upsampling, channel concatenation.

use burn::tensor::{Int, Tensor, TensorData};

use super::kernels::GpuKernels;
use super::{Gpu, Routes, on_gpu};
use crate::cpu;

/// PyTorch `F.interpolate(mode="nearest")`: source index `floor(dst * (in / out))` in f32.
/// x: `[b, c, h, w]` → `[b, c, oh, ow]`
pub fn upsample_nearest(x: Tensor<4>, oh: usize, ow: usize) -> Tensor<4> {
    let [_, _, h, w] = x.dims();
    // exactly 2×: src = floor(dst / 2), which the float formula below also gives
    if oh == 2 * h
        && ow == 2 * w
        && Routes::current().cpu_kernels
        && let Some(y) = cpu::upsample_2x(&x)
    {
        return y;
    }
    let device = x.device();
    let idx = |input: usize, output: usize| -> Tensor<1, Int> {
        let scale = input as f32 / output as f32;
        let v: Vec<i64> = (0..output)
            .map(|i| ((i as f32 * scale).floor() as usize).min(input - 1) as i64)
            .collect();
        Tensor::from_data(TensorData::new(v, [output]), &device)
    };
    let x = if oh == h { x } else { x.select(2, idx(h, oh)) };
    if ow == w { x } else { x.select(3, idx(w, ow)) }
}

/// `x ‖ y` along the channels (the UNet's skip connections); one kernel on GPU backends with
/// the fused kernels. x: `[b, c1, h, w]`, y: `[b, c2, h, w]` → `[b, c1 + c2, h, w]`
pub fn cat_channels(x: Tensor<4>, y: Tensor<4>) -> Tensor<4> {
    if on_gpu(&x)
        && Routes::current().fused()
        && let Some(out) = Gpu::cat_channels(x.clone(), y.clone())
    {
        return out;
    }
    Tensor::cat(vec![x, y], 1)
}
