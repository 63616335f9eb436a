//! A generation's life: recorded as `processing`, queued on the engine, finished on the engine
//! thread (images encoded and written, record updated, webhook queued), read back by id.
//!
//! The stored record is the public response minus what is rendered per read (signed URLs,
//! base64 data, live progress): see [`render`].

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use imagen_engine::GenerateRequest;
use imagen_engine::worker::{Generated, Job, JobEvent, SubmitError};
use serde_json::{Value, json};
use tokio::sync::oneshot;

use crate::app::AppState;
use crate::error::{ApiError, Code, Result};
use crate::keys::{now_secs, random_hex};
use crate::media::{OutputFormat, encode};
use crate::signing::url_signature;
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

pub fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

/// Records the job and queues it. Returns the record and, unless in the background, a receiver
/// for the outcome.
pub fn submit(state: &Arc<AppState>, sub: Submission) -> Result<(Value, Option<oneshot::Receiver<Outcome>>), ApiError> {
    let id = format!("gen_{}", random_hex(12).map_err(ApiError::internal)?);
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
    let (webhook_url, webhook_secret) = sub.webhook.clone().unzip();
    state
        .store
        .insert_job(&crate::store::JobRecord {
            id: id.clone(),
            key_id: sub.key_id.clone(),
            status: "processing".into(),
            created_at: created,
            response: record.to_string(),
            webhook_url,
            webhook_secret,
        })
        .map_err(ApiError::from)?;

    let (tx, rx) = oneshot::channel();
    let mut tx = Some(tx);
    let st = state.clone();
    let job_id = id.clone();
    let base = record.clone();
    let (w, h, output) = (sub.request.width, sub.request.height, sub.output);
    let webhook = sub.webhook.clone();
    let events = move |event: JobEvent| match event {
        JobEvent::Started => set_progress(&st, &job_id, Some((0, 0))),
        JobEvent::Progress { step, total } => set_progress(&st, &job_id, Some((step, total))),
        JobEvent::Finished(result) => {
            let record = finish(&st, &job_id, base.clone(), result, (w, h, output), webhook.as_ref());
            set_progress(&st, &job_id, None);
            if let Some(tx) = tx.take() {
                let _ = tx.send(Outcome { record });
            }
        }
    };
    let job = Job {
        model: sub.model,
        loras: sub.loras,
        request: sub.request,
        events: Box::new(events),
    };
    if let Err(e) = state.engine.submit(job) {
        let message = match e {
            SubmitError::QueueFull => "the generation queue is full; retry shortly",
            SubmitError::Stopped => "the engine has stopped",
        };
        let failed = failed_record(record.clone(), Code::ServiceUnavailable, message);
        let _ = state.store.update_job(&id, "failed", &failed.to_string());
        let mut err = ApiError::new(Code::ServiceUnavailable, message);
        err.retry_after = Some(5);
        return Err(err);
    }
    let rx = (!sub.background).then_some(rx);
    Ok((record, rx))
}

fn set_progress(state: &AppState, id: &str, value: Option<(usize, usize)>) {
    let mut p = state.progress.lock().unwrap_or_else(|e| e.into_inner());
    match value {
        Some(v) => {
            p.insert(id.to_owned(), v);
        }
        None => {
            p.remove(id);
        }
    }
}

fn failed_record(mut record: Value, code: Code, message: &str) -> Value {
    record["status"] = "failed".into();
    record["error"] = json!({"code": code.as_str(), "message": message});
    record
}

/// Runs on the engine thread when a job ends: write images, update the record, queue the webhook.
fn finish(
    state: &Arc<AppState>,
    id: &str,
    mut record: Value,
    result: imagen_engine::Result<Vec<Generated>>,
    (w, h, output): (usize, usize, OutputFormat),
    webhook: Option<&(String, String)>,
) -> Value {
    let written = result.map_err(ApiError::from).and_then(|images| {
        let dir = state.config.data_dir.join("images").join(id);
        std::fs::create_dir_all(&dir).map_err(ApiError::internal)?;
        let mut list = Vec::new();
        for (n, g) in images.iter().enumerate() {
            let file = format!("{n}.{}", output.ext());
            let bytes = encode(&g.image, output).map_err(ApiError::internal)?;
            std::fs::write(dir.join(&file), bytes).map_err(ApiError::internal)?;
            list.push(json!({"file": file, "width": w, "height": h, "seed": g.seed}));
        }
        Ok(list)
    });
    match written {
        Ok(list) => {
            record["status"] = "completed".into();
            record["images"] = list.into();
        }
        Err(e) => record = failed_record(record, e.code, &e.message),
    }
    let status = record["status"].as_str().unwrap_or("failed").to_owned();
    if let Err(e) = state.store.update_job(id, &status, &record.to_string()) {
        eprintln!("imagen: recording {id}: {e}");
    }
    if let Some((url, secret)) = webhook {
        queue_webhook(state, id, &record, url, secret);
    }
    record
}

fn queue_webhook(state: &AppState, id: &str, record: &Value, url: &str, secret: &str) {
    let body = render(state, record).to_string();
    match state.store.insert_delivery(id, url, secret, &body, now_ms()) {
        Ok(()) => state.webhooks.notify(),
        Err(e) => eprintln!("imagen: queueing the webhook for {id}: {e}"),
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
                let path = state.config.data_dir.join("images").join(id).join(&file);
                im["b64_json"] = std::fs::read(path)
                    .map(|b| STANDARD.encode(b))
                    .unwrap_or_default()
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
        let p = state.progress.lock().unwrap_or_else(|e| e.into_inner());
        let (step, total) = p.get(id).copied().unwrap_or((0, 0));
        out["progress"] = json!({"step": step, "total": total, "queued": !p.contains_key(id)});
    }
    out
}

/// What a waiting handler answers: 200 with the response, or the error of a failed job.
pub fn respond(state: &AppState, record: &Value) -> Result<(StatusCode, Value), ApiError> {
    if record["status"] == "failed" {
        let code = match record["error"]["code"].as_str() {
            Some("bad_request") => Code::BadRequest,
            Some("service_unavailable") => Code::ServiceUnavailable,
            _ => Code::Internal,
        };
        let message = record["error"]["message"].as_str().unwrap_or("generation failed");
        return Err(ApiError::new(code, message).with_details(json!({"id": record["id"]})));
    }
    Ok((StatusCode::OK, render(state, record)))
}

/// At start-up: jobs a dead process left `processing` are failed (and their webhooks told).
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
        eprintln!("imagen: {} was unfinished at the last shutdown; marked failed", job.id);
    }
    Ok(())
}
