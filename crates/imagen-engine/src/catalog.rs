//! What a models directory holds, described from the configs alone (no weights are read).

use std::path::{Path, PathBuf};

use imagen_models::load::gguf::GgufFile;
use imagen_models::load::lora::LoraFile;
use imagen_models::load::single_file;
use imagen_models::load::weights::Weights;
use imagen_models::models::flux::FluxConfig;
use imagen_models::models::sd3::Sd3Config;
use imagen_models::{DiffusersFolder, Family};
use serde::Serialize;

use crate::error::Result;
use crate::scheduler::{SamplerKind, SchedulerConfig};

/// One servable model: a diffusers folder inside the models directory.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    /// The folder's name.
    pub id: String,
    /// The diffusers folder (for a single-file checkpoint: the folder its configs come from).
    #[serde(skip)]
    pub path: PathBuf,
    /// A single-file checkpoint's weights.
    #[serde(skip)]
    pub single_file: Option<PathBuf>,
    /// The sidecar's `prediction_type`, overriding the config folder's scheduler.
    #[serde(skip)]
    pub prediction_override: Option<String>,
    /// `diffusers` (a folder), `single-file` (safetensors) or `gguf`.
    pub format: String,
    /// `sd15` (OpenAI CLIP text encoder, quick-GELU), `sd21` (OpenCLIP text encoder, GELU,
    /// v-prediction), `sd21-base` (OpenCLIP, ε-prediction), `sdxl` (two text encoders),
    /// `flux` (FLUX.1: transformer, CLIP-L + T5).
    pub family: String,
    /// Width = height the model was trained at.
    pub native_size: usize,
    pub prediction_type: String,
    pub default_scheduler: String,
    pub default_steps: usize,
    pub default_guidance_scale: f64,
    /// How each network's weights are stored, from the files' headers: `{"unet": ["f32",
    /// "q8_0"], "vae": ["f16"], ...}` (`f32`, `f16`, `bf16`, `f8_e4m3`, `f8_e5m2`, and GGUF's
    /// block types `q8_0`, `q4_0`, `q4_k`, ...).
    pub weight_formats: std::collections::BTreeMap<String, Vec<String>>,
    /// A tiny preview decoder (diffusers `AutoencoderTiny`: taesd, taesdxl, taef1, taesd3) in
    /// the model folder's `taesd/`: live previews of the steps.
    #[serde(skip)]
    pub preview_decoder: Option<PathBuf>,
    /// Whether step previews are available (a `taesd/` decoder is in the folder).
    pub previews: bool,
}

impl ModelInfo {
    pub fn describe(id: &str, path: &Path) -> Result<Self> {
        let folder = DiffusersFolder::open(path)?;
        match folder.family() {
            Family::Flux => return Self::describe_flux(id, path, &folder),
            Family::Sd3 => return Self::describe_sd3(id, path, &folder),
            Family::StableDiffusion => {}
        }
        let unet = folder.unet_config()?;
        let text = folder.text_encoder_config()?;
        let vae = folder.vae_config()?;
        let sched: SchedulerConfig = folder.component_config("scheduler")?;
        let kind = SamplerKind::from_config(&sched)?;
        let family = match (folder.is_xl(), text.hidden_act.as_str(), sched.prediction_type.as_str()) {
            (true, _, _) => "sdxl",
            (_, "quick_gelu", _) => "sd15",
            (_, _, "v_prediction") => "sd21",
            _ => "sd21-base",
        };
        // diffusers' pipeline defaults (SDXL guides at 5); distilled models want few steps:
        // LCM 4 without CFG, Turbo (Euler a on trailing timesteps, as SD-/SDXL-Turbo ship) 1
        // step without guidance.
        let turbo = kind == SamplerKind::EulerAncestral && sched.timestep_spacing.as_deref() == Some("trailing");
        let (steps, guidance) = match (kind, turbo, folder.is_xl()) {
            // An LCM-distilled UNet takes guidance as an embedding (diffusers' default 8.5).
            (SamplerKind::Lcm, _, _) if unet.time_cond_proj_dim.is_some() => (4, 8.5),
            (SamplerKind::Lcm, _, _) => (4, 1.0),
            (_, true, _) => (1, 0.0),
            (_, _, true) => (50, 5.0),
            _ => (50, 7.5),
        };
        Ok(ModelInfo {
            id: id.to_owned(),
            path: path.to_owned(),
            single_file: None,
            prediction_override: None,
            format: "diffusers".into(),
            family: family.into(),
            native_size: unet.sample_size * vae.scale_factor(),
            prediction_type: sched.prediction_type.clone(),
            default_scheduler: kind.name().into(),
            default_steps: steps,
            default_guidance_scale: guidance,
            weight_formats: owned(folder.weight_formats()),
            preview_decoder: None,
            previews: false,
        })
    }
}

