//! The gateway's typed configuration: one `Config` with its defaults, read from `outlast.toml`,
//! overlaid by `OUTLAST_*` environment variables and flags, then validated once; errors name the key.
//!
//! The defaults live in one place (`DEFAULT_*` and the `Default` impls below). The file is
//! deserialised straight into `Config` (unknown keys are refused); `Args` (clap) holds only what
//! was given on the command line or in the environment and is laid over it.

mod args;
mod http;
mod jobs;
mod streams;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::time::Duration;

use outlast_protocol::OwnerId;
use serde::{Deserialize, Deserializer};

pub use args::{Args, Command, TokenArgs};
pub use http::*;
pub use jobs::*;
pub use streams::*;

/// Default `listen`.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080));
/// Default `data_dir` (relative to the working directory).
pub const DEFAULT_DATA_DIR: &str = "outlast-data";
/// Default `ping_interval`.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(25);
/// Default `pong_timeout`.
pub const DEFAULT_PONG_TIMEOUT: Duration = Duration::from_secs(20);
/// Default `max_message_bytes`.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Default `slow_consumer_timeout`.
pub const DEFAULT_SLOW_CONSUMER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `long_poll_timeout`.
pub const DEFAULT_LONG_POLL_TIMEOUT: Duration = Duration::from_secs(25);
/// Default `shutdown_grace`.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Default `history_max_events`.
pub const DEFAULT_HISTORY_MAX_EVENTS: u64 = 10_000;
/// Default `cache_ttl`.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default `demo.concurrency`.
pub const DEFAULT_DEMO_CONCURRENCY: usize = 2;
/// Default `exec.timeout`.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// Default `exec.concurrency`.
pub const DEFAULT_EXEC_CONCURRENCY: usize = 1;
/// Default `exec.kill_grace`.
pub const DEFAULT_EXEC_KILL_GRACE: Duration = Duration::from_secs(10);
/// Default `uploads.max_size`.
pub const DEFAULT_UPLOAD_MAX_SIZE: u64 = 10 << 30;
/// Default `uploads.max_chunk_bytes`.
pub const DEFAULT_UPLOAD_MAX_CHUNK_BYTES: u64 = 64 << 20;
/// Default `uploads.target_chunk`.
pub const DEFAULT_UPLOAD_TARGET_CHUNK: Duration = Duration::from_secs(5);
/// Default `uploads.expiry`.
pub const DEFAULT_UPLOAD_EXPIRY: Duration = Duration::from_secs(24 * 3600);
/// Default `uploads.retention`.
pub const DEFAULT_UPLOAD_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default `uploads.max_open_per_owner`.
pub const DEFAULT_UPLOAD_MAX_OPEN_PER_OWNER: usize = 100;
/// Default `uploads.max_bytes_per_owner` (20 GiB).
pub const DEFAULT_UPLOAD_MAX_BYTES_PER_OWNER: u64 = 20 << 30;
/// Default `uploads.min_free_bytes`.
pub const DEFAULT_UPLOAD_MIN_FREE_BYTES: u64 = 1 << 30;
/// Default `comfyui.servers[].concurrency`.
pub const DEFAULT_COMFYUI_CONCURRENCY: usize = 1;
/// Default `comfyui.poll_interval`.
pub const DEFAULT_COMFYUI_POLL_INTERVAL: Duration = Duration::from_secs(5);
/// Default `comfyui.ping_interval`.
pub const DEFAULT_COMFYUI_PING_INTERVAL: Duration = Duration::from_secs(20);
/// Default `comfyui.unreachable_timeout`.
pub const DEFAULT_COMFYUI_UNREACHABLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Default `comfyui.retry_interval`.
pub const DEFAULT_COMFYUI_RETRY_INTERVAL: Duration = Duration::from_secs(5);
/// Default `comfyui.timeout`.
pub const DEFAULT_COMFYUI_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Default `comfyui.cancel_timeout`.
pub const DEFAULT_COMFYUI_CANCEL_TIMEOUT: Duration = Duration::from_secs(120);
/// Default `comfyui.preview_max_edge`.
pub const DEFAULT_COMFYUI_PREVIEW_MAX_EDGE: u32 = 256;
/// Default `comfyui.preview_interval`.
pub const DEFAULT_COMFYUI_PREVIEW_INTERVAL: Duration = Duration::from_millis(500);

