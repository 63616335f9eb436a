//! imagen's own GPU kernels (`imagen_models::gpu`, CubeCL) against their references: the fused
//! group norm (+ SiLU) on wgpu against burn's tensor ops on the same device (the `ops` route)
//! and against the CPU kernels (golden-tested against diffusers), on shapes that are not
//! multiples of the kernel's 256 threads. The whole-model tests (`tests/models`, `wgpu_f16`)
//! run the kernel too, as the default route.
//!
//! Its own test binary: the routes are process-wide switches. On Mesa's lavapipe in CI; without
//! a wgpu adapter these tests pass with a note, unless IMAGEN_REQUIRE_WGPU=1.
#![cfg(feature = "wgpu")]

#[path = "models/common.rs"]
mod common;

use burn::module::Param;
use burn::nn::{GroupNorm, GroupNormConfig};
use burn::tensor::{Device, Distribution, Tensor, TensorData};
use common::wgpu_device;
use imagen_models::gpu::{NormRoute, set_norm_route};

fn norm(groups: usize, c: usize, gamma: &[f32], beta: &[f32], device: &Device) -> GroupNorm {
    let mut n = GroupNormConfig::new(groups, c).with_epsilon(1e-5).init(device);
    n.gamma = Some(Param::from_tensor(Tensor::from_data(TensorData::new(gamma.to_vec(), [c]), device)));
    n.beta = Some(Param::from_tensor(Tensor::from_data(TensorData::new(beta.to_vec(), [c]), device)));
    n
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 data")
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn group_norm_kernel_matches_ops_and_cpu() {
    let Some(device) = wgpu_device() else { return };
    let cpu = Device::flex();
    // [b, c, h, w], groups: a UNet-like shape with n = 1600 per group (not a multiple of 256),
    // a tiny one with n = 126 (fewer elements than threads), and an offset mean.
    for (shape, groups, offset) in [([2, 64, 5, 5], 32, 0.0), ([1, 32, 40, 40], 32, 0.0), ([2, 4, 9, 7], 2, 3.0)] {
        let [_, c, _, _] = shape;
        let x: Tensor<4> = Tensor::random(shape, Distribution::Normal(offset, 2.0), &cpu);
        let gamma: Vec<f32> = (0..c).map(|i| 0.5 + i as f32 / c as f32).collect();
        let beta: Vec<f32> = (0..c).map(|i| (i as f32 * 0.37).sin()).collect();
        let xs = values(x.clone());
        let on_gpu = || Tensor::<4>::from_data(TensorData::new(xs.clone(), shape), &device);
        for silu in [false, true] {
            let want = values(imagen_models::cpu::group_norm(&norm(groups, c, &gamma, &beta, &cpu), x.clone(), silu));
            let gpu_norm = norm(groups, c, &gamma, &beta, &device);
            set_norm_route(NormRoute::Kernel);
            let kernel = values(imagen_models::cpu::group_norm(&gpu_norm, on_gpu(), silu));
            set_norm_route(NormRoute::Ops);
            let ops = values(imagen_models::cpu::group_norm(&gpu_norm, on_gpu(), silu));
            let (dk, d_ops) = (max_abs_diff(&kernel, &want), max_abs_diff(&ops, &want));
            assert!(dk < 1e-4, "{shape:?} silu={silu}: kernel vs CPU max diff {dk}");
            assert!(d_ops < 1e-4, "{shape:?} silu={silu}: ops vs CPU max diff {d_ops}");
            assert!(kernel.iter().all(|v| v.is_finite()));
        }
    }
}
