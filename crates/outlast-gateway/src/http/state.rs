//! What every handler can reach.

use std::sync::Arc;

use axum::extract::FromRef;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::stream_limit::StreamLimit;
use crate::auth::Auth;
use crate::config::Config;
use crate::hub::Hub;
use crate::jobs::Jobs;
use crate::upload::Uploads;

/// Shared state of the gateway; cheap to clone.
#[derive(Debug, Clone, FromRef)]
pub struct AppState {
    /// Validated configuration.
    pub config: Arc<Config>,
    /// Token to owner resolution.
    pub auth: Arc<Auth>,
    /// The job service.
    pub jobs: Arc<Jobs>,
    /// Live event fan-out.
    pub hub: Arc<Hub>,
    /// Fired on SIGTERM/SIGINT.
    pub shutdown: CancellationToken,
    /// Every task the gateway spawns, so shutdown can wait for them.
    pub tracker: TaskTracker,
    /// The upload store (tus and WebSocket uploads).
    pub uploads: Arc<Uploads>,
    /// Renders `/metrics`.
    pub metrics: Option<PrometheusHandle>,
    /// Job streams open per owner (WebSocket subscriptions, SSE, long-polls), bounded.
    pub streams: Arc<StreamLimit>,
}
