//! The worker side of the durable queue: one thread that claims jobs from the store for this
//! process's engine (one at a time, or with `max_batch > 1` a job and the queued jobs that can
//! share its batch), keeps each claim alive with heartbeats while the engine runs them, and
//! fails jobs whose attempts ran out. The engine thread finishes each job
//! (`jobs::finish`), fenced by the attempt this thread claimed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use imagen_engine::worker::{Job, JobEvent};
use serde_json::{Value, json};

use crate::app::AppState;
use crate::error::Code;
use crate::jobs::{end, failed_record, finish, set_progress};
use crate::queue::QueuedJob;
use crate::spec::JobSpec;
use crate::webhook::now_ms;

/// Wakes the dispatcher when a job is queued (otherwise it polls for expired leases).
#[derive(Clone)]
pub struct Dispatch(Sender<()>);

impl Dispatch {
    pub fn notify(&self) {
        let _ = self.0.send(());
    }
}

/// The channel the dispatcher thread will listen on; [`spawn`] starts it once the state exists.
pub fn channel_pair() -> (Dispatch, Receiver<()>) {
    let (tx, rx) = channel();
    (Dispatch(tx), rx)
}

pub fn spawn(state: Arc<AppState>, wake: Receiver<()>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("imagen-dispatch".into())
        .spawn(move || run(state, wake))?;
    Ok(())
}

/// The jobs this process runs, by id: the attempt it holds and the cancel flag (the cancel
/// route and shutdown set it).
pub type Running = Mutex<std::collections::HashMap<String, (u32, Arc<AtomicBool>)>>;

struct Current {
    id: String,
    attempt: u32,
    cancel: Arc<AtomicBool>,
}

