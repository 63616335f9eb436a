//! FLUX.1 against `tools/reference/make_flux_fixtures.py`: the T5 encoder, the transformer
//! (schnell-style and dev-style with its guidance embedding), the 16-channel VAE, prompt
//! encoding, and diffusers' FluxPipeline / FluxImg2ImgPipeline PNGs.

use burn::tensor::{Device, Tensor};
use imagen_engine::flux::encode_prompt;
use imagen_engine::rng::RngKind;
use imagen_engine::{Error, GenerateRequest, InitImage, Model};
use imagen_models::Flux;
use imagen_models::models::flux::{FluxInputs, FluxTransformer2DModel};
use serde_json::Value;

use crate::common::{Golden, assert_close, cases, fixture, load_png, png_diff};

const TOL: f32 = 1e-4;

/// diffusers' `_pack_latents`: `[b, c, h, w]` → `[b, (h/2)(w/2), 4c]`.
fn pack(x: Tensor<4>) -> Tensor<3> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h / 2, 2, w / 2, 2])
        .permute([0, 2, 4, 1, 3, 5])
        .reshape([b, (h / 2) * (w / 2), c * 4])
}

fn components_match(model: &str, prefix: &str, device: &Device) {
    let flux = Flux::load(fixture(model), device).expect("load");
    let g = Golden::open("tiny-flux");
    let key = |k: &str| format!("{prefix}{k}");

    let t5 = flux.text_encoder_2.forward(g.ids(&key("t5_ids"), device));
    assert_close(&g, &key("t5_out"), t5, TOL);

    let latents: Tensor<4> = g.tensor(&key("latents"), device);
    let [_, _, h, w] = latents.dims();
    let (_, t) = g.f32_values(&key("timesteps"));
    let guidance = flux
        .transformer
        .takes_guidance()
        .then(|| g.f32_values(&key("guidance")).1);
    let context: Tensor<3> = g.tensor(&key("context"), device);
    let n_txt = context.dims()[1];
    let mut ids = vec![vec![0.0; 3]; n_txt];
    ids.extend(FluxTransformer2DModel::image_ids(h / 2, w / 2));
    let out = flux.transformer.forward(
        pack(latents),
        FluxInputs {
            context,
            pooled: g.tensor(&key("pooled_in"), device),
            timesteps: &t,
            guidance: guidance.as_deref(),
            ids: &ids,
        },
    );
    assert_close(&g, &key("transformer_out"), out, TOL);

    let decoded = flux.vae.decode(g.tensor(&key("vae_z"), device));
    assert_close(&g, &key("vae_out"), decoded, TOL);

    // the pipeline's prompt encoding: T5 states at the model's default length, CLIP pooled
    let max_len = flux.default_max_sequence_length();
    let p = encode_prompt(&flux, "a photograph of an astronaut riding a horse", max_len, device).expect("encode");
    assert_close(&g, &key("prompt_embeds"), p.embeds, TOL);
    assert_close(&g, &key("pooled"), p.pooled, TOL);
}

/// The request a `cases-flux.json` case describes.
fn case_request(case: &Value) -> GenerateRequest {
    let f = |k: &str| case[k].as_f64().unwrap_or_else(|| panic!("{k}"));
    let true_cfg = f("true_cfg_scale");
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
        true_cfg_scale: (true_cfg > 1.0).then_some(true_cfg),
        skip_layer_guidance: None,
    }
}

