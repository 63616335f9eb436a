//! Text-to-image and image-to-image, step for step as diffusers' `StableDiffusionPipeline` and
//! `StableDiffusionImg2ImgPipeline` run them (same noise draws, in the same order).

use burn::tensor::{Device, Int, Tensor, TensorData};
use image::{GrayImage, RgbImage};
use imagen_models::StableDiffusion;
use imagen_models::load::tokenizer::ClipTokenizer;
use imagen_models::models::unet_2d::AddedCond;
use imagen_models::models::vae::{AutoencoderKL, AutoencoderKLConfig};

/// CLIP's end-of-text token.
const EOS: u32 = 49407;

use crate::error::{Error, Result};
use crate::masked::MaskedContent;
use crate::rng::RngKind;
use crate::scheduler::{Sampler, SamplerKind, SchedulerConfig, noise_like};

/// The image to start from, and how much of it to re-noise (0 keeps it, 1 ignores it).
#[derive(Clone)]
pub struct InitImage {
    pub image: RgbImage,
    pub strength: f64,
    /// Inpainting with an ordinary model: white = repaint, black = keep (same size as `image`).
    /// After every step the kept area is reset to the input's latents noised to the next
    /// timestep (diffusers' legacy inpainting), so only the white area is generated.
    pub mask: Option<GrayImage>,
    /// What the repainted area starts from (with a mask).
    pub masked: MaskedContent,
}

impl InitImage {
    /// The image the VAE encodes.
    pub fn encoded(&self) -> RgbImage {
        match &self.mask {
            Some(m) => self.masked.image(&self.image, m),
            None => self.image.clone(),
        }
    }
}

pub struct GenerateRequest {
    pub prompt: String,
    pub negative_prompt: String,
    pub width: usize,
    pub height: usize,
    pub steps: usize,
    /// Classifier-free guidance; ≤ 1 skips the unconditional pass.
    pub guidance: f64,
    /// `None`: the model's own scheduler.
    pub scheduler: Option<SamplerKind>,
    pub seed: u64,
    pub rng: RngKind,
    pub num_images: usize,
    pub init: Option<InitImage>,
    /// Prompts over 75 tokens: encode 75-token chunks separately and concatenate them (the
    /// A1111/ComfyUI convention) instead of truncating as diffusers does.
    pub long_prompt: bool,
    /// T5 tokens the prompt is padded/truncated to (FLUX, SD3); `None`: the model's default.
    pub max_sequence_length: Option<usize>,
    /// True classifier-free guidance with the negative prompt on guidance-distilled models
    /// (diffusers' FLUX `true_cfg_scale`); `None` or ≤ 1: off.
    pub true_cfg_scale: Option<f64>,
    /// SD3's skip-layer guidance; `None`: off.
    pub skip_layer_guidance: Option<SkipLayerGuidance>,
}

/// Skip-layer guidance as diffusers' `StableDiffusion3Pipeline` runs it: on the steps `i` with
/// `start·n < i < stop·n`, one more transformer call on the prompt alone with `layers` skipped,
/// and the guided prediction pushed by `scale × (prompt − skipped)`. Needs CFG.
#[derive(Clone, Debug, PartialEq)]
pub struct SkipLayerGuidance {
    pub layers: Vec<usize>,
    /// diffusers' defaults: 2.8, 0.01, 0.2.
    pub scale: f64,
    pub start: f64,
    pub stop: f64,
}

impl SkipLayerGuidance {
    pub const DEFAULT_SCALE: f64 = 2.8;
    pub const DEFAULT_START: f64 = 0.01;
    pub const DEFAULT_STOP: f64 = 0.2;

    /// Whether step `i` of `n` runs the skipped-layer pass.
    pub fn active(&self, i: usize, n: usize) -> bool {
        let i = i as f64;
        i > n as f64 * self.start && i < n as f64 * self.stop
    }
}

/// Called after each step with (step, total); return `false` to cancel.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize) -> bool;

/// Called after each step with (step, the latents so far `[b, c, h/8, w/8]`): step previews.
pub type StepLatents<'a> = &'a mut dyn FnMut(usize, &Tensor<4>);

