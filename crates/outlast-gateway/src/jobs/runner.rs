//! One run of a job: `started`, resolving inputs, a scratch directory, the backend's `run`
//! raced against cancel/shutdown, then the terminal event (and the result cache entry before a
//! completion).
//!
//! Cancel means stopped: a running job's `canceled` is stored here, by its runner, once the
//! backend's `run` is over: dropped (backends whose work ends with the future), or returned
//! after the backend confirmed its work stopped ([`Backend::confirms_cancel`]: exec, comfyui).
//! Until then the job stays `running` and keeps its slot.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use outlast_protocol::{EventKind, Failure, FailureCode, JobId, JobState};
use tokio_util::sync::CancellationToken;

use super::{CANCEL_REASON, Jobs};
use crate::backend::{Backend, EventQueue, JobContext};
use crate::clock::now_ms;
use crate::error::AppError;
use crate::metrics as m;
use crate::store::JobRecord;

/// How long a cancel request waits for a running job's stop to be confirmed before it answers
/// `running` (the `canceled` event follows when the stop is confirmed). Local stops (demo, a
/// process group that obeys SIGTERM) and a ComfyUI prompt between two steps fit in it.
const CANCEL_ANSWER_WAIT: Duration = Duration::from_secs(2);

/// How often a cancel request looks at the job while it waits.
const CANCEL_ANSWER_POLL: Duration = Duration::from_millis(20);

/// How a run ended.
enum Outcome {
    /// The backend's own result.
    Done(Result<(), Failure>),
    /// The owner canceled it and the work is over.
    Canceled,
    /// The gateway stops its runners; `canceled` if a cancel was under way.
    Shutdown { canceled: bool },
}

impl Jobs {
    /// After a running job's run was told to stop: its state once the stop is confirmed, or
    /// `running` if that takes longer than [`CANCEL_ANSWER_WAIT`].
    pub(super) async fn await_stop(
        &self,
        owner: &outlast_protocol::OwnerId,
        job: JobId,
    ) -> Result<JobState, AppError> {
        let deadline = tokio::time::Instant::now() + CANCEL_ANSWER_WAIT;
        loop {
            let state = self.owned(owner, job).await?.snapshot.state;
            if state.is_terminal() || tokio::time::Instant::now() >= deadline {
                return Ok(state);
            }
            tokio::time::sleep(CANCEL_ANSWER_POLL).await;
        }
    }

    pub(super) async fn run_job(
        self: Arc<Self>,
        job: JobId,
        backend: Arc<dyn Backend>,
        cancel: CancellationToken,
    ) {
        let name = backend.name();
        metrics::gauge!(m::JOBS_RUNNING, "backend" => name).increment(1.0);
        if let Err(e) = Arc::clone(&self).run_job_inner(job, backend, &cancel).await {
            tracing::error!(%job, error = %e, "job runner failed");
        }
        metrics::gauge!(m::JOBS_RUNNING, "backend" => name).decrement(1.0);
        self.sched().finished(name, job);
        self.wake.notify_one();
    }

