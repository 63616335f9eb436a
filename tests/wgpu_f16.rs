//! The wgpu backend computing in f16 (`--dtype f16`), against diffusers' f32 goldens.
//!
//! Its own test binary: burn keeps a device's float type for the life of the process, and the
//! other tests use the same wgpu device in f32. On Mesa's lavapipe in CI; without a wgpu adapter
//! these tests pass with a note, unless IMAGEN_REQUIRE_WGPU=1.
#![cfg(feature = "wgpu")]

#[path = "models/common.rs"]
mod common;

use burn::tensor::Device;
use common::{Golden, case_request, cases, fixture, load_png, png_diff, rel_error, unet_outputs};
use imagen_engine::generate;
use imagen_models::{DiffusersFolder, StableDiffusion};

/// f16 has an 11-bit significand (≈ 5e-4 per rounding); through a few dozen layers of a tiny
/// random network that compounds to a few 1e-3 relative to the output's scale.
const TOL: f32 = 2e-2;

fn f16_device() -> Option<Device> {
    let require = std::env::var("IMAGEN_REQUIRE_WGPU").is_ok_and(|v| v == "1");
    match std::panic::catch_unwind(|| imagen_models::device::open("wgpu", "f16")) {
        Ok(Ok(d)) => {
            assert_eq!(imagen_models::device::dtype_name(&d), "f16");
            Some(d)
        }
        Ok(Err(e)) if !require => {
            eprintln!("wgpu f16 not available here ({e}): not checked");
            None
        }
        Err(_) if !require => {
            eprintln!("no wgpu adapter: f16 not checked");
            None
        }
        Ok(Err(e)) => panic!("IMAGEN_REQUIRE_WGPU=1 but wgpu f16 is unavailable: {e}"),
        Err(_) => panic!("IMAGEN_REQUIRE_WGPU=1 but no wgpu adapter"),
    }
}

fn check<const D: usize>(g: &Golden, key: &str, got: burn::tensor::Tensor<D>) {
    assert_eq!(got.dtype(), burn::tensor::DType::F16, "{key}: computed in f16");
    let (shape, want) = g.f32_values(key);
    assert_eq!(got.dims().to_vec(), shape, "{key}: shape");
    let err = rel_error(got, &want);
    println!("{key}: f16 max relative error {err:.3e} (tolerance {TOL:.0e})");
    assert!(err <= TOL, "{key}: f16 max relative error {err:.3e} > {TOL:.0e}");
}

/// Every component of the tiny SD 1.5 model, weights and activations in f16.
#[test]
fn components_in_f16_match_diffusers() {
    let Some(device) = f16_device() else { return };
    let folder = DiffusersFolder::open(fixture("tiny-sd15")).expect("open folder");
    let g = Golden::open("tiny-sd15");

    let te = folder.load_text_encoder(&device).expect("text encoder");
    check(&g, "text_hidden", te.forward(g.ids("text_ids", &device), 0));

    let unet = folder.load_unet(&device).expect("unet");
    for (key, out) in unet_outputs(&g, &unet, &device) {
        check(&g, &key, out);
    }

    let vae = folder.load_vae(&device).expect("vae");
    let dist = vae.encode(g.tensor("vae_image", &device));
    check(&g, "vae_enc_mean", dist.mean);
    check(&g, "vae_dec_image", vae.decode(g.tensor("vae_dec_latents", &device)));
}

/// A whole text-to-image generation in f16 against diffusers' f32 PNG for the same seed.
#[test]
fn generation_in_f16_matches_diffusers_png() {
    let Some(device) = f16_device() else { return };
    let sd = StableDiffusion::load(fixture("tiny-sd15"), &device).expect("load");
    let (max, mean) = euler_txt2img_diff(&sd, &device);
    println!("f16 vs diffusers f32: max {max}/255, mean {mean:.3}/255");
    assert!(max <= 8 && mean <= 1.0, "f16 image: max {max}/255, mean {mean:.3}/255");
}

/// A Q8_0 GGUF checkpoint in f16: its linear weights stay quantized on the GPU (f32 scales,
/// multiplied into f16 activations by burn-cubecl's matmul) and the image is within f16's bound
/// plus Q8_0's own rounding (4/255 on the CPU, `tests/models/single_file.rs`) of diffusers'.
#[test]
fn quantized_gguf_in_f16_matches_diffusers_png() {
    let Some(device) = f16_device() else { return };
    let sd = StableDiffusion::load_single_file(
        &fixture("single-file/tiny-sd15-q8_0.gguf"),
        &fixture("tiny-sd15"),
        &device,
    )
    .expect("load");
    assert!(quantized_weights(&sd.unet) > 0, "no weight kept quantized");
    let (max, mean) = euler_txt2img_diff(&sd, &device);
    println!("Q8_0 in f16 vs diffusers f32: max {max}/255, mean {mean:.3}/255");
    assert!(
        max <= 12 && mean <= 1.5,
        "Q8_0 f16 image: max {max}/255, mean {mean:.3}/255"
    );
}

/// (max, mean) 8-bit difference of `sd`'s image for the tiny SD 1.5 Euler text-to-image case
/// from diffusers' f32 PNG.
fn euler_txt2img_diff(sd: &StableDiffusion, device: &Device) -> (u8, f64) {
    let cases = cases("cases.json");
    let case = cases
        .iter()
        .find(|c| c["model"] == "tiny-sd15" && c["kind"] == "txt2img" && c["scheduler"] == "euler")
        .expect("an Euler txt2img case");
    let got = generate(sd, &case_request(case), device, &mut |_, _| true).expect("generate");
    png_diff(&got[0], &load_png(case["png"].as_str().expect("png")))
}

/// How many of `m`'s parameters are stored block-quantized.
fn quantized_weights<M: burn::module::Module>(m: &M) -> usize {
    struct Count(usize);
    impl burn::module::ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<burn::tensor::Tensor<D>>) {
            self.0 += matches!(p.val().dtype(), burn::tensor::DType::QFloat(_)) as usize;
        }
    }
    let mut c = Count(0);
    m.visit(&mut c);
    c.0
}