impl ModelInfo {
    /// A FLUX.1 folder: `flux`, flow prediction, Euler; schnell (no guidance embedding) 4 steps
    /// without guidance, dev 28 at 3.5 (diffusers' documented settings).
    fn describe_flux(id: &str, path: &Path, folder: &DiffusersFolder) -> Result<Self> {
        let transformer: FluxConfig = folder.component_config("transformer")?;
        transformer.validate()?;
        let vae = folder.vae_config()?;
        let (steps, guidance) = if transformer.guidance_embeds {
            (28, 3.5)
        } else {
            (4, 0.0)
        };
        Ok(ModelInfo {
            id: id.to_owned(),
            path: path.to_owned(),
            single_file: None,
            prediction_override: None,
            format: "diffusers".into(),
            family: Family::Flux.name().into(),
            native_size: 128 * vae.scale_factor(),
            prediction_type: "flow".into(),
            default_scheduler: SamplerKind::Euler.name().into(),
            default_steps: steps,
            default_guidance_scale: guidance,
            weight_formats: owned(folder.weight_formats()),
            preview_decoder: None,
            previews: false,
        })
    }
}

impl ModelInfo {
    /// An SD3 / 3.5 folder: `sd3`, flow prediction, Euler, diffusers' documented steps/guidance.
    fn describe_sd3(id: &str, path: &Path, folder: &DiffusersFolder) -> Result<Self> {
        let transformer: Sd3Config = folder.component_config("transformer")?;
        transformer.validate()?;
        let vae = folder.vae_config()?;
        let (steps, guidance) = crate::model::sd3_defaults(&transformer);
        Ok(ModelInfo {
            id: id.to_owned(),
            path: path.to_owned(),
            single_file: None,
            prediction_override: None,
            format: "diffusers".into(),
            family: Family::Sd3.name().into(),
            native_size: transformer.sample_size * vae.scale_factor(),
            prediction_type: "flow".into(),
            default_scheduler: SamplerKind::Euler.name().into(),
            default_steps: steps,
            default_guidance_scale: guidance,
            weight_formats: owned(folder.weight_formats()),
            preview_decoder: None,
            previews: false,
        })
    }
}

/// A LoRA file in the models directory (top level or `loras/`); its id is the file stem.
#[derive(Debug, Clone, Serialize)]
pub struct LoraInfo {
    pub id: String,
    #[serde(skip)]
    pub path: PathBuf,
    /// `flux` when it patches a transformer, `sdxl` when it patches a second text encoder, else
    /// `sd` (SD 1.x / 2.x).
    pub base_family: String,
}

