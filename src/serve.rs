//! `imagen serve` and `imagen keys`: the HTTP server and its API keys.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use imagen_server::config::Role;
use imagen_server::{Config, keys};

#[derive(clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file (flags and IMAGEN_* variables override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Each sub-folder a diffusers model; its id is the folder name.
    #[arg(long)]
    models_dir: Option<PathBuf>,
    /// Where the SQLite database, the server secret and the images live.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Listen address (default 127.0.0.1:8080; port 0 picks a free one).
    #[arg(long)]
    bind: Option<SocketAddr>,
    /// Base URL image links are built on, e.g. https://images.example.com.
    #[arg(long)]
    public_url: Option<String>,
    /// cpu, or wgpu for the GPU.
    #[arg(long)]
    backend: Option<String>,
    /// With --backend wgpu: the discrete GPU to use, from 0 (one worker per GPU).
    #[arg(long)]
    device: Option<usize>,
    /// f32; f16 (GPU backends: half the memory, faster on most cards); bf16 (cpu backend on CPUs
    /// with AMX-BF16 or AVX512-BF16: conv and linear layers in bf16, half the weight memory;
    /// IMAGEN_CPU_AMX=0 uses AVX512-BF16 even where AMX exists).
    #[arg(long)]
    dtype: Option<String>,
    /// Model for requests that name none (default: the first by id).
    #[arg(long)]
    default_model: Option<String>,
    /// Let requests pass `image` as an http(s) URL (public addresses only).
    #[arg(long)]
    allow_url_fetch: bool,
    /// A PostgreSQL store shared by several servers (`postgres://…`); default: SQLite in the
    /// data directory.
    #[arg(long)]
    store: Option<String>,
    /// Where images live: a folder, or S3-compatible storage every node shares
    /// (`s3://bucket/prefix`; credentials, region and AWS_ENDPOINT_URL from the AWS_* variables).
    /// Default: the data directory.
    #[arg(long)]
    images: Option<String>,
    /// The API alone: no models loaded, no jobs claimed (`imagen worker` processes run them).
    #[arg(long)]
    no_worker: bool,
    /// Log lines on stderr: `text` (default) or `json` (one object per line). Filter with
    /// RUST_LOG, e.g. `RUST_LOG=warn,imagen::access=info`.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

#[derive(clap::Subcommand)]
pub enum KeysCommand {
    /// Create a key; the key itself is printed alone on the last line (it is stored hashed).
    Create {
        #[arg(long)]
        data_dir: PathBuf,
        /// free (10/min, 100/day), pro (100/min, 10,000/day), enterprise (1,000/min, 100,000/day).
        #[arg(long, default_value = "free")]
        plan: String,
        /// Limit the key: text-to-image, image-to-image, variations, models, model:<id>; admin
        /// adds the operator routes (`GET /v1/workers`). Repeatable.
        #[arg(long = "scope")]
        scopes: Vec<String>,
    },
    /// List keys (ids, plans, scopes; never the keys).
    List {
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Revoke a key by id.
    Revoke {
        #[arg(long)]
        data_dir: PathBuf,
        id: String,
    },
}

/// `imagen serve`, or with `worker` `imagen worker` (the same settings; `--bind` unused).
pub fn serve(a: ServeArgs, worker: bool) -> Result<()> {
    init_logs(&a.log_format);
    let mut config = Config::load(a.config.as_deref())?;
    config.role = match (worker, a.no_worker) {
        (false, false) => Role::Both,
        (false, true) => Role::Api,
        (true, false) => Role::Worker,
        (true, true) => bail!("--no-worker is for `imagen serve`; a worker without a worker runs nothing"),
    };
    if let Some(v) = a.models_dir {
        config.models_dir = v;
    }
    if let Some(v) = a.store {
        config.store.url = Some(v);
    }
    if let Some(v) = a.images {
        config.store.images = Some(v);
    }
    if let Some(v) = a.data_dir {
        config.data_dir = v;
    }
    if let Some(v) = a.bind {
        config.bind = v;
    }
    if let Some(v) = a.public_url {
        config.public_url = Some(v);
    }
    if let Some(v) = a.backend {
        config.backend = v;
    }
    if let Some(v) = a.device {
        config.device = Some(v);
    }
    if let Some(v) = a.dtype {
        config.dtype = v;
    }
    if let Some(v) = a.default_model {
        config.default_model = Some(v);
    }
    if a.allow_url_fetch {
        config.fetch.enabled = true;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(imagen_server::serve(config, |addr| {
        // Tests and scripts read this line to find the port.
        println!("imagen listening on http://{addr}");
    }))?;
    Ok(())
}

/// `tracing` to stderr: every request's access line, job lifecycle, webhook outcomes.
fn init_logs(format: &str) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    // GPU stacks are chatty at info
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,wgpu_core=warn,wgpu_hal=warn,naga=warn,cubecl=warn"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        logs.json().with_current_span(true).with_span_list(false).init();
    } else {
        logs.with_ansi(std::io::stderr().is_terminal()).init();
    }
}

/// The data directory's store, or the PostgreSQL one `IMAGEN_STORE_URL` names.
fn store_in(data_dir: PathBuf) -> Result<std::sync::Arc<dyn imagen_server::store::Store>> {
    let mut config = Config {
        data_dir,
        ..Config::default()
    };
    config.store.url = std::env::var("IMAGEN_STORE_URL").ok().filter(|u| !u.is_empty());
    Ok(imagen_server::app::open_store(&config)?)
}

pub fn keys(cmd: KeysCommand) -> Result<()> {
    match cmd {
        KeysCommand::Create { data_dir, plan, scopes } => {
            let store = store_in(data_dir)?;
            let (secret, record) = keys::create(store.as_ref(), &plan, scopes)?;
            println!(
                "created {} (plan {}); keep the key, it is not shown again:",
                record.id, record.plan
            );
            println!("{secret}");
        }
        KeysCommand::List { data_dir } => {
            for k in store_in(data_dir)?.list_keys()? {
                let scopes = if k.scopes.is_empty() {
                    "*".into()
                } else {
                    k.scopes.join(",")
                };
                let state = if k.revoked { "revoked" } else { "active" };
                println!("{}\t{}\t{}\t{}", k.id, k.plan, scopes, state);
            }
        }
        KeysCommand::Revoke { data_dir, id } => {
            if !store_in(data_dir)?.revoke_key(&id)? {
                bail!("no key {id:?}");
            }
            println!("revoked {id}");
        }
    }
    Ok(())
}
