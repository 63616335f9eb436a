//! A generation's life: committed to the store's queue as `queued` (status `processing`),
//! claimed and run by the dispatcher (`dispatch`), finished on the engine thread (images
//! written, then the record and its webhook in one fenced transaction), read back by id.
//!
//! The stored record is the public response minus what is rendered per read (signed URLs,
//! base64 data, live progress): see [`render`].

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use imagen_engine::GenerateRequest;
use imagen_engine::worker::Generated;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::app::AppState;
use crate::error::{ApiError, Code, Result};
use crate::keys::{now_secs, random_hex};
use crate::media::{OutputFormat, encode};
use crate::queue::{Outbox, QueuedJob};
use crate::signing::url_signature;
use crate::spec::JobSpec;
use crate::store::JobRecord;
use crate::webhook::now_ms;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFormat {
    Url,
    B64Json,
}

pub struct Submission {
    pub key_id: String,
    pub model: String,
    pub loras: Vec<(String, f32)>,
    pub request: GenerateRequest,
    pub output: OutputFormat,
    pub response_format: ResponseFormat,
    pub webhook: Option<(String, String)>,
    /// Answer 202 at once instead of waiting.
    pub background: bool,
}

/// A finished (or failed) generation, as the handler that waited for it sees it.
pub struct Outcome {
    pub record: Value,
}

tokio::task_local! {
    /// The job id an `Idempotency-Key` fixes for the request being answered
    /// (`routes::idempotency`): a retry after the process died finds the job it committed.
    static FIXED_ID: String;
}

/// Runs `f` (a request's handling) with the job id its submission takes, if one is fixed.
pub async fn with_fixed_id<F: std::future::Future>(id: Option<String>, f: F) -> F::Output {
    match id {
        Some(id) => FIXED_ID.scope(id, f).await,
        None => f.await,
    }
}

pub fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