/// Default `tickets.ttl`.
pub const DEFAULT_TICKET_TTL: Duration = Duration::from_secs(30);
/// The shortest signed-token key: HS256 wants at least 256 bits.
pub const MIN_JWT_KEY_BYTES: usize = 32;

/// The longest `cache_ttl`: ten years is "forever" for cached results.
const MAX_CACHE_TTL: Duration = Duration::from_secs(3650 * 24 * 3600);
/// The fewest events a job keeps before coalescing: below this a stream loses its shape.
const MIN_HISTORY_MAX_EVENTS: u64 = 16;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

/// The configuration every component reads; also the shape of `outlast.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listen address.
    pub listen: SocketAddr,
    /// Allow a non-loopback `listen` without auth tokens (one shared owner).
    pub allow_public: bool,
    /// Data directory (database, uploads, outputs).
    pub data_dir: PathBuf,
    /// WebSocket ping and heartbeat interval.
    #[serde(deserialize_with = "duration")]
    pub ping_interval: Duration,
    /// Close peers that answer no ping within this.
    #[serde(deserialize_with = "duration")]
    pub pong_timeout: Duration,
    /// Largest inbound WebSocket message.
    pub max_message_bytes: usize,
    /// How long a WebSocket send may block before the client counts as too slow.
    #[serde(deserialize_with = "duration")]
    pub slow_consumer_timeout: Duration,
    /// Longest long-poll wait.
    #[serde(deserialize_with = "duration")]
    pub long_poll_timeout: Duration,
    /// Drain time on shutdown.
    #[serde(deserialize_with = "duration")]
    pub shutdown_grace: Duration,
    /// Events per job before coalescing.
    pub history_max_events: u64,
    /// How long a completed job answers identical submissions; zero disables the result cache.
    #[serde(deserialize_with = "duration")]
    pub cache_ttl: Duration,
    /// Demo backend concurrency (`[demo] concurrency` in the file).
    #[serde(rename = "demo", deserialize_with = "demo_table")]
    pub demo_concurrency: usize,
    /// Exec backend, when configured (`exec.command` set).
    pub exec: Option<ExecConfig>,
    /// Token -> owner; empty means no auth (single local owner). In the file:
    /// `[auth.tokens] owner = "secret"`.
    #[serde(rename = "auth", deserialize_with = "auth_table")]
    pub tokens: BTreeMap<String, OwnerId>,
    /// Log format.
    pub log_format: LogFormat,
    /// Uploads.
    pub uploads: UploadConfig,
    /// ComfyUI backend, when servers are configured.
    pub comfyui: Option<ComfyConfig>,
    /// Host names, query-string tokens and connection limits (`[http]`).
    pub http: HttpConfig,
    /// Cross-origin requests (`[cors]`).
    pub cors: CorsConfig,
    /// WebSocket origins (`[ws]`).
    pub ws: WsConfig,
    /// Signed-token keys (`[jwt]`).
    pub jwt: JwtConfig,
    /// Browser tickets (`[tickets]`).
    pub tickets: TicketConfig,
    /// Signed job webhooks (`[webhooks]`).
    pub webhooks: WebhookConfig,
    /// The job service (`[jobs]`).
    pub jobs: JobsConfig,
    /// Job streams: the per-owner limit and the SSE write timeout (`[streams]`).
    pub streams: StreamsConfig,
    /// Where `/metrics` is served (`[metrics]`).
    pub metrics: MetricsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: DEFAULT_LISTEN,
            allow_public: false,
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            ping_interval: DEFAULT_PING_INTERVAL,
            pong_timeout: DEFAULT_PONG_TIMEOUT,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            slow_consumer_timeout: DEFAULT_SLOW_CONSUMER_TIMEOUT,
            long_poll_timeout: DEFAULT_LONG_POLL_TIMEOUT,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            history_max_events: DEFAULT_HISTORY_MAX_EVENTS,
            cache_ttl: DEFAULT_CACHE_TTL,
            demo_concurrency: DEFAULT_DEMO_CONCURRENCY,
            exec: None,
            tokens: BTreeMap::new(),
            log_format: LogFormat::default(),
            uploads: UploadConfig::default(),
            comfyui: None,
            webhooks: WebhookConfig::default(),
            http: HttpConfig::default(),
            cors: CorsConfig::default(),
            ws: WsConfig::default(),
            jwt: JwtConfig::default(),
            tickets: TicketConfig::default(),
            jobs: JobsConfig::default(),
            streams: StreamsConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

