//! FLUX.1 text-to-image and image-to-image, step for step as diffusers' `FluxPipeline` and
//! `FluxImg2ImgPipeline` run them: CLIP's pooled prompt and T5's states, latents drawn in
//! `[b, 16, h/8, w/8]` and packed 2×2 into tokens, flow-matching Euler on the shifted σ
//! schedule, dev's guidance embedding, optional true CFG with a negative prompt.

use burn::tensor::{Device, Int, Tensor, TensorData};
use image::RgbImage;
use imagen_models::Flux;
use imagen_models::models::flux::{FluxInputs, FluxTransformer2DModel};

use crate::error::{Error, Result};
use crate::flow_init;
use crate::pipeline::{GenerateRequest, Progress, StepLatents, decode};
use crate::scheduler::{Sampler, SamplerKind, dynamic_shift_mu};

/// The prompt as the transformer takes it: T5 states `[b, n, 4096]` and CLIP's pooled output
/// `[b, 768]` (full-size widths).
pub struct FluxPrompt {
    pub embeds: Tensor<3>,
    pub pooled: Tensor<2>,
}

/// What a FLUX request may not ask for; the clear 400 where diffusers would silently ignore it.
pub fn validate(flux: &Flux, req: &GenerateRequest) -> Result<()> {
    crate::pipeline::validate(req)?;
    let bad = |m: &str| Err(Error::BadInput(m.into()));
    if !req.width.is_multiple_of(16) || !req.height.is_multiple_of(16) {
        return Err(Error::BadInput(format!(
            "FLUX needs width and height in multiples of 16 (got {}x{})",
            req.width, req.height
        )));
    }
    let dev = flux.transformer.takes_guidance();
    if !dev && !req.negative_prompt.is_empty() {
        return bad("FLUX.1-schnell takes no negative prompt");
    }
    if !dev && req.guidance > 1.0 {
        return bad("FLUX.1-schnell takes no guidance scale (it is guidance-distilled; use 0)");
    }
    if req.skip_layer_guidance.is_some() {
        return bad("skip-layer guidance applies to SD3 models, not FLUX");
    }
    match (req.true_cfg_scale, req.negative_prompt.is_empty()) {
        (Some(s), true) if s > 1.0 => return bad("true_cfg_scale needs a negative_prompt"),
        (None, false) => {
            return bad("a negative prompt on FLUX needs true_cfg_scale > 1 (true classifier-free guidance)");
        }
        (Some(s), false) if s <= 1.0 => return bad("a negative prompt on FLUX needs true_cfg_scale > 1"),
        _ => {}
    }
    if req.long_prompt {
        return bad(
            "long_prompt applies to CLIP-conditioned models; FLUX reads long prompts through T5 (max_sequence_length)",
        );
    }
    if req.max_sequence_length.is_some_and(|n| n == 0 || n > 512) {
        return bad("max_sequence_length must be between 1 and 512");
    }
    Ok(())
}

/// `encode_prompt` for one text: (`[1, n, d]`, `[1, pooled]`).
pub fn encode_prompt(flux: &Flux, text: &str, max_len: usize, device: &Device) -> Result<FluxPrompt> {
    let ids = flux.tokenizer.encode(text)?;
    let eos = ids
        .iter()
        .position(|&t| t == flux.tokenizer.eos_id())
        .unwrap_or(ids.len() - 1);
    let n = ids.len();
    let ids: Vec<i64> = ids.into_iter().map(i64::from).collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, n]), device);
    let last = flux.text_encoder.forward(ids, 0);
    let pooled = imagen_models::models::clip::ClipTextModel::pooled(last, &[eos]);

    let ids: Vec<i64> = flux
        .tokenizer_2
        .encode(text, max_len)?
        .into_iter()
        .map(i64::from)
        .collect();
    let ids = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, max_len]), device);
    Ok(FluxPrompt {
        embeds: flux.text_encoder_2.forward(ids),
        pooled,
    })
}

/// diffusers' `_pack_latents`: `[b, c, h, w]` → `[b, (h/2)(w/2), 4c]`.
pub fn pack(x: Tensor<4>) -> Tensor<3> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h / 2, 2, w / 2, 2])
        .permute([0, 2, 4, 1, 3, 5])
        .reshape([b, (h / 2) * (w / 2), c * 4])
}

/// `_unpack_latents`: `[b, (h/2)(w/2), 4c]` → `[b, c, h, w]`.
pub fn unpack(x: Tensor<3>, h: usize, w: usize) -> Tensor<4> {
    let [b, _, c4] = x.dims();
    x.reshape([b, h / 2, w / 2, c4 / 4, 2, 2])
        .permute([0, 3, 1, 4, 2, 5])
        .reshape([b, c4 / 4, h, w])
}

/// numpy's `linspace(1, 1/n, n)`, FLUX's σ before shifting.
fn flux_linspace(n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![1.0];
    }
    let step = (1.0 / n as f64 - 1.0) / (n - 1) as f64;
    (0..n)
        .map(|i| {
            if i + 1 == n {
                1.0 / n as f64
            } else {
                i as f64 * step + 1.0
            }
        })
        .collect()
}

/// The sampler for a request on this model's scheduler config.
fn sampler(flux: &Flux, req: &GenerateRequest, image_seq_len: usize) -> Result<Sampler> {
    let config = flow_init::flow_config(&flux.folder, "FLUX")?;
    let mu = dynamic_shift_mu(&config, image_seq_len);
    let kind = req.scheduler.unwrap_or(SamplerKind::Euler);
    Sampler::flow(kind, &config, req.steps, Some(flux_linspace(req.steps)), Some(mu))
}

