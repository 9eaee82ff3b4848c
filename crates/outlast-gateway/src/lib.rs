//! Outlast's gateway: resumable uploads, a job queue in front of backends, and lossless job
//! streams over one WebSocket (with SSE and long-poll fallbacks).
//!
//! [`app`] builds the router from an [`AppState`]; [`run`] wires the real components together,
//! serves until the shutdown token fires, and drains within the grace period.

pub mod api;
pub mod auth;
pub mod backend;
pub mod cache;
pub mod client_assets;
pub mod config;
pub mod error;
pub mod hub;
pub mod jobs;
pub mod outputs;
pub mod queue;
pub mod sse;
pub mod state;
pub mod store;
pub mod upload;
pub mod ws;

use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::cors::{Any, CorsLayer};

use crate::backend::Backend;
use crate::config::Config;
use crate::hub::Hub;
use crate::jobs::Jobs;
use crate::state::AppState;
use crate::store::embedded::EmbeddedStore;

/// The demo page, embedded in the binary.
const DEMO_PAGE: &str = include_str!("../../../web/index.html");

/// The router. Tests may call it directly with a state of their own.
pub fn app(state: AppState) -> Router {
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods(Any)
        .allow_headers(tower_http::cors::AllowHeaders::mirror_request())
        .expose_headers(
            [header::LOCATION, header::ETAG, header::CONTENT_RANGE]
                .into_iter()
                .chain(
                    upload::tus::EXPOSED_HEADERS
                        .iter()
                        .map(|h| header::HeaderName::from_static(h)),
                )
                .collect::<Vec<_>>(),
        );
    Router::new()
        .route("/", get(|| async { Html(DEMO_PAGE) }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/ws", get(ws::handler))
        .route("/v1/jobs", axum::routing::post(api::submit))
        .route("/v1/jobs/{id}", get(api::get_job).delete(api::cancel))
        .route("/v1/jobs/{id}/events", get(sse::events))
        .route("/v1/jobs/{id}/poll", get(api::poll))
        .route("/v1/jobs/{id}/outputs/{name}", get(api::output))
        .route("/v1/uploads", axum::routing::any(upload::tus::collection))
        .route("/v1/uploads/{id}", axum::routing::any(upload::tus::item))
        .merge(client_assets::router())
        .layer(DefaultBodyLimit::max(state.config.max_message_bytes))
        .layer(cors)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            upload::tus::plain_options,
        ))
        .with_state(state)
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    match state
        .jobs
        .store
        .get(outlast_protocol::JobId::random())
        .await
    {
        Ok(_) => "ready".into_response(),
        Err(e) => {
            tracing::error!(error = %e, "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "store unavailable").into_response()
        }
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    metrics::gauge!("outlast_live_job_channels").set(state.hub.channel_count() as f64);
    match &state.metrics {
        Some(handle) => {
            handle.run_upkeep();
            let mut r = handle.render().into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder not installed",
        )
            .into_response(),
    }
}

/// Runs the gateway until `shutdown` fires, then drains within `config.shutdown_grace`.
/// Calls `on_listening` with the bound address once the socket is listening.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    on_listening: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let data = &config.data_dir;
    for dir in ["outputs", "work"] {
        std::fs::create_dir_all(data.join(dir))
            .with_context(|| format!("cannot create {}", data.join(dir).display()))?;
    }
    let hub = Arc::new(Hub::new());
    let store = EmbeddedStore::open(
        &data.join("outlast.redb"),
        Arc::clone(&hub),
        config.history_max_events,
    )
    .with_context(|| format!("cannot open the database in {}", data.display()))?;
    let mut backends: Vec<Arc<dyn Backend>> =
        vec![Arc::new(backend::demo::Demo::new(config.demo_concurrency))];
    if let Some(exec) = &config.exec {
        backends.push(Arc::new(backend::exec::Exec::new(exec.clone())));
    }
    let comfyui = match &config.comfyui {
        Some(c) => Some(Arc::new(
            backend::comfyui::ComfyUi::new(c.clone())
                .map_err(|e| anyhow::anyhow!("comfyui backend: {e}"))?,
        )),
        None => None,
    };
    if let Some(c) = &comfyui {
        backends.push(Arc::clone(c) as Arc<dyn Backend>);
    }
    // Leftover scratch directories of runs interrupted by a crash.
    let _ = std::fs::remove_dir_all(data.join("work"));
    std::fs::create_dir_all(data.join("work"))?;
    let tracker = TaskTracker::new();
    let uploads = upload::Uploads::open(
        config.uploads.clone(),
        data,
        config.max_message_bytes as u64,
    )
    .with_context(|| format!("cannot open the upload store in {}", data.display()))?;
    tracker.spawn(Arc::clone(&uploads).gc_loop(shutdown.clone()));
    if let Some(c) = comfyui {
        tracker.spawn(c.health_loop(shutdown.clone()));
    }
    let jobs = Arc::new(
        Jobs::new(
            Arc::new(store),
            outputs::OutputStore::new(data.join("outputs")),
            backends,
            Arc::clone(&uploads) as Arc<dyn jobs::InputResolver>,
            tracker.clone(),
            data.join("work"),
        )
        .with_cache(cache::ResultCache::new(config.cache_ttl)),
    );
    jobs.recover()
        .await
        .map_err(|e| anyhow::anyhow!("recovery failed: {e}"))?;
    tracker.spawn(Arc::clone(&jobs).dispatch_loop(shutdown.clone()));

    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    let metrics = metrics::set_global_recorder(recorder)
        .is_ok()
        .then_some(handle);

    let state = AppState {
        auth: Arc::new(auth::Auth::new(&config.tokens)),
        config: Arc::clone(&config),
        jobs: Arc::clone(&jobs),
        hub,
        uploads,
        shutdown: shutdown.clone(),
        tracker: tracker.clone(),
        metrics,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let addr = listener.local_addr()?;
    on_listening(addr);
    tracing::info!(%addr, "listening");

    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown.clone().cancelled_owned())
        .await?;

    tracing::info!(grace = ?config.shutdown_grace, "draining");
    tracker.close();
    if tokio::time::timeout(config.shutdown_grace, tracker.wait())
        .await
        .is_err()
    {
        // Jobs still running stay `running` in the store; recovery handles them at the next start.
        tracing::warn!(
            remaining = tracker.len(),
            "grace period over; stopping job runners"
        );
        jobs.stop_runners_now();
        if tokio::time::timeout(std::time::Duration::from_secs(5), tracker.wait())
            .await
            .is_err()
        {
            tracing::error!(remaining = tracker.len(), "tasks did not stop");
        }
    }
    tracing::info!("stopped");
    Ok(())
}