/// `[metrics]`: where Prometheus scrapes. By default `/metrics` is on the main address, behind
/// the `admin` scope when auth is configured. With `listen` set, it moves to that address alone
/// (no token asked there; bind it to a private interface) and the main address answers 404.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// A separate listen address for `/metrics`. Default: none (the main address).
    pub listen: Option<SocketAddr>,
}

/// `[cors]`: cross-origin requests. Off (no CORS headers; browsers block cross-origin reads,
/// and state-changing requests from foreign origins are refused) unless origins are listed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins (`https://app.example.com`, scheme + host [+ port]) allowed to call the API
    /// from a browser; `"*"` allows any. Default: none.
    pub allowed_origins: Vec<String>,
}

/// `[ws]`: WebSocket upgrades.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WsConfig {
    /// Origins allowed to open the WebSocket besides the gateway's own (same host); `"*"`
    /// allows any. Checked on every upgrade, with or without auth. Default: none.
    pub allowed_origins: Vec<String>,
}

/// `[jwt]`: HS256 signed tokens. In the file: `[jwt.keys] 2026-12 = "secret"`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    /// Verification keys by `kid` (each at least 32 bytes); several during a rotation.
    pub keys: BTreeMap<String, String>,
    /// The key `outlast token` signs with; default: the only key (required with several).
    pub signing_kid: Option<String>,
}

impl JwtConfig {
    /// The key `outlast token` signs with: `(kid, secret)`.
    pub fn signing_key(&self, kid: Option<&str>) -> Result<(&str, &str), ConfigError> {
        let kid = match kid.or(self.signing_kid.as_deref()) {
            Some(k) => k,
            None if self.keys.len() == 1 => self.keys.keys().next().map_or("", |k| k.as_str()),
            None if self.keys.is_empty() => {
                return Err(err("jwt.keys", "no signing key configured"));
            }
            None => {
                return Err(err(
                    "jwt.signing_kid",
                    "several keys are configured; name one (--kid or jwt.signing_kid)",
                ));
            }
        };
        self.keys
            .get_key_value(kid)
            .map(|(k, s)| (k.as_str(), s.as_str()))
            .ok_or_else(|| err("jwt.signing_kid", format!("no key {kid:?} in jwt.keys")))
    }
}

/// `[tickets]`: single-use tickets for browsers.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TicketConfig {
    /// How long a ticket is valid (1 s to 10 min). Default 30 s.
    #[serde(deserialize_with = "duration")]
    pub ttl: Duration,
}

impl Default for TicketConfig {
    fn default() -> Self {
        TicketConfig {
            ttl: DEFAULT_TICKET_TTL,
        }
    }
}

/// The exec backend's settings (`[exec]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecConfig {
    /// Run with `sh -c` once per job. Required once any exec setting is given.
    pub command: String,
    /// Time limit per job.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Concurrent jobs.
    pub concurrency: usize,
    /// On cancel or time limit: SIGTERM to the process group, SIGKILL after this long.
    #[serde(deserialize_with = "duration")]
    pub kill_grace: Duration,
}

impl Default for ExecConfig {
    fn default() -> Self {
        ExecConfig {
            command: String::new(),
            timeout: DEFAULT_EXEC_TIMEOUT,
            concurrency: DEFAULT_EXEC_CONCURRENCY,
            kill_grace: DEFAULT_EXEC_KILL_GRACE,
        }
    }
}

/// One ComfyUI server of the pool: in the file `"http://host:8188"` or
/// `{url = "http://host:8188", concurrency = 2}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComfyServer {
    /// Base URL, `http://host:port` (no trailing slash).
    pub url: String,
    /// Prompts it runs at once.
    pub concurrency: usize,
}

