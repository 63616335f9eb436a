//! Linear weights kept block-quantized on wgpu (`gpu::quant`: GGUF's Q8_0, Q4_0 and Q6_K blocks
//! as burn-cubecl's matmul reads them): `dequantize` gives back exactly `scale · q`, and the
//! matmul on them (one row, the vector–matrix route, and many; through the linear ops, fused
//! bias + activation included) equals the same layer with the dequantised f32 weight, on the GPU
//! and on the CPU. On Mesa's lavapipe in CI; without a wgpu adapter these tests pass with a
//! note, unless IMAGEN_REQUIRE_WGPU=1.
#![cfg(feature = "wgpu")]

#[path = "models/common.rs"]
mod common;

use burn::module::Param;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::{DType, Device, Tensor, TensorData};
use common::wgpu_device;
use imagen_models::ops::{self, Act};

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 data")
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// A `[d_out, d_in]` weight's values in `lo..=hi` and one scale per `block`, in GGUF's order.
fn sample(d_out: usize, d_in: usize, block: usize, (lo, hi): (i32, i32)) -> (Vec<i8>, Vec<f32>) {
    let span = (hi - lo + 1) as usize;
    let q = (0..d_out * d_in).map(|i| (lo + (i * 37 % span) as i32) as i8).collect();
    let s = (0..d_out * d_in / block).map(|i| 0.001 * (1 + i % 7) as f32).collect();
    (q, s)
}

/// `scale · q` transposed to `[d_in, d_out]`, row-major.
fn dequantised(q: &[i8], s: &[f32], d_out: usize, d_in: usize, block: usize) -> Vec<f32> {
    let mut w = vec![0f32; q.len()];
    for o in 0..d_out {
        for i in 0..d_in {
            w[i * d_out + o] = s[(o * d_in + i) / block] * q[o * d_in + i] as f32;
        }
    }
    w
}

fn rows(m: usize, d_in: usize) -> Vec<f32> {
    (0..m * d_in).map(|i| (i as f32 * 0.37).sin() * 1.5).collect()
}

fn linear(weight: Tensor<2>, device: &Device) -> Linear {
    let [d_in, d_out] = weight.dims();
    let mut lin = LinearConfig::new(d_in, d_out).init(device);
    let bias: Vec<f32> = (0..d_out).map(|i| (i as f32 * 0.3).cos() * 0.2).collect();
    lin.bias = Some(Param::from_tensor(Tensor::from_data(
        TensorData::new(bias, [d_out]),
        device,
    )));
    lin.weight = Param::from_tensor(weight);
    lin
}

#[test]
fn kept_weights_multiply_as_their_dequantised_values() {
    let Some(gpu) = wgpu_device() else { return };
    let cpu = Device::flex();
    // Q8_0, Q4_0 (packed 4-bit), Q6_K's 16-value blocks; 72 outputs: not a multiple of 32
    for (block, range) in [(32, (-127, 127)), (32, (-8, 7)), (16, (-32, 31))] {
        let case = format!("block {block}, values {range:?}");
        let (d_out, d_in) = (72, 96);
        let (q, s) = sample(d_out, d_in, block, range);
        let w = ops::quantized_linear_weight(&q, &s, d_out, d_in, &gpu).expect("whole blocks");
        assert!(matches!(w.dtype(), DType::QFloat(_)), "{case}: {:?}", w.dtype());
        assert_eq!(w.dims(), [d_in, d_out]);
        let want = dequantised(&q, &s, d_out, d_in, block);
        assert_eq!(values(w.clone().dequantize()), want, "{case}: dequantize");
        let wf = |d: &Device| Tensor::<2>::from_data(TensorData::new(want.clone(), [d_in, d_out]), d);
        for m in [1, 5, 77] {
            let x = |d: &Device| Tensor::<2>::from_data(TensorData::new(rows(m, d_in), [m, d_in]), d);
            let got = values(x(&gpu).matmul(w.clone()));
            let on_gpu = values(x(&gpu).matmul(wf(&gpu)));
            let on_cpu = values(x(&cpu).matmul(wf(&cpu)));
            let (dg, dc) = (max_abs_diff(&got, &on_gpu), max_abs_diff(&got, &on_cpu));
            assert!(
                dg < 1e-4 && dc < 1e-4,
                "{case}, {m} rows: {dg} from f32 on the GPU, {dc} on the CPU"
            );
        }
        // through the ops, as the models call them: [b, n, in] rows, bias, fused activation
        let (kept, plain) = (linear(w.clone(), &gpu), linear(wf(&gpu), &gpu));
        let x3 = Tensor::<3>::from_data(TensorData::new(rows(2 * 9, d_in), [2, 9, d_in]), &gpu);
        let pairs = [
            (ops::linear(&kept, x3.clone()), ops::linear(&plain, x3.clone())),
            (
                ops::linear_plain(&kept, x3.clone()),
                ops::linear_plain(&plain, x3.clone()),
            ),
            (
                ops::linear_act(&kept, x3.clone(), Act::Gelu),
                ops::linear_act(&plain, x3.clone(), Act::Gelu),
            ),
        ];
        for (i, (a, b)) in pairs.into_iter().enumerate() {
            assert_eq!(a.dims(), [2, 9, d_out]);
            let d = max_abs_diff(&values(a), &values(b));
            assert!(d < 1e-4, "{case}: op {i} differs by {d}");
        }
    }
    // partial blocks are refused, not misread
    let (q, s) = sample(2, 40, 8, (-8, 7));
    assert!(ops::quantized_linear_weight(&q, &s, 2, 40, &gpu).is_none());
}