/// The sampler a request gets: the one it names, else the model folder's own.
pub fn sampler_for(sd: &StableDiffusion, req: &GenerateRequest) -> Result<Sampler> {
    let mut config: SchedulerConfig = sd.folder.component_config("scheduler")?;
    if let Some(p) = &sd.prediction_type {
        config.prediction_type = p.clone();
    }
    let kind = match req.scheduler {
        Some(k) => k,
        None => SamplerKind::from_config(&config)?,
    };
    Sampler::new(kind, &config, req.steps)
}

pub fn validate(req: &GenerateRequest) -> Result<()> {
    let bad = |m: String| Err(Error::BadInput(m));
    if req.width == 0 || req.height == 0 || !req.width.is_multiple_of(8) || !req.height.is_multiple_of(8) {
        return bad(format!(
            "width and height must be positive multiples of 8 (got {}x{})",
            req.width, req.height
        ));
    }
    if req.num_images == 0 {
        return bad("num_images must be at least 1".into());
    }
    if let Some(init) = &req.init {
        if !(0.0..=1.0).contains(&init.strength) {
            return bad(format!("strength must be between 0 and 1 (got {})", init.strength));
        }
        let (w, h) = init.image.dimensions();
        if w as usize != req.width || h as usize != req.height {
            return bad(format!(
                "the init image is {w}x{h} but {}x{} was asked for",
                req.width, req.height
            ));
        }
    }
    Ok(())
}

/// Run one request; returns `num_images` images.
pub fn generate(
    sd: &StableDiffusion,
    req: &GenerateRequest,
    device: &Device,
    progress: Progress,
) -> Result<Vec<RgbImage>> {
    let latents = denoise(sd, req, device, progress)?;
    decode(&sd.vae, &sd.vae_config, latents)
}

/// [`generate`] for a run that owns the model and ends with it (the CLI's): the UNet and text
/// encoders are dropped once the latents are made, so the VAE decode's activations do not
/// stack on their weights (stable-diffusion.cpp's CLI frees each model after use too). The
/// same images as [`generate`].
pub fn generate_once(
    sd: StableDiffusion,
    req: &GenerateRequest,
    device: &Device,
    progress: Progress,
) -> Result<Vec<RgbImage>> {
    let latents = denoise(&sd, req, device, progress)?;
    let StableDiffusion {
        vae,
        vae_config,
        unet,
        text_encoder,
        text_encoder_2,
        ..
    } = sd;
    drop((unet, text_encoder, text_encoder_2));
    imagen_models::ops::release_scratch();
    decode(&vae, &vae_config, latents)
}

/// The VAE-scaled latents `[b, c, h/8, w/8]` decoded to images (unscaled, then shifted back
/// by the VAE's `shift_factor` where it has one: FLUX, SD3).
pub fn decode(vae: &AutoencoderKL, config: &AutoencoderKLConfig, latents: Tensor<4>) -> Result<Vec<RgbImage>> {
    let mut z = latents / config.scaling_factor as f32;
    if let Some(shift) = config.shift_factor {
        z = z + shift as f32;
    }
    // Images over twice the VAE's native size (e.g. 1024² and up for SD 1.5) are decoded in
    // tiles, as diffusers' `enable_vae_tiling` does: bounded memory, seams blended away.
    let tile = config.sample_size / config.scale_factor();
    let [_, _, h, w] = z.dims();
    let images = if tile > 0 && (h > 2 * tile || w > 2 * tile) {
        vae.decode_tiled(z, tile, 0.25)
    } else {
        vae.decode(z)
    };
    tensor_to_images(images)
}

/// The denoising loop alone: the final latents `[b, c, h/8, w/8]` (VAE-scaled), before decoding.
pub fn denoise(sd: &StableDiffusion, req: &GenerateRequest, device: &Device, progress: Progress) -> Result<Tensor<4>> {
    denoise_with(sd, req, device, progress, &mut |_, _| {})
}

