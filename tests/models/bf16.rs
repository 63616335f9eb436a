//! bf16 CPU weights on AMX tiles (`--dtype bf16` on the cpu backend) against diffusers' f32
//! goldens: each network's error must be no worse than PyTorch's own bf16 error on the same
//! network and inputs (`tools/reference/bf16_error_tiny.py` → `bf16-torch-error.json`).
//! Skipped, with a note, on CPUs without AMX-BF16.

use burn::tensor::{DType, Device};
use imagen_models::DiffusersFolder;
use imagen_models::StableDiffusion;
use imagen_models::ops::{Routes, cpu_bf16_available};

use crate::common::{Golden, assert_close, case_request, cases, fixture, load_png, png_diff, unet_outputs};

/// PyTorch bf16's max relative error against PyTorch f32 for golden `key`.
fn torch_error(key: &str) -> f32 {
    let path = fixture("golden").join("bf16-torch-error.json");
    let text = std::fs::read_to_string(&path).expect("bf16-torch-error.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v[key].as_f64().unwrap_or_else(|| panic!("{key} in {}", path.display())) as f32
}

fn bf16<R>(f: impl FnOnce() -> R) -> Option<R> {
    if !cpu_bf16_available() {
        eprintln!("no AMX-BF16 on this CPU: bf16 tests skipped");
        return None;
    }
    Some(
        Routes {
            cpu_bf16: true,
            ..Routes::current()
        }
        .scoped(f),
    )
}

#[test]
fn networks_in_bf16_err_no_more_than_pytorch_bf16() {
    let device = Device::flex();
    bf16(|| {
        let folder = DiffusersFolder::open(fixture("tiny-sd15")).expect("open folder");
        let g = Golden::open("tiny-sd15");
        let te = folder.load_text_encoder(&device).expect("text encoder");
        assert_close(
            &g,
            "text_hidden",
            te.forward(g.ids("text_ids", &device), 0),
            torch_error("text_hidden"),
        );
        let unet = folder.load_unet(&device).expect("unet");
        // the AMX route is the one taken: conv and linear weights are stored in bf16
        assert_eq!(unet.conv_in.weight.val().dtype(), DType::BF16);
        for (key, out) in unet_outputs(&g, &unet, &device) {
            let tol = torch_error(&key);
            assert_close(&g, &key, out, tol);
        }
        let vae = folder.load_vae(&device).expect("vae");
        let dist = vae.encode(g.tensor("vae_image", &device));
        assert_close(&g, "vae_enc_mean", dist.mean, torch_error("vae_enc_mean"));
        assert_close(
            &g,
            "vae_dec_image",
            vae.decode(g.tensor("vae_dec_latents", &device)),
            torch_error("vae_dec_image"),
        );
    });
}

/// A whole generation in bf16 against diffusers' f32 PNG: close, not equal (the f32 route's
/// bound is max 2/255, mean 0.1/255).
#[test]
fn generation_in_bf16_stays_close_to_f32() {
    let device = Device::flex();
    bf16(|| {
        let sd = StableDiffusion::load(fixture("tiny-sd15"), &device).expect("load");
        let case = cases("cases.json")
            .into_iter()
            .find(|c| c["model"] == "tiny-sd15")
            .expect("a tiny-sd15 case");
        let got = imagen_engine::generate(&sd, &case_request(&case), &device, &mut |_, _| true).expect("generate");
        let want = load_png(case["png"].as_str().expect("png"));
        let (max, mean) = png_diff(&got[0], &want);
        println!("{}: bf16 max {max}/255, mean {mean:.3}/255", case["png"]);
        assert!(
            mean <= 3.0 && max <= 48,
            "{}: max {max}/255, mean {mean:.3}/255",
            case["png"]
        );
    });
}
