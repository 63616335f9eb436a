//! What the flow-matching pipelines (FLUX, SD3) share: the model's flow scheduler config, and
//! the starting latents — pure noise, or an image's latents noised to the first step's σ as
//! diffusers' `*Img2ImgPipeline`s draw them (the VAE sample, then the noise, from one generator).

use burn::tensor::{Device, Tensor};
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

/// Starting latents `dims` (VAE-scaled and shifted) and the first step to run; for
/// image-to-image also the clean image latents and the noise they were noised with (what an
/// inpainting mask keeps).
pub struct Start {
    pub latents: Tensor<4>,
    pub first: usize,
    pub image: Option<(Tensor<4>, Tensor<4>)>,
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
            image: None,
        });
    };
    let first = flow_first_step(req.steps, init.strength) * sampler.order();
    if first >= sampler.timesteps().len() {
        return Err(Error::BadInput("strength too low: no denoising step would run".into()));
    }
    let image = Tensor::cat(vec![image_to_tensor(&init.image, device); dims[0]], 0);
    let dist = vae.encode(image);
    let sample = dist.mean.clone() + dist.std * noise_like(rng, dist.mean.dims(), device);
    let shift = vae_config.shift_factor.unwrap_or(0.0) as f32;
    let x0 = (sample - shift) * vae_config.scaling_factor as f32;
    let noise = noise_like(rng, dims, device);
    Ok(Start {
        latents: sampler.add_noise(x0.clone(), noise.clone(), first),
        first,
        image: Some((x0, noise)),
    })
}
