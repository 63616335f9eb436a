//! `Idempotency-Key` on POSTs (the IETF httpapi draft): per API key, remembered 24 h. The
//! first request with a key is answered and its answer stored; the same key with the same
//! request (method, path, body) gets that answer again without running or counting anything;
//! with a different request, `409 idempotency_key_reused`; while the first is still being
//! answered, `409 idempotency_key_in_use`. Answers that say "try again" (429, 503) are not
//! stored, so a retry with the same key is a new attempt.

use axum::body::{Body, to_bytes};
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::app::AppState;
use crate::error::{ApiError, Code};
use crate::keys::now_secs;
use crate::store::Idempotency;

/// What the middleware does with a request that carries a key.
pub(super) enum Admit {
    /// Run it (the body re-attached), then [`finish`] with the key.
    Run(Request, String),
    /// Answer this at once.
    Answer(Response),
}

/// The request's `Idempotency-Key`, if any (1–255 visible ASCII characters).
pub(super) fn key_of(req: &Request) -> Result<Option<String>, ApiError> {
    let Some(v) = req.headers().get("idempotency-key") else {
        return Ok(None);
    };
    match v.to_str() {
        Ok(k) if !k.is_empty() && k.len() <= 255 => Ok(Some(k.to_owned())),
        _ => Err(
            ApiError::bad_request("Idempotency-Key must be 1 to 255 visible ASCII characters")
                .with_details(serde_json::json!({"field": "Idempotency-Key"})),
        ),
    }
}

pub(super) async fn admit(state: &std::sync::Arc<AppState>, key_id: &str, idem: String, req: Request) -> Admit {
    let (parts, body) = req.into_parts();
    let bytes = match to_bytes(body, state.config.limits.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return Admit::Answer(ApiError::new(Code::PayloadTooLarge, "request body too large").into_response());
        }
    };
    let mut h = Sha256::new();
    h.update(parts.method.as_str().as_bytes());
    h.update(b" ");
    h.update(parts.uri.path().as_bytes());
    h.update(b"\n");
    h.update(&bytes);
    let hash = hex::encode(h.finalize());
    let (store, kid, ik) = (state.store.clone(), key_id.to_owned(), idem.clone());
    let found = tokio::task::spawn_blocking(move || store.idempotency_begin(&kid, &ik, &hash, now_secs())).await;
    let answer = |e: ApiError| Admit::Answer(e.into_response());
    match found {
        Ok(Ok(Idempotency::New)) => Admit::Run(Request::from_parts(parts, Body::from(bytes)), idem),
        Ok(Ok(Idempotency::Replay(status, content_type, body))) => {
            let mut resp = Response::new(Body::from(body));
            *resp.status_mut() = axum::http::StatusCode::from_u16(status).unwrap_or_default();
            if let Ok(v) = HeaderValue::from_str(&content_type) {
                resp.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            resp.headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
            Admit::Answer(resp)
        }
        Ok(Ok(Idempotency::Mismatch)) => answer(ApiError::new(
            Code::IdempotencyKeyReused,
            "this Idempotency-Key was used with a different request",
        )),
        Ok(Ok(Idempotency::InFlight)) => answer(ApiError::new(
            Code::IdempotencyKeyInUse,
            "the first request with this Idempotency-Key is still being answered",
        )),
        Ok(Err(e)) => answer(e.into()),
        Err(e) => answer(ApiError::internal(e)),
    }
}

/// Stores the answer to replay (or forgets the key when the answer says to retry).
pub(super) async fn finish(state: &std::sync::Arc<AppState>, key_id: &str, idem: String, resp: Response) -> Response {
    let status = resp.status();
    let store = state.store.clone();
    let kid = key_id.to_owned();
    if status.as_u16() == 429 || status.as_u16() == 503 {
        let _ = tokio::task::spawn_blocking(move || store.idempotency_abort(&kid, &idem)).await;
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let bytes = match to_bytes(body, usize::MAX).await {
        Ok(b) => b,
        Err(e) => return ApiError::internal(e).into_response(),
    };
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_owned();
    let stored = bytes.clone();
    let saved = tokio::task::spawn_blocking(move || {
        store.idempotency_end(&kid, &idem, status.as_u16(), &content_type, &stored)
    })
    .await;
    if !matches!(saved, Ok(Ok(()))) {
        tracing::warn!("storing an idempotent answer failed; a retry will run again");
    }
    Response::from_parts(parts, Body::from(bytes))
}
