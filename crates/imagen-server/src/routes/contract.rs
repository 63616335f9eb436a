//! The Image Generation API contract: `POST /v1/text-to-image`, `/v1/image-to-image`,
//! `/v1/variations`, `GET /v1/generations/{id}`.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use imagen_engine::pipeline::SkipLayerGuidance;
use serde::Deserialize;
use serde_json::Value;

use super::params::Params;
use super::{ApiJson, Caller, into_response, whole};
use crate::app::AppState;
use crate::error::{ApiError, Code};
use crate::jobs;
use crate::media;

/// Every field any of the three generation routes takes; each route refuses the ones that are
/// not its own, and unknown fields are refused by name.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct GenerationBody {
    prompt: Option<String>,
    negative_prompt: Option<String>,
    model: Option<String>,
    #[serde(default, deserialize_with = "whole::opt_usize")]
    width: Option<usize>,
    #[serde(default, deserialize_with = "whole::opt_usize")]
    height: Option<usize>,
    #[serde(default, deserialize_with = "whole::opt_usize")]
    num_images: Option<usize>,
    #[serde(default, deserialize_with = "whole::opt_usize")]
    steps: Option<usize>,
    guidance_scale: Option<f64>,
    scheduler: Option<String>,
    #[serde(default, deserialize_with = "whole::opt_u64")]
    seed: Option<u64>,
    rng: Option<String>,
    response_format: Option<String>,
    output_format: Option<String>,
    webhook_url: Option<String>,
    webhook_secret: Option<String>,
    #[serde(rename = "async")]
    background: Option<bool>,
    image: Option<String>,
    strength: Option<f64>,
    variation_strength: Option<f64>,
    mask: Option<String>,
    masked_content: Option<String>,
    long_prompt: Option<bool>,
    #[serde(default, deserialize_with = "whole::opt_usize")]
    max_sequence_length: Option<usize>,
    true_cfg_scale: Option<f64>,
    #[serde(default, deserialize_with = "whole::opt_vec_usize")]
    skip_guidance_layers: Option<Vec<usize>>,
    skip_layer_guidance_scale: Option<f64>,
    skip_layer_guidance_start: Option<f64>,
    skip_layer_guidance_stop: Option<f64>,
    loras: Option<Vec<LoraSpec>>,
}

/// `{"name": <LoRA id from GET /v1/models>, "scale": 1.0}`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoraSpec {
    name: String,
    scale: Option<f32>,
}

impl GenerationBody {
    /// Names of the fields set that `endpoint` does not take.
    fn foreign(&self, endpoint: &str) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut check = |set: bool, name: &'static str, allowed: &[&str]| {
            if set && !allowed.contains(&endpoint) {
                out.push(name);
            }
        };
        check(self.image.is_some(), "image", &["image-to-image", "variations"]);
        check(self.strength.is_some(), "strength", &["image-to-image"]);
        check(self.mask.is_some(), "mask", &["image-to-image"]);
        check(self.masked_content.is_some(), "masked_content", &["image-to-image"]);
        check(self.variation_strength.is_some(), "variation_strength", &["variations"]);
        out
    }

    /// diffusers' four `skip_*` fields as one setting; the tuning fields without the layers are
    /// refused rather than ignored.
    fn skip_layer_guidance(&self) -> Result<Option<SkipLayerGuidance>, ApiError> {
        let tuned = [
            (self.skip_layer_guidance_scale, "skip_layer_guidance_scale"),
            (self.skip_layer_guidance_start, "skip_layer_guidance_start"),
            (self.skip_layer_guidance_stop, "skip_layer_guidance_stop"),
        ];
        match &self.skip_guidance_layers {
            Some(layers) => Ok(Some(SkipLayerGuidance {
                layers: layers.clone(),
                scale: self
                    .skip_layer_guidance_scale
                    .unwrap_or(SkipLayerGuidance::DEFAULT_SCALE),
                start: self
                    .skip_layer_guidance_start
                    .unwrap_or(SkipLayerGuidance::DEFAULT_START),
                stop: self.skip_layer_guidance_stop.unwrap_or(SkipLayerGuidance::DEFAULT_STOP),
            })),
            None => match tuned.iter().find(|(v, _)| v.is_some()) {
                Some((_, name)) => Err(ApiError::bad_request(format!("{name} needs skip_guidance_layers"))
                    .with_details(serde_json::json!({"field": name}))),
                None => Ok(None),
            },
        }
    }

    async fn into_params(self, state: &Arc<AppState>, endpoint: &str) -> Result<Params, ApiError> {
        if let Some(f) = self.foreign(endpoint).first() {
            return Err(ApiError::bad_request(format!("{f} is not a field of /v1/{endpoint}"))
                .with_details(serde_json::json!({"field": f})));
        }
        let skip_layer_guidance = self.skip_layer_guidance()?;
        let image = match self.image {
            None if endpoint != "text-to-image" => {
                return Err(
                    ApiError::bad_request("image is required").with_details(serde_json::json!({"field": "image"}))
                );
            }
            None => None,
            Some(field) => Some(decode_field(state, field, false).await?.0),
        };
        let mask = match self.mask {
            None => None,
            Some(field) => decode_field(state, field, true).await?.1,
        };
        Ok(Params {
            prompt: self.prompt,
            negative_prompt: self.negative_prompt,
            model: self.model,
            width: self.width,
            height: self.height,
            num_images: self.num_images,
            steps: self.steps,
            guidance_scale: self.guidance_scale,
            scheduler: self.scheduler,
            seed: self.seed,
            rng: self.rng,
            response_format: self.response_format,
            output_format: self.output_format,
            webhook_url: self.webhook_url,
            webhook_secret: self.webhook_secret,
            background: self.background.unwrap_or(false),
            image,
            strength: self.strength.or(self.variation_strength),
            mask,
            masked_content: self.masked_content,
            long_prompt: self.long_prompt.unwrap_or(false),
            max_sequence_length: self.max_sequence_length,
            true_cfg_scale: self.true_cfg_scale,
            skip_layer_guidance,
            loras: self
                .loras
                .unwrap_or_default()
                .into_iter()
                .map(|l| (l.name, l.scale.unwrap_or(1.0)))
                .collect(),
        })
    }
}

