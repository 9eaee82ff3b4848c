//! Bookkeeping of submissions in progress (so a job between its store commit and its queueing
//! is never taken for a stranded one), and the words of healing: why a job is queued again and
//! who found it. Imports nothing of the job service.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use outlast_protocol::{IdempotencyKey, JobId, OwnerId};

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
    pub(super) fn as_str(self) -> &'static str {
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

    pub(super) fn is_admitting(&self, job: JobId) -> bool {
        self.jobs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&job)
    }
}

/// The jobs one sweep found stranded; a job is healed when the next sweep finds it again.
#[derive(Debug, Default)]
pub struct Suspects(pub(super) HashSet<JobId>);
