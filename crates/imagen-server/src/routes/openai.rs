//! OpenAI-compatible routes, so the official SDKs work with `base_url=http://host:8080/v1`:
//! `POST /v1/images/generations` (JSON), `/v1/images/edits` and `/v1/images/variations`
//! (multipart). Answers `{created, data: [{url | b64_json}]}` and OpenAI's error shape.

use std::sync::Arc;

use axum::Extension;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::contract::run;
use super::params::Params;
use super::{ApiJson, Caller};
use crate::app::AppState;
use crate::error::{ApiError, Code, Flavor};
use crate::keys::now_secs;
use crate::media;

/// OpenAI's own model names mean "this server's default model".
const OPENAI_MODELS: [&str; 4] = ["dall-e-2", "dall-e-3", "gpt-image-1", "gpt-image-1-mini"];

/// OpenAI's request fields this server reads; [`IGNORED`] ones are accepted without effect, and
/// any other is refused by name, as OpenAI refuses an unrecognised argument.
#[derive(Deserialize)]
pub struct GenerationsBody {
    prompt: Option<String>,
    model: Option<String>,
    #[serde(default, deserialize_with = "super::whole::opt_usize")]
    n: Option<usize>,
    size: Option<String>,
    response_format: Option<String>,
    output_format: Option<String>,
    #[serde(flatten)]
    ignored: std::collections::HashMap<String, Value>,
}

/// OpenAI's image parameters with no effect here (quality tiers, styles, streaming partial
/// images, moderation): accepted so its SDKs' requests pass.
const IGNORED: [&str; 10] = [
    "quality",
    "style",
    "user",
    "background",
    "moderation",
    "output_compression",
    "partial_images",
    "stream",
    "input_fidelity",
    "input_fidelity_mode",
];

/// The first field neither read nor in [`IGNORED`].
fn unknown<'a>(names: impl IntoIterator<Item = &'a String>, known: &[&str]) -> Result<(), ApiError> {
    match names
        .into_iter()
        .find(|n| !known.contains(&n.as_str()) && !IGNORED.contains(&n.as_str()))
    {
        Some(n) => {
            Err(ApiError::bad_request(format!("unrecognized request argument: {n}")).with_details(json!({"field": n})))
        }
        None => Ok(()),
    }
}

fn model_name(m: Option<String>) -> Option<String> {
    m.filter(|m| !OPENAI_MODELS.contains(&m.as_str()))
}

/// "WxH" → (W, H); "auto" or nothing → the model's default.
fn size(s: Option<&str>) -> Result<(Option<usize>, Option<usize>), ApiError> {
    match s {
        None | Some("auto") => Ok((None, None)),
        Some(s) => {
            let parsed = s
                .split_once('x')
                .and_then(|(w, h)| Some((w.trim().parse().ok()?, h.trim().parse().ok()?)));
            let (w, h) = parsed.ok_or_else(|| {
                ApiError::bad_request(format!("size must be \"WIDTHxHEIGHT\" (got {s:?})"))
                    .with_details(json!({"field": "size"}))
            })?;
            Ok((Some(w), Some(h)))
        }
    }
}

/// Turns a contract-shaped result into OpenAI's.
fn answer(result: Result<(StatusCode, Value), ApiError>) -> Response {
    match result {
        Ok((_, record)) => {
            let data: Vec<Value> = record["images"]
                .as_array()
                .map(|images| {
                    images
                        .iter()
                        .map(|im| match im.get("b64_json") {
                            Some(b) => json!({"b64_json": b}),
                            None => json!({"url": im["url"]}),
                        })
                        .collect()
                })
                .unwrap_or_default();
            axum::Json(json!({"created": now_secs(), "data": data})).into_response()
        }
        Err(e) => e.with_flavor(Flavor::OpenAi).into_response(),
    }
}