impl<'de> Deserialize<'de> for ComfyServer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            url: String,
            #[serde(default = "default_comfyui_concurrency")]
            concurrency: usize,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Entry {
            Url(String),
            Table(Table),
        }
        fn default_comfyui_concurrency() -> usize {
            DEFAULT_COMFYUI_CONCURRENCY
        }
        Ok(match Entry::deserialize(d)? {
            Entry::Url(url) => ComfyServer {
                url,
                concurrency: DEFAULT_COMFYUI_CONCURRENCY,
            },
            Entry::Table(t) => ComfyServer {
                url: t.url,
                concurrency: t.concurrency,
            },
        })
    }
}

/// The comfyui backend's settings (`[comfyui]`); the backend is on when `servers` is not empty.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ComfyConfig {
    /// The pool.
    pub servers: Vec<ComfyServer>,
    /// Reconcile from `/history` and `/queue` after this much WebSocket silence.
    #[serde(deserialize_with = "duration")]
    pub poll_interval: Duration,
    /// WebSocket ping interval towards ComfyUI.
    #[serde(deserialize_with = "duration")]
    pub ping_interval: Duration,
    /// A running job fails after its server was unreachable this long.
    #[serde(deserialize_with = "duration")]
    pub unreachable_timeout: Duration,
    /// Probe interval of every server.
    #[serde(deserialize_with = "duration")]
    pub retry_interval: Duration,
    /// Time limit per job.
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// How long a cancel (or time-limit stop) is retried while the server does not answer,
    /// before the job is reported canceled anyway and the slot stays drained.
    #[serde(deserialize_with = "duration")]
    pub cancel_timeout: Duration,
    /// Longest preview edge in pixels.
    pub preview_max_edge: u32,
    /// Smallest gap between two previews of a job.
    #[serde(deserialize_with = "duration")]
    pub preview_interval: Duration,
}

impl Default for ComfyConfig {
    fn default() -> Self {
        ComfyConfig {
            servers: Vec::new(),
            poll_interval: DEFAULT_COMFYUI_POLL_INTERVAL,
            ping_interval: DEFAULT_COMFYUI_PING_INTERVAL,
            unreachable_timeout: DEFAULT_COMFYUI_UNREACHABLE_TIMEOUT,
            retry_interval: DEFAULT_COMFYUI_RETRY_INTERVAL,
            timeout: DEFAULT_COMFYUI_TIMEOUT,
            cancel_timeout: DEFAULT_COMFYUI_CANCEL_TIMEOUT,
            preview_max_edge: DEFAULT_COMFYUI_PREVIEW_MAX_EDGE,
            preview_interval: DEFAULT_COMFYUI_PREVIEW_INTERVAL,
        }
    }
}

/// Upload limits and clean-up (`[uploads]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UploadConfig {
    /// Largest upload (`Tus-Max-Size`).
    pub max_size: u64,
    /// Largest PATCH body or WebSocket chunk.
    pub max_chunk_bytes: u64,
    /// Advertised chunk duration.
    #[serde(deserialize_with = "duration")]
    pub target_chunk: Duration,
    /// Incomplete uploads untouched this long are removed.
    #[serde(deserialize_with = "duration")]
    pub expiry: Duration,
    /// Complete uploads unused this long are removed.
    #[serde(deserialize_with = "duration")]
    pub retention: Duration,
    /// Incomplete uploads per owner.
    pub max_open_per_owner: usize,
    /// Stored upload bytes per owner (declared lengths of open uploads, sizes of complete
    /// ones); a new upload beyond it is refused. 0: no quota.
    pub max_bytes_per_owner: u64,
    /// Free disk kept in reserve.
    pub min_free_bytes: u64,
}

impl Default for UploadConfig {
    fn default() -> Self {
        UploadConfig {
            max_size: DEFAULT_UPLOAD_MAX_SIZE,
            max_chunk_bytes: DEFAULT_UPLOAD_MAX_CHUNK_BYTES,
            target_chunk: DEFAULT_UPLOAD_TARGET_CHUNK,
            expiry: DEFAULT_UPLOAD_EXPIRY,
            retention: DEFAULT_UPLOAD_RETENTION,
            max_open_per_owner: DEFAULT_UPLOAD_MAX_OPEN_PER_OWNER,
            max_bytes_per_owner: DEFAULT_UPLOAD_MAX_BYTES_PER_OWNER,
            min_free_bytes: DEFAULT_UPLOAD_MIN_FREE_BYTES,
        }
    }
}