/// Every FLUX case (txt2img schnell/dev/true CFG, img2img schnell/dev) against diffusers' PNG:
/// max ≤ 2/255, mean ≤ 0.1/255.
fn generations_match(device: &Device, max_seq: u64) {
    let all: Vec<Value> = cases("cases-flux.json")
        .into_iter()
        .filter(|c| c["max_sequence_length"].as_u64().is_some_and(|n| n <= max_seq))
        .collect();
    let expected = all.len();
    let mut checked = 0;
    for model in ["tiny-flux-schnell", "tiny-flux-dev"] {
        let m = Model::load(&fixture(model), None, device).expect("load");
        for case in all.iter().filter(|c| c["model"] == model) {
            let got = m
                .generate(&case_request(case), device, &mut |_, _| true)
                .unwrap_or_else(|e| panic!("{}: {e}", case["png"]));
            let (max, mean) = png_diff(&got[0], &load_png(case["png"].as_str().expect("png")));
            println!("{}: max {max}/255, mean {mean:.4}/255", case["png"]);
            assert!(
                max <= 2 && mean <= 0.1,
                "{}: max {max}/255, mean {mean:.4}/255",
                case["png"]
            );
            checked += 1;
        }
    }
    assert!(checked == expected && expected > 0, "{checked} of {expected} cases ran");
}

#[test]
fn flux_generations_match_diffusers_pngs() {
    generations_match(&Device::flex(), 512);
}

#[cfg(feature = "wgpu")]
#[test]
fn flux_on_wgpu_matches_diffusers() {
    if let Some(d) = crate::common::wgpu_device() {
        components_match("tiny-flux-dev", "dev_", &d);
        // the cases at 64 T5 tokens (true CFG, both img2img): lavapipe is slow
        generations_match(&d, 64);
    }
}

/// Parameters FLUX does not take are refused by name, not ignored.
#[test]
fn flux_refuses_what_it_does_not_take() {
    let device = Device::flex();
    let schnell = Model::load(&fixture("tiny-flux-schnell"), None, &device).expect("load");
    let dev = Model::load(&fixture("tiny-flux-dev"), None, &device).expect("load");
    let req = |edit: &dyn Fn(&mut GenerateRequest)| {
        let mut r = GenerateRequest {
            prompt: "a cat".into(),
            negative_prompt: String::new(),
            width: 32,
            height: 32,
            steps: 1,
            guidance: 0.0,
            scheduler: None,
            seed: 0,
            rng: RngKind::Torch,
            num_images: 1,
            init: None,
            long_prompt: false,
            max_sequence_length: Some(16),
            true_cfg_scale: None,
            skip_layer_guidance: None,
        };
        edit(&mut r);
        r
    };
    let refused = |m: &Model, req: GenerateRequest, needle: &str| match m.generate(&req, &device, &mut |_, _| true) {
        Err(Error::BadInput(msg)) => assert!(msg.contains(needle), "{msg}"),
        Err(e) => panic!("{needle}: {e}"),
        Ok(_) => panic!("{needle}: accepted"),
    };
    let negative = |r: &mut GenerateRequest| r.negative_prompt = "blurry".into();
    refused(&schnell, req(&negative), "negative prompt");
    refused(&dev, req(&negative), "true_cfg_scale");
    refused(&schnell, req(&|r| r.guidance = 3.5), "guidance");
    refused(&dev, req(&|r| r.width = 40), "multiples of 16");
    refused(
        &dev,
        req(&|r| r.scheduler = Some(imagen_engine::scheduler::SamplerKind::Ddim)),
        "ddim",
    );
    refused(&dev, req(&|r| r.long_prompt = true), "long_prompt");
    // and a FLUX-only parameter on Stable Diffusion
    let sd = Model::load(&fixture("tiny-sd15"), None, &device).expect("load");
    refused(&sd, req(&|_| {}), "max_sequence_length");
    // a request FLUX does take runs
    assert!(dev.generate(&req(&|_| {}), &device, &mut |_, _| true).is_ok());
    // the defaults diffusers documents
    assert_eq!(schnell.default_steps_guidance(), (4, 0.0));
    assert_eq!(dev.default_steps_guidance(), (28, 3.5));
}

#[test]
fn flux_schnell_components_match_diffusers() {
    components_match("tiny-flux-schnell", "schnell_", &Device::flex());
}

#[test]
fn flux_dev_components_match_diffusers() {
    components_match("tiny-flux-dev", "dev_", &Device::flex());
}

