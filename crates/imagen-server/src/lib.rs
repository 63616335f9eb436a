//! The HTTP server: the Image Generation API contract under `/v1` plus OpenAI-compatible image
//! routes, over the engine's job queue. Knows nothing of tensors: it meets the engine at
//! `imagen_engine::worker` (a job in, images out).

pub mod app;
pub mod config;
pub mod dispatch;
pub mod error;
pub mod jobs;
pub mod keys;
pub mod media;
pub mod queue;
pub mod routes;
pub mod signing;
pub mod spec;
pub mod store;
pub mod webhook;

pub use config::Config;
pub use error::{Error, Result};

/// Serves until Ctrl-C / SIGTERM. `on_listen` gets the bound address once accepting.
pub async fn serve(config: Config, on_listen: impl FnOnce(std::net::SocketAddr)) -> Result<()> {
    let (listener, state) = app::start(config).await?;
    on_listen(listener.local_addr()?);
    axum::serve(listener, routes::router(state))
        .with_graceful_shutdown(shutdown())
        .await?;
    Ok(())
}

async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
