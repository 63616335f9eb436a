//! Dynamic batching (`imagen_engine::batch`): requests denoised together as one UNet batch,
//! each with its own prompt, negative prompt, seed and guidance, give each the image it gets
//! alone, within 1/255 (the batch changes only the UNet's float rounding).

use burn::tensor::Device;
use imagen_engine::batch::{batch_key, denoise_batch};
use imagen_engine::rng::RngKind;
use imagen_engine::scheduler::SamplerKind;
use imagen_engine::{GenerateRequest, generate};
use imagen_models::StableDiffusion;

use crate::common::{fixture, png_diff};

fn request(prompt: &str, negative: &str, seed: u64, guidance: f64, sampler: &str, steps: usize) -> GenerateRequest {
    GenerateRequest {
        prompt: prompt.into(),
        negative_prompt: negative.into(),
        width: 64,
        height: 64,
        steps,
        guidance,
        scheduler: Some(SamplerKind::parse(sampler).expect("sampler")),
        seed,
        rng: RngKind::Torch,
        num_images: 1,
        init: None,
        long_prompt: false,
        max_sequence_length: None,
        true_cfg_scale: None,
        skip_layer_guidance: None,
    }
}

/// Runs `reqs` as one batch and alone; every image within 1/255; `drop` leaves the batch
/// after step 2. Returns how many per-item steps were reported.
fn check(model: &str, reqs: &[GenerateRequest], drop: Option<usize>) -> usize {
    let device = Device::flex();
    let sd = StableDiffusion::load(fixture(model), &device).expect("load");
    let key = batch_key(&sd, &reqs[0]);
    assert!(key.is_some(), "{model}: batchable");
    assert!(reqs.iter().all(|r| batch_key(&sd, r) == key));
    let mut steps = 0;
    let batched = denoise_batch(&sd, reqs, &device, &mut |k, step, _, _| {
        steps += 1;
        Some(k) != drop || step < 2
    })
    .expect("batch");
    for (k, (req, latents)) in reqs.iter().zip(batched).enumerate() {
        let Some(latents) = latents else {
            assert_eq!(Some(k), drop, "{model}: item {k} went missing");
            continue;
        };
        let got = imagen_engine::pipeline::decode(&sd.vae, &sd.vae_config, latents).expect("decode");
        let alone = generate(&sd, req, &device, &mut |_, _| true).expect("alone");
        let (max, mean) = png_diff(&got[0], &alone[0]);
        println!("{model} item {k}: max {max}/255, mean {mean:.4}/255");
        assert!(max <= 1, "{model} item {k}: max {max}/255, mean {mean:.4}/255");
    }
    steps
}

#[test]
fn batched_images_equal_lone_runs() {
    // ancestral sampling: every item draws its step noise from its own generator
    let sd15 = [
        request("a red cube", "blurry", 1, 7.5, "euler_a", 4),
        request("a blue sphere on grass", "", 2, 3.0, "euler_a", 4),
        request("a lighthouse at night", "daylight", 3, 12.0, "euler_a", 4),
    ];
    assert_eq!(check("tiny-sd15", &sd15, None), 3 * 4);
    // multistep history per item; SDXL's pooled text and size ids; an empty negative prompt
    // (zeros on SDXL) beside a written one
    let sdxl = [
        request("a castle", "", 5, 5.0, "dpmpp_2m", 3),
        request("a river in a forest", "fog", 6, 8.0, "dpmpp_2m", 3),
    ];
    check("tiny-sdxl", &sdxl, None);
    // guidance as an embedding (LCM): no unconditional half
    let lcm = [
        request("a cat", "", 7, 8.0, "lcm", 2),
        request("a dog on a sofa", "", 8, 8.0, "lcm", 2),
    ];
    check("tiny-lcm", &lcm, None);
}

#[test]
fn a_cancelled_item_leaves_the_batch_and_the_rest_finish() {
    let reqs = [
        request("a red cube", "", 1, 7.5, "ddim", 5),
        request("a blue sphere", "", 2, 6.0, "ddim", 5),
        request("a green cone", "", 3, 9.0, "ddim", 5),
    ];
    // item 1 reports steps 1 and 2, then is gone; the others run all 5
    assert_eq!(check("tiny-sd15", &reqs, Some(1)), 2 + 2 * 5);
}

#[test]
fn what_cannot_share_a_batch_is_refused() {
    let device = Device::flex();
    let sd = StableDiffusion::load(fixture("tiny-sd15"), &device).expect("load");
    let a = request("a", "", 1, 7.5, "euler", 3);
    let mut b = request("b", "", 2, 7.5, "euler", 3);
    b.width = 72;
    assert_ne!(batch_key(&sd, &a), batch_key(&sd, &b), "sizes differ");
    let no_cfg = request("c", "", 3, 1.0, "euler", 3);
    assert_ne!(batch_key(&sd, &a), batch_key(&sd, &no_cfg), "CFG or not");
    assert!(denoise_batch(&sd, &[a, b], &device, &mut |_, _, _, _| true).is_err());
    let mut long = request("d", "", 4, 7.5, "euler", 3);
    long.long_prompt = true;
    assert_eq!(batch_key(&sd, &long), None);
}
