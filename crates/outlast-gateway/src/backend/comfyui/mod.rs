//! The `comfyui` backend: runs API-format workflows on a pool of ComfyUI servers and hides
//! ComfyUI's flaws from clients (no pings, no replay, the same-client-id reconnect bug,
//! in-memory queue and history). See docs/comfyui.md.
//!
//! One job = one prompt on one server, under a prompt id and client id chosen here. The parts:
//! [`placement`] picks the server, uploads the inputs and queues the prompt; [`follow`] follows
//! it over the WebSocket (its timers are sans-IO); [`history`] reads `/history` and `/queue`
//! and the finished entry's outputs; [`failure`] turns ComfyUI's errors into ours; [`cancel`]
//! stops the prompt when the job ends first; [`messages`] types what the socket carries.

mod cancel;
mod client;
mod failure;
mod follow;
pub mod graph;
mod history;
pub mod messages;
mod placement;
mod pool;

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use outlast_protocol::{Failure, FailureCode, JobSpec};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::client::Server;
use self::failure::fail;
use self::graph::Graph;
use self::pool::Pool;
use super::{Backend, JobContext, RestartPolicy};
use crate::config::ComfyConfig;
use crate::error::AppError;

/// The `comfyui` backend.
#[derive(Debug)]
pub struct ComfyUi {
    pool: Arc<Pool>,
    cfg: ComfyConfig,
    /// Where prompt cancellations run; shutdown waits for it.
    tracker: TaskTracker,
}

/// How one try of a job ended, besides success.
enum Stop {
    /// A typed failure; the job ends.
    Fail(Failure),
    /// The server could not take the prompt (down before it was queued): try another.
    ServerDown,
    /// ComfyUI no longer knows a prompt it accepted (it restarted).
    Lost(String),
}

impl From<Failure> for Stop {
    fn from(f: Failure) -> Self {
        Stop::Fail(f)
    }
}

impl ComfyUi {
    /// A backend on the configured servers. Requests that stop prompts in ComfyUI run on
    /// `tracker`: wait for it at shutdown.
    pub fn new(cfg: ComfyConfig, tracker: TaskTracker) -> Result<ComfyUi, String> {
        let servers = cfg
            .servers
            .iter()
            .map(|s| Ok((Server::new(&s.url)?, s.concurrency)))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(ComfyUi {
            pool: Arc::new(Pool::new(servers)),
            cfg,
            tracker,
        })
    }

    /// Probes the servers until `shutdown`; spawn it once.
    pub async fn health_loop(self: Arc<Self>, shutdown: CancellationToken) {
        Arc::clone(&self.pool)
            .health_loop(self.cfg.retry_interval, shutdown)
            .await;
    }

    fn parse(spec: &JobSpec) -> Result<Graph, String> {
        let inputs: BTreeSet<String> = spec.inputs.keys().cloned().collect();
        Graph::parse(&spec.workflow, &inputs)
    }
}

#[async_trait]
impl Backend for ComfyUi {
    fn name(&self) -> &'static str {
        "comfyui"
    }

    fn concurrency(&self) -> usize {
        self.pool.healthy_slots()
    }

    /// The prompt goes on in ComfyUI while the gateway restarts; the job reattaches to it.
    fn restart_policy(&self) -> RestartPolicy {
        RestartPolicy::Resume
    }

    /// A graph is a function of its nodes and inputs (the seed is a node input, so a new seed is
    /// a new workflow), so the result cache may answer repeats.
    fn deterministic(&self) -> bool {
        true
    }

    fn validate(&self, spec: &JobSpec) -> Result<(), AppError> {
        Self::parse(spec).map(|_| ()).map_err(AppError::invalid)
    }

    fn unavailable(&self) -> Option<String> {
        self.pool.all_down().then(|| {
            "no ComfyUI server is reachable; the job starts when one comes back".to_owned()
        })
    }

    fn attach_scheduler(&self, wake: Arc<tokio::sync::Notify>) {
        self.pool.attach_scheduler(wake);
    }

    async fn run(&self, ctx: &JobContext) -> Result<(), Failure> {
        // Dropping the run at the limit drops its cancel guard: the prompt is stopped in ComfyUI.
        match tokio::time::timeout(self.cfg.timeout, self.run_to_end(ctx)).await {
            Ok(result) => result,
            Err(_) => Err(fail(
                FailureCode::Timeout,
                format!(
                    "the ComfyUI job ran longer than {}",
                    humantime::format_duration(self.cfg.timeout)
                ),
                None,
            )),
        }
    }
}
