//! The `[streams]` section: how many job streams one owner may follow at once (WebSocket
//! subscriptions, SSE responses and long-polls in progress, counted together), and how long an
//! SSE response may wait for a client that stopped reading.

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, duration, positive};

/// Default `streams.max_per_owner`.
pub const DEFAULT_STREAMS_MAX_PER_OWNER: usize = 1024;
/// Default `streams.sse_write_timeout` (Cloudflare's own proxy write timeout is 30 s).
pub const DEFAULT_STREAMS_SSE_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// `[streams]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamsConfig {
    /// Job streams one owner may follow at once: WebSocket subscriptions, SSE responses and
    /// long-polls in progress together. One more is refused with 429 `limit_exceeded`
    /// (a WebSocket `subscribe` gets an `error`). 0: no limit.
    pub max_per_owner: usize,
    /// An SSE response whose bytes cannot be written for this long (the client stopped
    /// reading and every buffer is full) is ended and its connection closed; the client
    /// resumes with `Last-Event-ID`.
    #[serde(deserialize_with = "duration")]
    pub sse_write_timeout: Duration,
}

impl Default for StreamsConfig {
    fn default() -> Self {
        StreamsConfig {
            max_per_owner: DEFAULT_STREAMS_MAX_PER_OWNER,
            sse_write_timeout: DEFAULT_STREAMS_SSE_WRITE_TIMEOUT,
        }
    }
}

impl StreamsConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        positive("streams.sse_write_timeout", self.sse_write_timeout)
    }
}
