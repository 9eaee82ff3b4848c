//! Wiring: [`build`] opens the stores, starts the background loops and recovers jobs, giving a
//! [`Gateway`] whose state tests can use in-process; [`Gateway::serve`] serves it on a listener
//! until shutdown and drains within the grace period.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::backend::{self, Backend, InputResolver};
use crate::config::Config;
use crate::http::{self, AppState};
use crate::hub::Hub;
use crate::jobs::Jobs;
use crate::jobs::cache::ResultCache;
use crate::outputs::OutputStore;
use crate::store::embedded::EmbeddedStore;
use crate::upload::Uploads;
use crate::webhooks::WebhookPolicy;
use crate::webhooks::deliver::Outbox;

/// A built gateway: stores open, jobs recovered, dispatcher and background loops running.
#[derive(Debug)]
pub struct Gateway {
    state: AppState,
}

/// Builds the gateway from a validated configuration. Background tasks run until the gateway
/// is served and shut down (or [`Gateway::shutdown_token`] is cancelled).
pub async fn build(config: Config) -> anyhow::Result<Gateway> {
    let config = Arc::new(config);
    let data = &config.data_dir;
    for dir in ["outputs", "work"] {
        std::fs::create_dir_all(data.join(dir))
            .with_context(|| format!("cannot create {}", data.join(dir).display()))?;
    }
    let shutdown = CancellationToken::new();
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
    // One tracker for every task: the dispatcher, runners, loops, WebSocket sessions and the
    // ComfyUI backend's cancel requests; shutdown waits for all of them.
    let tracker = TaskTracker::new();
    let comfyui = match &config.comfyui {
        Some(c) => Some(Arc::new(
            backend::comfyui::ComfyUi::new(c.clone(), tracker.clone())
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
    let uploads = Uploads::open(
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
            Arc::clone(&hub),
            OutputStore::new(data.join("outputs")),
            backends,
            Arc::clone(&uploads) as Arc<dyn InputResolver>,
            tracker.clone(),
            data.join("work"),
        )
        .with_cache(ResultCache::new(config.cache_ttl))
        .with_webhooks(WebhookPolicy::new(&config.webhooks))
        .with_bounds(crate::jobs::bounds::Bounds::new(&config.jobs)),
    );
    jobs.recover()
        .await
        .map_err(|e| anyhow::anyhow!("recovery failed: {e}"))?;
    tracker.spawn(Arc::clone(&jobs).dispatch_loop(shutdown.clone()));
    let outbox = Outbox::new(&config.webhooks, Arc::clone(jobs.store()), tracker.clone());
    tracker.spawn(outbox.run(shutdown.clone()));
    tracker.spawn(Arc::clone(&jobs).sweep_loop(config.jobs.sweep_interval, shutdown.clone()));

    // The recorder is process-global: only the first gateway of a process installs it (tests
    // may build several).
    let recorder = crate::metrics::recorder().context("metrics recorder")?;
    let handle = recorder.handle();
    let metrics = metrics::set_global_recorder(recorder)
        .is_ok()
        .then_some(handle);
    if metrics.is_some() {
        crate::metrics::describe();
    }

    let state = AppState {
        auth: Arc::new(Auth::new(&crate::auth::AuthSettings::from_config(&config))),
        streams: http::stream_limit::StreamLimit::new(config.streams.max_per_owner),
        config,
        jobs,
        hub,
        uploads,
        shutdown,
        tracker,
        metrics,
    };
    Ok(Gateway { state })
}

impl Gateway {
    /// The state every handler sees (tests call services through it).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The router over this gateway's state.
    pub fn router(&self) -> Router {
        http::app(self.state.clone())
    }

    /// Fires when the gateway shuts down; cancel it to stop the background tasks.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.state.shutdown
    }

    /// Serves [`http::metrics_app`] on `listener` (the separate `metrics.listen` address) until
    /// shutdown, as a task on the gateway's tracker.
    pub fn serve_metrics(&self, listener: tokio::net::TcpListener) {
        let app = http::metrics_app(self.state.clone());
        let stop = self.state.shutdown.clone();
        self.state.tracker.spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, "the metrics server failed");
            }
        });
    }

    /// Serves on `listener` (with the `[http]` limits, see [`http::serve`]) until `shutdown`
    /// completes, then drains within the grace period: accepting stops, connections finish
    /// their request in flight, the background loops and WebSocket sessions end, running jobs
    /// get `shutdown_grace` to finish, and whatever still runs is stopped and left to restart
    /// recovery.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let state = self.state;
        let stop = state.shutdown.clone();
        let serving = http::serve::serve(
            listener,
            http::app(state.clone()),
            &state.config.http,
            stop.clone(),
            &state.tracker,
        );
        tokio::pin!(serving);
        // The shutdown signal cancels the token; a cancel from elsewhere ends serving as well.
        let serving = tokio::select! {
            r = &mut serving => r,
            () = shutdown => {
                stop.cancel();
                serving.await
            }
        };
        // Whatever ended serving, everything else stops too.
        state.shutdown.cancel();
        serving?;

        let grace = state.config.shutdown_grace;
        let tracker = &state.tracker;
        tracing::info!(?grace, "draining");
        tracker.close();
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            // Jobs still running stay `running` in the store; recovery handles them next start.
            tracing::warn!(
                remaining = tracker.len(),
                "grace period over; stopping job runners"
            );
            state.jobs.stop_runners_now();
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
}
