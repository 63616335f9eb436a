//! A FLUX.1 diffusers folder loaded: CLIP-L (pooled output only), T5 v1.1, the transformer
//! and the 16-channel VAE.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;
use burn::tensor::Device;

use super::folder::{DiffusersFolder, Family};
use super::t5_tokenizer::T5Tokenizer;
use super::tokenizer::ClipTokenizer;
use super::weights::load_module;
use crate::error::{Error, Result};
use crate::models::clip::ClipTextModel;
use crate::models::flux::{self, FluxConfig, FluxTransformer2DModel};
use crate::models::t5::{self, T5Config, T5EncoderModel};
use crate::models::vae::{AutoencoderKL, AutoencoderKLConfig};

/// Every component of a FLUX.1 pipeline, loaded. Cloning is cheap: the weights are shared.
#[derive(Clone)]
pub struct Flux {
    pub folder: DiffusersFolder,
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    pub tokenizer_2: T5Tokenizer,
    pub text_encoder_2: T5EncoderModel,
    pub transformer: FluxTransformer2DModel,
    pub transformer_config: FluxConfig,
    pub vae: AutoencoderKL,
    pub vae_config: AutoencoderKLConfig,
    /// How each network's weights are stored (`transformer` → `["bf16"]`, ...), for reporting.
    pub weight_formats: BTreeMap<&'static str, Vec<String>>,
}

impl Flux {
    pub fn load(root: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let folder = DiffusersFolder::open(root)?;
        if folder.family() != Family::Flux {
            return Err(Error::Folder(format!(
                "{}: a {} pipeline, not FLUX",
                folder.root().display(),
                folder.pipeline_class
            )));
        }
        let te_config = folder.text_encoder_config()?;
        let t5_config: T5Config = folder.component_config("text_encoder_2")?;
        t5_config.validate()?;
        let transformer_config: FluxConfig = folder.component_config("transformer")?;
        transformer_config.validate()?;
        let vae_config = folder.vae_config()?;
        if vae_config.latent_channels != transformer_config.latent_channels() {
            return Err(Error::Folder(format!(
                "{}: the VAE has {} latent channels but the transformer takes {}",
                folder.root().display(),
                vae_config.latent_channels,
                transformer_config.latent_channels()
            )));
        }
        let te2 = folder.weights("text_encoder_2", "model")?;
        let tr = folder.weights("transformer", "diffusion_pytorch_model")?;
        let text_encoder_2 = load_module(
            t5_config.init(device),
            &te2,
            "text_encoder_2",
            &t5::checkpoint_keys,
            device,
        )?;
        let transformer = load_module(
            transformer_config.init(device),
            &tr,
            "transformer",
            &flux::checkpoint_keys,
            device,
        )?;
        Ok(Flux {
            tokenizer: folder.tokenizer()?,
            text_encoder: folder.load_text_encoder_with(&te_config, device)?,
            tokenizer_2: T5Tokenizer::from_dir(&folder.root().join("tokenizer_2"))?,
            text_encoder_2,
            transformer,
            transformer_config,
            vae: folder.load_vae_with(&vae_config, device)?,
            vae_config,
            weight_formats: folder.weight_formats(),
            folder,
        })
    }

    /// Parameters across the networks (for reporting).
    pub fn num_params(&self) -> usize {
        self.text_encoder.num_params()
            + self.text_encoder_2.num_params()
            + self.transformer.num_params()
            + self.vae.num_params()
    }

    /// diffusers' defaults per variant: FLUX.1-dev (guidance-distilled) 512 T5 tokens,
    /// FLUX.1-schnell 256.
    pub fn default_max_sequence_length(&self) -> usize {
        if self.transformer.takes_guidance() { 512 } else { 256 }
    }
}
