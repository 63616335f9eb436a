//! SDXL against `tools/reference/make_sdxl_fixtures.py`: both text encoders (penultimate states
//! side by side, projected pooled text, zeros for an empty negative prompt), the UNet with its
//! `text_time` added conditioning, and diffusers' StableDiffusionXL(Img2Img)Pipeline PNGs.

use burn::tensor::{Device, Tensor};
use imagen_engine::pipeline::conditioning;
use imagen_engine::rng::RngKind;
use imagen_engine::{GenerateRequest, generate};
use imagen_models::StableDiffusion;
use imagen_models::models::unet_2d::AddedCond;

use crate::common::{Golden, assert_close, cases, fixture};
use crate::generate::check_case;

const TOL: f32 = 1e-4;

fn request(prompt: &str, negative: &str) -> GenerateRequest {
    GenerateRequest {
        prompt: prompt.into(),
        negative_prompt: negative.into(),
        width: 64,
        height: 64,
        steps: 5,
        guidance: 5.0,
        scheduler: None,
        seed: 0,
        rng: RngKind::Torch,
        num_images: 1,
        long_prompt: false,
        max_sequence_length: None,
        true_cfg_scale: None,
        skip_layer_guidance: None,
        init: None,
    }
}

#[test]
fn sdxl_components_match_diffusers() {
    let device = Device::flex();
    let sd = StableDiffusion::load(fixture("tiny-sdxl"), &device).expect("load");
    let g = Golden::open("tiny-sdxl");
    let req = request("a photograph of an astronaut riding a horse", "blurry");
    let (context, added) = conditioning(&sd, &req, true, &device).expect("conditioning");
    let added = added.expect("SDXL has added conditioning");
    let [_, n, c] = context.dims();
    assert_close(&g, "negative_embeds", context.clone().slice([0..1, 0..n, 0..c]), TOL);
    assert_close(&g, "prompt_embeds", context.slice([1..2, 0..n, 0..c]), TOL);
    let p = added.text_embeds.dims()[1];
    assert_close(
        &g,
        "negative_pooled",
        added.text_embeds.clone().slice([0..1, 0..p]),
        TOL,
    );
    assert_close(&g, "pooled", added.text_embeds.slice([1..2, 0..p]), TOL);

    // force_zeros_for_empty_prompt: an empty negative prompt is zeros, not "" encoded.
    let (context, added) = conditioning(&sd, &request("x", ""), true, &device).expect("conditioning");
    let zeros: f32 = context.slice([0..1, 0..n, 0..c]).abs().sum().into_scalar();
    let zeros_pooled: f32 = added
        .expect("added")
        .text_embeds
        .slice([0..1, 0..p])
        .abs()
        .sum()
        .into_scalar();
    assert_eq!((zeros, zeros_pooled), (0.0, 0.0));

    let (_, t) = g.f32_values("unet_timesteps");
    let (_, ids) = g.f32_values("unet_time_ids");
    let cond = AddedCond {
        text_embeds: g.tensor("unet_text_embeds", &device),
        time_ids: ids.chunks(6).map(|r| [r[0], r[1], r[2], r[3], r[4], r[5]]).collect(),
    };
    let out = sd.unet.forward_with(
        g.tensor("unet_latents", &device),
        &t,
        &g.tensor::<3>("unet_context", &device),
        Some(&cond),
        None,
    );
    assert_close(&g, "unet_out", out, TOL);
    // Without the added conditioning the output must differ (the test would catch ignoring it).
    let plain: Tensor<4> = sd.unet.forward(
        g.tensor("unet_latents", &device),
        &t,
        &g.tensor::<3>("unet_context", &device),
    );
    let (_, want) = g.f32_values("unet_out");
    assert!(crate::common::rel_error(plain, &want) > 1e-2);
}

#[test]
fn sdxl_matches_diffusers_pngs() {
    let device = Device::flex();
    let sd = StableDiffusion::load(fixture("tiny-sdxl"), &device).expect("load");
    let cases = cases("cases-sdxl.json");
    assert!(cases.len() >= 3);
    for case in &cases {
        check_case(&sd, case, &device);
    }
}

/// Long prompts (opt-in): 75-token chunks encoded separately and concatenated; the first chunk is
/// exactly the truncated encoding, the negative prompt is padded to as many chunks, SDXL's
/// pooled text comes from the first chunk. Default: truncation, as diffusers.
#[test]
fn long_prompts_are_chunked_when_asked() {
    let device = Device::flex();
    let long = ["a very long prompt that keeps going"; 20].join(" "); // 140 tokens: 2 chunks
    for model in ["tiny-sd15", "tiny-sdxl"] {
        let sd = StableDiffusion::load(fixture(model), &device).expect("load");
        let mut req = request(&long, "short negative");
        let (cut, cut_added) = conditioning(&sd, &req, true, &device).expect("truncated");
        req.long_prompt = true;
        let (full, full_added) = conditioning(&sd, &req, true, &device).expect("chunked");
        let [b, n, c] = full.dims();
        assert_eq!((b, n), (2, 154), "{model}");
        assert_eq!(cut.dims(), [2, 77, c], "{model}");
        let first: Vec<f32> = full
            .clone()
            .slice([0..2, 0..77, 0..c])
            .into_data()
            .try_to_vec::<f32>()
            .expect("f32");
        let want: Vec<f32> = cut.into_data().try_to_vec::<f32>().expect("f32");
        assert_eq!(first, want, "{model}: the first chunk is the truncated encoding");
        let second: f32 = full.slice([1..2, 77..154, 0..c]).abs().sum().into_scalar();
        assert!(second > 0.0);
        if let (Some(a), Some(b)) = (full_added, cut_added) {
            let (a, b): (Vec<f32>, Vec<f32>) = (
                a.text_embeds.into_data().try_to_vec::<f32>().expect("f32"),
                b.text_embeds.into_data().try_to_vec::<f32>().expect("f32"),
            );
            assert_eq!(a, b, "{model}: pooled text from the first chunk");
        }
        // And it generates.
        req.steps = 2;
        assert_eq!(
            generate(&sd, &req, &device, &mut |_, _| true).expect("generate").len(),
            1
        );
    }
}