    async fn run_job_inner(
        self: Arc<Self>,
        job: JobId,
        backend: Arc<dyn Backend>,
        cancel: &CancellationToken,
    ) -> Result<(), AppError> {
        let record = self
            .handle
            .store
            .get(job)
            .await?
            .ok_or_else(|| AppError::not_found("job"))?;
        let attempt = record.snapshot.attempt + 1;
        if self
            .emit(job, EventKind::Started { attempt })
            .await?
            .is_none()
        {
            return Ok(()); // canceled before it started
        }
        tracing::info!(%job, backend = backend.name(), attempt, "job started");
        if attempt == 1 {
            let waited = now_ms().saturating_sub(record.snapshot.created_at_ms) as f64 / 1000.0;
            metrics::histogram!(m::JOB_QUEUE_WAIT, "backend" => backend.name()).record(waited);
        }
        let mut inputs = BTreeMap::new();
        for (name, upload) in &record.spec.inputs {
            match self.inputs.resolve(&record.owner, *upload).await {
                Ok(file) => {
                    inputs.insert(name.clone(), file);
                }
                Err(e) => {
                    let failure = Failure {
                        code: FailureCode::BackendError,
                        message: format!("input {name:?} is no longer available: {}", e.message),
                        detail: None,
                    };
                    self.emit(job, EventKind::Failed(failure)).await?;
                    self.finished(&record, JobState::Failed);
                    return Ok(());
                }
            }
        }
        let work_dir = self.work_root.join(format!("{job}-{attempt}"));
        tokio::fs::create_dir_all(&work_dir)
            .await
            .map_err(AppError::internal)?;
        let ctx = JobContext {
            job_id: job,
            attempt,
            spec: Arc::new(record.spec.clone()),
            inputs,
            work_dir: work_dir.clone(),
            existing_outputs: record
                .snapshot
                .outputs
                .iter()
                .map(|o| o.name.clone())
                .collect(),
            handle: self.handle.clone(),
            cancel: cancel.clone(),
            events: EventQueue::default(),
        };
        let outcome = if cancel.is_cancelled() {
            // Canceled between the scheduler's start and here: nothing ran yet.
            if ctx.shutting_down() {
                Outcome::Shutdown { canceled: false }
            } else {
                Outcome::Canceled
            }
        } else {
            Self::race(&*backend, &ctx, cancel).await
        };
        // Queued progress is stored before the terminal event.
        ctx.events.drain().await;
        drop(ctx);
        let _ = tokio::fs::remove_dir_all(&work_dir).await;
        let (kind, state) = match outcome {
            // Shutdown leaves the job `running` for recovery.
            Outcome::Shutdown { canceled: false } => return Ok(()),
            Outcome::Shutdown { canceled: true } => {
                tracing::warn!(%job, "the gateway stops before the canceled job's stop was confirmed; storing `canceled`");
                metrics::counter!(m::CANCELS_UNCONFIRMED, "backend" => backend.name()).increment(1);
                (cancel_event(), JobState::Canceled)
            }
            Outcome::Canceled => (cancel_event(), JobState::Canceled),
            Outcome::Done(Ok(())) => (EventKind::Completed { cached: false }, JobState::Completed),
            Outcome::Done(Err(failure)) => (EventKind::Failed(failure), JobState::Failed),
        };
        if state == JobState::Completed {
            let (store, inputs) = (&*self.handle.store, &*self.inputs);
            self.cache.remember(store, inputs, &*backend, &record).await;
        }
        if self.emit(job, kind).await?.is_some() {
            if let Err(e) = self.handle.store.set_backend_state(job, None).await {
                tracing::warn!(%job, error = %e, "could not clear the backend state");
            }
            tracing::info!(%job, state = state.as_str(), "job finished");
            self.finished(&record, state);
        }
        Ok(())
    }

    /// Runs the backend until it ends, the owner cancels or the gateway stops its runners. A
    /// backend that confirms cancels is awaited after the cancel: its `run` returns once the
    /// work is stopped; any other is dropped at once.
    async fn race(backend: &dyn Backend, ctx: &JobContext, cancel: &CancellationToken) -> Outcome {
        let confirms = backend.confirms_cancel();
        let stop = ctx.handle.stop_token().clone();
        let run = backend.run(ctx);
        tokio::pin!(run);
        let mut canceled = false;
        loop {
            tokio::select! {
                // Shutdown first: the run's token is a child of the stop token and fires too.
                biased;
                () = stop.cancelled() => return Outcome::Shutdown { canceled },
                () = cancel.cancelled(), if !canceled => {
                    canceled = true;
                    if !confirms {
                        return Outcome::Canceled;
                    }
                    tracing::info!(job = %ctx.job_id, backend = backend.name(), "cancel requested; waiting until the work has stopped");
                }
                r = &mut run => {
                    return if canceled { Outcome::Canceled } else { Outcome::Done(r) };
                }
            }
        }
    }

    pub(super) fn finished(&self, record: &JobRecord, state: JobState) {
        let backend = record.spec.backend.clone();
        let secs = now_ms().saturating_sub(record.snapshot.created_at_ms) as f64 / 1000.0;
        metrics::counter!(m::JOBS_FINISHED, "backend" => backend.clone(), "state" => state.as_str())
            .increment(1);
        metrics::histogram!(m::JOB_DURATION, "backend" => backend).record(secs);
    }
}

fn cancel_event() -> EventKind {
    EventKind::Canceled {
        reason: CANCEL_REASON.into(),
    }
}
