//! A diffusers pipeline folder: `model_index.json`, `unet/`, `vae/`, `text_encoder/`,
//! `tokenizer/`, `scheduler/`, each component with its `config.json` and safetensors weights.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::tensor::Device;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::config::read_json;
use super::lora::{self, LoraFile, Target};
use super::single_file::{self, Arch};
use super::tokenizer::ClipTokenizer;
use super::weights::{Weights, load_module};
use crate::error::{Error, Result};
use crate::models::clip::{self, ClipTextConfig, ClipTextModel};
use crate::models::unet_2d::{self, UNet2DConditionConfig, UNet2DConditionModel};
use crate::models::vae::{self, AutoencoderKL, AutoencoderKLConfig};

/// Pipelines whose components this crate computes.
const SUPPORTED: [&str; 11] = [
    "StableDiffusionPipeline",
    "LatentConsistencyModelPipeline",
    "StableDiffusionImg2ImgPipeline",
    "StableDiffusionInpaintPipeline",
    "StableDiffusionXLPipeline",
    "StableDiffusionXLImg2ImgPipeline",
    "FluxPipeline",
    "FluxImg2ImgPipeline",
    "FluxInpaintPipeline",
    "StableDiffusion3Pipeline",
    "StableDiffusion3Img2ImgPipeline",
];

/// The model families: each has its own networks and pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// SD 1.x / 2.x / XL and their distillations (UNet, CLIP, VAE).
    StableDiffusion,
    /// FLUX.1 (transformer, CLIP-L + T5, 16-channel VAE).
    Flux,
    /// Stable Diffusion 3 / 3.5 (MMDiT, CLIP-L + CLIP-G + optional T5, 16-channel VAE).
    Sd3,
}

impl Family {
    fn of(pipeline_class: &str) -> Self {
        if pipeline_class.starts_with("Flux") {
            Family::Flux
        } else if pipeline_class.starts_with("StableDiffusion3") {
            Family::Sd3
        } else {
            Family::StableDiffusion
        }
    }

    /// The name `GET /v1/models` reports.
    pub fn name(self) -> &'static str {
        match self {
            Family::StableDiffusion => "stable-diffusion",
            Family::Flux => "flux",
            Family::Sd3 => "sd3",
        }
    }

    /// The component folders a diffusers pipeline of this family must have.
    fn components(self, xl: bool) -> &'static [&'static str] {
        match (self, xl) {
            (Family::Flux, _) => &[
                "transformer",
                "vae",
                "text_encoder",
                "text_encoder_2",
                "tokenizer",
                "tokenizer_2",
                "scheduler",
            ],
            // T5 (`text_encoder_3`) is optional: SD3 runs without it (zeros in its place)
            (Family::Sd3, _) => &[
                "transformer",
                "vae",
                "text_encoder",
                "text_encoder_2",
                "tokenizer",
                "tokenizer_2",
                "scheduler",
            ],
            (Family::StableDiffusion, true) => &[
                "unet",
                "vae",
                "text_encoder",
                "tokenizer",
                "scheduler",
                "text_encoder_2",
                "tokenizer_2",
            ],
            (Family::StableDiffusion, false) => &["unet", "vae", "text_encoder", "tokenizer", "scheduler"],
        }
    }
}

#[derive(Deserialize, Debug, Clone)]
struct ModelIndex {
    #[serde(rename = "_class_name")]
    class_name: String,
    /// SDXL: an empty negative prompt conditions on zeros instead of encoding "".
    force_zeros_for_empty_prompt: Option<bool>,
}

/// An opened (validated, not yet loaded) diffusers folder.
#[derive(Debug, Clone)]
pub struct DiffusersFolder {
    root: PathBuf,
    pub pipeline_class: String,
    pub force_zeros_for_empty_prompt: bool,
    /// Weight file variants tried in order (`None` = `diffusion_pytorch_model.safetensors`).
    pub variants: Vec<Option<String>>,
}

