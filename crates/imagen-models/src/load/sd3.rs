//! A Stable Diffusion 3 / 3.5 diffusers folder loaded: CLIP-L and CLIP-G with their projections,
//! T5 v1.1 when the folder has it (`text_encoder_3`), the MMDiT and the 16-channel VAE.

use std::collections::BTreeMap;
use std::path::Path;

use burn::module::Module;
use burn::tensor::Device;

use super::folder::{DiffusersFolder, Family};
use super::t5_tokenizer::T5Tokenizer;
use super::tokenizer::ClipTokenizer;
use super::weights::{Weights, load_module};
use super::{mmdit, single_file};
use crate::error::{Error, Result};
use crate::models::clip::{self, ClipTextModel};
use crate::models::sd3::{self, Sd3Config, Sd3Transformer2DModel};
use crate::models::t5::{self, T5Config, T5EncoderModel};
use crate::models::vae::{self, AutoencoderKL, AutoencoderKLConfig};

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
        Self::load_parts(root.as_ref(), device, true)
    }

    /// The folder's components; its transformer's weights only `with_transformer` (else the
    /// config's lazily initialised module, which a single file replaces).
    fn load_parts(root: &Path, device: &Device, with_transformer: bool) -> Result<Self> {
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
        let transformer = if with_transformer {
            let tr = folder.weights("transformer", "diffusion_pytorch_model")?;
            load_module(
                transformer_config.init(device),
                &tr,
                "transformer",
                &sd3::checkpoint_keys,
                device,
            )?
        } else {
            transformer_config.init(device)
        };
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

    /// A single file as Stability AI ships SD3 / 3.5 (the MMDiT in its original names under
    /// `model.diffusion_model.`; the VAE under `first_stage_model.` and the text encoders under
    /// `text_encoders.{clip_l,clip_g,t5xxl}.transformer.` where the file has them), the rest and
    /// the configs from `config`, an SD3 diffusers folder of the same architecture.
    pub fn load_single_file(file: &Path, config: &Path, device: &Device) -> Result<Self> {
        let mut sd3 = Self::load_parts(config, device, false)?;
        let w = Weights::open(&[file.to_owned()])?;
        let c = sd3.transformer_config.clone();
        let prefix = single_file::model_prefix(&w);
        let original = mmdit::is_mmdit(w.keys());
        let keys = |p: &str| -> Vec<String> {
            sd3::checkpoint_keys(p)
                .iter()
                .filter_map(|k| if original { mmdit::key(k, &c) } else { Some(k.clone()) })
                .map(|k| format!("{prefix}{k}"))
                .collect()
        };
        sd3.transformer = load_module(c.init(device), &w, "transformer", &keys, device)?;
        let mut formats = BTreeMap::new();
        formats.insert("transformer", w.formats(prefix));
        let has = |p: &str| w.keys().any(|k| k.starts_with(p));
        if has("first_stage_model.") {
            let vc = sd3.vae_config.clone();
            let vae_keys = |p: &str| -> Vec<String> {
                vae::checkpoint_keys(p)
                    .iter()
                    .take(1)
                    .map(|k| format!("first_stage_model.{}", single_file::vae_key(k, &vc)))
                    .collect()
            };
            sd3.vae = load_module(vc.init(device), &w, "vae", &vae_keys, device)?;
            formats.insert("vae", w.formats("first_stage_model."));
        }
        for (component, name) in [("text_encoder", "clip_l"), ("text_encoder_2", "clip_g")] {
            let p = format!("text_encoders.{name}.transformer.");
            if has(&p) {
                let keys =
                    |k: &str| -> Vec<String> { clip::checkpoint_keys(k).iter().map(|k| format!("{p}{k}")).collect() };
                let te = load_module(
                    sd3.folder.clip_config(component)?.init(device),
                    &w,
                    component,
                    &keys,
                    device,
                )?;
                formats.insert(component, w.formats(&p));
                if component == "text_encoder" {
                    sd3.text_encoder = te;
                } else {
                    sd3.text_encoder_2 = te;
                }
            }
        }
        let p = "text_encoders.t5xxl.transformer.";
        // `has` first: taking the folder's T5 for a file without one would drop it
        if has(p)
            && let Some((tok, _)) = sd3.t5.take()
        {
            let c: T5Config = sd3.folder.component_config("text_encoder_3")?;
            let keys = |k: &str| -> Vec<String> { t5::checkpoint_keys(k).iter().map(|k| format!("{p}{k}")).collect() };
            sd3.t5 = Some((tok, load_module(c.init(device), &w, "text_encoder_3", &keys, device)?));
            formats.insert("text_encoder_3", w.formats(p));
        }
        sd3.weight_formats.extend(formats);
        Ok(sd3)
    }

    pub fn num_params(&self) -> usize {
        self.text_encoder.num_params()
            + self.text_encoder_2.num_params()
            + self.t5.as_ref().map_or(0, |(_, t)| t.num_params())
            + self.transformer.num_params()
            + self.vae.num_params()
    }
}
