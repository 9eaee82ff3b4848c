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

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use outlast_protocol::{EventKind, Failure, FailureCode, IdempotencyKey, JobId, JobState, OwnerId};
use tokio_util::sync::CancellationToken;

use super::Jobs;
use super::scheduler::Waiting;
use crate::backend::RestartPolicy;
use crate::error::AppError;
use crate::metrics as m;
use crate::store::JobRecord;

/// Why a job is put (back) into the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The gateway started: every unfinished job is queued again.
    Restart,
    /// The job was found stranded while the gateway ran.
    Stranded,
}

/// Who found a stranded job (the metric's label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FoundBy {
    /// A submission with the job's idempotency key.
    Resubmit,
    /// The periodic sweep.
    Sweep,
}

impl FoundBy {
    fn as_str(self) -> &'static str {
        match self {
            FoundBy::Resubmit => "resubmit",
            FoundBy::Sweep => "sweep",
        }
    }
}

/// Submissions in progress: the (owner, idempotency key) pairs being submitted and the jobs
/// created but not yet queued. A std Mutex: only short map operations happen under it.
#[derive(Debug, Default)]
pub struct InFlight {
    keys: Arc<Mutex<HashMap<(OwnerId, IdempotencyKey), usize>>>,
    jobs: Arc<Mutex<HashSet<JobId>>>,
}

/// Holds an (owner, key) pair as being submitted; released on drop.
#[derive(Debug)]
pub struct KeyGuard {
    keys: Arc<Mutex<HashMap<(OwnerId, IdempotencyKey), usize>>>,
    key: Option<(OwnerId, IdempotencyKey)>,
}

impl KeyGuard {
    /// True when another submission with the same key is in progress too.
    pub fn shared(&self) -> bool {
        let Some(key) = &self.key else {
            return false;
        };
        let keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        keys.get(key).copied().unwrap_or(0) > 1
    }
}

impl Drop for KeyGuard {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else {
            return;
        };
        let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = keys.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                keys.remove(&key);
            }
        }
    }
}

/// Holds a created job as not yet queued; released on drop.
#[derive(Debug)]
pub struct JobGuard {
    jobs: Arc<Mutex<HashSet<JobId>>>,
    job: JobId,
}

impl Drop for JobGuard {
    fn drop(&mut self) {
        let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        jobs.remove(&self.job);
    }
}

impl InFlight {
    /// Marks a submission with `key` (if any) as in progress.
    pub fn submitting(&self, owner: &OwnerId, key: Option<&IdempotencyKey>) -> KeyGuard {
        let key = key.map(|k| (owner.clone(), k.clone()));
        if let Some(k) = &key {
            let mut keys = self.keys.lock().unwrap_or_else(PoisonError::into_inner);
            *keys.entry(k.clone()).or_default() += 1;
        }
        KeyGuard {
            keys: Arc::clone(&self.keys),
            key,
        }
    }

    /// Marks a created job as not yet queued.
    pub fn admitting(&self, job: JobId) -> JobGuard {
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(job);
        JobGuard {
            jobs: Arc::clone(&self.jobs),
            job,
        }
    }

    fn is_admitting(&self, job: JobId) -> bool {
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&job)
    }
}

/// The jobs one sweep found stranded; a job is healed when the next sweep finds it again.
#[derive(Debug, Default)]
pub struct Suspects(HashSet<JobId>);

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
            if self.emit(job, queued).await?.is_none() {
                return Ok(()); // it finished meanwhile
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
        if self.stopping_runners() || self.sched().knows(job) || self.in_flight.is_admitting(job)
        {
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
