//! Single-file checkpoints against the diffusers folders they were converted from.

use burn::tensor::Device;
use imagen_models::StableDiffusion;

use crate::common::{cases, fixture, png_diff};
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

/// GGUF files as users download them (`tools/reference/make_gguf_pipeline_fixture.py`, written
/// by the `gguf` package from the single-file fixture): the whole checkpoint in Q8_0/F16/F32
/// (stable-diffusion.cpp's layout), and a UNet alone in Q4_0 without its prefix (ComfyUI-GGUF's,
/// the rest from the config folder). Both generate the f32 file's image within a bound that
/// grows with the block type's rounding (Q8_0: 1/254 of a block's max; Q4_0: 1/14).
#[test]
fn gguf_files_generate_the_f32_image_within_their_rounding() {
    let device = Device::flex();
    let config = fixture("tiny-sd15");
    let f32_file = StableDiffusion::load_single_file(&fixture("single-file/tiny-sd15.safetensors"), &config, &device)
        .expect("f32 single file");
    let case = cases("cases.json")
        .into_iter()
        .find(|c| c["png"] == "tiny-sd15-euler_a-img2img.png")
        .expect("case");
    let rgb = |raw: Vec<u8>| image::RgbImage::from_raw(64, 64, raw).expect("64² RGB");
    let want = rgb(render(&f32_file, &case, &device));
    for (file, block, max_bound, mean_bound) in [
        ("tiny-sd15-q8_0.gguf", "q8_0", 4, 0.5),
        ("tiny-sd15-unet-q4_0.gguf", "q4_0", 48, 6.0),
    ] {
        let sd = StableDiffusion::load_single_file(&fixture(&format!("single-file/{file}")), &config, &device)
            .unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(
            sd.weight_formats["unet"].iter().any(|f| f == block),
            "{file}: {:?}",
            sd.weight_formats
        );
        let got = rgb(render(&sd, &case, &device));
        let (max, mean) = png_diff(&got, &want);
        println!("{file}: max {max}/255, mean {mean:.3}/255 from the f32 file's image");
        assert!(
            max <= max_bound && mean <= mean_bound,
            "{file}: max {max}/255, mean {mean:.3}/255"
        );
    }
    // the Q4_0 UNet as the gguf package dequantises it, in an f32 safetensors file: the same image
    let gguf = StableDiffusion::load_single_file(&fixture("single-file/tiny-sd15-unet-q4_0.gguf"), &config, &device)
        .expect("gguf");
    let dequantised = StableDiffusion::load_single_file(
        &fixture("single-file/tiny-sd15-unet-q4_0.dequantised.safetensors"),
        &config,
        &device,
    )
    .expect("dequantised");
    assert_eq!(render(&gguf, &case, &device), render(&dequantised, &case, &device));
    // a UNet-only file for another architecture names the first tensor that does not fit
    let e = StableDiffusion::load_single_file(
        &fixture("single-file/tiny-sd15-unet-q4_0.gguf"),
        &fixture("tiny-sdxl"),
        &device,
    )
    .err()
    .expect("SD 1.5 UNet with an SDXL config")
    .to_string();
    assert!(
        e.contains("unet") && e.contains("input_blocks") || e.contains("shape"),
        "{e}"
    );
}
