//! The job service's own settings (`[jobs]`): how often the sweep for stranded jobs runs, and
//! the per-owner bounds on submissions (queued jobs, new jobs per second).

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, duration, err, positive};

/// Default `jobs.sweep_interval`.
pub const DEFAULT_JOBS_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Default `jobs.max_queued_per_owner`.
pub const DEFAULT_JOBS_MAX_QUEUED_PER_OWNER: usize = 1000;
/// Default `jobs.submits_per_second`.
pub const DEFAULT_JOBS_SUBMITS_PER_SECOND: u32 = 20;
/// Default `jobs.submit_burst`.
pub const DEFAULT_JOBS_SUBMIT_BURST: u32 = 200;

/// `[jobs]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// How often the store's unfinished jobs are compared with the scheduler; a job found
    /// stranded by two sweeps in a row is queued again (so one is healed within two intervals).
    #[serde(deserialize_with = "duration")]
    pub sweep_interval: Duration,
    /// Queued jobs one owner may have at once (waiting for uploads included); a new job beyond
    /// it is refused with 429 `limit_exceeded` and `Retry-After`. 0: no limit.
    pub max_queued_per_owner: usize,
    /// New jobs per second one owner may create, on average (a token bucket); 0: no limit.
    /// Repeats of a known idempotency key are never refused by this or the queue cap.
    pub submits_per_second: u32,
    /// How many new jobs one owner may create at once above the rate (the bucket's size).
    pub submit_burst: u32,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            sweep_interval: DEFAULT_JOBS_SWEEP_INTERVAL,
            max_queued_per_owner: DEFAULT_JOBS_MAX_QUEUED_PER_OWNER,
            submits_per_second: DEFAULT_JOBS_SUBMITS_PER_SECOND,
            submit_burst: DEFAULT_JOBS_SUBMIT_BURST,
        }
    }
}

impl JobsConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        positive("jobs.sweep_interval", self.sweep_interval)?;
        if self.submits_per_second > 0 && self.submit_burst == 0 {
            return Err(err(
                "jobs.submit_burst",
                "must be at least 1 while jobs.submits_per_second is set",
            ));
        }
        Ok(())
    }
}
