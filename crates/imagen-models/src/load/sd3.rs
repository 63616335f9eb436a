//! A Stable Diffusion 3 / 3.5 diffusers folder loaded: CLIP-L and CLIP-G with their projections,
//! T5 v1.1 when the folder has it (`text_encoder_3`), the MMDiT and the 16-channel VAE.

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
use crate::models::sd3::{self, Sd3Config, Sd3Transformer2DModel};
use crate::models::t5::{self, T5Config, T5EncoderModel};
use crate::models::vae::{AutoencoderKL, AutoencoderKLConfig};

/// Every component of an SD3 pipeline, loaded. Cloning is cheap: the weights are shared.
#[derive(Clone)]
pub struct Sd3 {
    pub folder: DiffusersFolder,
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    pub tokenizer_2: ClipTokenizer,
    pub text_encoder_2: ClipTextModel,
    /// T5 and its tokenizer; `None` for folders shipped without it (its states are zeros then).
    pub t5: Option<(T5Tokenizer, T5EncoderModel)>,
    pub transformer: Sd3Transformer2DModel,
    pub transformer_config: Sd3Config,
    pub vae: AutoencoderKL,
    pub vae_config: AutoencoderKLConfig,
    pub weight_formats: BTreeMap<&'static str, Vec<String>>,
}

impl Sd3 {
    pub fn load(root: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let folder = DiffusersFolder::open(root)?;
        if folder.family() != Family::Sd3 {
            return Err(Error::Folder(format!(
                "{}: a {} pipeline, not Stable Diffusion 3",
                folder.root().display(),
                folder.pipeline_class
            )));
        }
        let transformer_config: Sd3Config = folder.component_config("transformer")?;
        transformer_config.validate()?;
        let vae_config = folder.vae_config()?;
        let clip = |component: &'static str| -> Result<ClipTextModel> {
            let c = folder.clip_config(component)?;
            if !c.with_projection() {
                return Err(Error::Folder(format!(
                    "{}: {component} must be a CLIPTextModelWithProjection (SD3 pools its projection)",
                    folder.root().display()
                )));
            }
            folder.load_clip(component, &c, device)
        };
        let t5 = if folder.root().join("text_encoder_3").is_dir() {
            let c: T5Config = folder.component_config("text_encoder_3")?;
            c.validate()?;
            let w = folder.weights("text_encoder_3", "model")?;
            Some((
                T5Tokenizer::from_dir(&folder.root().join("tokenizer_3"))?,
                load_module(c.init(device), &w, "text_encoder_3", &t5::checkpoint_keys, device)?,
            ))
        } else {
            None
        };
        let tr = folder.weights("transformer", "diffusion_pytorch_model")?;
        let transformer = load_module(
            transformer_config.init(device),
            &tr,
            "transformer",
            &sd3::checkpoint_keys,
            device,
        )?;
        Ok(Sd3 {
            tokenizer: folder.tokenizer()?,
            text_encoder: clip("text_encoder")?,
            tokenizer_2: ClipTokenizer::from_dir(&folder.root().join("tokenizer_2"))?,
            text_encoder_2: clip("text_encoder_2")?,
            t5,
            transformer,
            transformer_config,
            vae: folder.load_vae_with(&vae_config, device)?,
            vae_config,
            weight_formats: folder.weight_formats(),
            folder,
        })
    }

    pub fn num_params(&self) -> usize {
        self.text_encoder.num_params()
            + self.text_encoder_2.num_params()
            + self.t5.as_ref().map_or(0, |(_, t)| t.num_params())
            + self.transformer.num_params()
            + self.vae.num_params()
    }
}
