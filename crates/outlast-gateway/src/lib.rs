//! Outlast's gateway: resumable uploads, a job queue in front of backends, and lossless job
//! streams over one WebSocket (with SSE and long-poll fallbacks).
//!
//! Layers, each importing only those below it (ARCHITECTURE.md, "Layering"):
//! `clock`, `error`, `metrics`, `topics`, `config` → `hub` → `store`, `outputs` → `backend`,
//! `webhooks` →
//! `jobs`, `upload` → `auth` → `http` → `gateway`.
//!
//! [`gateway::build`] wires the components into a [`gateway::Gateway`] (tests may use its state
//! in-process, or its router with `tower::ServiceExt::oneshot`); [`run`] builds, listens and
//! serves until the shutdown token fires.

pub mod auth;
pub mod backend;
pub mod clock;
pub mod config;
pub mod error;
pub mod gateway;
pub mod http;
pub mod hub;
pub mod jobs;
pub mod metrics;
pub mod outputs;
pub mod store;
pub mod topics;
pub mod upload;
pub mod webhooks;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

pub use http::{AppState, app};

use crate::config::Config;

/// Builds the gateway, listens on `config.listen` (calling `on_listening` with the bound
/// address), and serves until `shutdown` fires; then drains within `config.shutdown_grace`.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    on_listening: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<()> {
    let listen = config.listen;
    let gateway = gateway::build(config).await?;
    // A shutdown requested while building still stops the gateway at once.
    let stop = gateway.shutdown_token().clone();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    if let Some(metrics_listen) = gateway.state().config.metrics.listen {
        let metrics = tokio::net::TcpListener::bind(metrics_listen)
            .await
            .with_context(|| format!("cannot listen on {metrics_listen} (metrics.listen)"))?;
        let url = format!("http://{}/metrics", metrics.local_addr()?);
        tracing::info!(%url, "metrics listening");
        gateway.serve_metrics(metrics);
    }
    on_listening(addr);
    tracing::info!(%addr, "listening");
    gateway
        .serve(listener, async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = stop.cancelled() => {}
            }
        })
        .await
}
