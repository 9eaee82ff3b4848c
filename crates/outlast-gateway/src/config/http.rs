//! The HTTP server's `[http]` section: which `Host` names are served (DNS rebinding), whether
//! long-lived tokens may travel in URLs, and connection limits: how long a client may take to send a
//! request's head and body, how long a connection may sit idle, how large a head may be, and how
//! many connections may be open at once (with a reserve for `/healthz`, `/readyz`, `/metrics`).

use std::time::Duration;

use serde::Deserialize;

use super::{ConfigError, duration, err, positive};

/// Default `http.header_read_timeout`.
pub const DEFAULT_HTTP_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `http.max_header_bytes`.
pub const DEFAULT_HTTP_MAX_HEADER_BYTES: usize = 64 * 1024;
/// Default `http.idle_timeout`.
pub const DEFAULT_HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Default `http.body_read_timeout`.
pub const DEFAULT_HTTP_BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Default `http.body_idle_timeout`.
pub const DEFAULT_HTTP_BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default `http.max_connections`.
pub const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 10_000;
/// Default `http.reserved_connections`.
pub const DEFAULT_HTTP_RESERVED_CONNECTIONS: usize = 16;

/// `[http]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Host names served besides the loopback ones (`localhost`, `*.localhost`, 127.0.0.0/8,
    /// `::1`), which are always served; `"*"` serves any. Names only, no port. Default: none.
    pub allowed_hosts: Vec<String>,
    /// Accept `?access_token=` (a long-lived token in the URL, which lands in proxy logs).
    /// Default false: use `Authorization: Bearer` or a ticket.
    pub allow_query_token: bool,
    /// A request's line and headers must arrive within this, counted from when the connection
    /// starts waiting for them (so it also ends idle keep-alive connections between requests).
    #[serde(deserialize_with = "duration")]
    pub header_read_timeout: Duration,
    /// Largest request head (line + headers) in bytes; larger ones get 431.
    pub max_header_bytes: usize,
    /// A connection on which no byte moves either way for this long is closed (also before a
    /// first request, and under a request whose handler went silent). Longer than the ping
    /// interval and the long-poll wait, which keep legitimate connections moving.
    #[serde(deserialize_with = "duration")]
    pub idle_timeout: Duration,
    /// A job API body (at most `max_message_bytes`) must arrive whole within this.
    #[serde(deserialize_with = "duration")]
    pub body_read_timeout: Duration,
    /// A request body (every endpoint, tus PATCH included) that delivers no byte for this long
    /// is cut: what arrived counts (a PATCH commits it and releases its upload), 408 answers.
    #[serde(deserialize_with = "duration")]
    pub body_idle_timeout: Duration,
    /// Open connections served normally; above it, see `reserved_connections`.
    pub max_connections: usize,
    /// Connections beyond `max_connections` that only serve `/healthz`, `/readyz` and
    /// `/metrics` (others get 503 `overloaded`); beyond these, new connections get a short 503
    /// and are closed.
    pub reserved_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            allowed_hosts: Vec::new(),
            allow_query_token: false,
            header_read_timeout: DEFAULT_HTTP_HEADER_READ_TIMEOUT,
            max_header_bytes: DEFAULT_HTTP_MAX_HEADER_BYTES,
            idle_timeout: DEFAULT_HTTP_IDLE_TIMEOUT,
            body_read_timeout: DEFAULT_HTTP_BODY_READ_TIMEOUT,
            body_idle_timeout: DEFAULT_HTTP_BODY_IDLE_TIMEOUT,
            max_connections: DEFAULT_HTTP_MAX_CONNECTIONS,
            reserved_connections: DEFAULT_HTTP_RESERVED_CONNECTIONS,
        }
    }
}

impl HttpConfig {
    /// `keep_moving` is the longest a healthy connection may be silent (ping interval, long
    /// poll): `idle_timeout` must be longer.
    pub(super) fn validate(&self, keep_moving: Duration) -> Result<(), ConfigError> {
        positive("http.header_read_timeout", self.header_read_timeout)?;
        positive("http.idle_timeout", self.idle_timeout)?;
        positive("http.body_read_timeout", self.body_read_timeout)?;
        positive("http.body_idle_timeout", self.body_idle_timeout)?;
        // hyper's read buffer cannot be smaller than 8 KiB.
        if !(8192..=1 << 20).contains(&self.max_header_bytes) {
            return Err(err(
                "http.max_header_bytes",
                "must be between 8192 and 1048576",
            ));
        }
        if self.idle_timeout <= keep_moving {
            return Err(err(
                "http.idle_timeout",
                format!(
                    "must be longer than ping_interval and long_poll_timeout ({})",
                    humantime::format_duration(keep_moving)
                ),
            ));
        }
        if self.max_connections == 0 {
            return Err(err("http.max_connections", "must be at least 1"));
        }
        Ok(())
    }
}