/// Default `webhooks.schedule`: Svix's retry schedule (delays before attempts 1..8, each
/// jittered), about 38 hours in all.
pub const DEFAULT_WEBHOOK_SCHEDULE: [Duration; 8] = [
    Duration::ZERO,
    Duration::from_secs(5),
    Duration::from_secs(5 * 60),
    Duration::from_secs(30 * 60),
    Duration::from_secs(2 * 3600),
    Duration::from_secs(5 * 3600),
    Duration::from_secs(10 * 3600),
    Duration::from_secs(10 * 3600),
];
/// Default `webhooks.timeout`.
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(15);
/// Default `webhooks.concurrency`.
pub const DEFAULT_WEBHOOK_CONCURRENCY: usize = 8;

/// Signed job webhooks (`[webhooks]`). Secrets are `whsec_` + base64 of 24-64 random bytes;
/// every listed secret signs each delivery (one `v1,` signature each), so a rotation lists the
/// new secret beside the old one until receivers have switched.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Signing secrets of owners not listed under `owners` (e.g. the local owner without auth).
    pub secrets: Vec<String>,
    /// Per-owner secrets and default webhook.
    pub owners: BTreeMap<String, OwnerWebhooks>,
    /// Delays before attempt 1, 2, ... (full jitter: each is a maximum); after the last the
    /// delivery is `failed`. Default: 0s, 5s, 5m, 30m, 2h, 5h, 10h, 10h.
    #[serde(deserialize_with = "durations")]
    pub schedule: Vec<Duration>,
    /// One attempt's time limit (connect + answer).
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Allow every private, loopback, link-local and unspecified address (tests, one-box setups).
    pub allow_private: bool,
    /// CIDR blocks allowed even though private (e.g. `["10.1.2.0/24"]`).
    pub allow_cidrs: Vec<String>,
    /// Base URL of this gateway as receivers reach it; output URLs in bodies are absolute when
    /// set, paths (`/v1/jobs/...`) otherwise.
    pub public_url: Option<String>,
    /// Deliveries in flight at once.
    pub concurrency: usize,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            secrets: Vec::new(),
            owners: BTreeMap::new(),
            schedule: DEFAULT_WEBHOOK_SCHEDULE.to_vec(),
            timeout: DEFAULT_WEBHOOK_TIMEOUT,
            allow_private: false,
            allow_cidrs: Vec::new(),
            public_url: None,
            concurrency: DEFAULT_WEBHOOK_CONCURRENCY,
        }
    }
}

// Secrets never reach a log line, not even through `{:?}` of the whole config.
impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field(
                "secrets",
                &format_args!("[{} redacted]", self.secrets.len()),
            )
            .field("owners", &self.owners)
            .field("schedule", &self.schedule)
            .field("timeout", &self.timeout)
            .field("allow_private", &self.allow_private)
            .field("allow_cidrs", &self.allow_cidrs)
            .field("public_url", &self.public_url)
            .field("concurrency", &self.concurrency)
            .finish()
    }
}

/// One owner's webhook settings (`[webhooks.owners.NAME]`).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnerWebhooks {
    /// Signing secrets (`whsec_...`), all of which sign every delivery.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// The webhook of this owner's jobs that name none.
    #[serde(default)]
    pub default: Option<outlast_protocol::WebhookSpec>,
}

impl std::fmt::Debug for OwnerWebhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnerWebhooks")
            .field(
                "secrets",
                &format_args!("[{} redacted]", self.secrets.len()),
            )
            .field("default", &self.default)
            .finish()
    }
}

/// The key bytes of a `whsec_<base64>` secret, if it is one (24-64 bytes, as the Standard
/// Webhooks spec asks).
pub fn webhook_secret_key(secret: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let b64 = secret.strip_prefix("whsec_")?;
    let key = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    (24..=64).contains(&key.len()).then_some(key)
}

