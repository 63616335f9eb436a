//! Single-file checkpoints against the diffusers folders they were converted from.

use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{DType, Device, Tensor};
use imagen_models::StableDiffusion;
use imagen_models::ops::Routes;

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
    // ...because its linear weights stayed Q4_0 in memory (dequantised per call) and compute
    // the dequantised values exactly; dequantised at load instead: the same image
    assert!(quantized_weights(&gguf.unet) > 0, "no linear weight kept quantized");
    let at_load = Routes {
        keep_quantized: false,
        ..Routes::current()
    };
    let unpacked = at_load
        .scoped(|| {
            StableDiffusion::load_single_file(&fixture("single-file/tiny-sd15-unet-q4_0.gguf"), &config, &device)
        })
        .expect("gguf");
    assert_eq!(quantized_weights(&unpacked.unet), 0);
    assert_eq!(render(&gguf, &case, &device), render(&unpacked, &case, &device));
    // the same on the bf16 AMX route: weights kept Q8_0 round to the bf16 their f32 values round to
    if imagen_models::ops::cpu_bf16_available() {
        let q8 = fixture("single-file/tiny-sd15-q8_0.gguf");
        let bf16 = Routes {
            cpu_bf16: true,
            ..Routes::current()
        };
        let kept = bf16
            .scoped(|| StableDiffusion::load_single_file(&q8, &config, &device))
            .expect("q8");
        let loaded = Routes {
            keep_quantized: false,
            ..bf16
        }
        .scoped(|| StableDiffusion::load_single_file(&q8, &config, &device))
        .expect("q8");
        assert!(quantized_weights(&kept.unet) > 0 && quantized_weights(&loaded.unet) == 0);
        // Not bit for bit: the layers burn computes (the time embedding) read a kept weight
        // dequantised to f32 but a weight packed at load as bf16; the two images differ by bf16's
        // own noise (max 10/255 here), and are as far from the f32 file's image.
        let (a, b) = bf16.scoped(|| (render(&kept, &case, &device), render(&loaded, &case, &device)));
        let ((max_k, mean_k), (max_l, mean_l)) = (png_diff(&rgb(a), &want), png_diff(&rgb(b), &want));
        println!(
            "bf16 from the f32 image: Q8_0 kept max {max_k}, mean {mean_k:.3}; dequantised max {max_l}, mean {mean_l:.3}"
        );
        assert!(
            mean_k <= 1.5 * mean_l && max_k <= 2 * max_l.max(4),
            "kept {max_k}/{mean_k} vs dequantised at load {max_l}/{mean_l}"
        );
    }
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

/// How many of `m`'s parameters are stored block-quantized.
fn quantized_weights<M: Module>(m: &M) -> usize {
    struct Count(usize);
    impl ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            if matches!(p.val().dtype(), DType::QFloat(_)) {
                self.0 += 1;
            }
        }
    }
    let mut c = Count(0);
    m.visit(&mut c);
    c.0
}

/// On wgpu the same GGUF files keep their linear weights quantized too (`gpu::quant`: packed
/// values and scales that burn-cubecl's matmul dequantises as it loads each tile): the image
/// equals the one from weights dequantised at load on the same device within float rounding,
/// and the CPU's image of the same file within 2/255.
#[cfg(feature = "wgpu")]
#[test]
fn gguf_weights_stay_quantized_on_wgpu() {
    let Some(gpu) = crate::common::wgpu_device() else {
        return;
    };
    let (cpu, config) = (Device::flex(), fixture("tiny-sd15"));
    let case = cases("cases.json")
        .into_iter()
        .find(|c| c["png"] == "tiny-sd15-euler_a-img2img.png")
        .expect("case");
    let rgb = |raw: Vec<u8>| image::RgbImage::from_raw(64, 64, raw).expect("64² RGB");
    for file in ["tiny-sd15-q8_0.gguf", "tiny-sd15-unet-q4_0.gguf"] {
        let path = fixture(&format!("single-file/{file}"));
        let load = |device: &Device| StableDiffusion::load_single_file(&path, &config, device).expect(file);
        let kept = load(&gpu);
        assert!(
            quantized_weights(&kept.unet) > 0,
            "{file}: no weight kept quantized on wgpu"
        );
        let at_load = Routes {
            keep_quantized: false,
            ..Routes::current()
        }
        .scoped(|| load(&gpu));
        assert_eq!(quantized_weights(&at_load.unet), 0);
        let got = rgb(render(&kept, &case, &gpu));
        let (max_l, mean_l) = png_diff(&got, &rgb(render(&at_load, &case, &gpu)));
        let (max_c, mean_c) = png_diff(&got, &rgb(render(&load(&cpu), &case, &cpu)));
        println!("{file} on wgpu: {max_l}/{mean_l:.3} from dequantised at load, {max_c}/{mean_c:.3} from the CPU");
        assert!(
            max_l <= 1 && max_c <= 2,
            "{file}: {max_l}/255 from at-load, {max_c}/255 from the CPU"
        );
    }
}
