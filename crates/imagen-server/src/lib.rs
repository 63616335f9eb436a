//! The HTTP server: the Image Generation API contract under `/v1` plus OpenAI-compatible image
//! routes, over the engine's job queue. Knows nothing of tensors: it meets the engine at
//! `imagen_engine::worker` (a job in, images out).

pub mod app;
pub mod batching;
pub mod blobs;
pub mod config;
pub mod dispatch;
pub mod error;
pub mod jobs;
pub mod keys;
pub mod media;
pub mod metrics;
pub mod net;
pub mod pg;
mod pg_schema;
pub mod queue;
pub mod routes;
pub mod signing;
pub mod spec;
pub mod store;
#[cfg(test)]
mod store_tests;
pub mod webhook;
pub mod workers;

pub use config::Config;
pub use error::{Error, Result};

/// Serves until Ctrl-C / SIGTERM. `on_listen` gets the bound address once accepting. On the
/// signal nothing more is claimed from the queue; the running job gets
/// `[queue] shutdown_timeout_ms` to finish, else it goes back to the queue; then the process
/// returns. Accepted jobs stay in the store either way (requests still waiting on them are cut
/// off; the jobs run on the next start).
/// A worker alone (`Role::Worker`) binds nothing: `on_listen` is not called, and it runs jobs
/// until the signal.
pub async fn serve(config: Config, on_listen: impl FnOnce(std::net::SocketAddr)) -> Result<()> {
    let (listener, state) = app::start(config).await?;
    let timeout = std::time::Duration::from_millis(state.config.queue.shutdown_timeout_ms);
    let st = state.clone();
    let drained = async move {
        shutdown().await;
        tracing::info!("shutting down: no new jobs claimed; waiting for the running one");
        dispatch::drain(&st, timeout).await;
    };
    let Some(listener) = listener else {
        let models = state.worker.as_ref().map(|w| w.models.join(", ")).unwrap_or_default();
        tracing::info!("worker {} running the jobs of: {models}", state.owner);
        drained.await;
        return Ok(());
    };
    on_listen(listener.local_addr()?);
    let limits = &state.config.limits;
    let server = net::serve(
        listener,
        routes::router(state.clone()),
        limits.max_connections_per_address,
        std::time::Duration::from_millis(limits.header_timeout_ms),
    );
    tokio::select! {
        () = server => {}
        () = drained => {}
    }
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