impl DiffusersFolder {
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_owned();
        if !root.is_dir() {
            return Err(Error::Folder(format!("{}: not a directory", root.display())));
        }
        let index_path = root.join("model_index.json");
        if !index_path.is_file() {
            return Err(Error::Folder(format!(
                "{}: not a diffusers pipeline folder (no model_index.json)",
                root.display()
            )));
        }
        let index: ModelIndex = read_json(&index_path)?;
        if !SUPPORTED.contains(&index.class_name.as_str()) {
            return Err(Error::Folder(format!(
                "{}: pipeline {} is not supported (supported: {})",
                root.display(),
                index.class_name,
                SUPPORTED.join(", ")
            )));
        }
        let xl = index.class_name.starts_with("StableDiffusionXL");
        for &sub in Family::of(&index.class_name).components(xl) {
            if !root.join(sub).is_dir() {
                return Err(Error::Folder(format!(
                    "{}: missing the `{sub}/` component folder",
                    root.display()
                )));
            }
        }
        Ok(DiffusersFolder {
            root,
            force_zeros_for_empty_prompt: index.force_zeros_for_empty_prompt.unwrap_or(xl),
            pipeline_class: index.class_name,
            variants: vec![None, Some("fp16".into()), Some("bf16".into())],
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn family(&self) -> Family {
        Family::of(&self.pipeline_class)
    }

    pub fn component_config<T: DeserializeOwned>(&self, component: &str) -> Result<T> {
        let name = if component == "scheduler" {
            "scheduler_config.json"
        } else {
            "config.json"
        };
        read_json(&self.root.join(component).join(name))
    }

    pub fn weights(&self, component: &str, stem: &str) -> Result<Weights> {
        let variants: Vec<Option<&str>> = self.variants.iter().map(Option::as_deref).collect();
        Weights::open_component(&self.root.join(component), stem, &variants)
    }

    /// How each network's weights are stored (`unet` → `["f16"]`, ...): from the files' headers.
    pub fn weight_formats(&self) -> std::collections::BTreeMap<&'static str, Vec<String>> {
        [
            ("unet", "diffusion_pytorch_model"),
            ("transformer", "diffusion_pytorch_model"),
            ("vae", "diffusion_pytorch_model"),
            ("text_encoder", "model"),
            ("text_encoder_2", "model"),
            ("text_encoder_3", "model"),
        ]
        .into_iter()
        .filter_map(|(component, stem)| Some((component, self.weights(component, stem).ok()?.formats(""))))
        .collect()
    }

    pub fn tokenizer(&self) -> Result<ClipTokenizer> {
        ClipTokenizer::from_dir(&self.root.join("tokenizer"))
    }

    /// SDXL's second encoder, when the folder has one.
    pub fn is_xl(&self) -> bool {
        self.pipeline_class.starts_with("StableDiffusionXL")
    }

    pub fn text_encoder_config(&self) -> Result<ClipTextConfig> {
        self.clip_config("text_encoder")
    }

    /// `text_encoder` or `text_encoder_2`.
    pub fn clip_config(&self, component: &'static str) -> Result<ClipTextConfig> {
        let c: ClipTextConfig = self.component_config(component)?;
        c.validate()?;
        Ok(c)
    }

    pub fn unet_config(&self) -> Result<UNet2DConditionConfig> {
        let c: UNet2DConditionConfig = self.component_config("unet")?;
        c.validate()?;
        Ok(c)
    }

    pub fn vae_config(&self) -> Result<AutoencoderKLConfig> {
        let c: AutoencoderKLConfig = self.component_config("vae")?;
        c.validate()?;
        Ok(c)
    }

    pub fn load_text_encoder(&self, device: &Device) -> Result<ClipTextModel> {
        self.load_text_encoder_with(&self.text_encoder_config()?, device)
    }

    pub fn load_unet(&self, device: &Device) -> Result<UNet2DConditionModel> {
        self.load_unet_with(&self.unet_config()?, device)
    }

    pub fn load_vae(&self, device: &Device) -> Result<AutoencoderKL> {
        self.load_vae_with(&self.vae_config()?, device)
    }

    pub fn load_text_encoder_with(&self, c: &ClipTextConfig, device: &Device) -> Result<ClipTextModel> {
        self.load_clip("text_encoder", c, device)
    }

    pub fn load_clip(&self, component: &'static str, c: &ClipTextConfig, device: &Device) -> Result<ClipTextModel> {
        let w = self.weights(component, "model")?;
        load_module(c.init(device), &w, component, &clip::checkpoint_keys, device)
    }

    pub fn load_unet_with(&self, c: &UNet2DConditionConfig, device: &Device) -> Result<UNet2DConditionModel> {
        let w = self.weights("unet", "diffusion_pytorch_model")?;
        load_module(c.init(device), &w, "unet", &unet_2d::checkpoint_keys, device)
    }

    pub fn load_vae_with(&self, c: &AutoencoderKLConfig, device: &Device) -> Result<AutoencoderKL> {
        let w = self.weights("vae", "diffusion_pytorch_model")?;
        load_module(c.init(device), &w, "vae", &vae::checkpoint_keys, device)
    }
}

/// Every component of a Stable Diffusion 1.x/2.x/XL pipeline, loaded and ready. Cloning is
/// cheap: the weights are shared.
#[derive(Clone)]
pub struct StableDiffusion {
    pub folder: DiffusersFolder,
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipTextModel,
    /// SDXL: the OpenCLIP encoder with projection and its tokenizer.
    pub text_encoder_2: Option<(ClipTokenizer, ClipTextModel)>,
    pub unet: UNet2DConditionModel,
    pub vae: AutoencoderKL,
    pub unet_config: UNet2DConditionConfig,
    pub vae_config: AutoencoderKLConfig,
    /// Overrides the scheduler config's `prediction_type` (a single file converted from a
    /// v-prediction model, with a config folder that says epsilon).
    pub prediction_type: Option<String>,
    /// How each network's weights are stored in the files they were read from (`unet`,
    /// `text_encoder`, `text_encoder_2`, `vae` → `["f16", "q8_0"]`, ...), for reporting.
    pub weight_formats: std::collections::BTreeMap<&'static str, Vec<String>>,
}

impl StableDiffusion {
    pub fn load(root: impl AsRef<Path>, device: &Device) -> Result<Self> {
        let folder = DiffusersFolder::open(root)?;
        if folder.family() != Family::StableDiffusion {
            return Err(Error::Folder(format!(
                "{}: a {} pipeline, not Stable Diffusion",
                folder.root.display(),
                folder.pipeline_class
            )));
        }
        let mut sd = Self::load_without_unet(folder, device)?;
        sd.unet = sd.folder.load_unet_with(&sd.unet_config, device)?;
        sd.weight_formats = sd.folder.weight_formats();
        Ok(sd)
    }