/// FLUX transformers as users download them, with the rest from the diffusers folder: Black
/// Forest Labs' single-file layout gives the folder's image; its fp8 form and its Q8_0 GGUF (ComfyUI-GGUF's
/// convention) gives diffusers' image on the same dequantised weights, the blocks kept quantized
/// in memory or dequantised at load alike.
#[test]
fn flux_single_files_load_to_the_same_image() {
    let device = Device::flex();
    let folder = fixture("tiny-flux-dev");
    let all = cases("cases-flux.json");
    let case = all
        .iter()
        .find(|c| c["png"] == "tiny-flux-dev-txt2img-cfg.png")
        .expect("cfg case");
    let run = |m: &Model| {
        m.generate(&case_request(case), &device, &mut |_, _| true)
            .expect("generate")
            .remove(0)
    };
    let check = |got: &image::RgbImage, png: &str| {
        let (max, mean) = png_diff(got, &load_png(png));
        println!("{png}: max {max}/255, mean {mean:.4}/255");
        assert!(max <= 2 && mean <= 0.1, "{png}: max {max}/255, mean {mean:.4}/255");
    };

    let bfl = Model::load(
        &folder,
        Some(&fixture("single-file/tiny-flux-dev-bfl.safetensors")),
        &device,
    )
    .expect("bfl");
    check(&run(&bfl), "tiny-flux-dev-txt2img-cfg.png");

    // fp8 (e4m3fn weights, bf16 the rest) as the flux1-dev-fp8 files: diffusers on its upcast weights
    let fp8 = Model::load(
        &folder,
        Some(&fixture("single-file/tiny-flux-dev-fp8.safetensors")),
        &device,
    )
    .expect("fp8");
    assert_eq!(fp8.weight_formats()["transformer"], ["bf16", "f8_e4m3"]);
    check(&run(&fp8), "tiny-flux-dev-fp8.png");

    let gguf = fixture("single-file/tiny-flux-dev-q8_0.gguf");
    let kept = Model::load(&folder, Some(&gguf), &device).expect("gguf");
    assert_eq!(kept.weight_formats()["transformer"], ["f32", "q8_0"]);
    let image = run(&kept);
    check(&image, "tiny-flux-dev-q8_0.png");
    let routes = imagen_models::ops::Routes {
        keep_quantized: false,
        ..imagen_models::ops::Routes::current()
    };
    let dequantised = routes.scoped(|| run(&Model::load(&folder, Some(&gguf), &device).expect("gguf")));
    assert_eq!(image, dequantised, "kept-quantized and dequantised-at-load differ");
}

/// A FLUX LoRA in diffusers/PEFT names and the same update under kohya's BFL names (fused q/k/v
/// stacked block-diagonally, alpha ≠ rank) both give diffusers' `load_lora_weights` +
/// `fuse_lora(0.8)` image; the base model is untouched afterwards.
#[test]
fn flux_loras_match_diffusers_fused() {
    use imagen_models::load::lora::LoraFile;
    let device = Device::flex();
    let base = Model::load(&fixture("tiny-flux-dev"), None, &device).expect("load");
    let all = cases("cases-flux.json");
    let case = all
        .iter()
        .find(|c| c["png"] == "tiny-flux-dev-txt2img-cfg.png")
        .expect("cfg case");
    let run = |m: &Model| {
        m.generate(&case_request(case), &device, &mut |_, _| true)
            .expect("generate")
            .remove(0)
    };
    for file in ["tiny-flux-peft.safetensors", "tiny-flux-kohya.safetensors"] {
        let lora = LoraFile::open(&fixture(&format!("loras/{file}"))).expect("lora");
        assert_eq!(LoraFile::probe(&fixture(&format!("loras/{file}"))), Some("flux"));
        let patched = base.with_loras(&[(&lora, 0.8)], &device).expect("merge");
        let (max, mean) = png_diff(&run(&patched), &load_png("tiny-flux-dev-lora.png"));
        println!("{file}: max {max}/255, mean {mean:.4}/255");
        assert!(max <= 2 && mean <= 0.1, "{file}: max {max}/255, mean {mean:.4}/255");
    }
    let (max, _) = png_diff(&run(&base), &load_png("tiny-flux-dev-txt2img-cfg.png"));
    assert!(max <= 2, "the base model changed: {max}");
    // an SD LoRA does not fit FLUX
    let sd = LoraFile::open(&fixture("loras/tiny-peft.safetensors")).expect("lora");
    assert!(base.with_loras(&[(&sd, 1.0)], &device).is_err());
}

