//! Server configuration: defaults, then a TOML file, then `IMAGEN_*` environment variables, then
//! command-line flags (applied by the binary), each overriding the one before.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Deserialize, Serialize, Debug, Clone)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    pub bind: SocketAddr,
    /// Each sub-folder a diffusers model; its id is the folder name.
    pub models_dir: PathBuf,
    /// The SQLite file (`imagen.db`), the server secret and generated images.
    pub data_dir: PathBuf,
    /// Base of the image URLs handed out, e.g. `https://images.example.com`; default
    /// `http://<bind>`.
    pub public_url: Option<String>,
    /// `cpu` or `wgpu`.
    pub backend: String,
    /// With `wgpu`: the discrete GPU to run on (from 0; one worker per GPU); unset: the default
    /// adapter.
    pub device: Option<usize>,
    /// `f32`, or `f16` on a GPU backend: the precision the models compute in.
    pub dtype: String,
    /// Model used when a request names none; default: the first by id.
    pub default_model: Option<String>,
    pub limits: Limits,
    pub store: StoreConfig,
    pub queue: QueueConfig,
    pub webhooks: Webhooks,
    pub fetch: Fetch,
    /// What this process does (set by the command, not the file).
    #[serde(skip)]
    pub role: Role,
}

/// `imagen serve` (both), `imagen serve --no-worker` (the API alone: no engine, no claims),
/// `imagen worker` (claims and runs jobs; no HTTP listener).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    #[default]
    Both,
    Api,
    Worker,
}

impl Role {
    pub fn api(self) -> bool {
        self != Role::Worker
    }
    pub fn worker(self) -> bool {
        self != Role::Api
    }
}

/// Every bound a request is checked against; each can be set in the `[limits]` table.
#[derive(Deserialize, Serialize, Debug, Clone)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Largest request body (JSON or multipart), bytes.
    pub max_body_bytes: usize,
    /// Largest width × height of an output image.
    pub max_pixels: usize,
    /// Largest width or height.
    pub max_side: usize,
    pub max_steps: usize,
    pub max_images: usize,
    pub max_prompt_chars: usize,
    /// Largest decoded input image (width × height), against decompression bombs.
    pub max_input_pixels: u64,
    /// Jobs waiting for the engine beyond the one running; a full queue answers 503.
    pub queue_capacity: usize,
    /// Models kept in memory at once.
    pub max_loaded_models: usize,
    /// How long an image URL works without the API key.
    pub image_url_ttl_secs: u64,
    /// Open connections one client address may hold (slow or idle clients cannot exhaust the
    /// process's descriptors); more are closed at once.
    pub max_connections_per_address: usize,
    /// A request head (line and headers) must arrive within this; else the connection closes.
    pub header_timeout_ms: u64,
    /// A request body must arrive within this.
    pub body_timeout_ms: u64,
}

/// Where keys, counters, jobs and deliveries live (`[store]`): the data directory's SQLite file
/// by default, or a PostgreSQL server that several front-ends and workers share.
#[derive(Deserialize, Serialize, Debug, Clone, Default)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `postgres://user:password@host:port/database` (with `?options=-csearch_path%3Dschema` for
    /// a schema of its own); unset: SQLite in the data directory.
    pub url: Option<String>,
    /// Where generated and input images live: unset (the data directory), a folder (e.g. a
    /// shared mount), or `s3://bucket/prefix` (S3-compatible; credentials, region and
    /// `AWS_ENDPOINT_URL` from the usual `AWS_*` variables). Several nodes must share it.
    pub images: Option<String>,
}

/// The durable job queue (`[queue]`): how long a worker's claim on a job lasts without a
/// heartbeat, and how many claims a job gets before it fails.
#[derive(Deserialize, Serialize, Debug, Clone)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// A running job whose worker stops heart-beating (crash, kill -9, hang) is run again this
    /// long after its last heartbeat; heartbeats come every third of it.
    pub lease_ms: u64,
    /// Claims before a job fails ("gave up after N attempts").
    pub max_attempts: u32,
    /// On SIGTERM / Ctrl-C: how long the running job may take to finish before it is handed
    /// back to the queue (it runs again on the next start, or on another worker).
    pub shutdown_timeout_ms: u64,
    /// Dynamic batching: a worker claims up to this many compatible queued jobs (same model,
    /// size, steps, sampler and LoRA set; text-to-image) and denoises their images as one
    /// batch, each with its own prompt, seed and guidance. 1: one job at a time.
    pub max_batch: usize,
    /// With `max_batch > 1`: how long a worker that found fewer compatible jobs than it could
    /// take waits once for more before it starts (clients that resubmit as their last image
    /// arrives make the next batch).
    pub batch_wait_ms: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            lease_ms: 30_000,
            max_attempts: 3,
            shutdown_timeout_ms: 30_000,
            max_batch: 1,
            batch_wait_ms: 50,
        }
    }
}

#[derive(Deserialize, Serialize, Debug, Clone)]
#[serde(default, deny_unknown_fields)]
pub struct Webhooks {
    /// Attempts before a delivery is given up (kept in the database as `dead`).
    pub max_attempts: u32,
    /// First retry delay; doubles with each attempt (capped at one hour).
    pub retry_base_ms: u64,
    pub timeout_ms: u64,
}

/// Fetching `image` from http(s) URLs: off unless the operator turns it on.
#[derive(Deserialize, Serialize, Debug, Clone)]
#[serde(default, deny_unknown_fields)]
pub struct Fetch {
    pub enabled: bool,
    /// Allow loopback, private, link-local and other non-public addresses.
    pub allow_private: bool,
    pub timeout_ms: u64,
    pub max_bytes: u64,
}

