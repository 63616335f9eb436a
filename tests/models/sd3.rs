//! Stable Diffusion 3.5 against `tools/reference/make_sd3_fixtures.py`: the MMDiT (RMS q/k norms,
//! a dual-attention layer, the `context_pre_only` last block, the cropped position table), prompt
//! encoding (both CLIPs' penultimate states padded, then T5; pooled projections), and diffusers'
//! StableDiffusion3(Img2Img)Pipeline PNGs.

use burn::tensor::Device;
use imagen_engine::pipeline::SkipLayerGuidance;
use imagen_engine::rng::RngKind;
use imagen_engine::sd3::encode_prompt;
use imagen_engine::{Error, GenerateRequest, InitImage, Model};
use imagen_models::Sd3;
use serde_json::Value;

use crate::common::{Golden, assert_close, cases, fixture, load_png, png_diff};

const TOL: f32 = 1e-4;

fn components_match(device: &Device) {
    let sd3 = Sd3::load(fixture("tiny-sd35"), device).expect("load");
    let g = Golden::open("tiny-sd35");
    let (_, t) = g.f32_values("timesteps");
    let out = sd3.transformer.forward(
        g.tensor("latents", device),
        g.tensor("context", device),
        g.tensor("pooled_in", device),
        &t,
    );
    assert_close(&g, "transformer_out", out, TOL);
    let p = encode_prompt(&sd3, "a photograph of an astronaut riding a horse", 64, device).expect("encode");
    assert_close(&g, "prompt_embeds", p.embeds, TOL);
    assert_close(&g, "pooled", p.pooled, TOL);
    let n = encode_prompt(&sd3, "blurry", 64, device).expect("encode");
    assert_close(&g, "negative_embeds", n.embeds, TOL);
    assert_close(&g, "negative_pooled", n.pooled, TOL);
}

fn request(case: &Value) -> GenerateRequest {
    let f = |k: &str| case[k].as_f64().unwrap_or_else(|| panic!("{k}"));
    GenerateRequest {
        prompt: case["prompt"].as_str().expect("prompt").into(),
        negative_prompt: case["negative_prompt"].as_str().unwrap_or("").into(),
        width: f("width") as usize,
        height: f("height") as usize,
        steps: f("steps") as usize,
        guidance: f("guidance"),
        scheduler: None,
        seed: f("seed") as u64,
        rng: RngKind::Torch,
        num_images: 1,
        init: case["init"].as_str().map(|p| InitImage {
            image: load_png(p),
            strength: f("strength"),
            mask: None,
            masked: Default::default(),
        }),
        long_prompt: false,
        max_sequence_length: Some(f("max_sequence_length") as usize),
        true_cfg_scale: None,
        skip_layer_guidance: None,
    }
}

fn generations_match(device: &Device) {
    let m = Model::load(&fixture("tiny-sd35"), None, device).expect("load");
    let all = cases("cases-sd3.json");
    for case in &all {
        let got = m
            .generate(&request(case), device, &mut |_, _| true)
            .unwrap_or_else(|e| panic!("{}: {e}", case["png"]));
        let (max, mean) = png_diff(&got[0], &load_png(case["png"].as_str().expect("png")));
        println!("{}: max {max}/255, mean {mean:.4}/255", case["png"]);
        assert!(
            max <= 2 && mean <= 0.1,
            "{}: max {max}/255, mean {mean:.4}/255",
            case["png"]
        );
    }
    assert_eq!(all.len(), 3);
}

#[test]
fn sd35_components_match_diffusers() {
    components_match(&Device::flex());
}

#[test]
fn sd35_generations_match_diffusers_pngs() {
    generations_match(&Device::flex());
}

#[cfg(feature = "wgpu")]
#[test]
fn sd35_on_wgpu_matches_diffusers() {
    if let Some(d) = crate::common::wgpu_device() {
        components_match(&d);
        generations_match(&d);
    }
}

/// What SD3 does not take is refused by name; its defaults are diffusers' for SD3.5 Medium.
#[test]
fn sd3_refuses_what_it_does_not_take() {
    let device = Device::flex();
    let m = Model::load(&fixture("tiny-sd35"), None, &device).expect("load");
    let req = |edit: &dyn Fn(&mut GenerateRequest)| {
        let mut r = GenerateRequest {
            prompt: "a cat".into(),
            negative_prompt: String::new(),
            width: 32,
            height: 32,
            steps: 1,
            guidance: 2.0,
            scheduler: None,
            seed: 0,
            rng: RngKind::Torch,
            num_images: 1,
            init: None,
            long_prompt: false,
            max_sequence_length: Some(8),
            true_cfg_scale: None,
            skip_layer_guidance: None,
        };
        edit(&mut r);
        r
    };
    let refused = |r: GenerateRequest, needle: &str| match m.generate(&r, &device, &mut |_, _| true) {
        Err(Error::BadInput(msg)) => assert!(msg.contains(needle), "{msg}"),
        Err(e) => panic!("{needle}: {e}"),
        Ok(_) => panic!("{needle}: accepted"),
    };
    refused(req(&|r| r.true_cfg_scale = Some(2.0)), "true_cfg_scale");
    refused(req(&|r| r.width = 40), "multiples of 16");
    refused(req(&|r| r.width = 512), "at most");
    refused(
        req(&|r| r.scheduler = Some(imagen_engine::scheduler::SamplerKind::Pndm)),
        "pndm",
    );
    let slg = |layers: Vec<usize>| {
        Some(SkipLayerGuidance {
            layers,
            scale: 2.8,
            start: 0.01,
            stop: 0.2,
        })
    };
    refused(req(&|r| r.skip_layer_guidance = slg(vec![3])), "blocks 0..3");
    refused(
        req(&|r| {
            r.skip_layer_guidance = slg(vec![1]);
            r.guidance = 1.0;
        }),
        "guidance_scale > 1",
    );
    assert!(m.generate(&req(&|_| {}), &device, &mut |_, _| true).is_ok());
    assert_eq!(m.default_steps_guidance(), (40, 4.5));
}