impl WebhookConfig {
    /// The signing secrets of `owner`.
    pub fn secrets_of(&self, owner: &str) -> &[String] {
        match self.owners.get(owner) {
            Some(o) => &o.secrets,
            None => &self.secrets,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let check = |key: &str, secrets: &[String]| {
            for s in secrets {
                if webhook_secret_key(s).is_none() {
                    return Err(err(
                        key,
                        "each secret must be whsec_ + base64 of 24-64 bytes",
                    ));
                }
            }
            Ok(())
        };
        check("webhooks.secrets", &self.secrets)?;
        for (name, o) in &self.owners {
            name.parse::<OwnerId>()
                .map_err(|e| err("webhooks.owners", format!("{e}")))?;
            check(&format!("webhooks.owners.{name}.secrets"), &o.secrets)?;
            if o.default.is_some() && o.secrets.is_empty() {
                return Err(err(
                    &format!("webhooks.owners.{name}.secrets"),
                    "a default webhook needs at least one secret",
                ));
            }
        }
        if self.schedule.is_empty() || self.schedule.len() > 32 {
            return Err(err("webhooks.schedule", "must list 1 to 32 delays"));
        }
        if !self.schedule[0].is_zero() {
            return Err(err(
                "webhooks.schedule",
                "the first attempt is immediate: the first delay must be 0s",
            ));
        }
        positive("webhooks.timeout", self.timeout)?;
        if self.concurrency == 0 {
            return Err(err("webhooks.concurrency", "must be at least 1"));
        }
        for c in &self.allow_cidrs {
            c.parse::<ipnet::IpNet>()
                .map_err(|e| err("webhooks.allow_cidrs", format!("{c:?}: {e}")))?;
        }
        if let Some(u) = &self.public_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err(err(
                "webhooks.public_url",
                "must start with http:// or https://",
            ));
        }
        Ok(())
    }
}

/// A list of humantime durations.
fn durations<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|t| humantime::parse_duration(t).map_err(serde::de::Error::custom))
        .collect()
}

/// A duration written the humantime way: `"25s"`, `"500ms"`, `"2m"`, `"7d"`.
fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_duration(&text).map_err(serde::de::Error::custom)
}

/// `[demo] concurrency = N`.
fn demo_table<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Demo {
        concurrency: Option<usize>,
    }
    Ok(Demo::deserialize(d)?
        .concurrency
        .unwrap_or(DEFAULT_DEMO_CONCURRENCY))
}

/// `[auth.tokens] owner = "secret"`, turned into secret -> owner.
fn auth_table<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, OwnerId>, D::Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Auth {
        #[serde(default)]
        tokens: BTreeMap<String, String>,
    }
    tokens_from_pairs(Auth::deserialize(d)?.tokens).map_err(serde::de::Error::custom)
}

/// Owner/secret pairs as secret -> owner; refuses bad owner names and a secret used twice.
fn tokens_from_pairs(
    pairs: impl IntoIterator<Item = (String, String)>,
) -> Result<BTreeMap<String, OwnerId>, ConfigError> {
    let mut tokens = BTreeMap::new();
    for (owner, secret) in pairs {
        let owner: OwnerId = owner
            .parse()
            .map_err(|e| err("auth.tokens", format!("{e}")))?;
        if tokens.insert(secret, owner.clone()).is_some() {
            return Err(err(
                "auth.tokens",
                format!("the secret of {owner} is used twice"),
            ));
        }
    }
    Ok(tokens)
}

/// A configuration error, naming the key.
#[derive(Debug, thiserror::Error)]
#[error("configuration error in `{key}`: {message}")]
pub struct ConfigError {
    /// The offending key, as in outlast.toml.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

fn err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_owned(),
        message: message.into(),
    }
}

