//! A FLUX.1 diffusers folder loaded: CLIP-L (pooled output only), T5 v1.1, the transformer
//! and the 16-channel VAE.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;
use burn::tensor::Device;

use super::folder::{DiffusersFolder, Family};
use super::lora::{self, LoraFile, Target};
use super::t5_tokenizer::T5Tokenizer;
use super::tokenizer::ClipTokenizer;
use super::weights::{Weights, load_module};
use super::{bfl, single_file};
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
        Self::load_parts(root.as_ref(), device, true)
    }

    /// The folder's components; its transformer's weights only `with_transformer` (else the
    /// config's lazily initialised module, which a single file replaces).
    fn load_parts(root: &Path, device: &Device, with_transformer: bool) -> Result<Self> {
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
        let text_encoder_2 = load_module(
            t5_config.init(device),
            &te2,
            "text_encoder_2",
            &t5::checkpoint_keys,
            device,
        )?;
        let transformer = if with_transformer {
            let tr = folder.weights("transformer", "diffusion_pytorch_model")?;
            load_module(
                transformer_config.init(device),
                &tr,
                "transformer",
                &flux::checkpoint_keys,
                device,
            )?
        } else {
            transformer_config.init(device)
        };
        let mut weight_formats = folder.weight_formats();
        if !with_transformer {
            weight_formats.remove("transformer");
        }
        Ok(Flux {
            tokenizer: folder.tokenizer()?,
            text_encoder: folder.load_text_encoder_with(&te_config, device)?,
            tokenizer_2: T5Tokenizer::from_dir(&folder.root().join("tokenizer_2"))?,
            text_encoder_2,
            transformer,
            transformer_config,
            vae: folder.load_vae_with(&vae_config, device)?,
            vae_config,
            weight_formats,
            folder,
        })
    }

    /// A transformer-only single file as users download FLUX.1 (Black Forest Labs' layout, or
    /// diffusers' names; safetensors in f32/bf16/fp8, or GGUF with block-quantized weights kept
    /// so on the CPU), bare or under `model.diffusion_model.`, with the text encoders, VAE,
    /// tokenizers and configs of `config`, a FLUX diffusers folder of the same architecture.
    pub fn load_single_file(file: &Path, config: &Path, device: &Device) -> Result<Self> {
        let mut flux = Self::load_parts(config, device, false)?;
        let weights = Weights::open(&[file.to_owned()])?;
        let c = flux.transformer_config.clone();
        let prefix = single_file::model_prefix(&weights);
        let bfl_layout = bfl::is_bfl(weights.keys());
        let keys = |p: &str| -> Vec<String> {
            flux::checkpoint_keys(p)
                .iter()
                .filter_map(|k| if bfl_layout { bfl::key(k, &c) } else { Some(k.clone()) })
                .map(|k| format!("{prefix}{k}"))
                .collect()
        };
        flux.transformer = load_module(c.init(device), &weights, "transformer", &keys, device)?;
        flux.weight_formats.insert("transformer", weights.formats(prefix));
        Ok(flux)
    }

    /// A copy with `loras` (file, scale) merged into the transformer (diffusers/PEFT names, or
    /// kohya's with Black Forest Labs' module names: fused q/k/v updates split by rows) and the
    /// CLIP encoder; `self` is unchanged, unpatched weights shared.
    pub fn with_loras(&self, loras: &[(&LoraFile, f32)], device: &Device) -> Result<Self> {
        for (lora, _) in loras {
            if lora.patches(Target::Unet) || lora.patches(Target::TextEncoder(1)) {
                return Err(Error::Folder(format!(
                    "{}: a Stable Diffusion LoRA (it patches a UNet or a second text encoder), not a FLUX one",
                    lora.path.display()
                )));
            }
        }
        let mut out = self.clone();
        let c = self.transformer_config.clone();
        let keys = |p: &str| -> Vec<String> {
            let diffusers = flux::checkpoint_keys(p);
            let bfl_keys: Vec<String> = diffusers.iter().filter_map(|k| bfl::key(k, &c)).collect();
            diffusers.into_iter().chain(bfl_keys).collect()
        };
        out.transformer = lora::merge(out.transformer, Target::Transformer, loras, &keys, device)?;
        out.text_encoder = lora::merge(
            out.text_encoder,
            Target::TextEncoder(0),
            loras,
            &crate::models::clip::checkpoint_keys,
            device,
        )?;
        Ok(out)
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