/// [`denoise`], handing the latents to `on_step` after every step (before `progress`).
pub fn denoise_with(
    sd: &StableDiffusion,
    req: &GenerateRequest,
    device: &Device,
    progress: Progress,
    on_step: StepLatents,
) -> Result<Tensor<4>> {
    validate(req)?;
    if req.skip_layer_guidance.is_some() {
        return Err(Error::BadInput("skip-layer guidance applies to SD3 models".into()));
    }
    if req.max_sequence_length.is_some() || req.true_cfg_scale.is_some() {
        return Err(Error::BadInput(
            "max_sequence_length and true_cfg_scale apply to T5-conditioned models (FLUX, SD3)".into(),
        ));
    }
    let mut sampler = sampler_for(sd, req)?;
    let mut rng = req.rng.generator(req.seed);
    let b = req.num_images;
    // LCM-distilled UNets take the guidance scale as an embedding instead of a second
    // (unconditional) pass (diffusers' LatentConsistencyModelPipeline: w = guidance − 1).
    let timestep_cond = sd.unet.guidance_embedding((req.guidance - 1.0) as f32, b, device);
    let cfg = req.guidance > 1.0 && timestep_cond.is_none();

    let (context, added) = conditioning(sd, req, cfg, device)?;

    let f = sd.vae_config.scale_factor();
    let latent_dims = [b, sd.unet_config.in_channels, req.height / f, req.width / f];
    let scaling = sd.vae_config.scaling_factor as f32;
    // With a mask: (mask at latent size, clean init latents, the noise they were noised with).
    let mut keep: Option<(Tensor<4>, Tensor<4>, Tensor<4>)> = None;
    let (mut latents, first) = match &req.init {
        None => (
            noise_like(rng.as_mut(), latent_dims, device) * sampler.init_noise_sigma() as f32,
            0,
        ),
        Some(init) => {
            // a strength too low for one whole step still runs the last one (as A1111 does;
            // diffusers would fail on an empty schedule)
            let first = Sampler::first_step_for_strength(req.steps, init.strength)
                .min(sampler.timesteps().len().saturating_sub(1));
            let image = Tensor::cat(vec![image_to_tensor(&init.encoded(), device); b], 0);
            let dist = sd.vae.encode(image);
            // diffusers: latent_dist.sample(generator), then the noise, from the same generator.
            let sample = dist.mean.clone() + dist.std * noise_like(rng.as_mut(), dist.mean.dims(), device);
            let noise = noise_like(rng.as_mut(), latent_dims, device);
            let x0 = sample * scaling;
            let start = match &init.mask {
                Some(mask) => {
                    let m = mask_to_latent(mask, latent_dims, device)?;
                    let start = init.masked.latents(x0.clone(), &m, rng.as_mut(), device);
                    keep = Some((m, x0, noise.clone()));
                    start
                }
                None => x0,
            };
            (sampler.add_noise(start, noise, first), first)
        }
    };

    let timesteps: Vec<f64> = sampler.timesteps().to_vec();
    let total = timesteps.len() - first;
    // The cross-attention keys and values of the prompt: the same at every step.
    let kv = sd.unet.cross_kv(&context);
    for (i, &t) in timesteps.iter().enumerate().skip(first) {
        let input = if cfg {
            Tensor::cat(vec![latents.clone(), latents.clone()], 0)
        } else {
            latents.clone()
        };
        let input = sampler.scale_model_input(input, i);
        let out = sd
            .unet
            .forward_kv(input, &[t as f32], &kv, added.as_ref(), timestep_cond.as_ref());
        let out = if cfg { guided(out, req.guidance) } else { out };
        latents = sampler.step(out, i, latents, rng.as_mut());
        if let Some((m, x0, noise)) = &keep {
            let known = if i + 1 < timesteps.len() {
                sampler.add_noise(x0.clone(), noise.clone(), i + 1)
            } else {
                x0.clone()
            };
            latents = latents * m.clone() + known * (m.clone().neg() + 1.0);
        }
        on_step(i - first + 1, &latents);
        if !progress(i - first + 1, total) {
            return Err(Error::Cancelled);
        }
    }

    Ok(latents)
}