pub async fn generations(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> Response {
    let result = async {
        let ApiJson(body) = ApiJson::<GenerationsBody>::from_request(req, &state).await?;
        unknown(body.ignored.keys(), &[])?;
        let (width, height) = size(body.size.as_deref())?;
        let params = Params {
            prompt: body.prompt,
            model: model_name(body.model),
            num_images: body.n,
            width,
            height,
            response_format: body.response_format,
            output_format: body.output_format,
            ..Params::default()
        };
        run(&state, params, &caller, "text-to-image").await
    }
    .await;
    answer(result)
}

/// The multipart fields these routes take.
#[derive(Default)]
struct Form {
    image: Option<Vec<u8>>,
    mask: Option<Vec<u8>>,
    text: Vec<(String, String)>,
}

async fn read_form(state: &Arc<AppState>, req: Request) -> Result<Form, ApiError> {
    let mut mp = Multipart::from_request(req, state)
        .await
        .map_err(|e| ApiError::new(Code::UnsupportedMediaType, format!("send multipart/form-data: {e}")))?;
    let mut form = Form::default();
    while let Some(field) = mp
        .next_field()
        .await
        .map_err(|e| ApiError::bad_request(format!("multipart: {e}")))?
    {
        let name = field.name().unwrap_or_default().to_owned();
        match name.as_str() {
            "image" | "image[]" => {
                let bytes = field.bytes().await.map_err(|e| too_large_or_bad(e.to_string()))?;
                form.image.get_or_insert(bytes.to_vec());
            }
            "mask" => {
                let bytes = field.bytes().await.map_err(|e| too_large_or_bad(e.to_string()))?;
                form.mask = Some(bytes.to_vec());
            }
            _ => {
                let text = field.text().await.map_err(|e| too_large_or_bad(e.to_string()))?;
                form.text.push((name, text));
            }
        }
    }
    Ok(form)
}

fn too_large_or_bad(m: String) -> ApiError {
    if m.contains("limit") {
        ApiError::new(Code::PayloadTooLarge, "request body too large")
    } else {
        ApiError::bad_request(format!("multipart: {m}"))
    }
}

impl Form {
    fn get(&self, name: &str) -> Option<String> {
        self.text.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
    }

    async fn params(self, state: &Arc<AppState>) -> Result<Params, ApiError> {
        let read = ["prompt", "model", "n", "size", "response_format", "output_format"];
        unknown(self.text.iter().map(|(n, _)| n), &read)?;
        let bytes = self
            .image
            .clone()
            .ok_or_else(|| ApiError::bad_request("image is required").with_details(json!({"field": "image"})))?;
        let max = state.config.limits.max_input_pixels;
        let mask_bytes = self.mask.clone();
        let (image, mask) = tokio::task::spawn_blocking(move || {
            let mask = mask_bytes.map(|m| media::decode_mask(&m, max)).transpose()?;
            Ok::<_, ApiError>((media::decode(&bytes, max)?, mask))
        })
        .await
        .map_err(ApiError::internal)??;
        let (width, height) = size(self.get("size").as_deref())?;
        let n = match self.get("n") {
            None => None,
            // "2" or "2.0", as JSON's integers
            Some(n) => {
                let v = serde_json::from_str(n.trim()).unwrap_or_default();
                Some(super::whole::whole(&v).map(|v| v as usize).ok_or_else(|| {
                    ApiError::bad_request(format!("n must be a whole number (got {n:?})"))
                        .with_details(json!({"field": "n"}))
                })?)
            }
        };
        Ok(Params {
            prompt: self.get("prompt"),
            model: model_name(self.get("model")),
            num_images: n,
            width,
            height,
            response_format: self.get("response_format"),
            output_format: self.get("output_format"),
            image: Some(image),
            mask,
            ..Params::default()
        })
    }
}

/// Edits: the image re-drawn under the prompt (image-to-image); with a `mask`, only where the
/// mask is transparent (inpainting).
pub async fn edits(State(state): State<Arc<AppState>>, Extension(caller): Extension<Caller>, req: Request) -> Response {
    let result = async {
        let params = read_form(&state, req).await?.params(&state).await?;
        run(&state, params, &caller, "image-to-image").await
    }
    .await;
    answer(result)
}

pub async fn variations(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    req: Request,
) -> Response {
    let result = async {
        let form = read_form(&state, req).await?;
        if form.mask.is_some() {
            return Err(ApiError::bad_request("variations take no mask").with_details(json!({"field": "mask"})));
        }
        let params = form.params(&state).await?;
        run(&state, params, &caller, "variations").await
    }
    .await;
    answer(result)
}
