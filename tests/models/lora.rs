//! LoRA against diffusers' `load_lora_weights` + `fuse_lora(lora_scale)`
//! (`tools/reference/make_lora_fixtures.py`), in kohya and diffusers/PEFT names; merging leaves
//! the base model untouched.

use burn::tensor::Device;
use imagen_engine::generate;
use imagen_models::StableDiffusion;
use imagen_models::load::lora::LoraFile;

use crate::common::{cases, fixture};
use crate::generate::check_case;

#[test]
fn lora_matches_diffusers_fuse_lora_in_both_formats() {
    let device = Device::flex();
    let base = StableDiffusion::load(fixture("tiny-sd15"), &device).expect("load");
    let base_case = cases("cases.json")
        .into_iter()
        .find(|c| c["png"] == "tiny-sd15-euler-txt2img.png")
        .expect("base case");
    let before = render(&base, &base_case, &device);
    let lora_cases = cases("cases-lora.json");
    assert_eq!(lora_cases.len(), 2);
    for file in ["tiny-peft.safetensors", "tiny-kohya.safetensors"] {
        let lora = LoraFile::open(&fixture("loras").join(file)).expect("open lora");
        for case in &lora_cases {
            let scale = case["lora_scale"].as_f64().expect("scale") as f32;
            let patched = base.with_loras(&[(&lora, scale)], &device).expect("merge");
            println!("{file} at {scale}:");
            check_case(&patched, case, &device);
        }
    }
    // The base model is untouched: the same image bit for bit, and still diffusers' image.
    assert_eq!(render(&base, &base_case, &device), before);
    check_case(&base, &base_case, &device);

    // A LoRA for another architecture is refused, not half applied.
    let xl = StableDiffusion::load(fixture("tiny-sdxl"), &device).expect("load xl");
    let lora = LoraFile::open(&fixture("loras/tiny-kohya.safetensors")).expect("open");
    assert!(xl.with_loras(&[(&lora, 1.0)], &device).is_err());
}

pub fn render(sd: &StableDiffusion, case: &serde_json::Value, device: &Device) -> Vec<u8> {
    let req = imagen_engine::GenerateRequest {
        prompt: case["prompt"].as_str().expect("prompt").into(),
        negative_prompt: case["negative_prompt"].as_str().unwrap_or("").into(),
        width: 64,
        height: 64,
        steps: 3,
        guidance: 7.5,
        scheduler: None,
        seed: 1,
        rng: imagen_engine::rng::RngKind::Torch,
        num_images: 1,
        init: None,
        long_prompt: false,
        max_sequence_length: None,
        true_cfg_scale: None,
        skip_layer_guidance: None,
    };
    generate(sd, &req, device, &mut |_, _| true)
        .expect("generate")
        .remove(0)
        .into_raw()
}
