//! The HTTP surface: routing, the JSON extractor, authentication and rate limiting. Every
//! non-2xx answer, including axum's own (unknown route, wrong method, body too large), is an
//! [`ApiError`] body.

mod a1111;
mod access;
mod auth;
mod contract;
mod events;
mod files;
mod history;
mod idempotency;
mod openai;
mod openapi_doc;
mod params;
mod playground;
mod whole;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::http::header;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::de::DeserializeOwned;

use crate::app::AppState;
use crate::error::{ApiError, Code};

pub use auth::Caller;

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.config.limits.max_body_bytes;
    let authed = Router::new()
        .route("/v1/text-to-image", post(contract::text_to_image))
        .route("/v1/image-to-image", post(contract::image_to_image))
        .route("/v1/variations", post(contract::variations))
        .route("/v1/models", get(files::list_models))
        .route("/v1/models/{id}", get(files::get_model))
        .route("/v1/workers", get(files::list_workers))
        .route("/v1/generations", get(history::list_generations))
        .route("/v1/generations/{id}", get(contract::get_generation))
        .route("/v1/generations/{id}/cancel", post(contract::cancel_generation))
        .route("/v1/generations/{id}/events", get(events::generation_events))
        .route("/v1/images/generations", post(openai::generations))
        .route("/v1/images/edits", post(openai::edits))
        .route("/v1/images/variations", post(openai::variations))
        .route("/sdapi/v1/txt2img", post(a1111::txt2img))
        .route("/sdapi/v1/img2img", post(a1111::img2img))
        .route("/sdapi/v1/sd-models", get(a1111::sd_models))
        .route("/sdapi/v1/samplers", get(a1111::samplers))
        .route("/sdapi/v1/schedulers", get(a1111::schedulers))
        .route("/sdapi/v1/loras", get(a1111::loras))
        .route("/sdapi/v1/upscalers", get(a1111::upscalers))
        .route("/sdapi/v1/options", get(a1111::get_options).post(a1111::set_options))
        .route("/sdapi/v1/png-info", post(a1111::png_info))
        .route("/sdapi/v1/refresh-checkpoints", post(a1111::refresh))
        .route("/sdapi/v1/refresh-loras", post(a1111::refresh))
        .route("/sdapi/v1/progress", get(a1111::progress))
        .route("/sdapi/v1/interrupt", post(a1111::interrupt))
        .route("/sdapi/v1/skip", post(a1111::interrupt))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::authenticate));
    Router::new()
        .merge(authed)
        // Signed links: no API key needed until they expire.
        .route("/v1/images/{id}/{file}", get(files::image))
        .route("/openapi.json", get(files::openapi))
        .route("/", get(playground::index))
        .route("/playground/{file}", get(playground::asset))
        .route("/healthz", get(files::healthz))
        .route("/metrics", get(files::metrics))
        .route("/readyz", get(files::readyz))
        .fallback(|| async { ApiError::not_found("no such route; see /openapi.json") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(Code::MethodNotAllowed, "method not allowed on this route")
        })
        .layer(DefaultBodyLimit::max(limit))
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            std::time::Duration::from_millis(state.config.limits.body_timeout_ms),
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            ApiError::internal("a request handler panicked").into_response()
        }))
        .layer(middleware::from_fn(access::access))
        .with_state(state)
}

/// JSON bodies with the contract's errors: 415 without `application/json`, 413 over the body
/// limit, 400 naming what is wrong (syntax, unknown field, wrong type).
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(ApiError::new(
                Code::UnsupportedMediaType,
                "send the body as JSON with Content-Type: application/json",
            ));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(body_error)?;
        serde_json::from_slice(&bytes)
            .map(ApiJson)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
    }
}

/// A body that could not be read: too large (413) or broken.
fn body_error(e: impl std::fmt::Display + IntoResponse) -> ApiError {
    let text = e.to_string();
    if e.into_response().status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(Code::PayloadTooLarge, "request body too large")
    } else {
        ApiError::bad_request(format!("cannot read the request body: {text}"))
    }
}

pub(crate) fn into_response(r: Result<(axum::http::StatusCode, serde_json::Value), ApiError>) -> Response {
    match r {
        Ok((status, body)) => (status, axum::Json(body)).into_response(),
        Err(e) => e.into_response(),
    }
}