/// Stability AI's single-file layout (MMDiT under its original names, VAE and all three text
/// encoders in the file) with the folder's configs: the folder's image.
#[test]
fn sd35_single_file_loads_to_the_same_image() {
    let device = Device::flex();
    let m = Model::load(
        &fixture("tiny-sd35"),
        Some(&fixture("single-file/tiny-sd35.safetensors")),
        &device,
    )
    .expect("single file");
    for component in ["transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"] {
        assert_eq!(m.weight_formats()[component], ["f32"], "{component}");
    }
    let all = cases("cases-sd3.json");
    let case = all.iter().find(|c| c["png"] == "tiny-sd35-txt2img.png").expect("case");
    let got = m.generate(&request(case), &device, &mut |_, _| true).expect("generate");
    let (max, mean) = png_diff(&got[0], &load_png("tiny-sd35-txt2img.png"));
    assert!(max <= 2 && mean <= 0.1, "max {max}/255, mean {mean:.4}/255");
}

/// StableDiffusion3InpaintPipeline (strength 0.8 and 1.0; the mask is shown to matter) and
/// skip-layer guidance (shown to change the image), against `make_sd3_extras_fixtures.py`.
#[test]
fn sd35_inpainting_and_skip_layer_guidance_match_diffusers() {
    let device = Device::flex();
    let m = Model::load(&fixture("tiny-sd35"), None, &device).expect("load");
    let all = cases("cases-sd3-extras.json");
    assert_eq!(all.len(), 3);
    for case in &all {
        let mut req = request(case);
        if let (Some(init), Some(mask)) = (req.init.as_mut(), case["mask"].as_str()) {
            let mask = image::open(fixture("golden/generate").join(mask)).expect("mask");
            init.mask = Some(mask.to_luma8());
        }
        if let Some(slg) = case.get("skip_layer_guidance") {
            let f = |k: &str| slg[k].as_f64().expect("slg field");
            req.skip_layer_guidance = Some(SkipLayerGuidance {
                layers: slg["layers"]
                    .as_array()
                    .expect("layers")
                    .iter()
                    .map(|l| l.as_u64().expect("layer") as usize)
                    .collect(),
                scale: f("scale"),
                start: f("start"),
                stop: f("stop"),
            });
        }
        let want = load_png(case["png"].as_str().expect("png"));
        let got = m.generate(&req, &device, &mut |_, _| true).expect("generate");
        let (max, mean) = png_diff(&got[0], &want);
        println!("{}: max {max}/255, mean {mean:.4}/255", case["png"]);
        assert!(
            max <= 2 && mean <= 0.1,
            "{}: max {max}/255, mean {mean:.4}/255",
            case["png"]
        );
        // without the mask / the skip-layer pass the image is not diffusers'
        if let Some(init) = req.init.as_mut() {
            init.mask = None;
        }
        req.skip_layer_guidance = None;
        let plain = m.generate(&req, &device, &mut |_, _| true).expect("generate");
        let (max, _) = png_diff(&plain[0], &want);
        assert!(
            max > 8,
            "{}: the mask / skip-layer guidance made no difference ({max})",
            case["png"]
        );
    }
}

/// SD3.5 transformers in low precision as users download them: ComfyUI's scaled fp8 (weights
/// stored over a per-tensor `scale_weight`) and city96's Q8_0 GGUF (kept quantized), each giving
/// diffusers' image on the weights the file dequantises to.
#[test]
fn sd35_fp8_and_gguf_load_to_the_same_image() {
    let device = Device::flex();
    let all = cases("cases-sd3.json");
    let case = all.iter().find(|c| c["png"] == "tiny-sd35-txt2img.png").expect("case");
    for (file, formats, png) in [
        (
            "tiny-sd35-fp8-scaled.safetensors",
            vec!["bf16", "f32", "f8_e4m3"],
            "tiny-sd35-fp8-scaled.png",
        ),
        ("tiny-sd35-q8_0.gguf", vec!["f32", "q8_0"], "tiny-sd35-q8_0.png"),
    ] {
        let m = Model::load(
            &fixture("tiny-sd35"),
            Some(&fixture(&format!("single-file/{file}"))),
            &device,
        )
        .expect(file);
        assert_eq!(m.weight_formats()["transformer"], formats, "{file}");
        let got = m.generate(&request(case), &device, &mut |_, _| true).expect("generate");
        let (max, mean) = png_diff(&got[0], &load_png(png));
        println!("{file}: max {max}/255, mean {mean:.4}/255");
        assert!(max <= 2 && mean <= 0.1, "{file}: max {max}/255, mean {mean:.4}/255");
    }
}
