//! Jobs whose stored state and queue disagree: putting a job (back) into the scheduler at
//! start-up, on a resubmit of a stranded job and from the periodic sweep.
//!
//! A job the store holds unfinished must be known to the scheduler (queued or running);
//! otherwise nothing will ever start or finish it: it is *stranded*. Submission cannot strand a
//! job any more (create and queue run in one tracked task), so after start-up recovery a
//! stranded job means a bug or a lost run (a runner that failed before its terminal event). The
//! sweep finds them by comparing the store's unfinished jobs with the scheduler; a job counts
//! only when it is seen stranded by two sweeps in a row, so a submission between its commit
//! and its queueing is never taken for one. Each heal is logged and counted in
//! `outlast_jobs_healed_total{found_by}`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use outlast_protocol::{EventKind, Failure, FailureCode, JobId, JobState, QueuePlace};
use tokio_util::sync::CancellationToken;

use super::Jobs;
use super::admission::{Cause, FoundBy, Suspects};
use super::scheduler::Waiting;
use crate::backend::RestartPolicy;
use crate::error::AppError;
use crate::metrics as m;
use crate::store::JobRecord;

impl Jobs {
    /// Puts an unfinished job into the scheduler: a queued one waits again (at the end of its
    /// owner's line); a running one (whose run is gone) is re-run, resumed first in line or
    /// failed according to its backend's [`RestartPolicy`]. Does nothing for a job the
    /// scheduler already knows.
    pub(super) async fn requeue(&self, record: &JobRecord, cause: Cause) -> Result<(), AppError> {
        let job = record.snapshot.job_id;
        let Some(backend) = self.backends.get(record.spec.backend.as_str()).cloned() else {
            let failure = Failure {
                code: FailureCode::BackendUnavailable,
                message: format!("backend {:?} is no longer configured", record.spec.backend),
                detail: None,
            };
            self.emit(job, EventKind::Failed(failure)).await?;
            return Ok(());
        };
        let running = record.snapshot.state == JobState::Running;
        let policy = backend.restart_policy();
        // The `queued` event stored here, if any: the job's entry is then announced already.
        let mut stored_entry = None;
        let what = match cause {
            Cause::Restart => "the gateway restarted while the job was running",
            Cause::Stranded => "the job's run was lost",
        };
        if running {
            let how = match policy {
                RestartPolicy::Resume => "it resumes where it was",
                RestartPolicy::Rerun => "it runs again",
                RestartPolicy::Fail => {
                    let failure = Failure {
                        code: FailureCode::Interrupted,
                        message: format!("{what}; this backend does not re-run jobs"),
                        detail: None,
                    };
                    if self.emit(job, EventKind::Failed(failure)).await?.is_some() {
                        self.finished(record, JobState::Failed);
                    }
                    return Ok(());
                }
            };
            let queued = EventKind::Queued {
                position: 0,
                reason: Some(format!("{what}; {how}")),
            };
            match self.emit(job, queued).await? {
                Some(event) => stored_entry = Some(event.kind),
                None => return Ok(()), // it finished meanwhile
            }
        }
        let first_in_line = running && policy == RestartPolicy::Resume;
        let pending = self.pending_inputs(&record.owner, &record.spec).await;
        {
            let mut sched = self.sched();
            let queued = if first_in_line {
                sched.enqueue_front(backend.name(), record.owner.clone(), job)
            } else {
                sched.enqueue(backend.name(), record.owner.clone(), job)
            };
            if queued {
                let waiting = Waiting {
                    owner: record.owner.clone(),
                    uploads: pending,
                };
                sched.set_waiting(job, Some(waiting));
                if let Some(EventKind::Queued { position, reason }) = stored_entry {
                    sched.mark_entered(job, QueuePlace { position, reason });
                }
            }
        }
        self.wake.notify_one();
        Ok(())
    }

    /// Heals `job` if it is stranded: unfinished in the store (read again now) and unknown to
    /// the scheduler. True when it was.
    pub(super) async fn heal(&self, job: JobId, found_by: FoundBy) -> Result<bool, AppError> {
        // A runner stopped for shutdown leaves its job `running` on purpose: recovery at the
        // next start takes it.
        if self.stopping_runners() || self.sched().knows(job) || self.in_flight.is_admitting(job) {
            return Ok(false);
        }
        // Read after asking the scheduler: a job it did not know then and that is still
        // unfinished now was not started in between (starting needs it queued).
        let Some(record) = self.handle.store.get(job).await? else {
            return Ok(false);
        };
        if record.snapshot.state.is_terminal() {
            return Ok(false);
        }
        tracing::warn!(
            %job,
            state = record.snapshot.state.as_str(),
            found_by = found_by.as_str(),
            "job was stranded (stored unfinished, not queued or running); queueing it again"
        );
        metrics::counter!(m::JOBS_HEALED, "found_by" => found_by.as_str()).increment(1);
        self.requeue(&record, Cause::Stranded).await?;
        Ok(true)
    }

    /// One sweep: compares the store's unfinished jobs with the scheduler and heals the jobs
    /// that the previous sweep (`suspects`) found stranded too. Returns how many it healed.
    pub async fn sweep(&self, suspects: &mut Suspects) -> Result<usize, AppError> {
        let mut found = HashSet::new();
        let mut healed = 0;
        for record in self.handle.store.unfinished().await? {
            let job = record.snapshot.job_id;
            if self.sched().knows(job) || self.in_flight.is_admitting(job) {
                continue;
            }
            if suspects.0.contains(&job) {
                if self.heal(job, FoundBy::Sweep).await? {
                    healed += 1;
                }
            } else {
                found.insert(job);
            }
        }
        suspects.0 = found;
        Ok(healed)
    }

    /// Sweeps every `every` until `shutdown`.
    pub async fn sweep_loop(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let mut suspects = Suspects::default();
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = shutdown.cancelled() => break,
            }
            if let Err(e) = self.sweep(&mut suspects).await {
                tracing::error!(error = %e, "could not sweep for stranded jobs");
            }
        }
    }
}
