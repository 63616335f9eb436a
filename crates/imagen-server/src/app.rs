//! Server start-up: the store, the engine thread, the webhook thread, the queue's dispatcher
//! (which also picks up jobs a dead process left behind), then the HTTP listener; a process's
//! [`Role`](crate::config::Role) leaves out the engine and dispatcher (API only) or the listener (worker only).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use imagen_engine::catalog::{LoraInfo, ModelInfo, scan};
use imagen_engine::worker::{Engine, EngineConfig};

use tokio::sync::oneshot;

use crate::config::Config;
use crate::dispatch::{self, Dispatch, Running};
use crate::error::{Error, Result};
use crate::jobs::{self, Outcome};
use crate::queue::Queue;
use crate::signing::server_secret;
use crate::store::{SqliteStore, Store};
use crate::webhook::{self, Notifier};
use crate::workers::{WorkerInfo, Workers};

/// One step of a job: (id, step, total, its preview as a data URI when the model has a
/// preview decoder).
pub type Step = (String, usize, usize, Option<Arc<str>>);

pub struct AppState {
    pub config: Config,
    pub store: Arc<dyn Store>,
    /// The same database as `store`, as the job queue.
    pub queue: Arc<dyn Queue>,
    /// The same database, as the workers' register.
    pub workers: Arc<dyn Workers>,
    /// What this process advertises when it runs jobs (`None`: the API alone).
    pub worker: Option<WorkerInfo>,
    /// This process's name on the leases it holds (`host-pid-random`).
    pub owner: String,
    /// The models' thread; `None` in an API-only process.
    pub engine: Option<Engine>,
    /// The models folder as last scanned (at start, or by a refresh).
    catalog: std::sync::RwLock<Arc<Catalog>>,
    /// Generated and input images (the data directory, or shared object storage).
    pub blobs: crate::blobs::Blobs,
    /// Signs image URLs.
    pub secret: String,
    /// Base of image URLs (`public_url`, or the bound address).
    pub base_url: String,
    /// (step, total) of running jobs.
    pub progress: Mutex<HashMap<String, (usize, usize)>>,
    pub webhooks: Notifier,
    pub dispatch: Dispatch,
    /// Requests waiting for a job's end, by id.
    pub waiters: Mutex<HashMap<String, Vec<oneshot::Sender<Outcome>>>>,
    /// Cancel flags of the jobs this process is running.
    pub running: Running,
    /// A1111 routes: each key's default model (`POST /sdapi/v1/options`) and latest job
    /// (`progress`, `interrupt`), in this process.
    pub a1111_models: Mutex<HashMap<String, String>>,
    pub a1111_jobs: Mutex<HashMap<String, String>>,
    /// Set on SIGTERM / Ctrl-C: the dispatcher claims nothing more.
    pub stopping: std::sync::atomic::AtomicBool,
    /// Every step the engine reports, for the `events` streams.
    pub steps: tokio::sync::broadcast::Sender<Step>,
    /// The latest step preview of running jobs (a `data:image/png;base64,` URI), until the
    /// step it belongs to is announced.
    pub previews: Mutex<HashMap<String, Arc<str>>>,
}

/// The models and LoRAs of the models folder.
pub struct Catalog {
    pub models: Vec<ModelInfo>,
    pub loras: Vec<LoraInfo>,
}

impl AppState {
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn model(&self, id: Option<&str>) -> Option<ModelInfo> {
        let c = self.catalog();
        match id.or(self.config.default_model.as_deref()) {
            Some(id) => c.models.iter().find(|m| m.id == id).cloned(),
            None => c.models.first().cloned(),
        }
    }

    /// Scans the models folder again (A1111's refresh-checkpoints): new files become models
    /// and LoRAs, removed ones go; the engine takes the same list. The default model must stay.
    pub fn rescan(&self) -> Result<Arc<Catalog>> {
        let found = scan(&self.config.models_dir)
            .map_err(|e| Error::Config(format!("models dir {}: {e}", self.config.models_dir.display())))?;
        if let Some(d) = &self.config.default_model
            && !found.models.iter().any(|m| &m.id == d)
        {
            return Err(Error::Config(format!(
                "the default model {d:?} is gone from the models directory; the list is unchanged"
            )));
        }
        for (path, why) in &found.skipped {
            tracing::warn!("skipping {}: {why}", path.display());
        }
        if let Some(engine) = &self.engine {
            engine.set_catalog(found.models.clone(), found.loras.clone());
        }
        let c = Arc::new(Catalog {
            models: found.models,
            loras: found.loras,
        });
        *self.catalog.write().unwrap_or_else(|e| e.into_inner()) = c.clone();
        Ok(c)
    }
}

/// A store without any key (a first start) gets an admin key, printed once to stderr, so the
/// server is usable without running `imagen keys create` first.
fn first_key(store: &dyn Store, config: &Config) -> Result<()> {
    if !store.list_keys()?.is_empty() {
        return Ok(());
    }
    let (key, record) = crate::keys::create(store, "enterprise", vec![crate::keys::ADMIN_SCOPE.into()])?;
    eprintln!(
        "imagen: first start: created an admin API key (enterprise plan). It is shown only now:\n\n    {key}\n\n\
         imagen: more keys: imagen keys create --data-dir {} --plan pro; this one: imagen keys revoke --data-dir {} {}",
        config.data_dir.display(),
        config.data_dir.display(),
        record.id
    );
    Ok(())
}

