//! Read-only routes: models, image files (signed links), the OpenAPI document, health.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use imagen_engine::catalog::ModelInfo;
use serde_json::{Value, json};

use super::Caller;
use crate::app::AppState;
use crate::config::Role;
use crate::error::{ApiError, Code};
use crate::keys::{self, now_secs};
use crate::media::OutputFormat;
use crate::signing::{same, url_signature};
use crate::workers::WorkerInfo;

pub const OPENAPI: &str = include_str!("../../openapi.json");

fn describe(m: &ModelInfo) -> Value {
    let mut v = serde_json::to_value(m).unwrap_or_else(|_| json!({}));
    v["object"] = "model".into();
    v["endpoints"] = json!(["text-to-image", "image-to-image", "variations"]);
    v
}

pub async fn list_models(State(state): State<Arc<AppState>>, Extension(caller): Extension<Caller>) -> Response {
    if !keys::allows(&caller.0, "models", None) {
        return ApiError::new(Code::Forbidden, "this API key may not list models").into_response();
    }
    let catalog = state.catalog();
    let mut data: Vec<Value> = catalog
        .models
        .iter()
        .filter(|m| keys::allows(&caller.0, "models", Some(&m.id)))
        .map(describe)
        .collect();
    // LoRAs: pass them per request as `loras: [{"name": id, "scale": s}]`.
    data.extend(catalog.loras.iter().map(|l| {
        let mut v = serde_json::to_value(l).unwrap_or_else(|_| json!({}));
        v["object"] = "lora".into();
        v
    }));
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

pub async fn get_model(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Response {
    match state.catalog().models.iter().find(|m| m.id == id) {
        Some(m) if keys::allows(&caller.0, "models", Some(&m.id)) => axum::Json(describe(m)).into_response(),
        Some(_) => ApiError::new(Code::Forbidden, "this API key may not use this model").into_response(),
        None => ApiError::not_found(format!("no model {id:?}")).into_response(),
    }
}

/// `/v1/images/{generation}/{n}.{ext}`: with a valid, unexpired `sig` — or the owner's API key.
pub async fn image(
    State(state): State<Arc<AppState>>,
    Path((id, file)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let path = format!("{id}/{file}");
    // a malformed link is refused even with a key: the parameters say something else was meant
    let expires = match q.get("expires").map(|e| e.parse::<u64>()) {
        None => None,
        Some(Ok(e)) => Some(e),
        Some(Err(_)) => {
            return ApiError::bad_request("expires must be a whole number of seconds")
                .with_details(json!({"field": "expires"}))
                .into_response();
        }
    };
    let signed = match (expires, q.get("sig")) {
        (Some(exp), Some(sig)) => {
            if exp < now_secs() {
                return ApiError::new(
                    Code::Forbidden,
                    "this image link has expired; fetch the generation again",
                )
                .into_response();
            }
            if !same(&url_signature(&state.secret, &path, exp), sig) {
                return ApiError::new(Code::Forbidden, "invalid image link signature").into_response();
            }
            true
        }
        _ => false,
    };
    let st = state.clone();
    let (id2, owner_check) = (id.clone(), !signed);
    let result = tokio::task::spawn_blocking(move || -> Result<Vec<u8>, ApiError> {
        if owner_check {
            let key = super::auth::lookup(&st, &headers)?;
            let job = st.store.job(&id2)?;
            if job.is_none_or(|j| j.key_id != key.id) {
                return Err(ApiError::not_found("no such image"));
            }
        }
        // Only names this server wrote: `<generation id>/<n>.<ext>`.
        let valid = id2.starts_with("gen_")
            && id2[4..].bytes().all(|b| b.is_ascii_hexdigit())
            && file.split_once('.').is_some_and(|(n, e)| {
                !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) && OutputFormat::parse(e).is_some()
            });
        if !valid {
            return Err(ApiError::not_found("no such image"));
        }
        st.blobs
            .get(&format!("images/{id2}/{file}"))?
            .ok_or_else(|| ApiError::not_found("no such image"))
    })
    .await;
    let ext = path.rsplit('.').next().unwrap_or("png");
    let mime = OutputFormat::parse(ext).map_or("application/octet-stream", OutputFormat::mime);
    match result {
        Ok(Ok(bytes)) => ([(header::CONTENT_TYPE, mime)], bytes).into_response(),
        Ok(Err(e)) => e.into_response(),
        Err(e) => ApiError::internal(e).into_response(),
    }
}

/// The committed document with this server's limits, narrowed to what its models take (all of
/// it when it knows no models: an API-only front-end without a models folder).
pub async fn openapi(State(state): State<Arc<AppState>>) -> Response {
    let catalog = state.catalog();
    let mut families: Vec<&str> = catalog.models.iter().map(|m| m.family.as_str()).collect();
    if families.is_empty() {
        families = vec!["sd15", "sdxl", "flux", "sd3"];
    }
    let doc = super::openapi_doc::document(&state.config.limits, &families);
    ([(header::CONTENT_TYPE, "application/json")], doc.to_string()).into_response()
}

/// Prometheus' text format; no key needed, like `/healthz` (scrapers sit on the operator's side).
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let st = state.clone();
    let queued = tokio::task::spawn_blocking(move || st.queue.queued_count())
        .await
        .ok()
        .and_then(Result::ok);
    let loaded = state.engine.as_ref().map(|e| e.loaded_memory()).unwrap_or_default();
    let mut gauges = vec![
        ("imagen_jobs_running", vec![], lock_len(&state.running) as f64),
        ("imagen_models_loaded", vec![], loaded.len() as f64),
        ("imagen_models_available", vec![], state.catalog().models.len() as f64),
        (
            "imagen_process_resident_memory_bytes",
            vec![],
            crate::metrics::resident_bytes(),
        ),
    ];
    if let Some(q) = queued {
        gauges.push(("imagen_queue_depth", vec![], q as f64));
    }
    for (m, bytes) in &loaded {
        gauges.push(("imagen_model_loaded", crate::metrics::model_labels(m), 1.0));
        gauges.push((
            "imagen_model_memory_bytes",
            crate::metrics::model_labels(m),
            *bytes as f64,
        ));
    }
    let text = crate::metrics::METRICS.render(&gauges);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response()
}

fn lock_len<K, V>(m: &std::sync::Mutex<HashMap<K, V>>) -> usize {
    m.lock().map_or(0, |m| m.len())
}

pub async fn healthz() -> Response {
    axum::Json(json!({"status": "ok"})).into_response()
}

/// Ready once this process's engine has its first model (an API-only process at once), with
/// the live workers on the shared store.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if let Some(engine) = &state.engine
        && !engine.ready()
    {
        return ApiError::new(Code::ServiceUnavailable, "no model is loaded yet").into_response();
    }
    let workers = match live_workers(&state).await {
        Ok(w) => w,
        Err(e) => return e.into_response(),
    };
    let queued = state.engine.as_ref().map_or(0, |e| e.queued());
    let body = json!({
        "status": "ready",
        "role": match state.config.role { Role::Both => "api+worker", Role::Api => "api", Role::Worker => "worker" },
        "models": state.catalog().models.len(),
        "queued": queued,
        "workers": workers.len(),
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// Workers that sent a heartbeat within the last lease.
async fn live_workers(state: &Arc<AppState>) -> Result<Vec<WorkerInfo>, ApiError> {
    let st = state.clone();
    let since = crate::webhook::now_ms().saturating_sub(state.config.queue.lease_ms);
    tokio::task::spawn_blocking(move || st.workers.workers(since))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::from)
}

/// `GET /v1/workers` (keys with the `admin` scope): every live worker, what it serves and
/// runs.
pub async fn list_workers(State(state): State<Arc<AppState>>, Extension(caller): Extension<Caller>) -> Response {
    if !caller.0.scopes.iter().any(|s| s == keys::ADMIN_SCOPE) {
        return ApiError::new(Code::Forbidden, "listing workers needs a key with the admin scope").into_response();
    }
    match live_workers(&state).await {
        Ok(w) => axum::Json(json!({"object": "list", "data": w})).into_response(),
        Err(e) => e.into_response(),
    }
}
