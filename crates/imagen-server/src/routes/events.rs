//! `GET /v1/generations/{id}/events`: a job's life as Server-Sent Events, for the key that
//! made it. `queued` (data: `{"position"}`) while it waits, `progress` (`{"step","total"}`, and
//! `"preview"`: a small PNG data URI when the model folder has a `taesd/` decoder) as the
//! engine reports steps, then one `completed` or `failed` event whose data is the final
//! record (as `GET /v1/generations/{id}` answers it), and the stream ends.
//!
//! Event ids make the stream resumable: `queued` is `0`, a progress event its step, the final
//! one `done`. A client reconnecting with `Last-Event-ID: n` gets only later steps, then the end.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{Caller, into_response};
use crate::app::{AppState, Step};
use crate::error::ApiError;
use crate::jobs;

/// How often a stream looks at its job.
const POLL: Duration = Duration::from_millis(100);

struct Watch {
    state: Arc<AppState>,
    id: String,
    /// Every step the engine reports (subscribed before the first look, so none is missed).
    steps: tokio::sync::broadcast::Receiver<Step>,
    /// Steps of this job received and not yet sent.
    pending: std::collections::VecDeque<(usize, usize, Option<Arc<str>>)>,
    /// The last step sent (or resumed from); `None` before any event.
    last: Option<u64>,
    done: bool,
}

pub async fn generation_events(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (st, job_id) = (state.clone(), id.clone());
    let owned = tokio::task::spawn_blocking(move || st.store.job(&job_id)).await;
    match owned {
        Ok(Ok(Some(job))) if job.key_id == caller.0.id => {}
        Ok(Ok(_)) => return into_response(Err(ApiError::not_found("no such generation"))),
        Ok(Err(e)) => return into_response(Err(e.into())),
        Err(e) => return into_response(Err(ApiError::internal(e))),
    }
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let watch = Watch {
        steps: state.steps.subscribe(),
        pending: Default::default(),
        state,
        id,
        last,
        done: false,
    };
    let stream = futures_util::stream::unfold(watch, |mut w| async move {
        if w.done {
            return None;
        }
        let event = next_event(&mut w).await;
        Some((Ok::<Event, Infallible>(event), w))
    });
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

/// Steps of this job after the last one sent, in order.
fn take(w: &mut Watch, (id, step, total, preview): Step) {
    if id == w.id && step > 0 && w.last.is_none_or(|l| step as u64 > l) {
        w.last = Some(step as u64);
        w.pending.push_back((step, total, preview));
    }
}

/// Waits for the next thing worth telling. Steps are drained before the final state is read:
/// the engine reports every step before it writes the end, so none is lost or reordered.
async fn next_event(w: &mut Watch) -> Event {
    loop {
        while let Ok(m) = w.steps.try_recv() {
            take(w, m);
        }
        if let Some((step, total, preview)) = w.pending.pop_front() {
            let mut data = json!({"step": step, "total": total});
            if let Some(uri) = preview {
                data["preview"] = uri.as_ref().into();
            }
            let data = data.to_string();
            return Event::default().event("progress").id(step.to_string()).data(data);
        }
        let (state, id) = (w.state.clone(), w.id.clone());
        let job = tokio::task::spawn_blocking(move || {
            let job = state.store.job(&id)?;
            let position = state.queue.position(&id)?;
            Ok::<_, crate::error::Error>((job, position))
        })
        .await;
        let (job, position) = match job {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => return fail(w, &e.to_string()),
            Err(e) => return fail(w, &e.to_string()),
        };
        let Some(job) = job else {
            return fail(w, "the generation is gone");
        };
        if job.status != "processing" {
            w.done = true;
            let record: Value = serde_json::from_str(&job.response).unwrap_or(Value::Null);
            let data = jobs::render(&w.state, &record).to_string();
            return Event::default().event(job.status.as_str()).id("done").data(data);
        }
        if let (Some(position), None) = (position, w.last) {
            w.last = Some(0);
            let data = json!({"position": position}).to_string();
            return Event::default().event("queued").id("0").data(data);
        }
        tokio::select! {
            m = w.steps.recv() => {
                if let Ok(m) = m {
                    take(w, m);
                }
            }
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

fn fail(w: &mut Watch, message: &str) -> Event {
    w.done = true;
    Event::default()
        .event("error")
        .data(json!({"error": {"code": "internal_error", "message": message}}).to_string())
}
