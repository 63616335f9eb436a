//! FLUX.1 against `tools/reference/make_flux_fixtures.py`: the T5 encoder, the transformer
//! (schnell-style and dev-style with its guidance embedding), the 16-channel VAE, prompt
//! encoding, and diffusers' FluxPipeline / FluxImg2ImgPipeline PNGs.

use burn::tensor::{Device, Tensor};
use imagen_models::Flux;
use imagen_models::models::flux::{FluxInputs, FluxTransformer2DModel};

use crate::common::{Golden, assert_close, fixture};

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
}

#[test]
fn flux_schnell_components_match_diffusers() {
    components_match("tiny-flux-schnell", "schnell_", &Device::flex());
}

#[test]
fn flux_dev_components_match_diffusers() {
    components_match("tiny-flux-dev", "dev_", &Device::flex());
}
