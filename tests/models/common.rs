//! Shared helpers for the golden-tensor tests: fixture paths, reading the goldens written by
//! `tools/reference/make_fixtures.py`, and the comparison metric.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::tensor::{Device, Int, Tensor, TensorData};
use safetensors::SafeTensors;
use safetensors::tensor::Dtype;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The golden tensors of one tiny pipeline (`tests/fixtures/golden/<name>.safetensors`).
pub struct Golden {
    bytes: Vec<u8>,
}

impl Golden {
    pub fn open(name: &str) -> Self {
        let path = fixture("golden").join(format!("{name}.safetensors"));
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        Golden { bytes }
    }

    fn view(&self, key: &str) -> (Vec<usize>, Dtype, Vec<u8>) {
        let st = SafeTensors::deserialize(&self.bytes).expect("golden file");
        let t = st.tensor(key).unwrap_or_else(|_| panic!("golden tensor {key} missing"));
        (t.shape().to_vec(), t.dtype(), t.data().to_vec())
    }

    pub fn f32_values(&self, key: &str) -> (Vec<usize>, Vec<f32>) {
        let (shape, dtype, data) = self.view(key);
        assert_eq!(dtype, Dtype::F32, "{key}");
        let v = data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        (shape, v)
    }

    pub fn tensor<const D: usize>(&self, key: &str, device: &Device) -> Tensor<D> {
        let (shape, v) = self.f32_values(key);
        Tensor::from_data(TensorData::new(v, shape), device)
    }

    pub fn ids(&self, key: &str, device: &Device) -> Tensor<2, Int> {
        let (shape, dtype, data) = self.view(key);
        assert_eq!(dtype, Dtype::I64, "{key}");
        let v: Vec<i64> = data
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
            .collect();
        Tensor::from_data(TensorData::new(v, shape), device)
    }
}

/// Relative error of `got` against `want`: max |got − want| / max |want|. (Element-wise relative
/// error is meaningless near zero; this normalises by the tensor's scale.)
pub fn rel_error<const D: usize>(got: Tensor<D>, want: &[f32]) -> f32 {
    let got: Vec<f32> = got.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 data");
    assert_eq!(got.len(), want.len(), "element count");
    assert!(got.iter().all(|x| x.is_finite()), "non-finite output");
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
    let diff = got.iter().zip(want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    diff / scale
}

/// Assert `got` matches golden tensor `key` within `tol` (relative, as [`rel_error`]).
pub fn assert_close<const D: usize>(golden: &Golden, key: &str, got: Tensor<D>, tol: f32) {
    let (shape, want) = golden.f32_values(key);
    assert_eq!(got.dims().to_vec(), shape, "{key}: shape");
    let err = rel_error(got, &want);
    println!("{key}: max relative error {err:.3e} (tolerance {tol:.0e})");
    assert!(err <= tol, "{key}: max relative error {err:.3e} > {tol:.0e}");
}