/// FluxInpaintPipeline: a binarized mask (grey edges on both sides of 0.5) at the latent grid,
/// the kept area reset to the image noised to the next σ after every step.
#[test]
fn flux_inpainting_matches_diffusers() {
    let device = Device::flex();
    let m = Model::load(&fixture("tiny-flux-dev"), None, &device).expect("load");
    for case in cases("cases-flux-inpaint.json") {
        let mut req = case_request(&case);
        let mask = image::open(fixture("golden/generate").join(case["mask"].as_str().expect("mask")))
            .expect("mask")
            .to_luma8();
        if let Some(init) = req.init.as_mut() {
            init.mask = Some(mask);
        }
        let got = m.generate(&req, &device, &mut |_, _| true).expect("generate");
        let (max, mean) = png_diff(&got[0], &load_png(case["png"].as_str().expect("png")));
        println!("{}: max {max}/255, mean {mean:.4}/255", case["png"]);
        assert!(
            max <= 2 && mean <= 0.1,
            "{}: max {max}/255, mean {mean:.4}/255",
            case["png"]
        );
    }
}

/// A folder whose T5 is sharded as transformers saves it (`model-0000N-of-00003.safetensors` +
/// `model.safetensors.index.json`, as FLUX.1 ships `text_encoder_2`), and as the Hub names a
/// variant's shards (`model.fp16-0000N-of-00003.safetensors` + `model.safetensors.index.fp16.json`,
/// what `imagen pull --variant fp16` fetches): the same image.
#[test]
fn flux_with_a_sharded_t5_gives_the_same_image() {
    fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
        std::fs::create_dir_all(to).expect("mkdir");
        for entry in std::fs::read_dir(from).expect("read_dir") {
            let entry = entry.expect("entry");
            let dst = to.join(entry.file_name());
            if entry.file_type().expect("type").is_dir() {
                copy_dir(&entry.path(), &dst);
            } else {
                std::fs::copy(entry.path(), &dst).expect("copy");
            }
        }
    }
    let tmp = tempfile::tempdir().expect("tmp");
    let folder = tmp.path().join("schnell");
    copy_dir(&fixture("tiny-flux-schnell"), &folder);
    std::fs::remove_dir_all(folder.join("text_encoder_2")).expect("rm");
    copy_dir(
        &fixture("sharded/tiny-flux-schnell-text_encoder_2"),
        &folder.join("text_encoder_2"),
    );
    let device = Device::flex();
    let case = cases("cases-flux.json")
        .into_iter()
        .find(|c| c["png"] == "tiny-flux-schnell-txt2img.png")
        .expect("case");
    for layout in ["plain", "hub variant"] {
        if layout == "hub variant" {
            let dir = folder.join("text_encoder_2");
            let index = dir.join("model.safetensors.index.json");
            let mut text = std::fs::read_to_string(&index).expect("index");
            for n in 1..=3 {
                let (from, to) = (
                    format!("model-0000{n}-of-00003.safetensors"),
                    format!("model.fp16-0000{n}-of-00003.safetensors"),
                );
                std::fs::rename(dir.join(&from), dir.join(&to)).expect("rename");
                text = text.replace(&from, &to);
            }
            std::fs::remove_file(&index).expect("rm");
            std::fs::write(dir.join("model.safetensors.index.fp16.json"), text).expect("index");
        }
        let m = Model::load(&folder, None, &device).expect("sharded load");
        let got = m
            .generate(&case_request(&case), &device, &mut |_, _| true)
            .expect("generate");
        let (max, mean) = png_diff(&got[0], &load_png("tiny-flux-schnell-txt2img.png"));
        assert!(max <= 2 && mean <= 0.1, "{layout}: max {max}/255, mean {mean:.4}/255");
    }
}