fn run(state: Arc<AppState>, wake: Receiver<()>) {
    let lease = state.config.queue.lease_ms.max(30);
    let beat = Duration::from_millis(lease / 3);
    let (done_tx, done_rx) = channel::<String>();
    // the jobs handed to the engine and not finished yet
    let mut current: Vec<Current> = Vec::new();
    let mut advertised: Option<std::time::Instant> = None;
    loop {
        // the worker's own heartbeat in the store, every beat, idle or not
        if advertised.is_none_or(|t| t.elapsed() >= beat) && !state.stopping.load(Ordering::SeqCst) {
            advertise(&state, current.first().map(|c| c.id.clone()));
            advertised = Some(std::time::Instant::now());
        }
        if !current.is_empty() {
            match done_rx.recv_timeout(beat) {
                Ok(id) => current.retain(|c| c.id != id),
                Err(RecvTimeoutError::Timeout) => {
                    for c in &current {
                        match state.queue.heartbeat(&c.id, c.attempt, now_ms() + lease) {
                            Ok(Some(false)) => {}
                            // a cancel from another process, or the claim lost: stop after this step
                            Ok(Some(true)) | Ok(None) => c.cancel.store(true, Ordering::SeqCst),
                            Err(e) => tracing::warn!("heartbeat of {}: {e}", c.id),
                        }
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return,
            }
            continue;
        }
        if state.stopping.load(Ordering::SeqCst) {
            // shutting down: claim nothing more
            if let Err(RecvTimeoutError::Disconnected) = wake.recv_timeout(beat) {
                return;
            }
            continue;
        }
        fail_exhausted(&state);
        let now = now_ms();
        // the models this worker has now (a refresh may have changed them)
        let models: Vec<String> = match &state.worker {
            Some(_) => state.catalog().models.iter().map(|m| m.id.clone()).collect(),
            None => Vec::new(),
        };
        match state.queue.claim(&state.owner, &models, now, now + lease) {
            Ok(Some(job)) => {
                let mut jobs = vec![job];
                jobs.extend(more(&state, &jobs[0], now + lease));
                current = start(&state, jobs, &done_tx);
                continue;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("claiming a job: {e}"),
        }
        // idle: a submission wakes us; otherwise look again for expired leases
        if let Err(RecvTimeoutError::Disconnected) = wake.recv_timeout(beat.min(Duration::from_millis(500))) {
            return;
        }
    }
}

/// Writes this worker's heartbeat (what it serves, the job it runs) to the store.
fn advertise(state: &AppState, running: Option<String>) {
    let Some(w) = &state.worker else { return };
    let w = crate::workers::WorkerInfo {
        seen_ms: now_ms(),
        running,
        models: state.catalog().models.iter().map(|m| m.id.clone()).collect(),
        ..w.clone()
    };
    if let Err(e) = state.workers.worker_beat(&w) {
        tracing::warn!("worker heartbeat: {e}");
    }
}

/// Jobs whose worker died on their last attempt: failed, with their webhooks.
fn fail_exhausted(state: &Arc<AppState>) {
    let jobs = match state.queue.exhausted(now_ms()) {
        Ok(j) => j,
        Err(e) => {
            tracing::warn!("reading expired jobs: {e}");
            return;
        }
    };
    for job in jobs {
        let message = format!(
            "gave up after {} attempts: the worker running this generation stopped (crash, restart or timeout)",
            job.attempt
        );
        end(
            state,
            &job,
            Some(job.attempt),
            failed_record(base(&job), Code::Internal, &message),
        );
    }
}

fn base(job: &QueuedJob) -> Value {
    serde_json::from_str(&job.response).unwrap_or_else(|_| json!({"id": job.id}))
}

/// With `max_batch > 1`: the queued jobs that can share `first`'s batch, claimed.
fn more(state: &AppState, first: &QueuedJob, lease_until: u64) -> Vec<QueuedJob> {
    let max = state.config.queue.max_batch;
    let Some(spec) = (max > 1)
        .then(|| serde_json::from_str::<JobSpec>(&first.spec).ok())
        .flatten()
    else {
        return Vec::new();
    };
    if crate::batching::batch_key(&spec).is_none() {
        return Vec::new();
    }
    let fits = crate::batching::fits_with(&spec);
    let claim = |limit: usize| match state
        .queue
        .claim_more(&state.owner, &spec.model, lease_until, limit, &fits)
    {
        Ok(jobs) => jobs,
        Err(e) => {
            tracing::warn!("claiming jobs to batch: {e}");
            Vec::new()
        }
    };
    let mut jobs = claim(max - 1);
    let wait = state.config.queue.batch_wait_ms;
    if jobs.len() < max - 1 && wait > 0 {
        // once, briefly: clients resubmitting as their images arrive make the next batch
        std::thread::sleep(Duration::from_millis(wait));
        jobs.extend(claim(max - 1 - jobs.len()));
    }
    jobs
}

/// Hands claimed jobs to the engine (together, so that it may batch them); those that ended
/// without running are not returned.
fn start(state: &Arc<AppState>, jobs: Vec<QueuedJob>, done: &Sender<String>) -> Vec<Current> {
    let Some(engine) = &state.engine else {
        return Vec::new();
    };
    let (mut current, mut engine_jobs) = (Vec::new(), Vec::new());
    for job in jobs {
        if let Some((c, j)) = prepare(state, job, done.clone()) {
            current.push(c);
            engine_jobs.push(j);
        }
    }
    if engine_jobs.is_empty() {
        return current;
    }
    if let Err(e) = engine.submit_batch(engine_jobs) {
        // the leases run out and the jobs are claimed again (here or by another worker)
        tracing::warn!("the engine refused {} jobs: {e:?}", current.len());
        let mut running = lock(&state.running);
        for c in &current {
            running.remove(&c.id);
        }
        return Vec::new();
    }
    current
}

/// A claimed job as the engine takes it; `None` when it ended without running.
fn prepare(state: &Arc<AppState>, job: QueuedJob, done: Sender<String>) -> Option<(Current, Job)> {
    let parsed = serde_json::from_str::<JobSpec>(&job.spec)
        .map_err(|e| e.to_string())
        .and_then(|spec| Ok((spec.request(&state.blobs, &job.id).map_err(|e| e.to_string())?, spec)));
    let (request, spec) = match parsed {
        Ok(v) => v,
        Err(e) => {
            let record = failed_record(
                base(&job),
                Code::Internal,
                &format!("the stored request is unreadable: {e}"),
            );
            end(state, &job, Some(job.attempt), record);
            return None;
        }
    };
    if job.cancel {
        let record = failed_record(base(&job), Code::Cancelled, "cancelled by the client");
        end(state, &job, Some(job.attempt), record);
        return None;
    }
    let cancel = Arc::new(AtomicBool::new(false));
    lock(&state.running).insert(job.id.clone(), (job.attempt, cancel.clone()));
    let current = Current {
        id: job.id.clone(),
        attempt: job.attempt,
        cancel: cancel.clone(),
    };
    let (st, model, loras) = (state.clone(), spec.model.clone(), spec.loras.clone());
    let mut done = Some(done);
    // (start, previous step) for the step and job latency histograms
    let (mut started, mut last) = (None::<Instant>, None::<Instant>);
    let metrics = &crate::metrics::METRICS;
    let events = move |event: JobEvent| match event {
        JobEvent::Started => {
            tracing::info!(target: "imagen::jobs", job = %job.id, model = %spec.model, attempt = job.attempt, "started");
            (started, last) = (Some(Instant::now()), Some(Instant::now()));
            set_progress(&st, &job.id, Some((0, 0)))
        }
        JobEvent::Preview(png) => crate::jobs::set_preview(&st, &job.id, &png),
        JobEvent::Progress { step, total } => {
            if let Some(t) = last.replace(Instant::now()) {
                metrics.step_time(&spec.model, t.elapsed());
            }
            set_progress(&st, &job.id, Some((step, total)))
        }
        JobEvent::Finished(result) => {
            if let Some(t) = started {
                metrics.job_time(&spec.model, t.elapsed());
            }
            finish(&st, &job, &spec, result);
            set_progress(&st, &job.id, None);
            lock(&st.running).remove(&job.id);
            if let Some(tx) = done.take() {
                let _ = tx.send(job.id.clone());
            }
        }
    };
    let job = Job {
        model,
        loras,
        request,
        cancel,
        events: Box::new(events),
    };
    Some((current, job))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Graceful shutdown: no more claims; the running job may finish within `timeout`, else it is
/// stopped and handed back to the queue unspent. Returns once nothing of this process runs.
pub async fn drain(state: &Arc<AppState>, timeout: Duration) {
    state.stopping.store(true, Ordering::SeqCst);
    state.dispatch.notify();
    let gone = || {
        if let Err(e) = state.workers.worker_gone(&state.owner) {
            tracing::warn!("removing this worker from the store: {e}");
        }
    };
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if lock(&state.running).is_empty() {
            gone();
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let running: Vec<(String, u32, Arc<AtomicBool>)> = lock(&state.running)
        .iter()
        .map(|(id, (attempt, flag))| (id.clone(), *attempt, flag.clone()))
        .collect();
    for (id, attempt, flag) in running {
        flag.store(true, Ordering::SeqCst);
        match state.queue.release(&id, attempt) {
            Ok(true) => tracing::warn!("{id} did not finish before shutdown; back in the queue"),
            Ok(false) => {}
            Err(e) => tracing::warn!("releasing {id}: {e}"),
        }
    }
    gone();
}