/// Classifier-free guidance on a batch `[uncond ‖ cond]`: `uncond + g · (cond − uncond)`.
pub(crate) fn guided(out: Tensor<4>, guidance: f64) -> Tensor<4> {
    let [n, c, h, w] = out.dims();
    let uncond = out.clone().slice([0..n / 2, 0..c, 0..h, 0..w]);
    let text = out.slice([n / 2..n, 0..c, 0..h, 0..w]);
    uncond.clone() + (text - uncond) * guidance as f32
}

/// Text conditioning, `[uncond × b, cond × b]` with guidance, else `[cond × b]`: the UNet's
/// context and, for SDXL, its added conditioning (pooled text + size/crop ids).
pub fn conditioning(
    sd: &StableDiffusion,
    req: &GenerateRequest,
    cfg: bool,
    device: &Device,
) -> Result<(Tensor<3>, Option<AddedCond>)> {
    let b = req.num_images;
    // Chunks per text: 1 (truncate, as diffusers) unless long prompts are asked for; the prompt
    // and the negative prompt get the same count so their contexts stack.
    let chunks = if req.long_prompt {
        sd.tokenizer
            .num_chunks(&req.prompt)?
            .max(sd.tokenizer.num_chunks(&req.negative_prompt)?)
    } else {
        1
    };
    // Token ids of every chunk, with each chunk's first end-of-text position (CLIP pools there).
    let ids = |tok: &ClipTokenizer, text: &str| -> Result<Vec<(Tensor<2, Int>, usize)>> {
        tok.encode_chunks(text, chunks)?
            .into_iter()
            .map(|ids| {
                let n = ids.len();
                let eos = ids.iter().position(|&t| t == EOS).unwrap_or(n.saturating_sub(1));
                let ids: Vec<i64> = ids.into_iter().map(i64::from).collect();
                Ok((Tensor::from_data(TensorData::new(ids, [1, n]), device), eos))
            })
            .collect()
    };
    let repeat2 = |t: Tensor<2>| Tensor::cat(vec![t; b], 0);
    let repeat3 = |t: Tensor<3>| Tensor::cat(vec![t; b], 0);
    let Some((tok2, te2)) = &sd.text_encoder_2 else {
        // [1, 77 × chunks, hidden]
        let encode = |text: &str| -> Result<Tensor<3>> {
            let parts = ids(&sd.tokenizer, text)?
                .into_iter()
                .map(|(ids, _)| sd.text_encoder.forward(ids, 0))
                .collect();
            Ok(Tensor::cat(parts, 1))
        };
        let cond = repeat3(encode(&req.prompt)?);
        let context = if cfg {
            Tensor::cat(vec![repeat3(encode(&req.negative_prompt)?), cond], 0)
        } else {
            cond
        };
        return Ok((context, None));
    };
    // SDXL: both encoders' penultimate states side by side; pooled text from the second
    // (of the first chunk).
    let encode = |text: &str| -> Result<(Tensor<3>, Tensor<2>)> {
        let mut parts = Vec::with_capacity(chunks);
        let mut first_pooled = None;
        for ((ids1, _), (ids2, eos2)) in ids(&sd.tokenizer, text)?.into_iter().zip(ids(tok2, text)?) {
            let (h1, _) = sd.text_encoder.penultimate_and_projected(ids1, &[]);
            let (h2, pooled) = te2.penultimate_and_projected(ids2, &[eos2]);
            first_pooled = first_pooled.or(pooled);
            parts.push(Tensor::cat(vec![h1, h2], 2));
        }
        let pooled = first_pooled.ok_or_else(|| Error::BadInput("text_encoder_2 has no text_projection".into()))?;
        Ok((Tensor::cat(parts, 1), pooled))
    };
    let (ctx, pooled) = encode(&req.prompt)?;
    let (mut context, mut text) = (repeat3(ctx), repeat2(pooled));
    if cfg {
        let (neg_ctx, neg_pooled) = if req.negative_prompt.is_empty() && sd.folder.force_zeros_for_empty_prompt {
            (context.clone().zeros_like(), text.clone().zeros_like())
        } else {
            let (c, p) = encode(&req.negative_prompt)?;
            (repeat3(c), repeat2(p))
        };
        context = Tensor::cat(vec![neg_ctx, context], 0);
        text = Tensor::cat(vec![neg_pooled, text], 0);
    }
    // original size, crop top-left, target size: the request's size, no crop.
    let (h, w) = (req.height as f32, req.width as f32);
    let rows = context.dims()[0];
    let added = AddedCond {
        text_embeds: text,
        time_ids: vec![[h, w, 0.0, 0.0, h, w]; rows],
    };
    Ok((context, Some(added)))
}

