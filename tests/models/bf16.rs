//! bf16 CPU weights on AMX tiles (`--dtype bf16` on the cpu backend) against diffusers' f32
//! goldens: the same networks within bf16's rounding (8 significant bits per operand, f32 sums).
//! Skipped, with a note, on CPUs without AMX-BF16.

use burn::tensor::{DType, Device};
use imagen_models::DiffusersFolder;
use imagen_models::StableDiffusion;
use imagen_models::ops::{Routes, cpu_bf16_available};

use crate::common::{Golden, assert_close, case_request, cases, fixture, load_png, png_diff, unet_outputs};

/// Relative to the tensor's scale (as `common::rel_error`); the f32 tests use 1e-4.
const TOL: f32 = 3e-2;

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
fn networks_match_diffusers_within_bf16_rounding() {
    let device = Device::flex();
    bf16(|| {
        let folder = DiffusersFolder::open(fixture("tiny-sd15")).expect("open folder");
        let g = Golden::open("tiny-sd15");
        let te = folder.load_text_encoder(&device).expect("text encoder");
        assert_close(&g, "text_hidden", te.forward(g.ids("text_ids", &device), 0), TOL);
        let unet = folder.load_unet(&device).expect("unet");
        // the AMX route is the one taken: conv and linear weights are stored in bf16
        assert_eq!(unet.conv_in.weight.val().dtype(), DType::BF16);
        for (key, out) in unet_outputs(&g, &unet, &device) {
            assert_close(&g, &key, out, TOL);
        }
        let vae = folder.load_vae(&device).expect("vae");
        let dist = vae.encode(g.tensor("vae_image", &device));
        assert_close(&g, "vae_enc_mean", dist.mean, TOL);
        assert_close(
            &g,
            "vae_dec_image",
            vae.decode(g.tensor("vae_dec_latents", &device)),
            TOL,
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