    /// A single-file checkpoint (original LDM layout, as A1111/CivitAI ship them), with the
    /// configs, tokenizer and scheduler of `config`, a diffusers folder of the same architecture
    /// (its weights are not read). SD 1.x, 2.x (OpenCLIP text tower) and SDXL (SGM
    /// `conditioner.embedders`) files; the architecture is read from the keys and must match.
    ///
    /// The file may be safetensors or GGUF (stable-diffusion.cpp's and ComfyUI-GGUF's: the same
    /// names, block-quantized tensors dequantised as they are read). A UNet-only file (the
    /// UNet's keys without `model.diffusion_model.`, as ComfyUI-GGUF ships them) takes the text
    /// encoders and VAE from `config`'s own weights.
    pub fn load_single_file(file: &Path, config: &Path, device: &Device) -> Result<Self> {
        let folder = DiffusersFolder::open(config)?;
        let weights = Weights::open(&[file.to_owned()])?;
        if single_file::unet_only(&weights) {
            let mut sd = Self::load_without_unet(folder, device)?;
            let c = &sd.unet_config;
            let keys = |p: &str| -> Vec<String> {
                unet_2d::checkpoint_keys(p)
                    .iter()
                    .map(|k| single_file::unet_key(k, c))
                    .collect()
            };
            sd.unet = load_module(sd.unet_config.init(device), &weights, "unet", &keys, device)?;
            sd.weight_formats.extend(single_file::weight_formats(&weights));
            return Ok(sd);
        }
        let arch = single_file::detect(&weights)?;
        let te_config = folder.text_encoder_config()?;
        let folder_arch = match (folder.is_xl(), te_config.hidden_act.as_str()) {
            (true, _) => Arch::Sdxl,
            (false, "quick_gelu") => Arch::Sd1,
            _ => Arch::Sd2,
        };
        if arch != folder_arch {
            return Err(Error::Folder(format!(
                "{} is a single-file {arch:?} checkpoint but {} is a {folder_arch:?} folder",
                file.display(),
                config.display()
            )));
        }
        let (unet_config, vae_config) = (folder.unet_config()?, folder.vae_config()?);
        let unet_keys = |p: &str| -> Vec<String> {
            unet_2d::checkpoint_keys(p)
                .iter()
                .map(|k| format!("model.diffusion_model.{}", single_file::unet_key(k, &unet_config)))
                .collect()
        };
        let vae_keys = |p: &str| -> Vec<String> {
            vae::checkpoint_keys(p)
                .iter()
                .take(1)
                .map(|k| format!("first_stage_model.{}", single_file::vae_key(k, &vae_config)))
                .collect()
        };
        // Hugging Face CLIP (SD 1.x, SDXL's first) or OpenCLIP (SD 2.x, SDXL's second) layouts.
        let hf = |prefix: &'static str| move |p: &str| vec![format!("{prefix}text_model.{p}")];
        let oc = |prefix: &'static str| move |p: &str| vec![format!("{prefix}{}", single_file::open_clip_key(p))];
        let text_encoder = match arch {
            Arch::Sd1 => load_module(
                te_config.init(device),
                &weights,
                "text_encoder",
                &hf("cond_stage_model.transformer."),
                device,
            )?,
            Arch::Sd2 => load_module(
                te_config.init(device),
                &weights,
                "text_encoder",
                &oc("cond_stage_model.model."),
                device,
            )?,
            Arch::Sdxl => load_module(
                te_config.init(device),
                &weights,
                "text_encoder",
                &hf("conditioner.embedders.0.transformer."),
                device,
            )?,
        };
        let text_encoder_2 = if arch == Arch::Sdxl {
            let c = folder.clip_config("text_encoder_2")?;
            Some((
                ClipTokenizer::from_dir(&folder.root.join("tokenizer_2"))?,
                load_module(
                    c.init(device),
                    &weights,
                    "text_encoder_2",
                    &oc("conditioner.embedders.1.model."),
                    device,
                )?,
            ))
        } else {
            None
        };
        Ok(StableDiffusion {
            tokenizer: folder.tokenizer()?,
            text_encoder,
            text_encoder_2,
            unet: load_module(unet_config.init(device), &weights, "unet", &unet_keys, device)?,
            vae: load_module(vae_config.init(device), &weights, "vae", &vae_keys, device)?,
            unet_config,
            vae_config,
            folder,
            prediction_type: None,
            weight_formats: single_file::weight_formats(&weights),
        })
    }

