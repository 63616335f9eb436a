//! The non-default GPU routes (`IMAGEN_GPU_CONV=burn`, `IMAGEN_GPU_ATTENTION=burn`: burn's own
//! conv and attention; `IMAGEN_GPU_FUSED=0`; see `imagen_models::ops::Routes`) against diffusers'
//! goldens on wgpu, f32, same bound as the default routes; the default ones are what every
//! other wgpu test runs.
//!
//! Each test names its routes in full for its own thread (`Routes::scoped`). On Mesa's lavapipe
//! in CI; without a wgpu adapter these tests pass with a note, unless IMAGEN_REQUIRE_WGPU=1.
#![cfg(feature = "wgpu")]

#[path = "models/common.rs"]
mod common;

use burn::tensor::Device;
use common::{Golden, assert_close, fixture, unet_outputs, wgpu_device};
use imagen_models::DiffusersFolder;
use imagen_models::ops::{AttentionRoute, ConvRoute, Routes};

const TOL: f32 = 1e-4;

/// The tiny UNet (3×3, 1×1 and stride-2 convs, self- and cross-attention) and VAE (padded and
/// asymmetric stride-2 convs, single-head attention) against diffusers' goldens.
fn unet_and_vae_match(folder: &DiffusersFolder, g: &Golden, device: &Device) {
    let unet = folder.load_unet(device).expect("unet");
    for (key, out) in unet_outputs(g, &unet, device) {
        assert_close(g, &key, out, TOL);
    }
    let vae = folder.load_vae(device).expect("vae");
    let dist = vae.encode(g.tensor("vae_image", device));
    assert_close(g, "vae_enc_mean", dist.mean, TOL);
    assert_close(g, "vae_dec_image", vae.decode(g.tensor("vae_dec_latents", device)), TOL);
}

/// `run` with these GPU routes on this thread (the CPU's as the defaults).
fn with_routes(conv: ConvRoute, attention: AttentionRoute, im2col_bytes: usize, fused: bool, run: impl FnOnce()) {
    Routes {
        gpu_conv: conv,
        gpu_attention: attention,
        im2col_bytes,
        gpu_fused: fused,
        ..Routes::default()
    }
    .scoped(run)
}

fn text_encoder_matches(folder: &DiffusersFolder, g: &Golden, device: &Device) {
    let te = folder.load_text_encoder(device).expect("text encoder");
    assert_close(g, "text_hidden", te.forward(g.ids("text_ids", device), 0), TOL);
}

/// Text encoder (causal attention), UNet (3×3 and 1×1 convs, self- and cross-attention) and
/// VAE (padded convs, single-head attention) with both routes on.
#[test]
fn burn_convs_and_attention_match_diffusers() {
    let Some(device) = wgpu_device() else { return };
    with_routes(ConvRoute::Burn, AttentionRoute::Burn, 64 << 20, true, || {
        let folder = DiffusersFolder::open(fixture("tiny-sd15")).expect("open folder");
        let g = Golden::open("tiny-sd15");
        text_encoder_matches(&folder, &g, &device);
        unet_and_vae_match(&folder, &g, &device);
    });
}

/// im2col convolutions built a few output rows at a time (the memory bound for large images),
/// forced here with a tiny budget: same outputs as diffusers, stride-2 downsamplers included.
#[test]
fn banded_im2col_convs_match_diffusers() {
    let Some(device) = wgpu_device() else { return };
    with_routes(ConvRoute::Im2col, AttentionRoute::Matmul, 4096, true, || {
        let folder = DiffusersFolder::open(fixture("tiny-sd15")).expect("open folder");
        let g = Golden::open("tiny-sd15");
        unet_and_vae_match(&folder, &g, &device);
    });
}

/// The default routes with the fused kernels off (`IMAGEN_GPU_FUSED=0`: unfused ops, imagen's
/// norm and softmax kernels), the A/B reference for the fused ones.
#[test]
fn unfused_routes_match_diffusers() {
    let Some(device) = wgpu_device() else { return };
    with_routes(ConvRoute::Im2col, AttentionRoute::Matmul, 64 << 20, false, || {
        let folder = DiffusersFolder::open(fixture("tiny-sd15")).expect("open folder");
        let g = Golden::open("tiny-sd15");
        text_encoder_matches(&folder, &g, &device);
        unet_and_vae_match(&folder, &g, &device);
    });
}