impl Config {
    /// Loads the file named by `args.config` (or `./outlast.toml` if present), lays the flags
    /// and environment over it and validates.
    pub fn load(args: Args) -> Result<Config, ConfigError> {
        let (path, required) = match &args.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from("outlast.toml"), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => Some(text),
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(err(
                    "config",
                    format!("cannot read {}: {e}", path.display()),
                ));
            }
        };
        Self::from_sources(args, text.as_deref().map(|t| (path.as_path(), t)))
    }

    /// Defaults, then the file's text (if any; `path` is for messages), then `args`; validated.
    /// Touches neither the process environment nor the disk, so tests call it directly.
    pub fn from_sources(args: Args, file: Option<(&Path, &str)>) -> Result<Config, ConfigError> {
        let mut config = match file {
            Some((path, text)) => Self::from_toml(text, path)?,
            None => Config::default(),
        };
        args.overlay(&mut config)?;
        config.normalise();
        config.validate()?;
        Ok(config)
    }

    /// Parses `outlast.toml` text over the defaults (no validation yet).
    fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let message = e.message();
            // Our own table checks (auth.tokens) already say which key; keep their message whole.
            if let Some(own) = message
                .strip_prefix("configuration error in `")
                .and_then(|m| m.split_once("`: "))
            {
                return err(own.0, format!("{} ({})", own.1, path.display()));
            }
            let key = e
                .span()
                .map(|s| text.get(s).unwrap_or("?").to_owned())
                .unwrap_or_else(|| "file".into());
            err(&key, format!("{message} ({})", path.display()))
        })
    }

    /// Canonical forms: ComfyUI URLs without surrounding blanks or a trailing slash; a comfyui
    /// section without servers means the backend is off.
    fn normalise(&mut self) {
        if let Some(c) = &mut self.comfyui {
            for s in &mut c.servers {
                s.url = s.url.trim().trim_end_matches('/').to_owned();
            }
            if c.servers.is_empty() {
                self.comfyui = None;
            }
        }
    }

    /// Refuses every bad value, naming its key. Nothing is clamped.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (secret, owner) in &self.tokens {
            if secret.len() < 16 {
                return Err(err(
                    "auth.tokens",
                    format!("the secret of {owner} must have at least 16 characters"),
                ));
            }
        }
        if self.tokens.is_empty()
            && self.jwt.keys.is_empty()
            && !self.listen.ip().is_loopback()
            && !self.allow_public
        {
            return Err(err(
                "listen",
                format!(
                    "{} is not a loopback address and no auth tokens are configured; \
                     configure auth.tokens or pass --allow-public to serve one shared owner publicly",
                    self.listen
                ),
            ));
        }
        self.validate_access()?;
        if self.metrics.listen == Some(self.listen) && self.listen.port() != 0 {
            return Err(err("metrics.listen", "must differ from listen"));
        }
        positive("ping_interval", self.ping_interval)?;
        positive("pong_timeout", self.pong_timeout)?;
        if !(1024..=256 << 20).contains(&self.max_message_bytes) {
            return Err(err(
                "max_message_bytes",
                "must be between 1024 and 268435456",
            ));
        }
        if let Some(c) = &self.comfyui {
            c.validate()?;
        }
        if let Some(e) = &self.exec {
            if e.command.trim().is_empty() {
                return Err(err("exec.command", "must not be empty"));
            }
            if e.concurrency == 0 {
                return Err(err("exec.concurrency", "must be at least 1"));
            }
        }
        if self.demo_concurrency == 0 {
            return Err(err("demo.concurrency", "must be at least 1"));
        }
        self.uploads.validate()?;
        self.webhooks.validate()?;
        self.http
            .validate(self.ping_interval.max(self.long_poll_timeout))?;
        self.jobs.validate()?;
        self.streams.validate()?;
        if self.cache_ttl > MAX_CACHE_TTL {
            return Err(err("cache_ttl", "must be at most 3650d"));
        }
        positive("slow_consumer_timeout", self.slow_consumer_timeout)?;
        positive("long_poll_timeout", self.long_poll_timeout)?;
        if self.history_max_events < MIN_HISTORY_MAX_EVENTS {
            return Err(err(
                "history_max_events",
                format!("must be at least {MIN_HISTORY_MAX_EVENTS}"),
            ));
        }
        Ok(())
    }
}

