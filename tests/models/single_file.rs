//! Single-file checkpoints against the diffusers folders they were converted from.

use burn::tensor::Device;
use imagen_models::StableDiffusion;

use crate::common::{cases, fixture};
use crate::generate::check_case;
use crate::lora::render;

/// The tiny SD 1.5, SD 2 and SDXL weights saved as single files (LDM / SGM layouts, OpenCLIP text
/// towers with fused q/k/v; `tools/reference/make_single_file_fixture.py`, checked there with
/// diffusers' `from_single_file`) give the same images as the diffusers folders, bit for bit.
#[test]
fn single_file_checkpoints_equal_the_diffusers_folders() {
    let device = Device::flex();
    for (model, png) in [
        ("tiny-sd15", "tiny-sd15-euler_a-img2img.png"),
        ("tiny-sd2", "tiny-sd2-dpmpp_2m-txt2img.png"),
        ("tiny-sdxl", "tiny-sdxl-txt2img-neg.png"),
    ] {
        let folder = StableDiffusion::load(fixture(model), &device).expect("folder");
        let file = fixture(&format!("single-file/{model}.safetensors"));
        let single = StableDiffusion::load_single_file(&file, &fixture(model), &device).expect("single file");
        let all = if model == "tiny-sdxl" {
            cases("cases-sdxl.json")
        } else {
            cases("cases.json")
        };
        let case = all.into_iter().find(|c| c["png"] == png).expect("case");
        assert_eq!(
            render(&single, &case, &device),
            render(&folder, &case, &device),
            "{model}"
        );
        check_case(&single, &case, &device);
    }
    // The architecture is read from the keys and must match the config folder.
    for (file, config) in [("tiny-sd15", "tiny-sdxl"), ("tiny-sd2", "tiny-sd15")] {
        let file = fixture(&format!("single-file/{file}.safetensors"));
        assert!(StableDiffusion::load_single_file(&file, &fixture(config), &device).is_err());
    }
}

/// A prediction-type override (a sidecar's or `--prediction-type`) is diffusers' scheduler with
/// `prediction_type` replaced.
#[test]
fn prediction_type_override_matches_diffusers() {
    let device = Device::flex();
    let mut sd = StableDiffusion::load_single_file(
        &fixture("single-file/tiny-sd15.safetensors"),
        &fixture("tiny-sd15"),
        &device,
    )
    .expect("single file");
    sd.prediction_type = Some("v_prediction".into());
    for case in cases("cases-override.json") {
        check_case(&sd, &case, &device);
    }
}
