//! A loaded model of any family, behind the one interface the worker, the server and the CLI
//! use: they pick it from the model folder ([`Model::load`]) and call [`Model::generate`] and
//! friends. Each family's pipeline lives in its own module (`pipeline` for Stable Diffusion,
//! `flux` for FLUX.1); adding a family is a variant here and its module.

use std::collections::BTreeMap;
use std::path::Path;

use burn::tensor::{Device, Tensor};
use image::RgbImage;
use imagen_models::load::lora::LoraFile;
use imagen_models::{DiffusersFolder, Family, Flux, Sd3, StableDiffusion};

use crate::error::{Error, Result};
use crate::pipeline::{self, GenerateRequest, InitImage, Progress, StepLatents};

/// Every component of one model, loaded. Cloning is cheap: the weights are shared.
#[derive(Clone)]
pub enum Model {
    StableDiffusion(Box<StableDiffusion>),
    Flux(Box<Flux>),
    Sd3(Box<Sd3>),
}

impl Model {
    /// The model in a diffusers folder, or a single-file checkpoint with `folder` giving its
    /// configs (and, for a FLUX transformer file, its text encoders and VAE).
    pub fn load(folder: &Path, single_file: Option<&Path>, device: &Device) -> Result<Self> {
        let family = DiffusersFolder::open(folder)?.family();
        Ok(match (family, single_file) {
            (Family::StableDiffusion, Some(file)) => {
                Model::StableDiffusion(Box::new(StableDiffusion::load_single_file(file, folder, device)?))
            }
            (Family::StableDiffusion, None) => Model::StableDiffusion(Box::new(StableDiffusion::load(folder, device)?)),
            (Family::Flux, None) => Model::Flux(Box::new(Flux::load(folder, device)?)),
            (Family::Sd3, None) => Model::Sd3(Box::new(Sd3::load(folder, device)?)),
            (Family::Sd3, Some(file)) => Model::Sd3(Box::new(Sd3::load_single_file(file, folder, device)?)),
            (Family::Flux, Some(file)) => Model::Flux(Box::new(Flux::load_single_file(file, folder, device)?)),
        })
    }

    pub fn family(&self) -> Family {
        match self {
            Model::StableDiffusion(_) => Family::StableDiffusion,
            Model::Flux(_) => Family::Flux,
            Model::Sd3(_) => Family::Sd3,
        }
    }

    pub fn folder(&self) -> &DiffusersFolder {
        match self {
            Model::StableDiffusion(sd) => &sd.folder,
            Model::Flux(f) => &f.folder,
            Model::Sd3(s) => &s.folder,
        }
    }

    /// Channels of the latents the model denoises (what a tiny preview decoder must take):
    /// 4 for SD 1.x/2.x/XL, 16 for FLUX.1 and SD3.
    pub fn latent_channels(&self) -> usize {
        match self {
            Model::StableDiffusion(sd) => sd.vae_config.latent_channels,
            Model::Flux(f) => f.vae_config.latent_channels,
            Model::Sd3(s) => s.vae_config.latent_channels,
        }
    }

    /// Width = height the model generates by default.
    pub fn native_size(&self) -> usize {
        match self {
            Model::StableDiffusion(sd) => sd.unet_config.sample_size * sd.vae_config.scale_factor(),
            // diffusers' FluxPipeline: `default_sample_size` 128 latents
            Model::Flux(f) => 128 * f.vae_config.scale_factor(),
            Model::Sd3(s) => s.transformer_config.sample_size * s.vae_config.scale_factor(),
        }
    }

    /// (steps, guidance) when a request names none: diffusers' pipeline defaults, or the
    /// distilled variant's (FLUX.1-schnell 4 steps without guidance; dev 28 at 3.5).
    pub fn default_steps_guidance(&self) -> (usize, f64) {
        match self {
            Model::StableDiffusion(sd) if sd.folder.is_xl() => (50, 5.0),
            Model::StableDiffusion(_) => (50, 7.5),
            Model::Flux(f) if f.transformer.takes_guidance() => (28, 3.5),
            Model::Flux(_) => (4, 0.0),
            Model::Sd3(s) => sd3_defaults(&s.transformer_config),
        }
    }

    pub fn num_params(&self) -> usize {
        match self {
            Model::StableDiffusion(sd) => sd.num_params(),
            Model::Flux(f) => f.num_params(),
            Model::Sd3(s) => s.num_params(),
        }
    }

