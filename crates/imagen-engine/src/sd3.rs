//! Stable Diffusion 3 / 3.5 text-to-image and image-to-image, step for step as diffusers'
//! `StableDiffusion3Pipeline` and `StableDiffusion3Img2ImgPipeline`: both CLIPs' penultimate
//! states side by side (zero-padded to T5's width) followed by T5's states, pooled projections
//! concatenated, classifier-free guidance with the negative prompt (and optional skip-layer
//! guidance), a flow-matching sampler; masked edits as `StableDiffusion3InpaintPipeline`.

use burn::tensor::{Device, Int, Tensor, TensorData};
use image::RgbImage;
use imagen_models::Sd3;
use imagen_models::load::tokenizer::ClipTokenizer;
use imagen_models::models::clip::ClipTextModel;

use crate::error::{Error, Result};
use crate::flow_init;
use crate::pipeline::{GenerateRequest, Progress, StepLatents, decode, guided};
use crate::scheduler::{Sampler, SamplerKind, dynamic_shift_mu};

/// diffusers' default T5 length for SD3.
pub const DEFAULT_MAX_SEQUENCE_LENGTH: usize = 256;

/// The prompt as the transformer takes it: `[b, 77 + n, joint]` and `[b, pooled]`.
pub struct Sd3Prompt {
    pub embeds: Tensor<3>,
    pub pooled: Tensor<2>,
}

pub fn validate(sd3: &Sd3, req: &GenerateRequest) -> Result<()> {
    crate::pipeline::validate(req)?;
    let bad = |m: &str| Err(Error::BadInput(m.into()));
    let f = sd3.vae_config.scale_factor() * sd3.transformer_config.patch_size;
    if !req.width.is_multiple_of(f) || !req.height.is_multiple_of(f) {
        return Err(Error::BadInput(format!(
            "SD3 needs width and height in multiples of {f} (got {}x{})",
            req.width, req.height
        )));
    }
    let max = sd3.transformer.max_latent_side() * sd3.vae_config.scale_factor();
    if req.width > max || req.height > max {
        return Err(Error::BadInput(format!("this SD3 model generates at most {max}x{max}")));
    }
    if req.true_cfg_scale.is_some() {
        return bad("true_cfg_scale applies to FLUX; SD3 guides with guidance_scale");
    }
    if req.long_prompt {
        return bad("long_prompt applies to SD 1.x/2.x/XL; SD3 reads long prompts through T5 (max_sequence_length)");
    }
    if let Some(slg) = &req.skip_layer_guidance {
        let n = sd3.transformer.transformer_blocks.len();
        if slg.layers.is_empty() || slg.layers.iter().any(|&l| l >= n) {
            return Err(Error::BadInput(format!(
                "skip_guidance_layers must name transformer blocks 0..{n} (this model has {n})"
            )));
        }
        if req.guidance <= 1.0 {
            return bad("skip-layer guidance needs classifier-free guidance (guidance_scale > 1)");
        }
        if !(0.0..=1.0).contains(&slg.start) || !(0.0..=1.0).contains(&slg.stop) || !slg.scale.is_finite() {
            return bad("skip_layer_guidance_start and _stop must lie in [0, 1]");
        }
    }
    if req.max_sequence_length.is_some_and(|n| n == 0 || n > 512) {
        return bad("max_sequence_length must be between 1 and 512");
    }
    Ok(())
}

/// Token ids of `text` for a CLIP tokenizer, with the first end-of-text position.
fn clip_ids(tok: &ClipTokenizer, text: &str, device: &Device) -> Result<(Tensor<2, Int>, usize)> {
    let ids = tok.encode(text)?;
    let n = ids.len();
    let eos = ids.iter().position(|&t| t == tok.eos_id()).unwrap_or(n - 1);
    let ids: Vec<i64> = ids.into_iter().map(i64::from).collect();
    Ok((Tensor::from_data(TensorData::new(ids, [1, n]), device), eos))
}

/// `encode_prompt` for one text: (`[1, 77 + max_len, joint]`, `[1, pooled]`).
pub fn encode_prompt(sd3: &Sd3, text: &str, max_len: usize, device: &Device) -> Result<Sd3Prompt> {
    let clip = |tok: &ClipTokenizer, te: &ClipTextModel| -> Result<(Tensor<3>, Tensor<2>)> {
        let (ids, eos) = clip_ids(tok, text, device)?;
        let (hidden, pooled) = te.penultimate_and_projected(ids, &[eos]);
        let pooled = pooled.ok_or_else(|| Error::BadInput("an SD3 text encoder has no text_projection".into()))?;
        Ok((hidden, pooled))
    };
    let (h1, p1) = clip(&sd3.tokenizer, &sd3.text_encoder)?;
    let (h2, p2) = clip(&sd3.tokenizer_2, &sd3.text_encoder_2)?;
    let clip_states = Tensor::cat(vec![h1, h2], 2);
    let joint = sd3.transformer_config.joint_attention_dim;
    let [_, n, width] = clip_states.dims();
    if width > joint {
        return Err(Error::BadInput(format!(
            "the CLIP states are {width} wide, more than the transformer's {joint}"
        )));
    }
    let clip_states = if width < joint {
        Tensor::cat(vec![clip_states, Tensor::zeros([1, n, joint - width], device)], 2)
    } else {
        clip_states
    };
    let t5 = match &sd3.t5 {
        Some((tok, te)) => {
            let ids: Vec<i64> = tok.encode(text, max_len)?.into_iter().map(i64::from).collect();
            te.forward(Tensor::from_data(TensorData::new(ids, [1, max_len]), device))
        }
        None => Tensor::zeros([1, max_len, joint], device),
    };
    Ok(Sd3Prompt {
        embeds: Tensor::cat(vec![clip_states, t5], 1),
        pooled: Tensor::cat(vec![p1, p2], 1),
    })
}

