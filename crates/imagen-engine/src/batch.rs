//! Dynamic batching: several single-image text-to-image requests on one Stable Diffusion model
//! denoised as one UNet batch, each keeping its own prompt, negative prompt, seed and guidance.
//! Each item draws its noise from its own generator and steps its own sampler, so it gets the
//! draws it would get alone; only the UNet's arithmetic is shared (batch rows, so results match
//! a lone run to float rounding, well within 1/255 after decoding).

use burn::tensor::{Device, Tensor};
use imagen_models::StableDiffusion;
use imagen_models::models::unet_2d::AddedCond;

use crate::error::{Error, Result};
use crate::pipeline::{GenerateRequest, conditioning, sampler_for, validate};
use crate::scheduler::{Sampler, noise_like};

/// Called after each step with (item, step, total, that item's latents `[1, c, h/8, w/8]`);
/// `false` drops the item from the batch (cancelled).
pub type ItemStep<'a> = &'a mut dyn FnMut(usize, usize, usize, &Tensor<4>) -> bool;

/// What requests must share to ride in one batch; `None`: this one runs alone (image-to-image,
/// long prompts, several images, SD3/FLUX options).
pub fn batch_key(sd: &StableDiffusion, req: &GenerateRequest) -> Option<String> {
    if req.init.is_some()
        || req.num_images != 1
        || req.long_prompt
        || req.max_sequence_length.is_some()
        || req.true_cfg_scale.is_some()
        || req.skip_layer_guidance.is_some()
    {
        return None;
    }
    // Guidance-embedding (LCM) UNets take the guidance per batch; others mix guidances freely
    // but not CFG with no CFG (the unconditional half of the batch).
    let embedded = sd.unet.time_embedding.cond_proj.is_some();
    let guidance = match embedded {
        true => format!("w{}", req.guidance),
        false => format!("cfg{}", req.guidance > 1.0),
    };
    Some(format!(
        "{}x{}|{}|{:?}|{:?}|{guidance}",
        req.width, req.height, req.steps, req.scheduler, req.rng
    ))
}

/// Image `i` of `req` as a request of its own: seed `seed + i`, one image (the server's batch
/// semantics: any image can be reproduced alone).
pub fn single(req: &GenerateRequest, i: usize) -> GenerateRequest {
    GenerateRequest {
        prompt: req.prompt.clone(),
        negative_prompt: req.negative_prompt.clone(),
        seed: req.seed.wrapping_add(i as u64),
        num_images: 1,
        init: req.init.clone(),
        skip_layer_guidance: req.skip_layer_guidance.clone(),
        ..*req
    }
}

/// Denoises `reqs` (all with the same [`batch_key`]) together; the final latents of each
/// (`None` for items dropped by `step`).
pub fn denoise_batch(
    sd: &StableDiffusion,
    reqs: &[GenerateRequest],
    device: &Device,
    step: ItemStep,
) -> Result<Vec<Option<Tensor<4>>>> {
    let first = reqs.first().ok_or_else(|| Error::BadInput("an empty batch".into()))?;
    let key = batch_key(sd, first);
    for r in reqs {
        validate(r)?;
        if key.is_none() || batch_key(sd, r) != key {
            return Err(Error::BadInput("these requests cannot share a batch".into()));
        }
    }
    let mut samplers: Vec<Sampler> = reqs.iter().map(|r| sampler_for(sd, r)).collect::<Result<_>>()?;
    let mut rngs: Vec<_> = reqs.iter().map(|r| r.rng.generator(r.seed)).collect();
    let embedded = sd.unet.time_embedding.cond_proj.is_some();
    let cfg = first.guidance > 1.0 && !embedded;
    // each item's [uncond; cond] (or [cond]) rows, and SDXL's added conditioning
    let conds = reqs
        .iter()
        .map(|r| conditioning(sd, r, cfg, device))
        .collect::<Result<Vec<_>>>()?;
    let f = sd.vae_config.scale_factor();
    let dims = [1, sd.unet_config.in_channels, first.height / f, first.width / f];
    let mut latents: Vec<Tensor<4>> = rngs
        .iter_mut()
        .zip(&samplers)
        .map(|(rng, s)| noise_like(rng.as_mut(), dims, device) * s.init_noise_sigma() as f32)
        .collect();
    let timesteps: Vec<f64> = samplers[0].timesteps().to_vec();
    let total = timesteps.len();
    let mut active: Vec<usize> = (0..reqs.len()).collect();
    let mut shared = None;
    for (i, &t) in timesteps.iter().enumerate() {
        // the batch's conditioning, rebuilt when an item leaves
        let (kv, added, timestep_cond) = shared.get_or_insert_with(|| {
            let rows = |half: usize| -> Vec<Tensor<3>> {
                active.iter().map(|&k| conds[k].0.clone().narrow(0, half, 1)).collect()
            };
            let context = match cfg {
                true => Tensor::cat([rows(0), rows(1)].concat(), 0),
                false => Tensor::cat(rows(0), 0),
            };
            let added = conds[active[0]].1.as_ref().map(|a0| {
                let text = |half: usize| -> Vec<Tensor<2>> {
                    active
                        .iter()
                        .filter_map(|&k| conds[k].1.as_ref())
                        .map(|a| a.text_embeds.clone().narrow(0, half, 1))
                        .collect()
                };
                let text_embeds = match cfg {
                    true => Tensor::cat([text(0), text(1)].concat(), 0),
                    false => Tensor::cat(text(0), 0),
                };
                let rows = text_embeds.dims()[0];
                AddedCond {
                    text_embeds,
                    time_ids: vec![a0.time_ids[0]; rows],
                }
            });
            let timestep_cond = sd
                .unet
                .guidance_embedding((first.guidance - 1.0) as f32, active.len(), device);
            (sd.unet.cross_kv(&context), added, timestep_cond)
        });
        let x = Tensor::cat(active.iter().map(|&k| latents[k].clone()).collect(), 0);
        let input = if cfg { Tensor::cat(vec![x.clone(), x], 0) } else { x };
        let input = samplers[active[0]].scale_model_input(input, i);
        let out = sd
            .unet
            .forward_kv(input, &[t as f32], kv, added.as_ref(), timestep_cond.as_ref());
        let m = active.len();
        let mut keep = Vec::with_capacity(m);
        for (j, &k) in active.iter().enumerate() {
            let own = if cfg {
                // as `pipeline::guided` computes it for a lone request
                let uncond = out.clone().narrow(0, j, 1);
                let text = out.clone().narrow(0, m + j, 1);
                uncond.clone() + (text - uncond) * reqs[k].guidance as f32
            } else {
                out.clone().narrow(0, j, 1)
            };
            latents[k] = samplers[k].step(own, i, latents[k].clone(), rngs[k].as_mut());
            if step(k, i + 1, total, &latents[k]) {
                keep.push(k);
            }
        }
        if keep.len() != m {
            active = keep;
            shared = None;
            if active.is_empty() {
                break;
            }
        }
    }
    let mut out: Vec<Option<Tensor<4>>> = vec![None; reqs.len()];
    for k in active {
        out[k] = Some(latents[k].clone());
    }
    Ok(out)
}
