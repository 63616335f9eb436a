//! The alternative GPU routes (`IMAGEN_GPU_CONV=im2col`, `IMAGEN_GPU_ATTENTION=matmul`, see
//! `imagen_models::gpu`) against diffusers' goldens on wgpu, f32, same bound as burn's own ops.
//!
//! Its own test binary: the routes are process-wide switches. On Mesa's lavapipe in CI; without
//! a wgpu adapter these tests pass with a note, unless IMAGEN_REQUIRE_WGPU=1.
#![cfg(feature = "wgpu")]

#[path = "models/common.rs"]
mod common;

use burn::tensor::Device;
use common::{Golden, assert_close, fixture};
use imagen_models::DiffusersFolder;

const TOL: f32 = 1e-4;

fn wgpu() -> Option<Device> {
    let device = imagen_models::device::by_name("wgpu").expect("wgpu backend compiled in");
    let probe = device.clone();
    let ok = std::panic::catch_unwind(move || {
        burn::tensor::Tensor::<1>::from_floats([1.0, 2.0], &probe)
            .sum()
            .into_scalar::<f32>()
    })
    .is_ok();
    if !ok && std::env::var("IMAGEN_REQUIRE_WGPU").is_ok_and(|v| v == "1") {
        panic!("no wgpu adapter, and IMAGEN_REQUIRE_WGPU=1");
    }
    ok.then_some(device)
}

/// Text encoder (causal attention), UNet (3×3 and 1×1 convs, self- and cross-attention) and
/// VAE (padded convs, single-head attention) with both routes on.
#[test]
fn im2col_convs_and_matmul_attention_match_diffusers() {
    let Some(device) = wgpu() else {
        eprintln!("no wgpu adapter: GPU routes not checked here");
        return;
    };
    imagen_models::gpu::set_conv_im2col(true);
    imagen_models::gpu::set_attention_matmul(true);
    let folder = DiffusersFolder::open(fixture("tiny-sd15")).expect("open folder");
    let g = Golden::open("tiny-sd15");

    let te = folder.load_text_encoder(&device).expect("text encoder");
    assert_close(&g, "text_hidden", te.forward(g.ids("text_ids", &device), 0), TOL);

    let unet = folder.load_unet(&device).expect("unet");
    for case in ["unet", "unet_odd"] {
        let (_, t) = g.f32_values(&format!("{case}_timesteps"));
        let out = unet.forward(
            g.tensor(&format!("{case}_latents"), &device),
            &t,
            &g.tensor(&format!("{case}_context"), &device),
        );
        assert_close(&g, &format!("{case}_out"), out, TOL);
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
}
