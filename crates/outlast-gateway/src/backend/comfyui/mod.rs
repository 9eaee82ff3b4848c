//! The `comfyui` backend: runs API-format workflows on a pool of ComfyUI servers and hides
//! ComfyUI's flaws from clients (no pings, no replay, the same-client-id reconnect bug,
//! in-memory queue and history). See docs/comfyui.md.
//!
//! One job = one prompt on one server, under a prompt id and client id chosen here. The parts:
//! [`placement`] picks the server, uploads the inputs and queues the prompt; [`follow`] follows
//! it over the WebSocket (its timers are sans-IO); [`history`] reads `/history` and `/queue`
//! and the finished entry's outputs; [`failure`] turns ComfyUI's errors into ours; [`cancel`]
//! stops the prompt when the job ends first (canceled, time limit) and waits until ComfyUI
//! confirms it stopped; [`messages`] types what the socket carries.

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

use self::cancel::Current;
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
    /// Where the stops of drained slots run (see [`cancel`]); shutdown waits for it.
    tracker: TaskTracker,
}

/// Why a run stopped before its prompt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// The job's owner canceled it.
    Canceled,
    /// `comfyui.timeout` passed.
    TimeLimit,
    /// The run ended on its own; if it failed while ComfyUI may still have the prompt, that is
    /// stopped in the background (the failure is reported at once, the slot drained meanwhile).
    Ended,
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

    /// Stops what the run still holds in ComfyUI and waits for the confirmation, up to
    /// `cancel_timeout`; after that the slot stays drained on a tracked task until the server
    /// confirms. Nothing held (or no prompt armed): the slot is simply given back.
    async fn stop_held(&self, ctx: &JobContext, current: &Current, cut: Cut) {
        let Some(mut placed) = current.take() else {
            return;
        };
        let Some(prompt_id) = placed.prompt_id.take() else {
            return;
        };
        let server = placed.lease.server().clone();
        let job = ctx.job_id;
        tracing::info!(%job, server = %server.base, prompt = %prompt_id, ?cut, "stopping the prompt in ComfyUI");
        if cut != Cut::Ended {
            let deadline = tokio::time::Instant::now() + self.cfg.cancel_timeout;
            if cancel::stop_prompt(&server, &prompt_id, job, Some(deadline)).await {
                return; // the lease drops: the slot is free
            }
            tracing::error!(
                %job, server = %server.base, prompt = %prompt_id,
                "ComfyUI did not confirm the prompt stopped within {} (comfyui.cancel_timeout); the job is reported anyway and the server's slot stays drained until it answers",
                humantime::format_duration(self.cfg.cancel_timeout)
            );
            metrics::counter!(crate::metrics::CANCELS_UNCONFIRMED, "backend" => "comfyui")
                .increment(1);
        }
        placed.lease.drain();
        let stop = ctx.handle.stop_token().clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = cancel::stop_prompt(&server, &prompt_id, job, None) => {
                    tracing::info!(%job, server = %server.base, "the drained ComfyUI slot is free again");
                }
                () = stop.cancelled() => {}
            }
            drop(placed);
        });
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

    /// The runner waits for `run` after a cancel: it returns once ComfyUI confirmed the stop.
    fn confirms_cancel(&self) -> bool {
        true
    }

    async fn run(&self, ctx: &JobContext) -> Result<(), Failure> {
        let current = Current::default();
        let deadline = tokio::time::Instant::now() + self.cfg.timeout;
        // Boxed so it can be dropped before the stop: what it holds stays in `current`.
        let mut work = Box::pin(self.run_to_end(ctx, &current));
        let (cut, result) = tokio::select! {
            r = &mut work => (Cut::Ended, r),
            () = ctx.canceled() => (Cut::Canceled, Err(fail(FailureCode::BackendError, "canceled", None))),
            () = tokio::time::sleep_until(deadline) => (
                Cut::TimeLimit,
                Err(fail(
                    FailureCode::Timeout,
                    format!(
                        "the ComfyUI job ran longer than {}",
                        humantime::format_duration(self.cfg.timeout)
                    ),
                    None,
                )),
            ),
        };
        current.abandon();
        drop(work);
        // After a normal end nothing is armed; after a failure the prompt may still be there.
        self.stop_held(ctx, &current, cut).await;
        result
    }
}