/// A repaint mask (white = repaint) averaged over each latent pixel's 8×8 block:
/// `[b, 1, h/8, w/8]` in [0, 1], broadcast over the latent channels.
fn mask_to_latent(mask: &GrayImage, latent_dims: [usize; 4], device: &Device) -> Result<Tensor<4>> {
    let [b, _, h, w] = latent_dims;
    let (mw, mh) = (mask.width() as usize, mask.height() as usize);
    if mw == 0 || mh == 0 || mw % w != 0 || mh % h != 0 {
        return Err(Error::BadInput(format!(
            "the mask is {mw}x{mh}; it must be the size of the image"
        )));
    }
    let (fx, fy) = (mw / w, mh / h);
    let mut v = Vec::with_capacity(h * w);
    for y in 0..h {
        for x in 0..w {
            let mut sum = 0u32;
            for dy in 0..fy {
                for dx in 0..fx {
                    sum += mask.get_pixel((x * fx + dx) as u32, (y * fy + dy) as u32)[0] as u32;
                }
            }
            v.push(sum as f32 / (255 * fx * fy) as f32);
        }
    }
    let m = Tensor::<4>::from_data(TensorData::new(v, [1, 1, h, w]), device);
    // [1, 1, h, w] → [b, c, h, w] by repetition (broadcast in the blend).
    Ok(Tensor::cat(vec![m; b], 0).repeat_dim(1, latent_dims[1]))
}

/// RGB u8 → `[1, 3, h, w]` in [-1, 1] (`VaeImageProcessor.preprocess`).
pub fn image_to_tensor(img: &RgbImage, device: &Device) -> Tensor<4> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut chw = vec![0f32; 3 * h * w];
    for (x, y, p) in img.enumerate_pixels() {
        for c in 0..3 {
            chw[c * h * w + y as usize * w + x as usize] = 2.0 * (p[c] as f32 / 255.0) - 1.0;
        }
    }
    Tensor::from_data(TensorData::new(chw, [1, 3, h, w]), device)
}

/// `[b, 3, h, w]` → images, exactly as diffusers: `(x/2 + 0.5).clamp(0, 1)`, ×255, round.
pub fn tensor_to_images(t: Tensor<4>) -> Result<Vec<RgbImage>> {
    let [b, _, h, w] = t.dims();
    let x = (t / 2.0 + 0.5).clamp(0.0, 1.0);
    let v: Vec<f32> = x
        .into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .map_err(|e| Error::Image(format!("{e:?}")))?;
    (0..b)
        .map(|i| {
            let base = i * 3 * h * w;
            let px = |c: usize, y: usize, x: usize| (v[base + c * h * w + y * w + x] * 255.0).round_ties_even() as u8;
            RgbImage::from_fn(w as u32, h as u32, |x, y| {
                let (x, y) = (x as usize, y as usize);
                image::Rgb([px(0, y, x), px(1, y, x), px(2, y, x)])
            })
        })
        .map(Ok)
        .collect()
}

/// [`crate::Model::generate_seeded`] for a Stable Diffusion model.
pub fn generate_seeded(
    sd: &StableDiffusion,
    req: &GenerateRequest,
    device: &Device,
    progress: Progress,
) -> Result<Vec<(RgbImage, u64)>> {
    crate::Model::StableDiffusion(Box::new(sd.clone())).generate_seeded(req, device, progress)
}

/// [`crate::Model::variations`] for a Stable Diffusion model.
pub fn variations(
    sd: &StableDiffusion,
    base: &GenerateRequest,
    image: &RgbImage,
    strength: f64,
    device: &Device,
    progress: Progress,
) -> Result<Vec<RgbImage>> {
    crate::Model::StableDiffusion(Box::new(sd.clone())).variations(base, image, strength, device, progress)
}
