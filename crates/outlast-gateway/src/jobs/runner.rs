//! One run of a job: `started`, resolving inputs, a scratch directory, the backend's `run`
//! raced against cancel/shutdown, then the terminal event (and the result cache entry before a
//! completion).

use std::collections::BTreeMap;
use std::sync::Arc;

use outlast_protocol::{EventKind, Failure, FailureCode, JobId, JobState};
use tokio_util::sync::CancellationToken;

use super::Jobs;
use crate::backend::{Backend, JobContext};
use crate::clock::now_ms;
use crate::error::AppError;
use crate::metrics as m;
use crate::store::JobRecord;

impl Jobs {
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
        };
        let outcome = tokio::select! {
            r = backend.run(&ctx) => Some(r),
            // Cancel already stored `canceled`; shutdown leaves the job `running` for recovery.
            () = cancel.cancelled() => None,
        };
        drop(ctx);
        let _ = tokio::fs::remove_dir_all(&work_dir).await;
        let (kind, state) = match outcome {
            None => return Ok(()),
            Some(Ok(())) => (EventKind::Completed { cached: false }, JobState::Completed),
            Some(Err(failure)) => (EventKind::Failed(failure), JobState::Failed),
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

    pub(super) fn finished(&self, record: &JobRecord, state: JobState) {
        let backend = record.spec.backend.clone();
        let secs = now_ms().saturating_sub(record.snapshot.created_at_ms) as f64 / 1000.0;
        metrics::counter!(m::JOBS_FINISHED, "backend" => backend.clone(), "state" => state.as_str())
            .increment(1);
        metrics::histogram!(m::JOB_DURATION, "backend" => backend).record(secs);
    }
}
