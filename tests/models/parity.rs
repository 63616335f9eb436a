//! Each network against diffusers' own output for the same weights and inputs.
//!
//! Tolerance: max |ours − diffusers| / max |diffusers| ≤ 1e-4 in f32, on every backend.

use burn::tensor::Device;
use imagen_models::DiffusersFolder;
use imagen_models::models::clip::ClipTextModel;

use crate::common::{Golden, assert_close, fixture, unet_outputs};

const TOL: f32 = 1e-4;

fn text_encoder(name: &str, device: &Device) {
    let folder = DiffusersFolder::open(fixture(name)).expect("open folder");
    let te = folder.load_text_encoder(device).expect("load text encoder");
    let g = Golden::open(name);
    let ids = g.ids("text_ids", device);
    assert_close(&g, "text_hidden", te.forward(ids.clone(), 0), TOL);
    assert_close(&g, "text_hidden_skip1", te.forward(ids.clone(), 1), TOL);
    let last = te.forward(ids.clone(), 0);
    let eos = folder.tokenizer().expect("tokenizer").eos_id() as i64;
    let rows: Vec<Vec<i64>> = ids
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .expect("ids")
        .chunks(77)
        .map(<[i64]>::to_vec)
        .collect();
    let eos_pos: Vec<usize> = rows
        .iter()
        .map(|r| r.iter().position(|&t| t == eos).unwrap_or(0))
        .collect();
    assert_close(&g, "text_pooled", ClipTextModel::pooled(last, &eos_pos), TOL);
}

fn unet(name: &str, device: &Device) {
    let unet = DiffusersFolder::open(fixture(name))
        .and_then(|f| f.load_unet(device))
        .expect("load unet");
    let g = Golden::open(name);
    for (key, out) in unet_outputs(&g, &unet, device) {
        assert_close(&g, &key, out, TOL);
    }
}

fn vae(name: &str, device: &Device) {
    let vae = DiffusersFolder::open(fixture(name))
        .and_then(|f| f.load_vae(device))
        .expect("load vae");
    let g = Golden::open(name);
    let dist = vae.encode(g.tensor("vae_image", device));
    assert_close(&g, "vae_enc_mean", dist.mean, TOL);
    assert_close(&g, "vae_enc_std", dist.std, TOL);
    assert_close(
        &g,
        "vae_dec_image",
        vae.decode(g.tensor("vae_dec_latents", device)),
        TOL,
    );
}

mod cpu {
    use super::*;

    fn cpu() -> Device {
        Device::flex()
    }

    #[test]
    fn sd15_text_encoder() {
        text_encoder("tiny-sd15", &cpu());
    }

    #[test]
    fn sd2_text_encoder() {
        text_encoder("tiny-sd2", &cpu());
    }

    #[test]
    fn sd15_unet() {
        unet("tiny-sd15", &cpu());
    }

    #[test]
    fn sd2_unet() {
        unet("tiny-sd2", &cpu());
    }

    #[test]
    fn sd15_vae() {
        vae("tiny-sd15", &cpu());
    }

    #[test]
    fn sd2_vae() {
        vae("tiny-sd2", &cpu());
    }

    /// The Winograd route on every 3×3 convolution: it is chosen from 64×64 outputs up, which
    /// the tiny models reach only in the VAE decoder's last level.
    #[test]
    fn winograd_route_everywhere() {
        use imagen_models::ops::{Routes, Winograd};
        let everywhere = Routes {
            winograd: Winograd::Everywhere,
            ..Routes::current()
        };
        everywhere.scoped(|| {
            unet("tiny-sd15", &cpu());
            vae("tiny-sd15", &cpu());
            unet("tiny-sd2", &cpu());
        });
    }

    /// `*.fp16.safetensors` variant files, converted to f32 on load; the goldens are diffusers'
    /// outputs with the same fp16 weights upcast.
    #[test]
    fn sd15_fp16_variant_all_components() {
        text_encoder("tiny-sd15-fp16", &cpu());
        unet("tiny-sd15-fp16", &cpu());
        vae("tiny-sd15-fp16", &cpu());
    }
}

/// The same checks through burn's wgpu backend (WGSL). In CI this runs on Mesa's lavapipe.
/// Without any wgpu adapter these tests pass with a note, unless IMAGEN_REQUIRE_WGPU=1.
#[cfg(feature = "wgpu")]
mod wgpu {
    use super::*;

    use crate::common::wgpu_device as wgpu;

    #[test]
    fn sd15_unet_and_vae() {
        if let Some(d) = wgpu() {
            unet("tiny-sd15", &d);
            vae("tiny-sd15", &d);
        }
    }

    #[test]
    fn sd2_unet_and_text_encoder() {
        if let Some(d) = wgpu() {
            unet("tiny-sd2", &d);
            text_encoder("tiny-sd2", &d);
        }
    }
}

/// diffusers' `tiled_decode` (32-pixel tiles, overlap 0.25) on latents spanning several tiles
/// both ways, and the untiled decode of the same latents. (How close tiled is to untiled says
/// nothing on random tiny weights, whose global mid-block attention has no locality: 2.5 apart
/// here; that comparison needs real weights.)
#[test]
fn tiled_vae_decode_matches_diffusers() {
    let device = Device::flex();
    let vae = DiffusersFolder::open(fixture("tiny-sd15"))
        .and_then(|f| f.load_vae(&device))
        .expect("load vae");
    let g = Golden::open("tiny-sd15-tiled");
    let z = g.tensor::<4>("latents", &device);
    assert_close(&g, "tiled", vae.decode_tiled(z.clone(), 4, 0.25), TOL);
    assert_close(&g, "untiled", vae.decode(z), TOL);
}

/// TAESD's decoder (diffusers `AutoencoderTiny`) against diffusers (`make_taesd_fixture.py`).
#[test]
fn taesd_decoder_matches_diffusers() {
    let device = Device::flex();
    let (_, decoder) = imagen_models::models::taesd::load(&fixture("tiny-taesd"), &device).expect("load taesd");
    let g = Golden::open("tiny-taesd");
    assert_close(&g, "image", decoder.decode(g.tensor("latents", &device)), TOL);
}