/// Records the job as `queued` in the store (it is accepted once that row is committed) and
/// wakes the dispatcher. Returns the record and, unless in the background, a receiver for the
/// outcome: the job runs to its end whether or not anyone still waits.
pub fn submit(state: &Arc<AppState>, sub: Submission) -> Result<(Value, Option<oneshot::Receiver<Outcome>>), ApiError> {
    let id = match FIXED_ID.try_with(Clone::clone) {
        Ok(id) => id,
        Err(_) => format!("gen_{}", random_hex(12).map_err(ApiError::internal)?),
    };
    let created = now_secs();
    let record = json!({
        "id": id,
        "status": "processing",
        "created_at": rfc3339(created),
        "model": sub.model,
        "loras": sub.loras.iter().map(|(n, s)| json!({"name": n, "scale": s})).collect::<Vec<_>>(),
        "prompt": sub.request.prompt,
        "images": [],
        "response_format": match sub.response_format { ResponseFormat::Url => "url", ResponseFormat::B64Json => "b64_json" },
        "output_format": sub.output.ext(),
        "seed": sub.request.seed,
    });
    let spec = JobSpec::store(&sub, &id, &state.blobs).map_err(ApiError::internal)?;
    let spec = serde_json::to_string(&spec).map_err(ApiError::internal)?;
    // registered before the row exists, so that no ending can slip past it
    let rx = (!sub.background).then(|| {
        let (tx, rx) = oneshot::channel();
        lock(&state.waiters).entry(id.clone()).or_default().push(tx);
        rx
    });
    let (webhook_url, webhook_secret) = sub.webhook.clone().unzip();
    let job = JobRecord {
        id: id.clone(),
        key_id: sub.key_id.clone(),
        status: "processing".into(),
        created_at: created,
        response: record.to_string(),
        webhook_url,
        webhook_secret,
    };
    let q = &state.config.queue;
    let accepted = state
        .queue
        .enqueue(
            &job,
            &sub.model,
            &spec,
            q.max_attempts,
            state.config.limits.queue_capacity,
        )
        .map_err(ApiError::from);
    if !matches!(accepted, Ok(true)) {
        lock(&state.waiters).remove(&id);
        JobSpec::remove_inputs(&state.blobs, &id);
        accepted?;
        let mut err = ApiError::new(Code::ServiceUnavailable, "the generation queue is full; retry shortly");
        err.retry_after = Some(5);
        return Err(err);
    }
    state.dispatch.notify();
    crate::metrics::METRICS.job(&sub.model, "accepted");
    tracing::info!(target: "imagen::jobs", job = %id, model = %sub.model, images = sub.request.num_images,
        background = sub.background, "queued");
    Ok((record, rx))
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn set_progress(state: &AppState, id: &str, value: Option<(usize, usize)>) {
    let mut p = state.progress.lock().unwrap_or_else(|e| e.into_inner());
    match value {
        Some(v) => {
            let preview = lock(&state.previews).remove(id);
            // nobody listening is not an error
            let _ = state.steps.send((id.to_owned(), v.0, v.1, preview));
            p.insert(id.to_owned(), v);
        }
        None => {
            p.remove(id);
            lock(&state.previews).remove(id);
        }
    }
}

/// A step preview (PNG) from the engine, sent with the step's progress event.
pub fn set_preview(state: &AppState, id: &str, png: &[u8]) {
    let uri = format!("data:image/png;base64,{}", STANDARD.encode(png));
    lock(&state.previews).insert(id.to_owned(), uri.into());
}

pub fn failed_record(mut record: Value, code: Code, message: &str) -> Value {
    record["status"] = "failed".into();
    record["error"] = json!({"code": code.as_str(), "message": message});
    record
}

/// Runs on the engine thread when an attempt ends: writes the images, then the final record
/// and the webhook delivery in one transaction fenced by the attempt; tells any waiter.
pub fn finish(state: &Arc<AppState>, job: &QueuedJob, spec: &JobSpec, result: imagen_engine::Result<Vec<Generated>>) {
    let record: Value = serde_json::from_str(&job.response).unwrap_or_else(|_| json!({"id": job.id}));
    let output = spec.output();
    let written = result.map_err(ApiError::from).and_then(|images| {
        let mut list = Vec::new();
        for (n, g) in images.iter().enumerate() {
            let file = format!("{n}.{}", output.ext());
            let bytes = encode(&g.image, output).map_err(ApiError::internal)?;
            // stored under the job id before the record says completed
            state
                .blobs
                .put(&format!("images/{}/{file}", job.id), bytes)
                .map_err(ApiError::internal)?;
            list.push(json!({"file": file, "width": spec.width, "height": spec.height, "seed": g.seed}));
        }
        Ok((list, images.iter().map(|g| g.batch).max().unwrap_or(1)))
    });
    let record = match written {
        Ok((list, batch)) => {
            let mut record = record;
            record["status"] = "completed".into();
            record["images"] = list.into();
            if batch > 1 {
                // dynamic batching: how many images were denoised together with these
                record["batch_size"] = batch.into();
            }
            record
        }
        Err(e) => failed_record(record, e.code, &e.message),
    };
    end(state, job, Some(job.attempt), record);
}

/// Writes a job's final record (fenced by `attempt`, or only while queued), its webhook in the
/// same transaction; then wakes the webhook thread and answers waiters. `false`: fenced out.
pub fn end(state: &Arc<AppState>, job: &QueuedJob, attempt: Option<u32>, record: Value) -> bool {
    let status = record["status"].as_str().unwrap_or("failed").to_owned();
    let body = job.webhook.as_ref().map(|_| render(state, &record).to_string());
    let outbox = job
        .webhook
        .as_ref()
        .zip(body.as_deref())
        .map(|((url, secret), body)| Outbox { url, secret, body });
    match state
        .queue
        .finish(&job.id, attempt, &status, &record.to_string(), outbox, now_ms())
    {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(
                "{} attempt {attempt:?} no longer holds the job; its result is dropped",
                job.id
            );
            return false;
        }
        Err(e) => {
            tracing::error!("recording {}: {e}", job.id);
            return false;
        }
    }
    let model = record["model"].as_str().unwrap_or_default();
    let outcome = match (status.as_str(), record["error"]["code"].as_str()) {
        ("failed", Some("cancelled")) => "cancelled",
        (s, _) => s,
    };
    crate::metrics::METRICS.job(model, outcome);
    if outcome == "completed" {
        let n = record["images"].as_array().map_or(0, Vec::len);
        crate::metrics::METRICS.images(model, n);
        tracing::info!(target: "imagen::jobs", job = %job.id, model = %model, attempt = job.attempt, images = n, "finished");
    } else {
        let (code, cause) = (record["error"]["code"].as_str(), record["error"]["message"].as_str());
        tracing::warn!(target: "imagen::jobs", job = %job.id, model = %model, attempt = job.attempt,
            code = code.unwrap_or("-"), cause = cause.unwrap_or("-"), "{outcome}");
    }
    if job.webhook.is_some() {
        state.webhooks.notify();
    }
    JobSpec::remove_inputs(&state.blobs, &job.id);
    for tx in lock(&state.waiters).remove(&job.id).unwrap_or_default() {
        let _ = tx.send(Outcome { record: record.clone() });
    }
    true
}

