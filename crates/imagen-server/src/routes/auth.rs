//! Bearer-key authentication and per-key rate limits. Generation requests (POST) count against
//! the plan's per-minute and per-day windows; reads do not count but carry the headers too.
//!
//! `X-RateLimit-Limit` is the per-minute limit, `X-RateLimit-Remaining` what is left before the
//! first window that runs out (minute or day), `X-RateLimit-Reset` when that window restarts.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::access;
use crate::app::AppState;
use crate::error::{ApiError, Code, Flavor};
use crate::keys::{self, now_secs};
use crate::store::{KeyRecord, WindowState};

/// The authenticated key, for handlers (request extension).
#[derive(Clone)]
pub struct Caller(pub KeyRecord);

pub async fn authenticate(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let flavor = if req.uri().path().starts_with("/v1/images/") {
        Flavor::OpenAi
    } else {
        Flavor::Contract
    };
    let key = match lookup(&state, req.headers()) {
        Ok(k) => k,
        Err(e) => return e.with_flavor(flavor).into_response(),
    };
    // A1111's settings, interrupt, refresh and png-info calls are POSTs but generate nothing
    let counts = req.method() == Method::POST
        && !matches!(
            req.uri().path(),
            "/sdapi/v1/options"
                | "/sdapi/v1/interrupt"
                | "/sdapi/v1/skip"
                | "/sdapi/v1/png-info"
                | "/sdapi/v1/refresh-checkpoints"
                | "/sdapi/v1/refresh-loras"
        );
    // An Idempotency-Key replays the first answer before anything is counted.
    let mut idem = None;
    if counts {
        match super::idempotency::key_of(&req) {
            Ok(None) => {}
            Ok(Some(k)) => match super::idempotency::admit(&state, &key.id, k, req).await {
                super::idempotency::Admit::Run(r, k, job) => {
                    req = r;
                    idem = Some((k, job));
                }
                super::idempotency::Admit::Answer(mut resp) => {
                    if let Ok(Ok(states)) = usage(&state, &key).await {
                        rate_headers(resp.headers_mut(), &states);
                    }
                    return resp;
                }
            },
            Err(e) => return e.with_flavor(flavor).into_response(),
        }
    }
    let key_plan = key.plan.clone();
    let windows = keys::windows(&key.plan);
    let store = state.store.clone();
    let key_id = key.id.clone();
    // SQLite is blocking: keep it off the async workers.
    let checked = tokio::task::spawn_blocking(move || {
        let now = now_secs();
        if counts {
            store.hit(&key_id, &windows, now)
        } else {
            store.usage(&key_id, &windows, now).map(|s| (true, s))
        }
    })
    .await;
    let (allowed, states) = match checked {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => return ApiError::from(e).with_flavor(flavor).into_response(),
        Err(e) => return ApiError::internal(e).with_flavor(flavor).into_response(),
    };
    let key_id = key.id.clone();
    let mut resp = if allowed {
        access::record_key(&key.id);
        req.extensions_mut().insert(Caller(key));
        let fixed = idem.as_ref().map(|(_, job)| job.clone());
        crate::jobs::with_fixed_id(fixed, next.run(req)).await
    } else {
        let tightest = tightest(&states);
        let retry = tightest.reset.saturating_sub(now_secs()).max(1);
        let mut e = ApiError::new(
            Code::RateLimitExceeded,
            format!(
                "rate limit exceeded: {} requests allowed in this window on the {} plan; retry in {retry} s",
                tightest.limit, key_plan
            ),
        )
        .with_flavor(flavor);
        e.retry_after = Some(retry);
        e.into_response()
    };
    if let Some((k, _)) = idem {
        resp = super::idempotency::finish(&state, &key_id, k, resp).await;
    }
    rate_headers(resp.headers_mut(), &states);
    resp
}

/// The key's windows without counting.
async fn usage(
    state: &Arc<AppState>,
    key: &KeyRecord,
) -> Result<crate::Result<Vec<WindowState>>, tokio::task::JoinError> {
    let (store, id, windows) = (state.store.clone(), key.id.clone(), keys::windows(&key.plan));
    tokio::task::spawn_blocking(move || store.usage(&id, &windows, now_secs())).await
}

/// The caller's key from `Authorization: Bearer …`, or HTTP Basic with the key as the password
/// (AUTOMATIC1111's `--api-auth`, which its clients send; the user name is ignored). 401 when
/// missing, malformed or revoked.
pub(super) fn lookup(state: &AppState, headers: &HeaderMap) -> Result<KeyRecord, ApiError> {
    let unauthorized = |m: &str| ApiError::new(Code::Unauthorized, m);
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("missing Authorization: Bearer <API key>"))?;
    let value = value.to_str().ok().unwrap_or_default();
    let basic = value
        .strip_prefix("Basic ")
        .or_else(|| value.strip_prefix("basic "))
        .and_then(|b| base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|up| up.split_once(':').map(|(_, password)| password.to_owned()));
    let token = basic
        .as_deref()
        .or_else(|| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unauthorized("the Authorization header must be `Bearer <API key>`"))?;
    match state.store.key_by_hash(&keys::hash(token)) {
        Ok(Some(k)) if !k.revoked => Ok(k),
        Ok(_) => Err(unauthorized("invalid or revoked API key")),
        Err(e) => Err(e.into()),
    }
}

/// The window that runs out first (fewest remaining; the later reset on a tie).
fn tightest(states: &[WindowState]) -> WindowState {
    states
        .iter()
        .copied()
        .min_by_key(|s| (s.limit.saturating_sub(s.used), std::cmp::Reverse(s.reset)))
        .unwrap_or(WindowState {
            limit: 0,
            used: 0,
            reset: now_secs(),
        })
}

fn rate_headers(h: &mut HeaderMap, states: &[WindowState]) {
    let t = tightest(states);
    let per_minute = states.first().map_or(t.limit, |s| s.limit);
    for (name, value) in [
        ("x-ratelimit-limit", per_minute),
        ("x-ratelimit-remaining", t.limit.saturating_sub(t.used)),
        ("x-ratelimit-reset", t.reset),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
            h.insert(name, v);
        }
    }
}
