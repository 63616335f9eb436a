//! The outermost layer: a request id per request (the client's `X-Request-Id` when it is a
//! sane token, else a new one), a tracing span carrying it (and the key id, once
//! authentication knows it) around everything the request does, the id echoed as
//! `X-Request-Id` and written into error bodies, and one access line when the answer leaves.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

pub const REQUEST_ID: &str = "x-request-id";
/// Error bodies are small JSON; anything larger is passed on untouched.
const MAX_ERROR_BODY: usize = 64 * 1024;

pub async fn access(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| sane(v))
        .map_or_else(new_id, str::to_owned);
    let span = tracing::info_span!("request", id = %id, key_id = tracing::field::Empty);
    let (method, path) = (req.method().clone(), req.uri().path().to_owned());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "-".to_owned(), |p| p.as_str().to_owned());
    let started = Instant::now();
    async move {
        let response = next.run(req).await;
        let mut response = if response.status().as_u16() >= 400 {
            with_request_id(response, &id).await
        } else {
            response
        };
        if let Ok(v) = HeaderValue::from_str(&id) {
            response.headers_mut().insert(REQUEST_ID, v);
        }
        // the query is left out: signed image links carry their signature there
        tracing::info!(
            target: "imagen::access",
            method = %method,
            path = %path,
            route = %route,
            status = response.status().as_u16(),
            latency_ms = (started.elapsed().as_secs_f64() * 1e4).round() / 10.0,
            "request"
        );
        response
    }
    .instrument(span)
    .await
}

/// What the current request's span says its key is: set by authentication.
pub fn record_key(key_id: &str) {
    tracing::Span::current().record("key_id", key_id);
}

/// 1–128 characters a proxy would put there; anything else gets a new id.
fn sane(v: &str) -> bool {
    (1..=128).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

fn new_id() -> String {
    let mut bytes = [0u8; 12];
    // an id is for correlating log lines, not a secret: a clock fallback will do
    if getrandom::fill(&mut bytes).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes.copy_from_slice(&t.to_le_bytes()[..12]);
    }
    format!("req_{}", hex::encode(bytes))
}

/// `{"error": {...}}` bodies get `"request_id"` inside `error` (every error this server
/// writes has that shape, axum's own rejections included: see `ApiError`).
async fn with_request_id(response: Response, id: &str) -> Response {
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let small = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_none_or(|n| n <= MAX_ERROR_BODY);
    if !json || !small {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_ERROR_BODY).await else {
        parts.headers.remove(header::CONTENT_LENGTH);
        return Response::from_parts(parts, Body::empty());
    };
    let mut value: serde_json::Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(_) => return Response::from_parts(parts, Body::from(bytes)),
    };
    let Some(error) = value.get_mut("error").and_then(|e| e.as_object_mut()) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    error.insert("request_id".into(), id.into());
    let body = value.to_string();
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}