/// A single-file checkpoint `ID.safetensors` or `ID.gguf` (a whole checkpoint, or a UNet alone)
/// with its sidecar `ID.json`:
/// `{"config": "<model id in this directory, or a path>", "prediction_type": "v_prediction"?}`:
/// the diffusers folder of the same architecture whose configs, tokenizer and scheduler it uses,
/// and optionally the prediction type when it differs from that folder's.
fn single_file(dir: &Path, file: &Path, id: &str) -> std::result::Result<ModelInfo, String> {
    let sidecar = file.with_extension("json");
    let text = std::fs::read_to_string(&sidecar).map_err(|_| {
        format!(
            "a single-file checkpoint needs {} naming its config folder: {{\"config\": \"<model id or path>\"}}",
            sidecar.display()
        )
    })?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", sidecar.display()))?;
    let config = v["config"]
        .as_str()
        .ok_or_else(|| format!("{}: no \"config\"", sidecar.display()))?;
    let config = if dir.join(config).is_dir() {
        dir.join(config)
    } else {
        PathBuf::from(config)
    };
    let mut info = ModelInfo::describe(id, &config).map_err(|e| e.to_string())?;
    info.single_file = Some(file.to_owned());
    if let Some(p) = v["prediction_type"].as_str() {
        if !matches!(p, "epsilon" | "v_prediction") {
            return Err(format!(
                "{}: prediction_type {p:?} (epsilon or v_prediction)",
                sidecar.display()
            ));
        }
        info.prediction_type = p.to_owned();
        info.prediction_override = Some(p.to_owned());
    }
    let weights = Weights::open(&[file.to_owned()]).map_err(|e| e.to_string())?;
    if info.family == Family::Flux.name() || info.family == Family::Sd3.name() {
        // a diffusion transformer's file (the other networks from the config folder unless
        // the file has them: reported by the loaded model)
        let prefix = single_file::model_prefix(&weights);
        info.weight_formats
            .insert("transformer".into(), weights.formats(prefix));
        info.format = if GgufFile::sniff(file) { "gguf" } else { "single-file" }.into();
        return Ok(info);
    }
    let mut formats = owned(single_file::weight_formats(&weights));
    if single_file::unet_only(&weights) {
        // the other networks come from the config folder
        formats = info.weight_formats.clone().into_iter().chain(formats).collect();
    }
    info.weight_formats = formats;
    info.format = if GgufFile::sniff(file) { "gguf" } else { "single-file" }.into();
    Ok(info)
}

fn owned(m: std::collections::BTreeMap<&'static str, Vec<String>>) -> std::collections::BTreeMap<String, Vec<String>> {
    m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// A models directory's contents.
pub struct Scan {
    /// Every sub-folder that opens as a supported model, sorted by id.
    pub models: Vec<ModelInfo>,
    pub loras: Vec<LoraInfo>,
    /// The ones that did not, with the reason (for the operator's log).
    pub skipped: Vec<(PathBuf, String)>,
}

/// A model folder's `taesd/` (an `AutoencoderTiny` folder) as its preview decoder.
fn with_previews(mut info: ModelInfo) -> ModelInfo {
    let dir = info.path.join("taesd");
    if dir.join("config.json").is_file() {
        info.preview_decoder = Some(dir);
        info.previews = true;
    }
    info
}

pub fn scan(dir: &Path) -> std::io::Result<Scan> {
    let mut models = Vec::new();
    let mut skipped = Vec::new();
    let mut loras = Vec::new();
    let lora_dir = dir.join("loras");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    if lora_dir.is_dir() {
        files.extend(std::fs::read_dir(&lora_dir)?.filter_map(|e| e.ok().map(|e| e.path())));
    }
    for path in files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors" || e == "gguf"))
    {
        let id = path.file_stem().and_then(|n| n.to_str()).unwrap_or_default().to_owned();
        let probe = if path.extension().is_some_and(|e| e == "gguf") {
            None
        } else {
            LoraFile::probe(path)
        };
        match probe {
            Some(family) => loras.push(LoraInfo {
                id,
                path: path.clone(),
                base_family: family.into(),
            }),
            None => match single_file(dir, path, &id) {
                Ok(info) => models.push(with_previews(info)),
                Err(why) => skipped.push((path.clone(), why)),
            },
        }
    }
    // Diffusers folders: the directories among the entries listed above.
    for path in files.iter().filter(|p| p.is_dir() && **p != lora_dir) {
        let Some(id) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
            continue;
        };
        match ModelInfo::describe(&id, path) {
            Ok(info) => models.push(with_previews(info)),
            Err(e) => skipped.push((path.clone(), e.to_string())),
        }
    }
    models.sort_by(|a, b| a.id.cmp(&b.id));
    loras.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(Scan { models, loras, skipped })
}
