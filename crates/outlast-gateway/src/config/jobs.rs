//! The job service's own settings (`[jobs]`): how often the sweep for stranded jobs runs.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, duration, positive};

/// Default `jobs.sweep_interval`.
pub const DEFAULT_JOBS_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// `[jobs]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// How often the store's unfinished jobs are compared with the scheduler; a job found
    /// stranded by two sweeps in a row is queued again (so one is healed within two intervals).
    #[serde(deserialize_with = "duration")]
    pub sweep_interval: Duration,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            sweep_interval: DEFAULT_JOBS_SWEEP_INTERVAL,
        }
    }
}

impl JobsConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        positive("jobs.sweep_interval", self.sweep_interval)
    }
}