fn sampler(sd3: &Sd3, req: &GenerateRequest, image_seq_len: usize) -> Result<Sampler> {
    let config = flow_init::flow_config(&sd3.folder, "SD3")?;
    let mu = config
        .use_dynamic_shifting
        .then(|| dynamic_shift_mu(&config, image_seq_len));
    Sampler::flow(
        req.scheduler.unwrap_or(SamplerKind::Euler),
        &config,
        req.steps,
        None,
        mu,
    )
}

/// Run one request; returns `num_images` images (one generator for the batch, as diffusers).
pub fn generate(sd3: &Sd3, req: &GenerateRequest, device: &Device, progress: Progress) -> Result<Vec<RgbImage>> {
    let latents = denoise(sd3, req, device, progress, &mut |_, _| {})?;
    decode(&sd3.vae, &sd3.vae_config, latents)
}

/// The denoising loop: the final latents `[b, 16, h/8, w/8]` (VAE-scaled and shifted).
pub fn denoise(
    sd3: &Sd3,
    req: &GenerateRequest,
    device: &Device,
    progress: Progress,
    on_step: StepLatents,
) -> Result<Tensor<4>> {
    validate(sd3, req)?;
    let b = req.num_images;
    let max_len = req.max_sequence_length.unwrap_or(DEFAULT_MAX_SEQUENCE_LENGTH);
    let cfg = req.guidance > 1.0;
    let repeat = |p: Sd3Prompt| Sd3Prompt {
        embeds: Tensor::cat(vec![p.embeds; b], 0),
        pooled: Tensor::cat(vec![p.pooled; b], 0),
    };
    let mut prompt = repeat(encode_prompt(sd3, &req.prompt, max_len, device)?);
    let positive = req.skip_layer_guidance.as_ref().map(|_| Sd3Prompt {
        embeds: prompt.embeds.clone(),
        pooled: prompt.pooled.clone(),
    });
    if cfg {
        let neg = repeat(encode_prompt(sd3, &req.negative_prompt, max_len, device)?);
        prompt = Sd3Prompt {
            embeds: Tensor::cat(vec![neg.embeds, prompt.embeds], 0),
            pooled: Tensor::cat(vec![neg.pooled, prompt.pooled], 0),
        };
    }

    let f = sd3.vae_config.scale_factor();
    let (lh, lw) = (req.height / f, req.width / f);
    let p = sd3.transformer_config.patch_size;
    let dims = [b, sd3.transformer_config.in_channels, lh, lw];
    let mut sampler = sampler(sd3, req, (lh / p) * (lw / p))?;
    let mut rng = req.rng.generator(req.seed);
    let start = flow_init::start(req, (&sd3.vae, &sd3.vae_config), &sampler, dims, rng.as_mut(), device)?;
    let (mut latents, first) = (start.latents, start.first);
    let timesteps = sampler.timesteps().to_vec();
    let total = timesteps.len() - first;
    for (i, &t) in timesteps.iter().enumerate().skip(first) {
        let input = if cfg {
            Tensor::cat(vec![latents.clone(), latents.clone()], 0)
        } else {
            latents.clone()
        };
        let rows = input.dims()[0];
        let out = sd3.transformer.forward(
            input,
            prompt.embeds.clone(),
            prompt.pooled.clone(),
            &vec![t as f32; rows],
        );
        let mut pred = if cfg {
            guided(out.clone(), req.guidance)
        } else {
            out.clone()
        };
        if let (Some(slg), Some(pos)) = (&req.skip_layer_guidance, &positive)
            && slg.active(i - first, total)
        {
            let text = out.narrow(0, b, b);
            let skipped = sd3.transformer.forward_skipping(
                latents.clone(),
                pos.embeds.clone(),
                pos.pooled.clone(),
                &vec![t as f32; b],
                &slg.layers,
            );
            pred = pred + (text - skipped) * slg.scale as f32;
        }
        latents = sampler.step(pred, i, latents, rng.as_mut());
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