/// Opens the data directory's store (creating it), for the `keys` commands and the server.
pub fn open_store(config: &Config) -> Result<Arc<dyn Store>> {
    Ok(open_stores(config)?.0)
}

type Faces = (Arc<dyn Store>, Arc<dyn Queue>, Arc<dyn Workers>);

/// The configured store as its three faces: SQLite in the data directory, or PostgreSQL.
fn open_stores(config: &Config) -> Result<Faces> {
    if let Some(url) = &config.store.url {
        let pg = Arc::new(crate::pg::PgStore::open(url)?);
        return Ok((pg.clone(), pg.clone(), pg));
    }
    let sqlite = open_sqlite(config)?;
    Ok((sqlite.clone(), sqlite.clone(), sqlite))
}

fn open_sqlite(config: &Config) -> Result<Arc<SqliteStore>> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| Error::Config(format!("data dir {}: {e}", config.data_dir.display())))?;
    Ok(Arc::new(SqliteStore::open(&config.data_dir.join("imagen.db"))?))
}

/// Binds (unless a worker alone), recovers unfinished jobs, starts the threads; returns the
/// listener and the state (the caller serves them: see [`crate::serve`]).
pub async fn start(mut config: Config) -> Result<(Option<tokio::net::TcpListener>, Arc<AppState>)> {
    std::fs::create_dir_all(&config.data_dir)?;
    let (store, queue, workers) = open_stores(&config)?;
    let blobs = crate::blobs::Blobs::open(config.store.images.as_deref(), &config.data_dir)?;
    // on a shared store, the first process's secret is everyone's
    let secret = workers.shared_secret(&server_secret(&config.data_dir)?)?;
    if config.role.api() {
        first_key(store.as_ref(), &config)?;
    }
    // zero setup: a missing models folder is made, and an empty one explained
    if !config.models_dir.exists() {
        std::fs::create_dir_all(&config.models_dir)
            .map_err(|e| Error::Config(format!("models dir {}: {e}", config.models_dir.display())))?;
    }
    let found = scan(&config.models_dir)
        .map_err(|e| Error::Config(format!("models dir {}: {e}", config.models_dir.display())))?;
    for (path, why) in &found.skipped {
        tracing::warn!("skipping {}: {why}", path.display());
    }
    if found.models.is_empty() && config.role.worker() {
        let dir = config.models_dir.display();
        tracing::warn!(
            "no models in {dir}: pull one, e.g. `imagen pull stable-diffusion-v1-5/stable-diffusion-v1-5 \
             --variant fp16 --models-dir {dir}`, or put a diffusers folder (with model_index.json) or a \
             .safetensors/.gguf checkpoint there; then POST /sdapi/v1/refresh-checkpoints or restart"
        );
    }
    if let Some(d) = &config.default_model
        && !found.models.iter().any(|m| &m.id == d)
    {
        return Err(Error::Config(format!(
            "default model {d:?} is not in the models directory"
        )));
    }
    let listener = match config.role.api() {
        true => Some(tokio::net::TcpListener::bind(config.bind).await?),
        false => None,
    };
    if let Some(l) = &listener {
        config.bind = l.local_addr()?;
    }
    let preload = config
        .default_model
        .clone()
        .or_else(|| found.models.first().map(|m| m.id.clone()));
    let engine = match config.role.worker() {
        true => Some(Engine::spawn(EngineConfig {
            models: found.models.clone(),
            loras: found.loras.clone(),
            backend: config.backend_name(),
            dtype: config.dtype.clone(),
            // the queue is the store's; the engine holds the one job the dispatcher hands it
            queue_capacity: 1,
            max_loaded: config.limits.max_loaded_models,
            preload,
            max_batch: config.queue.max_batch,
        })?),
        false => None,
    };
    let webhooks = webhook::spawn(store.clone(), config.webhooks.clone())?;
    let (dispatch, wake) = dispatch::channel_pair();
    let owner = format!(
        "{}-{}-{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "imagen".into()),
        std::process::id(),
        crate::keys::random_hex(4).map_err(|e| Error::Config(e.to_string()))?
    );
    let now = crate::webhook::now_ms();
    let worker = config.role.worker().then(|| WorkerInfo {
        id: owner.clone(),
        host: std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into()),
        pid: std::process::id(),
        backend: config.backend_name(),
        dtype: config.dtype.clone(),
        models: found.models.iter().map(|m| m.id.clone()).collect(),
        started_ms: now,
        seen_ms: now,
        running: None,
    });
    let state = Arc::new(AppState {
        base_url: config.base_url(),
        config,
        store,
        queue,
        workers,
        worker,
        owner,
        engine,
        catalog: std::sync::RwLock::new(Arc::new(Catalog {
            models: found.models,
            loras: found.loras,
        })),
        secret,
        blobs,
        progress: Mutex::new(HashMap::new()),
        webhooks,
        dispatch,
        waiters: Mutex::new(HashMap::new()),
        running: Mutex::new(HashMap::new()),
        steps: tokio::sync::broadcast::channel(1024).0,
        previews: Mutex::new(HashMap::new()),
        a1111_models: Mutex::new(HashMap::new()),
        a1111_jobs: Mutex::new(HashMap::new()),
        stopping: std::sync::atomic::AtomicBool::new(false),
    });
    jobs::recover(&state)?;
    if state.engine.is_some() {
        dispatch::spawn(state.clone(), wake)?;
    }
    Ok((listener, state))
}
