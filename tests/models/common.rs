//! Shared helpers for the golden-tensor tests: fixture paths, reading the goldens written by
//! `tools/reference/make_fixtures.py`, and the comparison metric.
#![allow(dead_code)]

use std::path::PathBuf;

use burn::tensor::{Device, Int, Tensor, TensorData};
use imagen_engine::GenerateRequest;
use imagen_engine::rng::RngKind;
use imagen_engine::scheduler::SamplerKind;
use imagen_models::models::unet_2d::UNet2DConditionModel;
use safetensors::SafeTensors;
use safetensors::tensor::Dtype;
use serde_json::Value;

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

/// The UNet on the golden's two cases (`unet`, `unet_odd`): (golden key, output) pairs.
pub fn unet_outputs(g: &Golden, unet: &UNet2DConditionModel, device: &Device) -> Vec<(String, Tensor<4>)> {
    ["unet", "unet_odd"]
        .into_iter()
        .map(|case| {
            let (_, t) = g.f32_values(&format!("{case}_timesteps"));
            let out = unet.forward(
                g.tensor(&format!("{case}_latents"), device),
                &t,
                &g.tensor(&format!("{case}_context"), device),
            );
            (format!("{case}_out"), out)
        })
        .collect()
}

/// The default wgpu adapter, if one works here (Mesa's lavapipe in CI). Without one: `None`
/// with a note, or a panic when IMAGEN_REQUIRE_WGPU=1.
#[cfg(feature = "wgpu")]
pub fn wgpu_device() -> Option<Device> {
    let device = imagen_models::device::by_name("wgpu").expect("wgpu backend compiled in");
    let probe = device.clone();
    let ok = std::panic::catch_unwind(move || {
        let t = Tensor::<1>::from_floats([1.0, 2.0], &probe);
        t.sum().into_scalar::<f32>()
    })
    .is_ok();
    if ok {
        return Some(device);
    }
    if std::env::var("IMAGEN_REQUIRE_WGPU").is_ok_and(|v| v == "1") {
        panic!("no wgpu adapter, and IMAGEN_REQUIRE_WGPU=1");
    }
    eprintln!("no wgpu adapter available: wgpu parity not checked here");
    None
}

/// A PNG of `tests/fixtures/golden/generate/`.
pub fn load_png(name: &str) -> image::RgbImage {
    image::open(fixture("golden/generate").join(name))
        .expect("png")
        .to_rgb8()
}

/// (max, mean) absolute difference in 8-bit levels.
pub fn png_diff(a: &image::RgbImage, b: &image::RgbImage) -> (u8, f64) {
    assert_eq!(a.dimensions(), b.dimensions());
    let d: Vec<u8> = a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| x.abs_diff(*y)).collect();
    (
        *d.iter().max().unwrap_or(&0),
        d.iter().map(|&x| x as f64).sum::<f64>() / d.len() as f64,
    )
}

/// The generation cases of a `cases*.json` file (`tools/reference/make_generation_fixtures.py`).
pub fn cases(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(fixture("golden/generate").join(file)).expect("cases");
    serde_json::from_str(&text).expect("json")
}

/// The request one case describes (one image, the torch generator, its sampler).
pub fn case_request(case: &Value) -> GenerateRequest {
    let kind = SamplerKind::parse(case["scheduler"].as_str().expect("scheduler")).expect("every golden scheduler");
    GenerateRequest {
        prompt: case["prompt"].as_str().expect("prompt").into(),
        negative_prompt: case["negative_prompt"].as_str().unwrap_or("").into(),
        width: case["width"].as_u64().expect("w") as usize,
        height: case["height"].as_u64().expect("h") as usize,
        steps: case["steps"].as_u64().expect("steps") as usize,
        guidance: case["guidance"].as_f64().expect("guidance"),
        scheduler: Some(kind),
        seed: case["seed"].as_u64().expect("seed"),
        rng: RngKind::Torch,
        num_images: 1,
        long_prompt: false,
        max_sequence_length: case["max_sequence_length"].as_u64().map(|n| n as usize),
        true_cfg_scale: None,
        skip_layer_guidance: None,
        init: case["init"].as_str().map(|p| imagen_engine::InitImage {
            image: load_png(p),
            strength: case["strength"].as_f64().expect("strength"),
            mask: None,
            masked: Default::default(),
        }),
    }
}