    pub fn weight_formats(&self) -> &BTreeMap<&'static str, Vec<String>> {
        match self {
            Model::StableDiffusion(sd) => &sd.weight_formats,
            Model::Flux(f) => &f.weight_formats,
            Model::Sd3(s) => &s.weight_formats,
        }
    }

    /// Overrides the scheduler's `prediction_type` (Stable Diffusion single files).
    pub fn set_prediction_type(&mut self, p: Option<String>) -> Result<()> {
        match self {
            Model::StableDiffusion(sd) => sd.prediction_type = p,
            Model::Flux(_) | Model::Sd3(_) if p.is_none() => {}
            Model::Flux(_) | Model::Sd3(_) => {
                return Err(Error::BadInput(
                    "flow-matching models take no prediction_type override".into(),
                ));
            }
        }
        Ok(())
    }

    /// A copy with `loras` merged; `self` is unchanged.
    pub fn with_loras(&self, loras: &[(&LoraFile, f32)], device: &Device) -> Result<Self> {
        match self {
            Model::StableDiffusion(sd) => Ok(Model::StableDiffusion(Box::new(sd.with_loras(loras, device)?))),
            Model::Flux(f) => Ok(Model::Flux(Box::new(f.with_loras(loras, device)?))),
            Model::Sd3(_) => Err(Error::BadInput(format!(
                "LoRA for {} models is not supported yet",
                self.family().name()
            ))),
        }
    }

    /// Run one request; returns `num_images` images (one generator for the batch, as diffusers).
    pub fn generate(&self, req: &GenerateRequest, device: &Device, progress: Progress) -> Result<Vec<RgbImage>> {
        match self {
            Model::StableDiffusion(sd) => pipeline::generate(sd, req, device, progress),
            Model::Flux(f) => crate::flux::generate(f, req, device, progress),
            Model::Sd3(s) => crate::sd3::generate(s, req, device, progress),
        }
    }

    /// [`Self::generate`] for a run that owns the model and ends with it (the CLI's): the
    /// denoiser and text encoders are dropped before the VAE decode.
    pub fn generate_once(self, req: &GenerateRequest, device: &Device, progress: Progress) -> Result<Vec<RgbImage>> {
        match self {
            Model::StableDiffusion(sd) => pipeline::generate_once(*sd, req, device, progress),
            Model::Flux(f) => {
                let latents = crate::flux::denoise(&f, req, device, progress, &mut |_, _| {})?;
                let Flux { vae, vae_config, .. } = *f;
                imagen_models::ops::release_scratch();
                pipeline::decode(&vae, &vae_config, latents)
            }
            Model::Sd3(s) => {
                let latents = crate::sd3::denoise(&s, req, device, progress, &mut |_, _| {})?;
                let Sd3 { vae, vae_config, .. } = *s;
                imagen_models::ops::release_scratch();
                pipeline::decode(&vae, &vae_config, latents)
            }
        }
    }

    /// The denoising loop alone, handing the latents to `on_step` after every step (TAESD
    /// previews): the final latents, VAE-scaled.
    pub fn denoise_with(
        &self,
        req: &GenerateRequest,
        device: &Device,
        progress: Progress,
        on_step: StepLatents,
    ) -> Result<Tensor<4>> {
        match self {
            Model::StableDiffusion(sd) => pipeline::denoise_with(sd, req, device, progress, on_step),
            Model::Flux(f) => crate::flux::denoise(f, req, device, progress, on_step),
            Model::Sd3(s) => crate::sd3::denoise(s, req, device, progress, on_step),
        }
    }

    /// Final latents (VAE-scaled) to images, with the model's own VAE.
    pub fn decode(&self, latents: Tensor<4>) -> Result<Vec<RgbImage>> {
        match self {
            Model::StableDiffusion(sd) => pipeline::decode(&sd.vae, &sd.vae_config, latents),
            Model::Flux(f) => pipeline::decode(&f.vae, &f.vae_config, latents),
            Model::Sd3(s) => pipeline::decode(&s.vae, &s.vae_config, latents),
        }
    }

    /// `num_images` images, image `i` generated alone from seed `seed + i` (the server's batch
    /// semantics: any one can be reproduced by itself). Progress counts all images' steps.
    pub fn generate_seeded(
        &self,
        req: &GenerateRequest,
        device: &Device,
        progress: Progress,
    ) -> Result<Vec<(RgbImage, u64)>> {
        self.generate_seeded_with(req, device, progress, &mut |_, _| {})
    }

    /// [`Self::generate_seeded`], handing each image's latents to `on_step` after every step
    /// (the step within that image).
    pub fn generate_seeded_with(
        &self,
        req: &GenerateRequest,
        device: &Device,
        progress: Progress,
        on_step: StepLatents,
    ) -> Result<Vec<(RgbImage, u64)>> {
        pipeline::validate(req)?;
        let n = req.num_images;
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let one = crate::batch::single(req, i);
            let seed = one.seed;
            let mut each = |step: usize, total: usize| progress(i * total + step, n * total);
            let latents = self.denoise_with(&one, device, &mut each, &mut *on_step)?;
            let image = self.decode(latents)?.into_iter().next();
            out.extend(image.map(|im| (im, seed)));
        }
        Ok(out)
    }

    /// Variations of an image: image-to-image from it at `strength`, each with its own seed.
    pub fn variations(
        &self,
        base: &GenerateRequest,
        image: &RgbImage,
        strength: f64,
        device: &Device,
        progress: Progress,
    ) -> Result<Vec<RgbImage>> {
        let req = GenerateRequest {
            prompt: base.prompt.clone(),
            negative_prompt: base.negative_prompt.clone(),
            init: Some(InitImage {
                image: image.clone(),
                strength,
                mask: None,
                masked: Default::default(),
            }),
            skip_layer_guidance: base.skip_layer_guidance.clone(),
            ..*base
        };
        Ok(self
            .generate_seeded(&req, device, progress)?
            .into_iter()
            .map(|(im, _)| im)
            .collect())
    }
}

/// diffusers' documented settings: SD3.5 Medium (dual attention) 40 steps at 4.5, SD3.5 Large
/// (RMS q/k norms) 28 at 3.5, SD3 Medium 28 at 7.
pub fn sd3_defaults(c: &imagen_models::models::sd3::Sd3Config) -> (usize, f64) {
    match (c.dual_attention_layers.is_empty(), c.qk_norm.is_some()) {
        (false, _) => (40, 4.5),
        (true, true) => (28, 3.5),
        (true, false) => (28, 7.0),
    }
}
