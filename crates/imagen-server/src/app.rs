//! Server start-up: the store, the engine thread, the webhook thread, recovery of jobs a dead
//! process left behind, then the HTTP listener.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use imagen_engine::catalog::{LoraInfo, ModelInfo, scan};
use imagen_engine::worker::{Engine, EngineConfig};

use crate::config::Config;
use crate::error::{Error, Result};
use crate::jobs;
use crate::signing::server_secret;
use crate::store::{SqliteStore, Store};
use crate::webhook::{self, Notifier};

pub struct AppState {
    pub config: Config,
    pub store: Arc<dyn Store>,
    pub engine: Engine,
    pub models: Vec<ModelInfo>,
    pub loras: Vec<LoraInfo>,
    /// Signs image URLs.
    pub secret: String,
    /// Base of image URLs (`public_url`, or the bound address).
    pub base_url: String,
    /// (step, total) of running jobs.
    pub progress: Mutex<HashMap<String, (usize, usize)>>,
    pub webhooks: Notifier,
}

impl AppState {
    pub fn model(&self, id: Option<&str>) -> Option<&ModelInfo> {
        match id.or(self.config.default_model.as_deref()) {
            Some(id) => self.models.iter().find(|m| m.id == id),
            None => self.models.first(),
        }
    }
}

/// Opens the data directory's store (creating it), for the `keys` commands and the server.
pub fn open_store(config: &Config) -> Result<Arc<dyn Store>> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|e| Error::Config(format!("data dir {}: {e}", config.data_dir.display())))?;
    Ok(Arc::new(SqliteStore::open(&config.data_dir.join("imagen.db"))?))
}

/// Binds, recovers unfinished jobs, starts the threads; returns the listener and the state
/// (the caller serves them: see [`crate::serve`]).
pub async fn start(mut config: Config) -> Result<(tokio::net::TcpListener, Arc<AppState>)> {
    let store = open_store(&config)?;
    std::fs::create_dir_all(config.data_dir.join("images"))?;
    let secret = server_secret(&config.data_dir)?;
    let found = scan(&config.models_dir)
        .map_err(|e| Error::Config(format!("models dir {}: {e}", config.models_dir.display())))?;
    for (path, why) in &found.skipped {
        eprintln!("imagen: skipping {}: {why}", path.display());
    }
    if let Some(d) = &config.default_model
        && !found.models.iter().any(|m| &m.id == d)
    {
        return Err(Error::Config(format!(
            "default model {d:?} is not in the models directory"
        )));
    }
    let listener = tokio::net::TcpListener::bind(config.bind).await?;
    config.bind = listener.local_addr()?;
    let preload = config
        .default_model
        .clone()
        .or_else(|| found.models.first().map(|m| m.id.clone()));
    let engine = Engine::spawn(EngineConfig {
        models: found.models.clone(),
        loras: found.loras.clone(),
        backend: config.backend.clone(),
        dtype: config.dtype.clone(),
        queue_capacity: config.limits.queue_capacity,
        max_loaded: config.limits.max_loaded_models,
        preload,
    })?;
    let webhooks = webhook::spawn(store.clone(), config.webhooks.clone())?;
    let state = Arc::new(AppState {
        base_url: config.base_url(),
        config,
        store,
        engine,
        models: found.models,
        loras: found.loras,
        secret,
        progress: Mutex::new(HashMap::new()),
        webhooks,
    });
    jobs::recover(&state)?;
    Ok((listener, state))
}
