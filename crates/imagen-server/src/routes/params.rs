//! One normalised set of generation parameters, whichever route (contract or OpenAI) they came
//! from, checked against the limits and turned into an engine request.

use std::sync::Arc;

use image::imageops::FilterType;
use image::{GrayImage, RgbImage};
use imagen_engine::pipeline::SkipLayerGuidance;
use imagen_engine::rng::RngKind;
use imagen_engine::scheduler::SamplerKind;
use imagen_engine::{GenerateRequest, InitImage, MaskedContent};
use serde_json::json;

use crate::app::AppState;
use crate::error::{ApiError, Code};
use crate::jobs::{ResponseFormat, Submission};
use crate::keys;
use crate::media::OutputFormat;
use crate::store::KeyRecord;

#[derive(Default)]
pub struct Params {
    pub prompt: Option<String>,
    pub negative_prompt: Option<String>,
    pub model: Option<String>,
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub num_images: Option<usize>,
    pub steps: Option<usize>,
    pub guidance_scale: Option<f64>,
    pub scheduler: Option<String>,
    pub seed: Option<u64>,
    pub rng: Option<String>,
    pub response_format: Option<String>,
    pub output_format: Option<String>,
    pub webhook_url: Option<String>,
    pub webhook_secret: Option<String>,
    pub background: bool,
    /// Decoded input image (image-to-image, variations).
    pub image: Option<RgbImage>,
    pub strength: Option<f64>,
    /// White = repaint (image-to-image only).
    pub mask: Option<GrayImage>,
    /// What the masked area starts from (`original`, `fill`, `latent_noise`, `latent_nothing`).
    pub masked_content: Option<String>,
    /// Encode prompts over 75 tokens in chunks instead of truncating.
    pub long_prompt: bool,
    /// T5 tokens (FLUX, SD3); the model's default when absent.
    pub max_sequence_length: Option<usize>,
    /// True CFG with the negative prompt (FLUX).
    pub true_cfg_scale: Option<f64>,
    /// SD3 skip-layer guidance.
    pub skip_layer_guidance: Option<SkipLayerGuidance>,
    /// (LoRA id, scale) merged for this request only.
    pub loras: Vec<(String, f32)>,
}

/// At most this many LoRAs per request.
const MAX_LORAS: usize = 8;

fn bad(field: &str, message: String) -> ApiError {
    ApiError::bad_request(message).with_details(json!({ "field": field }))
}

fn limit(field: &str, message: String, limit: usize) -> ApiError {
    ApiError::bad_request(message).with_details(json!({ "field": field, "limit": limit }))
}