    /// A folder's pipeline with the UNet left as its config's lazily initialised module (its
    /// random initialisers never run unless it is used): [`Self::load`] reads it next, a UNet-only
    /// single file replaces it.
    fn load_without_unet(folder: DiffusersFolder, device: &Device) -> Result<Self> {
        let (unet_config, vae_config) = (folder.unet_config()?, folder.vae_config()?);
        let text_encoder_2 = if folder.is_xl() {
            let c = folder.clip_config("text_encoder_2")?;
            Some((
                ClipTokenizer::from_dir(&folder.root.join("tokenizer_2"))?,
                folder.load_clip("text_encoder_2", &c, device)?,
            ))
        } else {
            None
        };
        let mut weight_formats = folder.weight_formats();
        weight_formats.remove("unet");
        Ok(StableDiffusion {
            tokenizer: folder.tokenizer()?,
            text_encoder: folder.load_text_encoder(device)?,
            text_encoder_2,
            unet: unet_config.init(device),
            vae: folder.load_vae_with(&vae_config, device)?,
            unet_config,
            vae_config,
            folder,
            prediction_type: None,
            weight_formats,
        })
    }

    /// A copy with `loras` (file, scale) merged into the UNet and text encoder(s); `self` is
    /// unchanged, and unpatched weights are shared with it.
    pub fn with_loras(&self, loras: &[(&LoraFile, f32)], device: &Device) -> Result<Self> {
        let mut out = self.clone();
        out.unet = lora::merge(out.unet, Target::Unet, loras, &unet_2d::checkpoint_keys, device)?;
        out.text_encoder = lora::merge(
            out.text_encoder,
            Target::TextEncoder(0),
            loras,
            &clip::checkpoint_keys,
            device,
        )?;
        if let Some((tok, te)) = out.text_encoder_2.take() {
            let te = lora::merge(te, Target::TextEncoder(1), loras, &clip::checkpoint_keys, device)?;
            out.text_encoder_2 = Some((tok, te));
        }
        Ok(out)
    }

    /// Parameters across the three networks (for reporting).
    pub fn num_params(&self) -> usize {
        self.text_encoder.num_params()
            + self.text_encoder_2.as_ref().map_or(0, |(_, te)| te.num_params())
            + self.unet.num_params()
            + self.vae.num_params()
    }
}
