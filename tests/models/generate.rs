//! End to end against diffusers' pipelines (`tools/reference/make_generation_fixtures.py`):
//! same seed (CPU torch generator) ⇒ same PNG, max per-pixel difference ≤ 2/255 and mean ≤ 0.1/255.

use burn::tensor::Device;
use imagen_engine::pipeline::denoise;
use imagen_engine::rng::RngKind;
use imagen_engine::scheduler::SamplerKind;
use imagen_engine::{GenerateRequest, InitImage, generate, generate_once};
use imagen_models::StableDiffusion;
use serde_json::Value;

use crate::common::{case_request, cases, fixture, load_png, png_diff};

/// Generates one case of a `cases*.json` file and compares it with diffusers' PNG
/// (max ≤ 2/255, mean ≤ 0.1/255).
pub fn check_case(sd: &StableDiffusion, case: &Value, device: &Device) {
    let req = case_request(case);
    let got = generate(sd, &req, device, &mut |_, _| true).unwrap_or_else(|e| panic!("{}: {e}", case["png"]));
    let want = load_png(case["png"].as_str().expect("png"));
    let (max, mean) = png_diff(&got[0], &want);
    println!("{}: max {max}/255, mean {mean:.4}/255", case["png"]);
    assert!(
        max <= 2 && mean <= 0.1,
        "{}: max {max}/255, mean {mean:.4}/255",
        case["png"]
    );
}

fn run_cases(model: &str, device: &Device) {
    let sd = StableDiffusion::load(fixture(model), device).expect("load");
    let mut checked = 0;
    for case in cases("cases.json").iter().filter(|c| c["model"] == model) {
        check_case(&sd, case, device);
        checked += 1;
    }
    // Every sampler of the DDPM-space models (heun is the flow models'), text-to-image and
    // image-to-image.
    let samplers = SamplerKind::NAMES.iter().filter(|&&n| n != "heun").count();
    assert!(checked >= 2 * samplers, "only {checked} cases ran");
}

/// Distilled models through the ordinary API: an LCM-distilled UNet (guidance as an embedding,
/// no unconditional pass) and an SD-Turbo-style model (Euler a, trailing, 1 and 4 steps, no CFG).
#[test]
fn distilled_models_match_diffusers_pngs() {
    let device = Device::flex();
    let all = cases("cases-distilled.json");
    for model in ["tiny-lcm", "tiny-turbo"] {
        let sd = StableDiffusion::load(fixture(model), &device).expect("load");
        let mine: Vec<&Value> = all.iter().filter(|c| c["model"] == model).collect();
        assert_eq!(mine.len(), 2, "{model}");
        for case in mine {
            check_case(&sd, case, &device);
        }
    }
}

/// The CLI's one-shot run, which drops the UNet and text encoders before decoding, makes the
/// same images as the server's resident model.
#[test]
fn one_shot_generation_equals_resident() {
    let device = Device::flex();
    let case = cases("cases.json")
        .into_iter()
        .find(|c| c["model"] == "tiny-sd15")
        .expect("a tiny-sd15 case");
    let req = case_request(&case);
    let sd = StableDiffusion::load(fixture("tiny-sd15"), &device).expect("load");
    let resident = generate(&sd, &req, &device, &mut |_, _| true).expect("generate");
    let once = generate_once(sd, &req, &device, &mut |_, _| true).expect("generate_once");
    assert!(resident == once, "one-shot images differ");
}

#[test]
fn sd15_matches_diffusers_pngs() {
    run_cases("tiny-sd15", &Device::flex());
}

#[test]
fn sd2_matches_diffusers_pngs() {
    run_cases("tiny-sd2", &Device::flex());
}

/// Inpainting with an ordinary model: a mask that repaints everything is plain image-to-image;
/// with half a mask, the kept half of the final latents is exactly the input's latents (the same
/// as when keeping everything) and the other half is generated.
#[test]
fn mask_repaints_only_the_white_area() {
    let device = Device::flex();
    let sd = StableDiffusion::load(fixture("tiny-sd15"), &device).expect("load");
    let init = load_png("tiny-sd15-init.png");
    let request = |mask: Option<image::GrayImage>| GenerateRequest {
        prompt: "a photograph of an astronaut riding a horse".into(),
        negative_prompt: String::new(),
        width: 64,
        height: 64,
        steps: 5,
        guidance: 7.5,
        scheduler: Some(SamplerKind::Ddim),
        seed: 3,
        rng: RngKind::Torch,
        num_images: 1,
        long_prompt: false,
        max_sequence_length: None,
        true_cfg_scale: None,
        skip_layer_guidance: None,
        init: Some(InitImage {
            image: init.clone(),
            strength: 1.0,
            mask,
            masked: Default::default(),
        }),
    };
    let latents = |mask: Option<image::GrayImage>| -> Vec<f32> {
        denoise(&sd, &request(mask), &device, &mut |_, _| true)
            .expect("denoise")
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("f32")
    };
    let plain = latents(None);
    assert_eq!(
        latents(Some(image::GrayImage::from_pixel(64, 64, image::Luma([255])))),
        plain
    );
    let keep_all = latents(Some(image::GrayImage::new(64, 64)));
    // Right half white: latent columns 4..8 repainted, 0..4 kept. Latents are [1, 4, 8, 8].
    let half = latents(Some(image::GrayImage::from_fn(64, 64, |x, _| {
        image::Luma([if x >= 32 { 255 } else { 0 }])
    })));
    let (mut kept_same, mut painted_diff) = (true, 0.0f32);
    for (i, (h, k)) in half.iter().zip(&keep_all).enumerate() {
        if i % 8 < 4 {
            kept_same &= h == k;
        } else {
            painted_diff += (h - k).abs();
        }
    }
    assert!(kept_same, "the kept half must be the input's latents");
    assert!(painted_diff > 1.0, "the repainted half must change");
    let mut wrong = request(Some(image::GrayImage::new(10, 10)));
    wrong.steps = 5;
    assert!(matches!(
        generate(&sd, &wrong, &device, &mut |_, _| true),
        Err(imagen_engine::Error::BadInput(_))
    ));
}

/// Above twice the VAE's native size the pipeline decodes in tiles (diffusers' tiled decode).
#[test]
fn large_images_decode_in_tiles() {
    let device = Device::flex();
    let sd = StableDiffusion::load(fixture("tiny-sd15"), &device).expect("load");
    let req = GenerateRequest {
        prompt: "a photograph of an astronaut riding a horse".into(),
        negative_prompt: String::new(),
        width: 192, // native 64: 3×
        height: 136,
        steps: 2,
        guidance: 7.5,
        scheduler: None,
        seed: 2,
        rng: RngKind::Torch,
        num_images: 1,
        long_prompt: false,
        max_sequence_length: None,
        true_cfg_scale: None,
        skip_layer_guidance: None,
        init: None,
    };
    let got = generate(&sd, &req, &device, &mut |_, _| true).expect("generate");
    let z = denoise(&sd, &req, &device, &mut |_, _| true).expect("denoise") / sd.vae_config.scaling_factor as f32;
    let want = imagen_engine::pipeline::tensor_to_images(sd.vae.decode_tiled(z.clone(), 8, 0.25)).expect("png");
    assert_eq!(got[0], want[0]);
    let untiled = imagen_engine::pipeline::tensor_to_images(sd.vae.decode(z)).expect("png");
    assert_ne!(got[0], untiled[0], "the tiled path was taken");
}
