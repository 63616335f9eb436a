//! What the flow-matching pipelines (FLUX, SD3) share: the model's flow scheduler config, and
//! the starting latents — pure noise, or an image's latents noised to the first step's σ as
//! diffusers' `*Img2ImgPipeline`s draw them (the VAE sample, then the noise, from one generator).

use burn::tensor::{Device, Tensor, TensorData};
use imagen_models::DiffusersFolder;
use imagen_models::models::vae::{AutoencoderKL, AutoencoderKLConfig};

use crate::error::{Error, Result};
use crate::pipeline::{GenerateRequest, image_to_tensor};
use crate::rng::NoiseSource;
use crate::scheduler::{Sampler, SchedulerConfig, flow_first_step, noise_like};

/// The folder's scheduler config, which must be flow matching (`family` names the model family
/// in the error).
pub fn flow_config(folder: &DiffusersFolder, family: &str) -> Result<SchedulerConfig> {
    let config: SchedulerConfig = folder.component_config("scheduler")?;
    let class = config.class_name.as_deref().unwrap_or("");
    if class != "FlowMatchEulerDiscreteScheduler" {
        return Err(Error::BadInput(format!(
            "the model's scheduler {class:?} is not supported for {family}"
        )));
    }
    Ok(config)
}

/// Starting latents `dims` (VAE-scaled and shifted) and the first step to run; with a mask,
/// what it keeps.
pub struct Start {
    pub latents: Tensor<4>,
    pub first: usize,
    pub keep: Option<Keep>,
}

/// Masked edits as diffusers' `FluxInpaintPipeline` and `StableDiffusion3InpaintPipeline` (for
/// 16-channel transformers) do them: after every step the kept area is reset to the clean
/// image latents noised to the next σ (clean after the last step).
pub struct Keep {
    /// 1 = repaint, 0 = keep: `[b, c, h/8, w/8]`
    mask: Tensor<4>,
    x0: Tensor<4>,
    noise: Tensor<4>,
}

impl Keep {
    /// The latents after step `i` with the kept area restored.
    pub fn apply(&self, sampler: &Sampler, i: usize, latents: Tensor<4>) -> Tensor<4> {
        let known = if i + 1 < sampler.timesteps().len() {
            sampler.add_noise(self.x0.clone(), self.noise.clone(), i + 1)
        } else {
            self.x0.clone()
        };
        known * (self.mask.clone().neg() + 1.0) + latents * self.mask.clone()
    }
}

pub fn start(
    req: &GenerateRequest,
    (vae, vae_config): (&AutoencoderKL, &AutoencoderKLConfig),
    sampler: &Sampler,
    dims: [usize; 4],
    rng: &mut dyn NoiseSource,
    device: &Device,
) -> Result<Start> {
    let Some(init) = &req.init else {
        return Ok(Start {
            latents: noise_like(rng, dims, device),
            first: 0,
            keep: None,
        });
    };
    // at least the last step runs (see the UNet pipeline)
    let first = (flow_first_step(req.steps, init.strength) * sampler.order())
        .min(sampler.timesteps().len().saturating_sub(sampler.order()));
    let image = Tensor::cat(vec![image_to_tensor(&init.encoded(), device); dims[0]], 0);
    let dist = vae.encode(image);
    let sample = dist.mean.clone() + dist.std * noise_like(rng, dist.mean.dims(), device);
    let shift = vae_config.shift_factor.unwrap_or(0.0) as f32;
    let x0 = (sample - shift) * vae_config.scaling_factor as f32;
    let noise = noise_like(rng, dims, device);
    let (latents, keep) = match &init.mask {
        Some(mask) => {
            let mask = mask_to_latent(mask, dims, device)?;
            let start = init.masked.latents(x0.clone(), &mask, rng, device);
            let latents = sampler.add_noise(start, noise.clone(), first);
            (latents, Some(Keep { mask, x0, noise }))
        }
        None => (sampler.add_noise(x0, noise, first), None),
    };
    Ok(Start { latents, first, keep })
}

/// The inpainting pipelines' mask: binarized at 0.5 (white = repaint), then nearest-neighbour
/// down to the latent grid (each latent pixel takes its block's top-left pixel), over every
/// channel. → `[b, c, h/8, w/8]` of 0 and 1
fn mask_to_latent(mask: &image::GrayImage, dims: [usize; 4], device: &Device) -> Result<Tensor<4>> {
    let [b, c, h, w] = dims;
    let (mw, mh) = (mask.width() as usize, mask.height() as usize);
    if mw == 0 || mh == 0 || mw % w != 0 || mh % h != 0 {
        return Err(Error::BadInput(format!(
            "the mask is {mw}x{mh}; it must be the size of the image"
        )));
    }
    let (fx, fy) = (mw / w, mh / h);
    // binarize in [0, 1] as diffusers does: a pixel of 128 (0.502) repaints, 127 keeps
    let v: Vec<f32> = (0..h)
        .flat_map(|y| (0..w).map(move |x| (y, x)))
        .map(|(y, x)| {
            let p = mask.get_pixel((x * fx) as u32, (y * fy) as u32)[0] as f32 / 255.0;
            if p < 0.5 { 0.0 } else { 1.0 }
        })
        .collect();
    let m = Tensor::<4>::from_data(TensorData::new(v, [1, 1, h, w]), device);
    Ok(Tensor::cat(vec![m; b], 0).repeat_dim(1, c))
}
