//! `GET /v1/generations`: the calling key's generations, newest first, each with the
//! parameters it was made with (what the playground's gallery shows and "reuse" fills in).

use std::sync::Arc;

use axum::Extension;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::{Caller, into_response};
use crate::app::AppState;
use crate::error::ApiError;
use crate::jobs;
use crate::spec::JobSpec;

const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 100;

pub async fn list_generations(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Response {
    let result = match parse_query(query.as_deref().unwrap_or("")) {
        Ok((limit, before)) => {
            let st = state.clone();
            tokio::task::spawn_blocking(move || list(&st, &caller, limit, before.as_deref()))
                .await
                .map_err(ApiError::internal)
                .and_then(|r| r)
        }
        Err(e) => Err(e),
    };
    into_response(result)
}

/// `limit` (1–100, default 20) and `before` (a generation id); anything else is refused.
fn parse_query(query: &str) -> Result<(usize, Option<String>), ApiError> {
    let (mut limit, mut before) = (DEFAULT_LIMIT, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        match name {
            "limit" => {
                limit = value
                    .parse()
                    .ok()
                    .filter(|n| (1..=MAX_LIMIT).contains(n))
                    .ok_or_else(|| ApiError::bad_request(format!("limit must be 1 to {MAX_LIMIT}")))?
            }
            // ids are `gen_` + hex: nothing to percent-decode
            "before" => before = Some(value.to_owned()).filter(|v| !v.is_empty()),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "unknown query parameter {name:?} (limit, before)"
                )));
            }
        }
    }
    Ok((limit, before))
}

fn list(
    state: &AppState,
    caller: &Caller,
    limit: usize,
    before: Option<&str>,
) -> Result<(StatusCode, Value), ApiError> {
    if let Some(id) = before
        && state.store.job(id)?.is_none_or(|j| j.key_id != caller.0.id)
    {
        return Err(ApiError::not_found(format!("before: no such generation {id:?}")));
    }
    // one more than asked tells whether there is a next page
    let mut rows = state.store.jobs_of(&caller.0.id, before, limit + 1)?;
    let has_more = rows.len() > limit;
    rows.truncate(limit);
    let data: Vec<Value> = rows
        .iter()
        .filter_map(|(job, spec)| {
            let mut record: Value = serde_json::from_str(&job.response).ok()?;
            // links, never inline base64, in a listing
            let format = record["response_format"].take();
            record["response_format"] = "url".into();
            let mut out = jobs::render(state, &record);
            out["response_format"] = if format.is_null() { "url".into() } else { format };
            let spec = spec.as_deref().and_then(|s| serde_json::from_str::<JobSpec>(s).ok());
            out["parameters"] = spec.map_or(Value::Null, |s| parameters(&s));
            Some(out)
        })
        .collect();
    Ok((StatusCode::OK, json!({"data": data, "has_more": has_more})))
}

/// A job's parameters under the request's own field names, so a client can send them again.
fn parameters(s: &JobSpec) -> Value {
    json!({
        "model": s.model,
        "prompt": s.prompt,
        "negative_prompt": s.negative_prompt,
        "width": s.width,
        "height": s.height,
        "steps": s.steps,
        "guidance_scale": s.guidance,
        "scheduler": s.scheduler,
        "seed": s.seed,
        "num_images": s.num_images,
        "strength": s.strength,
        "mask": s.mask,
        "loras": s.loras.iter().map(|(n, w)| json!({"name": n, "scale": w})).collect::<Vec<_>>(),
    })
}