/// Where models live without configuration: `./weights` where it exists (a checkout of this
/// repository), else the user's data folder (`$XDG_DATA_HOME/imagen/models`, by default
/// `~/.local/share/imagen/models`), so that `imagen serve` and `imagen pull` work from anywhere.
pub fn default_models_dir() -> PathBuf {
    if Path::new("weights").is_dir() {
        "weights".into()
    } else {
        user_dir().join("models")
    }
}

/// The store, secret and images beside it: `./data`, or `~/.local/share/imagen/data`.
pub fn default_data_dir() -> PathBuf {
    if Path::new("weights").is_dir() {
        "data".into()
    } else {
        user_dir().join("data")
    }
}

fn user_dir() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).map(PathBuf::from).filter(|p| p.is_absolute());
    match (var("XDG_DATA_HOME"), var("HOME")) {
        (Some(d), _) => d.join("imagen"),
        (None, Some(home)) => home.join(".local/share/imagen"),
        (None, None) => "imagen-data".into(),
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            models_dir: default_models_dir(),
            data_dir: default_data_dir(),
            public_url: None,
            backend: "cpu".into(),
            device: None,
            dtype: "f32".into(),
            default_model: None,
            limits: Limits::default(),
            queue: QueueConfig::default(),
            store: StoreConfig::default(),
            webhooks: Webhooks::default(),
            fetch: Fetch::default(),
            role: Role::Both,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 32 << 20,
            max_pixels: 1024 * 1024,
            max_side: 2048,
            max_steps: 150,
            max_images: 8,
            max_prompt_chars: 4000,
            max_input_pixels: 4096 * 4096,
            queue_capacity: 32,
            max_loaded_models: 1,
            image_url_ttl_secs: 3600,
            max_connections_per_address: 256,
            header_timeout_ms: 10_000,
            body_timeout_ms: 60_000,
        }
    }
}

impl Default for Webhooks {
    fn default() -> Self {
        Webhooks {
            max_attempts: 8,
            retry_base_ms: 2000,
            timeout_ms: 10_000,
        }
    }
}

impl Default for Fetch {
    fn default() -> Self {
        Fetch {
            enabled: false,
            allow_private: false,
            timeout_ms: 10_000,
            max_bytes: 20 << 20,
        }
    }
}

impl Config {
    /// Defaults, then `file` (if any), then the environment.
    pub fn load(file: Option<&Path>) -> Result<Self> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
                toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?
            }
            None => Config::default(),
        };
        config.apply_env(|k| std::env::var(k).ok())?;
        Ok(config)
    }

    /// `IMAGEN_BIND`, `IMAGEN_MODELS_DIR`, `IMAGEN_DATA_DIR`, `IMAGEN_PUBLIC_URL`,
    /// `IMAGEN_BACKEND`, `IMAGEN_DTYPE`, `IMAGEN_DEFAULT_MODEL`, `IMAGEN_ALLOW_URL_FETCH`,
    /// `IMAGEN_STORE_URL`, `IMAGEN_IMAGES`, `IMAGEN_DEVICE`.
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<()> {
        if let Some(v) = var("IMAGEN_BIND") {
            self.bind = v
                .parse()
                .map_err(|e| Error::Config(format!("IMAGEN_BIND {v:?}: {e}")))?;
        }
        if let Some(v) = var("IMAGEN_MODELS_DIR") {
            self.models_dir = v.into();
        }
        if let Some(v) = var("IMAGEN_DATA_DIR") {
            self.data_dir = v.into();
        }
        if let Some(v) = var("IMAGEN_PUBLIC_URL") {
            self.public_url = Some(v);
        }
        if let Some(v) = var("IMAGEN_BACKEND") {
            self.backend = v;
        }
        if let Some(v) = var("IMAGEN_DTYPE") {
            self.dtype = v;
        }
        if let Some(v) = var("IMAGEN_IMAGES") {
            self.store.images = Some(v);
        }
        if let Some(v) = var("IMAGEN_DEVICE") {
            self.device = Some(
                v.parse()
                    .map_err(|e| Error::Config(format!("IMAGEN_DEVICE {v:?}: {e}")))?,
            );
        }
        if let Some(v) = var("IMAGEN_STORE_URL") {
            self.store.url = Some(v);
        }
        if let Some(v) = var("IMAGEN_DEFAULT_MODEL") {
            self.default_model = Some(v);
        }
        if let Some(v) = var("IMAGEN_ALLOW_URL_FETCH") {
            self.fetch.enabled = matches!(v.as_str(), "1" | "true" | "yes");
        }
        Ok(())
    }

    /// Where image URLs point, without a trailing slash.
    /// The backend as `imagen_models::device::by_name` takes it: `wgpu:N` with a device.
    pub fn backend_name(&self) -> String {
        match self.device {
            Some(n) => format!("{}:{n}", self.backend),
            None => self.backend.clone(),
        }
    }

    pub fn base_url(&self) -> String {
        match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => format!("http://{}", self.bind),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_env_override_defaults() {
        let mut c: Config = toml::from_str("bind = \"0.0.0.0:9000\"\n[limits]\nmax_steps = 20\n").expect("toml");
        assert_eq!(c.limits.max_steps, 20);
        assert_eq!(c.limits.max_images, Limits::default().max_images);
        c.apply_env(|k| (k == "IMAGEN_BIND").then(|| "127.0.0.1:1234".to_owned()))
            .expect("env");
        assert_eq!(c.bind.port(), 1234);
        assert!(toml::from_str::<Config>("bnid = 1").is_err(), "typos are errors");
    }
}