impl Params {
    /// Validates everything and builds the submission. `endpoint` is the scope name.
    pub fn into_submission(
        self,
        state: &Arc<AppState>,
        key: &KeyRecord,
        endpoint: &str,
    ) -> Result<Submission, ApiError> {
        let l = &state.config.limits;
        let model = state.model(self.model.as_deref()).ok_or_else(|| {
            let catalog = state.catalog();
            let known: Vec<&str> = catalog.models.iter().map(|m| m.id.as_str()).collect();
            match &self.model {
                // a model id names a resource (GET /v1/models/{id}): not here is a 404
                Some(m) => ApiError::new(
                    Code::NotFound,
                    format!("unknown model {m:?} (available: {})", known.join(", ")),
                )
                .with_details(json!({"field": "model"})),
                None => bad("model", "no models are installed on this server".into()),
            }
        })?;
        if !keys::allows(key, endpoint, Some(&model.id)) {
            return Err(ApiError::new(
                Code::Forbidden,
                format!("this API key may not use {endpoint} with model {:?}", model.id),
            ));
        }
        if self.loras.len() > MAX_LORAS {
            return Err(limit(
                "loras",
                format!("at most {MAX_LORAS} LoRAs per request"),
                MAX_LORAS,
            ));
        }
        for (name, scale) in &self.loras {
            let catalog = state.catalog();
            let Some(info) = catalog.loras.iter().find(|l| &l.id == name) else {
                let known: Vec<&str> = catalog.loras.iter().map(|l| l.id.as_str()).collect();
                return Err(ApiError::new(
                    Code::NotFound,
                    format!("unknown LoRA {name:?} (available: {})", known.join(", ")),
                )
                .with_details(json!({"field": "loras"})));
            };
            // an SD LoRA fits SD 1.x/2.x; sdxl and flux ones their own family
            let family = match model.family.as_str() {
                "sdxl" | "flux" => model.family.as_str(),
                _ => "sd",
            };
            if info.base_family != family {
                return Err(bad(
                    "loras",
                    format!(
                        "LoRA {name:?} is for {} models, {:?} is {}",
                        info.base_family, model.id, model.family
                    ),
                ));
            }
            if !scale.is_finite() || scale.abs() > 4.0 {
                return Err(bad(
                    "loras",
                    format!("LoRA scale must be between -4 and 4 (got {scale})"),
                ));
            }
        }
        let prompt = self.prompt.unwrap_or_default();
        if endpoint != "variations" && prompt.trim().is_empty() {
            return Err(bad("prompt", "prompt is required".into()));
        }
        let negative = self.negative_prompt.unwrap_or_default();
        for (field, text) in [("prompt", &prompt), ("negative_prompt", &negative)] {
            if text.chars().count() > l.max_prompt_chars {
                return Err(limit(
                    field,
                    format!("{field} is longer than {} characters", l.max_prompt_chars),
                    l.max_prompt_chars,
                ));
            }
        }
        // Size: asked for, else the input image's (rounded down to multiples of 8), else native.
        let (dw, dh) = self
            .image
            .as_ref()
            .map_or((model.native_size, model.native_size), |im| {
                (
                    (im.width() as usize / 8 * 8).max(8),
                    (im.height() as usize / 8 * 8).max(8),
                )
            });
        let (width, height) = (self.width.unwrap_or(dw), self.height.unwrap_or(dh));
        for (field, v) in [("width", width), ("height", height)] {
            if v == 0 || !v.is_multiple_of(8) {
                return Err(bad(
                    field,
                    format!("{field} must be a positive multiple of 8 (got {v})"),
                ));
            }
            if v > l.max_side {
                return Err(limit(
                    field,
                    format!("{field} must be at most {}", l.max_side),
                    l.max_side,
                ));
            }
        }
        if width * height > l.max_pixels {
            return Err(limit(
                "width",
                format!("width x height must be at most {} pixels", l.max_pixels),
                l.max_pixels,
            ));
        }
        // the model's default, within the server's limit (a request that leaves steps out is
        // never refused for them)
        let steps = self.steps.unwrap_or(model.default_steps.min(l.max_steps));
        if steps == 0 || steps > l.max_steps {
            return Err(limit(
                "steps",
                format!("steps must be between 1 and {}", l.max_steps),
                l.max_steps,
            ));
        }
        let num_images = self.num_images.unwrap_or(1);
        if num_images == 0 || num_images > l.max_images {
            return Err(limit(
                "num_images",
                format!("num_images must be between 1 and {}", l.max_images),
                l.max_images,
            ));
        }
        let guidance = self.guidance_scale.unwrap_or(model.default_guidance_scale);
        if !(0.0..=50.0).contains(&guidance) {
            return Err(bad("guidance_scale", "guidance_scale must be between 0 and 50".into()));
        }
        let scheduler = self
            .scheduler
            .as_deref()
            .map(SamplerKind::parse)
            .transpose()
            .map_err(|e| bad("scheduler", e.to_string()))?;
        let rng = match self.rng.as_deref() {
            None => RngKind::Torch,
            Some(r) => RngKind::parse(r).ok_or_else(|| bad("rng", format!("unknown rng {r:?} (torch, philox)")))?,
        };
        let response_format = match self.response_format.as_deref() {
            None | Some("url") => ResponseFormat::Url,
            Some("b64_json") => ResponseFormat::B64Json,
            Some(o) => {
                return Err(bad(
                    "response_format",
                    format!("unknown response_format {o:?} (url, b64_json)"),
                ));
            }
        };
        let output = match self.output_format.as_deref() {
            None => OutputFormat::Png,
            Some(f) => OutputFormat::parse(f).ok_or_else(|| {
                bad(
                    "output_format",
                    format!("unknown output_format {f:?} (png, jpeg, webp)"),
                )
            })?,
        };
        let webhook = match (self.webhook_url, self.webhook_secret) {
            (None, None) => None,
            (Some(url), Some(secret)) => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(bad("webhook_url", "webhook_url must be an http(s) URL".into()));
                }
                if secret.is_empty() {
                    return Err(bad("webhook_secret", "webhook_secret must not be empty".into()));
                }
                Some((url, secret))
            }
            (Some(_), None) => return Err(bad("webhook_secret", "webhook_url needs a webhook_secret".into())),
            (None, Some(_)) => return Err(bad("webhook_url", "webhook_secret without a webhook_url".into())),
        };
        let masked = match self.masked_content.as_deref() {
            None => MaskedContent::Original,
            Some(m) => MaskedContent::parse(m).ok_or_else(|| {
                bad(
                    "masked_content",
                    format!("masked_content must be one of {}", MaskedContent::NAMES.join(", ")),
                )
            })?,
        };
        if masked != MaskedContent::Original && self.mask.is_none() {
            return Err(bad("masked_content", "masked_content needs a mask".into()));
        }
        let init = match self.image {
            None if self.mask.is_some() => return Err(bad("mask", "a mask needs an image".into())),
            None => None,
            Some(im) => {
                let strength = self
                    .strength
                    .unwrap_or(if endpoint == "variations" { 0.6 } else { 0.8 });
                if !(strength > 0.0 && strength <= 1.0) {
                    let field = if endpoint == "variations" {
                        "variation_strength"
                    } else {
                        "strength"
                    };
                    return Err(bad(field, format!("{field} must be in (0, 1]")));
                }
                let image = if im.dimensions() == (width as u32, height as u32) {
                    im
                } else {
                    image::imageops::resize(&im, width as u32, height as u32, FilterType::Lanczos3)
                };
                let mask = self.mask.map(|m| {
                    if m.dimensions() == (width as u32, height as u32) {
                        m
                    } else {
                        image::imageops::resize(&m, width as u32, height as u32, FilterType::Nearest)
                    }
                });
                Some(InitImage {
                    image,
                    strength,
                    mask,
                    masked,
                })
            }
        };
        let seed = match self.seed {
            Some(s) => s,
            None => u32::from_str_radix(&keys::random_hex(4).map_err(ApiError::internal)?, 16).unwrap_or(0) as u64,
        };
        Ok(Submission {
            key_id: key.id.clone(),
            model: model.id.clone(),
            loras: self.loras,
            request: GenerateRequest {
                prompt,
                negative_prompt: negative,
                width,
                height,
                steps,
                guidance,
                scheduler,
                seed,
                rng,
                num_images,
                init,
                long_prompt: self.long_prompt,
                max_sequence_length: self.max_sequence_length,
                true_cfg_scale: self.true_cfg_scale,
                skip_layer_guidance: self.skip_layer_guidance,
            },
            output,
            response_format,
            background: self.background || webhook.is_some(),
            webhook,
        })
    }
}
