//! `Idempotency-Key` on POSTs (the IETF httpapi draft): per API key, remembered 24 h. The
//! first request with a key is answered and its answer stored; the same key with the same
//! request (method, path, body) gets that answer again without running or counting anything;
//! with a different request, `409 idempotency_key_reused`; while the first is still being
//! answered, `409 idempotency_key_in_use`. Answers that say "try again" (429, 503) are not
//! stored, so a retry with the same key is a new attempt.
//!
//! The key also fixes the id of the job the request submits (a hash of the API key, the
//! Idempotency-Key and when it was first used), so when the process answering it dies after
//! the job was committed, a retry finds that job: once it has ended, its record is the answer
//! (on the contract's generation routes); while it runs, 409 as for any request in flight.

use axum::body::{Body, to_bytes};
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::into_response;
use crate::app::AppState;
use crate::error::{ApiError, Code};
use crate::keys::now_secs;
use crate::store::Idempotency;

/// What the middleware does with a request that carries a key.
pub(super) enum Admit {
    /// Run it (the body re-attached) with the job id it fixes, then [`finish`] with the key.
    Run(Request, String, String),
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
    let now = now_secs();
    let found = tokio::task::spawn_blocking(move || store.idempotency_begin(&kid, &ik, &hash, now)).await;
    let answer = |e: ApiError| Admit::Answer(e.into_response());
    match found {
        Ok(Ok(Idempotency::New)) => {
            let id = job_id(key_id, &idem, now);
            Admit::Run(Request::from_parts(parts, Body::from(bytes)), idem, id)
        }
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
        Ok(Ok(Idempotency::InFlight { since })) => {
            let generation = matches!(
                parts.uri.path(),
                "/v1/text-to-image" | "/v1/image-to-image" | "/v1/variations"
            );
            match ended_job(state, key_id, &job_id(key_id, &idem, since)).await {
                Some(record) if generation => {
                    let mut resp = into_response(crate::jobs::respond(state, &record));
                    resp.headers_mut()
                        .insert("idempotent-replayed", HeaderValue::from_static("true"));
                    Admit::Answer(resp)
                }
                _ => answer(ApiError::new(
                    Code::IdempotencyKeyInUse,
                    "the first request with this Idempotency-Key is still being answered",
                )),
            }
        }
        Ok(Err(e)) => answer(e.into()),
        Err(e) => answer(ApiError::internal(e)),
    }
}

/// The job a request with this key submitted (`gen_` + 24 hex digits, like any job id).
fn job_id(key_id: &str, idem: &str, since: u64) -> String {
    let mut h = Sha256::new();
    h.update(format!("{key_id}\0{idem}\0{since}").as_bytes());
    format!("gen_{}", &hex::encode(h.finalize())[..24])
}

/// The record of that job if it exists, is this key's, and has ended: its request's process
/// is gone (a live one records its answer as the job ends), and the record is the answer.
async fn ended_job(state: &std::sync::Arc<AppState>, key_id: &str, id: &str) -> Option<serde_json::Value> {
    let (store, id) = (state.store.clone(), id.to_owned());
    let job = tokio::task::spawn_blocking(move || store.job(&id)).await.ok()?.ok()??;
    if job.key_id != key_id || job.status == "processing" {
        return None;
    }
    serde_json::from_str(&job.response).ok()
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