/// A waited-on job's final record: from this process's engine (`rx`), or read from the store
/// when another process ran it (an `imagen worker`, another server on the same store).
pub async fn wait(state: &Arc<AppState>, id: &str, mut rx: oneshot::Receiver<Outcome>) -> Result<Outcome, ApiError> {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            r = &mut rx => {
                return r.map_err(|_| ApiError::internal("the engine dropped a job without an answer"));
            }
            _ = tick.tick() => {
                let (st, job_id) = (state.clone(), id.to_owned());
                let job = tokio::task::spawn_blocking(move || st.store.job(&job_id))
                    .await
                    .map_err(ApiError::internal)??;
                if let Some(j) = job.filter(|j| j.status != "processing") {
                    lock(&state.waiters).remove(id);
                    let record = serde_json::from_str(&j.response).map_err(ApiError::internal)?;
                    return Ok(Outcome { record });
                }
            }
        }
    }
}

fn queue_webhook(state: &AppState, id: &str, record: &Value, url: &str, secret: &str) {
    let body = render(state, record).to_string();
    match state.store.insert_delivery(id, url, secret, &body, now_ms()) {
        Ok(()) => state.webhooks.notify(),
        Err(e) => tracing::error!("queueing the webhook for {id}: {e}"),
    }
}

/// The public response object for a stored record: signed URLs (or base64 data) per image,
/// live progress while processing.
pub fn render(state: &AppState, record: &Value) -> Value {
    let mut out = record.clone();
    let id = record["id"].as_str().unwrap_or_default();
    let b64 = record["response_format"] == "b64_json";
    let expires = now_secs() + state.config.limits.image_url_ttl_secs;
    if let Some(images) = out["images"].as_array_mut() {
        for im in images {
            let file = im["file"].as_str().unwrap_or_default().to_owned();
            if b64 {
                let bytes = state.blobs.get(&format!("images/{id}/{file}"));
                im["b64_json"] = match bytes {
                    Ok(Some(b)) => STANDARD.encode(b),
                    Ok(None) => String::new(),
                    Err(e) => {
                        tracing::warn!("{e}");
                        String::new()
                    }
                }
                .into();
            } else {
                let path = format!("{id}/{file}");
                let sig = url_signature(&state.secret, &path, expires);
                im["url"] = format!("{}/v1/images/{path}?expires={expires}&sig={sig}", state.base_url).into();
            }
            if let Some(o) = im.as_object_mut() {
                o.remove("file");
            }
        }
    }
    if let Some(o) = out.as_object_mut() {
        o.remove("response_format");
        o.remove("output_format");
    }
    if record["status"] == "processing" {
        let p = lock(&state.progress);
        let (step, total) = p.get(id).copied().unwrap_or((0, 0));
        out["progress"] = json!({"step": step, "total": total, "queued": !p.contains_key(id)});
        if let Ok(Some(position)) = state.queue.position(id) {
            out["progress"]["position"] = position.into();
        }
    }
    out
}

/// What a waiting handler answers: 200 with the response, or the error of a failed job.
pub fn respond(state: &AppState, record: &Value) -> Result<(StatusCode, Value), ApiError> {
    if record["status"] == "failed" {
        let code = match record["error"]["code"].as_str() {
            Some("bad_request") => Code::BadRequest,
            Some("cancelled") => Code::Cancelled,
            Some("service_unavailable") => Code::ServiceUnavailable,
            _ => Code::Internal,
        };
        let message = record["error"]["message"].as_str().unwrap_or("generation failed");
        return Err(ApiError::new(code, message).with_details(json!({"id": record["id"]})));
    }
    Ok((StatusCode::OK, render(state, record)))
}

/// At start-up: jobs an older version (without the durable queue) left `processing` have no
/// stored request to run again; they are failed and their webhooks told. Jobs of this
/// version are claimed again once their lease runs out (`dispatch`).
pub fn recover(state: &Arc<AppState>) -> Result<()> {
    for job in state.store.unfinished_jobs()? {
        let record: Value = serde_json::from_str(&job.response).unwrap_or_else(|_| json!({"id": job.id}));
        let record = failed_record(
            record,
            Code::Internal,
            "the server restarted before this generation finished; submit it again",
        );
        state.store.update_job(&job.id, "failed", &record.to_string())?;
        if let (Some(url), Some(secret)) = (&job.webhook_url, &job.webhook_secret) {
            queue_webhook(state, &job.id, &record, url, secret);
        }
        tracing::warn!("{} was unfinished at the last shutdown; marked failed", job.id);
    }
    Ok(())
}