/// Run one request; returns `num_images` images (one generator for the batch, as diffusers).
pub fn generate(flux: &Flux, req: &GenerateRequest, device: &Device, progress: Progress) -> Result<Vec<RgbImage>> {
    let latents = denoise(flux, req, device, progress, &mut |_, _| {})?;
    decode(&flux.vae, &flux.vae_config, latents)
}

/// What a request is conditioned on: its prompt and, with true CFG, its negative prompt, each
/// repeated for the batch. Computed apart from the denoising so that a caller short of memory
/// can drop T5 before the transformer is resident (`imagen bench --component generate`).
pub struct FluxConditioning {
    pub cond: FluxPrompt,
    pub uncond: Option<FluxPrompt>,
}

/// The true-CFG scale a request asks for, if any.
fn true_cfg(req: &GenerateRequest) -> Option<f64> {
    req.true_cfg_scale
        .filter(|&s| s > 1.0 && !req.negative_prompt.is_empty())
}

/// Validates the request and encodes its prompts (CLIP's pooled output and T5's states).
pub fn encode(flux: &Flux, req: &GenerateRequest, device: &Device) -> Result<FluxConditioning> {
    validate(flux, req)?;
    let b = req.num_images;
    let max_len = req.max_sequence_length.unwrap_or(flux.default_max_sequence_length());
    let repeat = |p: FluxPrompt| FluxPrompt {
        embeds: Tensor::cat(vec![p.embeds; b], 0),
        pooled: Tensor::cat(vec![p.pooled; b], 0),
    };
    let cond = repeat(encode_prompt(flux, &req.prompt, max_len, device)?);
    let uncond = match true_cfg(req) {
        Some(_) => Some(repeat(encode_prompt(flux, &req.negative_prompt, max_len, device)?)),
        None => None,
    };
    Ok(FluxConditioning { cond, uncond })
}

/// The denoising loop: the final latents `[b, c, h/8, w/8]` (VAE-scaled and shifted).
pub fn denoise(
    flux: &Flux,
    req: &GenerateRequest,
    device: &Device,
    progress: Progress,
    on_step: StepLatents,
) -> Result<Tensor<4>> {
    let conditioning = encode(flux, req, device)?;
    denoise_encoded(flux, req, &conditioning, device, progress, on_step)
}

/// [`denoise`] from prompts already encoded by [`encode`] (the text encoders are not used).
pub fn denoise_encoded(
    flux: &Flux,
    req: &GenerateRequest,
    conditioning: &FluxConditioning,
    device: &Device,
    progress: Progress,
    on_step: StepLatents,
) -> Result<Tensor<4>> {
    validate(flux, req)?;
    let b = req.num_images;
    let (cond, uncond) = (&conditioning.cond, &conditioning.uncond);
    let max_len = cond.embeds.dims()[1];
    let true_cfg = true_cfg(req);

    let f = flux.vae_config.scale_factor();
    let (lh, lw) = (2 * (req.height / (f * 2)), 2 * (req.width / (f * 2)));
    let c = flux.transformer_config.latent_channels();
    let dims = [b, c, lh, lw];
    let mut sampler = sampler(flux, req, (lh / 2) * (lw / 2))?;
    let mut rng = req.rng.generator(req.seed);
    let start = flow_init::start(req, (&flux.vae, &flux.vae_config), &sampler, dims, rng.as_mut(), device)?;
    let (mut latents, first) = (start.latents, start.first);

    let mut ids = vec![vec![0.0; 3]; max_len];
    ids.extend(FluxTransformer2DModel::image_ids(lh / 2, lw / 2));
    let guidance = flux.transformer.takes_guidance().then(|| vec![req.guidance as f32; b]);
    let timesteps = sampler.timesteps().to_vec();
    let total = timesteps.len() - first;
    for (i, &t) in timesteps.iter().enumerate().skip(first) {
        // the pipeline passes `timestep / 1000` (f32); the model scales it back
        let ts = vec![t as f32 / 1000.0; b];
        let run = |p: &FluxPrompt| {
            let inputs = FluxInputs {
                context: p.embeds.clone(),
                pooled: p.pooled.clone(),
                timesteps: &ts,
                guidance: guidance.as_deref(),
                ids: &ids,
            };
            flux.transformer.forward(pack(latents.clone()), inputs)
        };
        let mut pred = run(cond);
        if let (Some(scale), Some(neg)) = (true_cfg, uncond) {
            let neg = run(neg);
            pred = neg.clone() + (pred - neg) * scale as f32;
        }
        latents = sampler.step(unpack(pred, lh, lw), i, latents, rng.as_mut());
        if let Some(keep) = &start.keep {
            latents = keep.apply(&sampler, i, latents);
        }
        on_step(i - first + 1, &latents);
        if !progress(i - first + 1, total) {
            return Err(Error::Cancelled);
        }
    }
    Ok(latents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_matches_numpy() {
        assert_eq!(flux_linspace(4), vec![1.0, 0.75, 0.5, 0.25]);
        assert_eq!(flux_linspace(1), vec![1.0]);
        let five = flux_linspace(5);
        assert_eq!(five[4], 0.2);
        assert!((five[1] - 0.8).abs() < 1e-15);
    }
}