/// base64 / data URI / URL → an RGB image (or, with `as_mask`, a repaint mask), on a blocking
/// thread (decoding and fetching are blocking).
pub async fn decode_field(
    state: &Arc<AppState>,
    field: String,
    as_mask: bool,
) -> Result<(image::RgbImage, Option<image::GrayImage>), ApiError> {
    let fetch = state.config.fetch.clone();
    let max = state.config.limits.max_input_pixels;
    tokio::task::spawn_blocking(move || {
        let bytes = media::image_bytes(&field, &fetch)?;
        if as_mask {
            Ok((image::RgbImage::new(0, 0), Some(media::decode_mask(&bytes, max)?)))
        } else {
            Ok((media::decode(&bytes, max)?, None))
        }
    })
    .await
    .map_err(ApiError::internal)?
}

/// Submits and, unless the job runs in the background, waits for it.
pub async fn run(
    state: &Arc<AppState>,
    params: Params,
    caller: &Caller,
    endpoint: &str,
) -> Result<(StatusCode, Value), ApiError> {
    let sub = params.into_submission(state, &caller.0, endpoint)?;
    let (record, waiter) = jobs::submit(state, sub)?;
    match waiter {
        None => Ok((StatusCode::ACCEPTED, jobs::render(state, &record))),
        Some(rx) => {
            let id = record["id"].as_str().unwrap_or_default();
            let outcome = jobs::wait(state, id, rx).await?;
            jobs::respond(state, &outcome.record)
        }
    }
}

async fn endpoint(state: Arc<AppState>, caller: Caller, body: GenerationBody, endpoint: &str) -> Response {
    let result = async {
        if !crate::keys::allows(&caller.0, endpoint, None) {
            return Err(ApiError::new(
                crate::error::Code::Forbidden,
                format!("this API key may not use {endpoint}"),
            ));
        }
        let params = body.into_params(&state, endpoint).await?;
        run(&state, params, &caller, endpoint).await
    }
    .await;
    into_response(result)
}

pub async fn text_to_image(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<GenerationBody>,
) -> Response {
    endpoint(state, caller, body, "text-to-image").await
}

pub async fn image_to_image(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<GenerationBody>,
) -> Response {
    endpoint(state, caller, body, "image-to-image").await
}

pub async fn variations(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    ApiJson(body): ApiJson<GenerationBody>,
) -> Response {
    endpoint(state, caller, body, "variations").await
}

/// A generation of the caller's own; another key's id is indistinguishable from none (404).
pub async fn get_generation(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let st = state.clone();
    let found = tokio::task::spawn_blocking(move || st.store.job(&id)).await;
    let result = match found {
        Ok(Ok(Some(job))) if job.key_id == caller.0.id => serde_json::from_str::<Value>(&job.response)
            .map(|record| (StatusCode::OK, jobs::render(&state, &record)))
            .map_err(ApiError::internal),
        Ok(Ok(_)) => Err(ApiError::not_found("no such generation")),
        Ok(Err(e)) => Err(e.into()),
        Err(e) => Err(ApiError::internal(e)),
    };
    into_response(result)
}

/// `POST /v1/generations/{id}/cancel` by the job's own key. A queued job never starts: its
/// record ends `failed` with error code `cancelled` at once (200). A running one stops after
/// the denoising step under way and ends the same way (202 with the record as it stands; read
/// it back, or wait on `events`). An ended job is answered as it is (200), unchanged.
pub async fn cancel_generation(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    let st = state.clone();
    let result = tokio::task::spawn_blocking(move || cancel(&st, &caller, &id))
        .await
        .map_err(ApiError::internal)
        .and_then(|r| r);
    into_response(result)
}

fn cancel(state: &Arc<AppState>, caller: &Caller, id: &str) -> Result<(StatusCode, Value), ApiError> {
    let job = match state.store.job(id)? {
        Some(job) if job.key_id == caller.0.id => job,
        _ => return Err(ApiError::not_found("no such generation")),
    };
    let record: Value = serde_json::from_str(&job.response).map_err(ApiError::internal)?;
    let queued = crate::queue::QueuedJob {
        id: job.id.clone(),
        key_id: job.key_id.clone(),
        attempt: 0,
        max_attempts: 0,
        spec: String::new(),
        response: job.response.clone(),
        webhook: job.webhook_url.clone().zip(job.webhook_secret.clone()),
        cancel: true,
    };
    match state.queue.request_cancel(id)?.as_deref() {
        Some("queued") => {
            let failed = jobs::failed_record(record.clone(), Code::Cancelled, "cancelled by the client");
            if jobs::end(state, &queued, None, failed.clone()) {
                return Ok((StatusCode::OK, jobs::render(state, &failed)));
            }
            // claimed meanwhile: the worker sees the flag when it starts or at its next heartbeat
        }
        Some("done") => return Ok((StatusCode::OK, jobs::render(state, &record))),
        _ => {}
    }
    if let Some((_, flag)) = state.running.lock().unwrap_or_else(|e| e.into_inner()).get(id) {
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    }
    let current = state
        .store
        .job(id)?
        .map_or(record, |j| serde_json::from_str(&j.response).unwrap_or(Value::Null));
    let status = if current["status"] == "processing" {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, jobs::render(state, &current)))
}