impl Config {
    /// The `[http]`, `[cors]`, `[ws]`, `[jwt]` and `[tickets]` sections.
    fn validate_access(&self) -> Result<(), ConfigError> {
        for host in &self.http.allowed_hosts {
            let ok = host == "*"
                || (!host.is_empty()
                    && host.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
                    }));
            if !ok {
                return Err(err(
                    "http.allowed_hosts",
                    format!(
                        "{host:?}: expected a host name without scheme, port or path, or \"*\""
                    ),
                ));
            }
        }
        for (key, list) in [
            ("cors.allowed_origins", &self.cors.allowed_origins),
            ("ws.allowed_origins", &self.ws.allowed_origins),
        ] {
            for origin in list {
                if origin != "*" && origin_parts(origin).is_none() {
                    return Err(err(
                        key,
                        format!("{origin:?}: expected scheme://host[:port] (no path), or \"*\""),
                    ));
                }
            }
        }
        for (kid, secret) in &self.jwt.keys {
            if kid.is_empty()
                || !kid
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            {
                return Err(err(
                    "jwt.keys",
                    format!("{kid:?}: a kid is [A-Za-z0-9._-]+"),
                ));
            }
            if secret.len() < MIN_JWT_KEY_BYTES {
                return Err(err(
                    "jwt.keys",
                    format!("the key {kid} must have at least {MIN_JWT_KEY_BYTES} bytes"),
                ));
            }
        }
        if let Some(kid) = &self.jwt.signing_kid
            && !self.jwt.keys.contains_key(kid)
        {
            return Err(err(
                "jwt.signing_kid",
                format!("no key {kid:?} in jwt.keys"),
            ));
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(600)).contains(&self.tickets.ttl) {
            return Err(err("tickets.ttl", "must be between 1s and 10m"));
        }
        Ok(())
    }
}

/// `scheme://host[:port]` split into lower-case scheme, host and port (the scheme's default
/// when absent); `None` when it is not such an origin.
pub fn origin_parts(origin: &str) -> Option<(String, String, u16)> {
    let (scheme, rest) = origin.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let default = match scheme.as_str() {
        "http" | "ws" => 80,
        "https" | "wss" => 443,
        _ => return None,
    };
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    let (host, port) = split_host_port(rest)?;
    Some((scheme, host, port.unwrap_or(default)))
}

/// `host[:port]` (IPv6 in brackets) as lower-case host (brackets kept) and port.
pub fn split_host_port(authority: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']')?;
        let (h, rest) = authority.split_at(end + 1);
        match rest.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if rest.is_empty() => (h, None),
            None => return None,
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(p) => Some(p.parse::<u16>().ok()?),
        None => None,
    };
    Some((host.to_ascii_lowercase(), port))
}

impl UploadConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        positive("uploads.target_chunk", self.target_chunk)?;
        positive("uploads.expiry", self.expiry)?;
        positive("uploads.retention", self.retention)?;
        if self.max_size == 0 {
            return Err(err("uploads.max_size", "must be greater than zero"));
        }
        if !(64 * 1024..=512 << 20).contains(&self.max_chunk_bytes) {
            return Err(err(
                "uploads.max_chunk_bytes",
                "must be between 65536 and 536870912",
            ));
        }
        if self.max_open_per_owner == 0 {
            return Err(err("uploads.max_open_per_owner", "must be at least 1"));
        }
        Ok(())
    }
}

impl ComfyConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        for (i, s) in self.servers.iter().enumerate() {
            check_comfy_url(&s.url)?;
            if s.concurrency == 0 {
                return Err(err("comfyui.servers", "concurrency must be at least 1"));
            }
            if self.servers[..i].iter().any(|o| o.url == s.url) {
                return Err(err("comfyui.servers", format!("{} is listed twice", s.url)));
            }
        }
        if !(16..=4096).contains(&self.preview_max_edge) {
            return Err(err(
                "comfyui.preview_max_edge",
                "must be between 16 and 4096",
            ));
        }
        positive("comfyui.poll_interval", self.poll_interval)?;
        positive("comfyui.ping_interval", self.ping_interval)?;
        positive("comfyui.unreachable_timeout", self.unreachable_timeout)?;
        positive("comfyui.retry_interval", self.retry_interval)?;
        positive("comfyui.timeout", self.timeout)?;
        positive("comfyui.cancel_timeout", self.cancel_timeout)?;
        Ok(())
    }
}

fn positive(key: &str, d: Duration) -> Result<(), ConfigError> {
    if d.is_zero() {
        Err(err(key, "must be greater than zero"))
    } else {
        Ok(())
    }
}

/// A ComfyUI base URL (already normalised) must be `http://host:port`.
fn check_comfy_url(url: &str) -> Result<(), ConfigError> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Err(err(
            "comfyui.servers",
            format!(
                "{url:?}: expected http://host:port (https is not supported yet; run Outlast next to ComfyUI)"
            ),
        ));
    };
    if rest.is_empty() || rest.contains(['?', '#', ' ']) {
        return Err(err(
            "comfyui.servers",
            format!("{url:?}: expected http://host:port"),
        ));
    }
    Ok(())
}
