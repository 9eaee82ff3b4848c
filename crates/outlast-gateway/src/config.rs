//! The gateway's typed configuration: defaults, then `outlast.toml`, then `OUTLAST_*`
//! environment variables, then flags. Validated once at start-up; errors name the key.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use outlast_protocol::OwnerId;
use serde::Deserialize;

/// Command line and environment. Every option is optional here so that the file can supply it.
#[derive(Debug, Parser, Default)]
#[command(
    name = "outlast",
    version,
    about = "A job gateway for long-running work behind Cloudflare and slow uplinks",
    long_about = "Outlast accepts resumable uploads, queues jobs on a backend (demo, exec, ...) and \
streams their progress over one long-lived WebSocket kept alive with pings, with SSE and \
long-polling fallbacks.\n\nEvery option can also be set in outlast.toml (the key is shown in \
brackets) or with the OUTLAST_* environment variable shown. Precedence: flag > environment > \
file > default."
)]
pub struct Args {
    /// Configuration file [default: ./outlast.toml when it exists]
    #[arg(long, env = "OUTLAST_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Address to listen on [listen; default 127.0.0.1:8080]
    #[arg(long, env = "OUTLAST_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Allow listening on a non-loopback address without configured auth [allow_public]
    #[arg(long, env = "OUTLAST_ALLOW_PUBLIC")]
    pub allow_public: bool,
    /// Directory for the database, uploads and outputs [data_dir; default ./outlast-data]
    #[arg(long, env = "OUTLAST_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// WebSocket ping and heartbeat interval, e.g. 25s or 500ms [ping_interval; default 25s]
    #[arg(long, env = "OUTLAST_PING_INTERVAL", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub ping_interval: Option<Duration>,
    /// Close a peer that answers no ping within this time [pong_timeout; default 20s]
    #[arg(long, env = "OUTLAST_PONG_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub pong_timeout: Option<Duration>,
    /// Largest WebSocket message accepted, in bytes [max_message_bytes; default 1048576]
    #[arg(long, env = "OUTLAST_MAX_MESSAGE_BYTES", value_name = "BYTES")]
    pub max_message_bytes: Option<usize>,
    /// A WebSocket client that takes no frame for this long is disconnected [slow_consumer_timeout; default 10s]
    #[arg(long, env = "OUTLAST_SLOW_CONSUMER_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub slow_consumer_timeout: Option<Duration>,
    /// Longest wait of the long-poll endpoint [long_poll_timeout; default 25s]
    #[arg(long, env = "OUTLAST_LONG_POLL_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub long_poll_timeout: Option<Duration>,
    /// Grace period for draining on SIGTERM/SIGINT [shutdown_grace; default 10s]
    #[arg(long, env = "OUTLAST_SHUTDOWN_GRACE", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Option<Duration>,
    /// Events kept per job before progress/preview/queued events are coalesced [history_max_events; default 10000]
    #[arg(long, env = "OUTLAST_HISTORY_MAX_EVENTS", value_name = "N")]
    pub history_max_events: Option<u64>,
    /// Answer a job from an identical job (same owner, backend, workflow and input contents)
    /// completed within this time; 0s disables the result cache [cache_ttl; default 24h]
    #[arg(long, env = "OUTLAST_CACHE_TTL", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub cache_ttl: Option<Duration>,
    /// Concurrent jobs of the demo backend [demo.concurrency; default 2]
    #[arg(long, env = "OUTLAST_DEMO_CONCURRENCY", value_name = "N")]
    pub demo_concurrency: Option<usize>,
    /// Enable the exec backend: a shell command run once per job [exec.command]
    #[arg(long, env = "OUTLAST_EXEC_COMMAND", value_name = "COMMAND")]
    pub exec_command: Option<String>,
    /// Time limit of one exec job [exec.timeout; default 15m]
    #[arg(long, env = "OUTLAST_EXEC_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub exec_timeout: Option<Duration>,
    /// Concurrent jobs of the exec backend [exec.concurrency; default 1]
    #[arg(long, env = "OUTLAST_EXEC_CONCURRENCY", value_name = "N")]
    pub exec_concurrency: Option<usize>,
    /// An API token as OWNER=SECRET; repeat for several owners. Enables auth [auth.tokens]
    #[arg(
        long = "token",
        env = "OUTLAST_TOKENS",
        value_name = "OWNER=SECRET",
        value_delimiter = ','
    )]
    pub tokens: Vec<String>,
    /// Largest upload in bytes [uploads.max_size; default 10737418240]
    #[arg(long, env = "OUTLAST_UPLOAD_MAX_SIZE", value_name = "BYTES")]
    pub upload_max_size: Option<u64>,
    /// Largest chunk (PATCH body or WebSocket chunk frame) in bytes; keep it below Cloudflare's
    /// 100 MB [uploads.max_chunk_bytes; default 67108864]
    #[arg(long, env = "OUTLAST_UPLOAD_MAX_CHUNK_BYTES", value_name = "BYTES")]
    pub upload_max_chunk_bytes: Option<u64>,
    /// How long one chunk should take; clients size chunks to their rate [uploads.target_chunk; default 5s]
    #[arg(long, env = "OUTLAST_UPLOAD_TARGET_CHUNK", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub upload_target_chunk: Option<Duration>,
    /// Incomplete uploads untouched this long are removed [uploads.expiry; default 24h]
    #[arg(long, env = "OUTLAST_UPLOAD_EXPIRY", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub upload_expiry: Option<Duration>,
    /// Complete uploads unused this long are removed [uploads.retention; default 7d]
    #[arg(long, env = "OUTLAST_UPLOAD_RETENTION", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub upload_retention: Option<Duration>,
    /// Incomplete uploads one owner may have at once [uploads.max_open_per_owner; default 100]
    #[arg(long, env = "OUTLAST_UPLOAD_MAX_OPEN_PER_OWNER", value_name = "N")]
    pub upload_max_open_per_owner: Option<usize>,
    /// Refuse uploads (507) that would leave less free disk than this [uploads.min_free_bytes; default 1073741824]
    #[arg(long, env = "OUTLAST_UPLOAD_MIN_FREE_BYTES", value_name = "BYTES")]
    pub upload_min_free_bytes: Option<u64>,
    /// Enable the comfyui backend on this ComfyUI server, e.g. http://127.0.0.1:8188; repeat
    /// the flag for a pool [comfyui.servers]
    #[arg(
        long = "comfyui",
        env = "OUTLAST_COMFYUI",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub comfyui: Vec<String>,
    /// Jobs each ComfyUI server given by --comfyui runs at once [comfyui.servers[].concurrency; default 1]
    #[arg(long, env = "OUTLAST_COMFYUI_CONCURRENCY", value_name = "N")]
    pub comfyui_concurrency: Option<usize>,
    /// Ask ComfyUI where a prompt is when its WebSocket was gone or silent this long [comfyui.poll_interval; default 5s]
    #[arg(long, env = "OUTLAST_COMFYUI_POLL_INTERVAL", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub comfyui_poll_interval: Option<Duration>,
    /// Ping interval of the WebSockets to ComfyUI [comfyui.ping_interval; default 20s]
    #[arg(long, env = "OUTLAST_COMFYUI_PING_INTERVAL", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub comfyui_ping_interval: Option<Duration>,
    /// A running job fails when its ComfyUI server stays unreachable this long [comfyui.unreachable_timeout; default 2m]
    #[arg(long, env = "OUTLAST_COMFYUI_UNREACHABLE_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub comfyui_unreachable_timeout: Option<Duration>,
    /// Probe every ComfyUI server this often; failing ones leave the rotation [comfyui.retry_interval; default 5s]
    #[arg(long, env = "OUTLAST_COMFYUI_RETRY_INTERVAL", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub comfyui_retry_interval: Option<Duration>,
    /// Time limit of one ComfyUI job [comfyui.timeout; default 30m]
    #[arg(long, env = "OUTLAST_COMFYUI_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub comfyui_timeout: Option<Duration>,
    /// Longest edge of previews sent to clients, in pixels [comfyui.preview_max_edge; default 256]
    #[arg(long, env = "OUTLAST_COMFYUI_PREVIEW_MAX_EDGE", value_name = "PX")]
    pub comfyui_preview_max_edge: Option<u32>,
    /// At most one preview per job this often [comfyui.preview_interval; default 500ms]
    #[arg(long, env = "OUTLAST_COMFYUI_PREVIEW_INTERVAL", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub comfyui_preview_interval: Option<Duration>,
    /// Log format: pretty or json [log_format; default pretty]
    #[arg(long, env = "OUTLAST_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
}

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

/// The `outlast.toml` file. Unknown keys are errors, so typos do not pass silently.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    listen: Option<SocketAddr>,
    allow_public: Option<bool>,
    data_dir: Option<PathBuf>,
    #[serde(default, with = "opt_duration")]
    ping_interval: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    pong_timeout: Option<Duration>,
    max_message_bytes: Option<usize>,
    #[serde(default, with = "opt_duration")]
    slow_consumer_timeout: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    long_poll_timeout: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    shutdown_grace: Option<Duration>,
    history_max_events: Option<u64>,
    #[serde(default, with = "opt_duration")]
    cache_ttl: Option<Duration>,
    log_format: Option<LogFormat>,
    #[serde(default)]
    demo: DemoFile,
    exec: Option<ExecFile>,
    #[serde(default)]
    auth: AuthFile,
    #[serde(default)]
    uploads: UploadsFile,
    #[serde(default)]
    comfyui: ComfyFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ComfyFile {
    #[serde(default)]
    servers: Vec<ComfyServerFile>,
    #[serde(default, with = "opt_duration")]
    poll_interval: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    ping_interval: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    unreachable_timeout: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    retry_interval: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    timeout: Option<Duration>,
    preview_max_edge: Option<u32>,
    #[serde(default, with = "opt_duration")]
    preview_interval: Option<Duration>,
}

/// `"http://host:8188"` or `{url = "http://host:8188", concurrency = 2}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ComfyServerFile {
    Url(String),
    Table {
        url: String,
        concurrency: Option<usize>,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadsFile {
    max_size: Option<u64>,
    max_chunk_bytes: Option<u64>,
    #[serde(default, with = "opt_duration")]
    target_chunk: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    expiry: Option<Duration>,
    #[serde(default, with = "opt_duration")]
    retention: Option<Duration>,
    max_open_per_owner: Option<usize>,
    min_free_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DemoFile {
    concurrency: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecFile {
    command: Option<String>,
    #[serde(default, with = "opt_duration")]
    timeout: Option<Duration>,
    concurrency: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    #[serde(default)]
    tokens: BTreeMap<String, String>,
}

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| humantime::parse_duration(&t).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// The exec backend's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecConfig {
    /// Run with `sh -c` once per job.
    pub command: String,
    /// Time limit per job.
    pub timeout: Duration,
    /// Concurrent jobs.
    pub concurrency: usize,
}

/// One ComfyUI server of the pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComfyServer {
    /// Base URL, `http://host:port` (no trailing slash).
    pub url: String,
    /// Prompts it runs at once.
    pub concurrency: usize,
}

/// The comfyui backend's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComfyConfig {
    /// The pool.
    pub servers: Vec<ComfyServer>,
    /// Reconcile from `/history` and `/queue` after this much WebSocket silence.
    pub poll_interval: Duration,
    /// WebSocket ping interval towards ComfyUI.
    pub ping_interval: Duration,
    /// A running job fails after its server was unreachable this long.
    pub unreachable_timeout: Duration,
    /// Probe interval of every server.
    pub retry_interval: Duration,
    /// Time limit per job.
    pub timeout: Duration,
    /// Longest preview edge in pixels.
    pub preview_max_edge: u32,
    /// Smallest gap between two previews of a job.
    pub preview_interval: Duration,
}

/// Checks and normalises a ComfyUI base URL.
fn comfy_url(url: &str) -> Result<String, ConfigError> {
    let url = url.trim().trim_end_matches('/');
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        err(
            "comfyui.servers",
            format!("{url:?}: expected http://host:port (https is not supported yet; run Outlast next to ComfyUI)"),
        )
    })?;
    if rest.is_empty() || rest.contains(['?', '#', ' ']) {
        return Err(err(
            "comfyui.servers",
            format!("{url:?}: expected http://host:port"),
        ));
    }
    Ok(url.to_owned())
}

/// Upload limits and clean-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadConfig {
    /// Largest upload (`Tus-Max-Size`).
    pub max_size: u64,
    /// Largest PATCH body or WebSocket chunk.
    pub max_chunk_bytes: u64,
    /// Advertised chunk duration.
    pub target_chunk: Duration,
    /// Incomplete uploads untouched this long are removed.
    pub expiry: Duration,
    /// Complete uploads unused this long are removed.
    pub retention: Duration,
    /// Incomplete uploads per owner.
    pub max_open_per_owner: usize,
    /// Free disk kept in reserve.
    pub min_free_bytes: u64,
}

/// The validated configuration every component reads.
#[derive(Debug, Clone)]
pub struct Config {
    /// Listen address.
    pub listen: SocketAddr,
    /// Data directory (database, uploads, outputs).
    pub data_dir: PathBuf,
    /// WebSocket ping and heartbeat interval.
    pub ping_interval: Duration,
    /// Close peers that answer no ping within this.
    pub pong_timeout: Duration,
    /// Largest inbound WebSocket message.
    pub max_message_bytes: usize,
    /// How long a WebSocket send may block before the client counts as too slow.
    pub slow_consumer_timeout: Duration,
    /// Longest long-poll wait.
    pub long_poll_timeout: Duration,
    /// Drain time on shutdown.
    pub shutdown_grace: Duration,
    /// Events per job before coalescing.
    pub history_max_events: u64,
    /// How long a completed job answers identical submissions; zero disables the result cache.
    pub cache_ttl: Duration,
    /// Demo backend concurrency.
    pub demo_concurrency: usize,
    /// Exec backend, when configured.
    pub exec: Option<ExecConfig>,
    /// Token -> owner; empty means no auth (single local owner).
    pub tokens: BTreeMap<String, OwnerId>,
    /// Log format.
    pub log_format: LogFormat,
    /// Uploads.
    pub uploads: UploadConfig,
    /// ComfyUI backend, when servers are configured.
    pub comfyui: Option<ComfyConfig>,
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

/// The longest `cache_ttl`: ten years is "forever" for cached results.
const MAX_CACHE_TTL: Duration = Duration::from_secs(3650 * 24 * 3600);

fn err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_owned(),
        message: message.into(),
    }
}

impl Config {
    /// Loads the file named by `args.config` (or `./outlast.toml` if present) and merges.
    pub fn load(args: Args) -> Result<Config, ConfigError> {
        let (path, required) = match &args.config {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from("outlast.toml"), false),
        };
        let file = match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str::<FileConfig>(&text).map_err(|e| {
                let key = e
                    .span()
                    .map(|s| text.get(s).unwrap_or("?").to_owned())
                    .unwrap_or_else(|| "file".into());
                err(&key, format!("{} ({})", e.message(), path.display()))
            })?,
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => {
                FileConfig::default()
            }
            Err(e) => {
                return Err(err(
                    "config",
                    format!("cannot read {}: {e}", path.display()),
                ));
            }
        };
        Self::merge(args, file)
    }

    /// Merges flags/environment over a parsed file and validates. Tests call this directly.
    pub fn merge(args: Args, file: FileConfig) -> Result<Config, ConfigError> {
        let listen = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8080)));
        let allow_public = args.allow_public || file.allow_public.unwrap_or(false);
        let mut tokens = BTreeMap::new();
        let pairs: Vec<(String, String)> = if args.tokens.is_empty() {
            file.auth.tokens.into_iter().collect()
        } else {
            args.tokens
                .iter()
                .map(|t| {
                    t.split_once('=')
                        .map(|(o, s)| (o.to_owned(), s.to_owned()))
                        .ok_or_else(|| err("auth.tokens", "expected OWNER=SECRET"))
                })
                .collect::<Result<_, _>>()?
        };
        for (owner, secret) in pairs {
            let owner: OwnerId = owner
                .parse()
                .map_err(|e| err("auth.tokens", format!("{e}")))?;
            if secret.len() < 16 {
                return Err(err(
                    "auth.tokens",
                    format!("the secret of {owner} must have at least 16 characters"),
                ));
            }
            if tokens.insert(secret, owner.clone()).is_some() {
                return Err(err(
                    "auth.tokens",
                    format!("the secret of {owner} is used twice"),
                ));
            }
        }
        if tokens.is_empty() && !listen.ip().is_loopback() && !allow_public {
            return Err(err(
                "listen",
                format!(
                    "{listen} is not a loopback address and no auth tokens are configured; \
                     configure auth.tokens or pass --allow-public to serve one shared owner publicly"
                ),
            ));
        }
        let positive = |key: &str, d: Duration| {
            if d.is_zero() {
                Err(err(key, "must be greater than zero"))
            } else {
                Ok(d)
            }
        };
        let ping_interval = positive(
            "ping_interval",
            args.ping_interval
                .or(file.ping_interval)
                .unwrap_or(Duration::from_secs(25)),
        )?;
        let pong_timeout = positive(
            "pong_timeout",
            args.pong_timeout
                .or(file.pong_timeout)
                .unwrap_or(Duration::from_secs(20)),
        )?;
        let max_message_bytes = args
            .max_message_bytes
            .or(file.max_message_bytes)
            .unwrap_or(1 << 20);
        if !(1024..=256 << 20).contains(&max_message_bytes) {
            return Err(err(
                "max_message_bytes",
                "must be between 1024 and 268435456",
            ));
        }
        let comfyui = Self::comfyui(&args, file.comfyui, &positive)?;
        let exec_file = file.exec.unwrap_or_default();
        let exec = args
            .exec_command
            .or(exec_file.command)
            .map(|command| ExecConfig {
                command,
                timeout: args
                    .exec_timeout
                    .or(exec_file.timeout)
                    .unwrap_or(Duration::from_secs(15 * 60)),
                concurrency: args.exec_concurrency.or(exec_file.concurrency).unwrap_or(1),
            });
        if let Some(e) = &exec {
            if e.command.trim().is_empty() {
                return Err(err("exec.command", "must not be empty"));
            }
            if e.concurrency == 0 {
                return Err(err("exec.concurrency", "must be at least 1"));
            }
        }
        let demo_concurrency = args.demo_concurrency.or(file.demo.concurrency).unwrap_or(2);
        if demo_concurrency == 0 {
            return Err(err("demo.concurrency", "must be at least 1"));
        }
        let uploads = UploadConfig {
            max_size: args
                .upload_max_size
                .or(file.uploads.max_size)
                .unwrap_or(10 << 30),
            max_chunk_bytes: args
                .upload_max_chunk_bytes
                .or(file.uploads.max_chunk_bytes)
                .unwrap_or(64 << 20),
            target_chunk: positive(
                "uploads.target_chunk",
                args.upload_target_chunk
                    .or(file.uploads.target_chunk)
                    .unwrap_or(Duration::from_secs(5)),
            )?,
            expiry: positive(
                "uploads.expiry",
                args.upload_expiry
                    .or(file.uploads.expiry)
                    .unwrap_or(Duration::from_secs(24 * 3600)),
            )?,
            retention: positive(
                "uploads.retention",
                args.upload_retention
                    .or(file.uploads.retention)
                    .unwrap_or(Duration::from_secs(7 * 24 * 3600)),
            )?,
            max_open_per_owner: args
                .upload_max_open_per_owner
                .or(file.uploads.max_open_per_owner)
                .unwrap_or(100),
            min_free_bytes: args
                .upload_min_free_bytes
                .or(file.uploads.min_free_bytes)
                .unwrap_or(1 << 30),
        };
        if uploads.max_size == 0 {
            return Err(err("uploads.max_size", "must be greater than zero"));
        }
        if !(64 * 1024..=512 << 20).contains(&uploads.max_chunk_bytes) {
            return Err(err(
                "uploads.max_chunk_bytes",
                "must be between 65536 and 536870912",
            ));
        }
        if uploads.max_open_per_owner == 0 {
            return Err(err("uploads.max_open_per_owner", "must be at least 1"));
        }
        let cache_ttl = args
            .cache_ttl
            .or(file.cache_ttl)
            .unwrap_or(Duration::from_secs(24 * 3600));
        if cache_ttl > MAX_CACHE_TTL {
            return Err(err("cache_ttl", "must be at most 3650d"));
        }
        Ok(Config {
            comfyui,
            uploads,
            cache_ttl,
            listen,
            data_dir: args
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("outlast-data")),
            ping_interval,
            pong_timeout,
            max_message_bytes,
            slow_consumer_timeout: positive(
                "slow_consumer_timeout",
                args.slow_consumer_timeout
                    .or(file.slow_consumer_timeout)
                    .unwrap_or(Duration::from_secs(10)),
            )?,
            long_poll_timeout: positive(
                "long_poll_timeout",
                args.long_poll_timeout
                    .or(file.long_poll_timeout)
                    .unwrap_or(Duration::from_secs(25)),
            )?,
            shutdown_grace: args
                .shutdown_grace
                .or(file.shutdown_grace)
                .unwrap_or(Duration::from_secs(10)),
            history_max_events: args
                .history_max_events
                .or(file.history_max_events)
                .unwrap_or(10_000)
                .max(16),
            demo_concurrency,
            exec,
            tokens,
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
        })
    }
}

impl Config {
    fn comfyui(
        args: &Args,
        file: ComfyFile,
        positive: &dyn Fn(&str, Duration) -> Result<Duration, ConfigError>,
    ) -> Result<Option<ComfyConfig>, ConfigError> {
        let servers: Vec<ComfyServer> = if args.comfyui.is_empty() {
            file.servers
                .into_iter()
                .map(|s| match s {
                    ComfyServerFile::Url(url) => Ok(ComfyServer {
                        url: comfy_url(&url)?,
                        concurrency: args.comfyui_concurrency.unwrap_or(1),
                    }),
                    ComfyServerFile::Table { url, concurrency } => Ok(ComfyServer {
                        url: comfy_url(&url)?,
                        concurrency: concurrency.or(args.comfyui_concurrency).unwrap_or(1),
                    }),
                })
                .collect::<Result<_, ConfigError>>()?
        } else {
            args.comfyui
                .iter()
                .map(|url| {
                    Ok(ComfyServer {
                        url: comfy_url(url)?,
                        concurrency: args.comfyui_concurrency.unwrap_or(1),
                    })
                })
                .collect::<Result<_, ConfigError>>()?
        };
        if servers.is_empty() {
            return Ok(None);
        }
        if servers.iter().any(|s| s.concurrency == 0) {
            return Err(err("comfyui.servers", "concurrency must be at least 1"));
        }
        for (i, s) in servers.iter().enumerate() {
            if servers[..i].iter().any(|o| o.url == s.url) {
                return Err(err("comfyui.servers", format!("{} is listed twice", s.url)));
            }
        }
        let preview_max_edge = args
            .comfyui_preview_max_edge
            .or(file.preview_max_edge)
            .unwrap_or(256);
        if !(16..=4096).contains(&preview_max_edge) {
            return Err(err(
                "comfyui.preview_max_edge",
                "must be between 16 and 4096",
            ));
        }
        Ok(Some(ComfyConfig {
            servers,
            poll_interval: positive(
                "comfyui.poll_interval",
                args.comfyui_poll_interval
                    .or(file.poll_interval)
                    .unwrap_or(Duration::from_secs(5)),
            )?,
            ping_interval: positive(
                "comfyui.ping_interval",
                args.comfyui_ping_interval
                    .or(file.ping_interval)
                    .unwrap_or(Duration::from_secs(20)),
            )?,
            unreachable_timeout: positive(
                "comfyui.unreachable_timeout",
                args.comfyui_unreachable_timeout
                    .or(file.unreachable_timeout)
                    .unwrap_or(Duration::from_secs(120)),
            )?,
            retry_interval: positive(
                "comfyui.retry_interval",
                args.comfyui_retry_interval
                    .or(file.retry_interval)
                    .unwrap_or(Duration::from_secs(5)),
            )?,
            timeout: positive(
                "comfyui.timeout",
                args.comfyui_timeout
                    .or(file.timeout)
                    .unwrap_or(Duration::from_secs(30 * 60)),
            )?,
            preview_max_edge,
            preview_interval: args
                .comfyui_preview_interval
                .or(file.preview_interval)
                .unwrap_or(Duration::from_millis(500)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> FileConfig {
        toml::from_str(text).expect("valid toml")
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::merge(Args::default(), FileConfig::default()).expect("defaults are valid");
        assert_eq!(c.listen, "127.0.0.1:8080".parse().expect("addr"));
        assert_eq!(c.ping_interval, Duration::from_secs(25));
        assert_eq!(c.data_dir, PathBuf::from("outlast-data"));
        assert!(c.tokens.is_empty());
        assert!(c.exec.is_none());
        assert_eq!(c.cache_ttl, Duration::from_secs(24 * 3600));
    }

    #[test]
    fn cache_ttl_from_file_flag_and_zero() {
        let c = Config::merge(Args::default(), file("cache_ttl = \"90m\"")).expect("valid");
        assert_eq!(c.cache_ttl, Duration::from_secs(90 * 60));
        let args = Args {
            cache_ttl: Some(Duration::ZERO),
            ..Args::default()
        };
        let c = Config::merge(args, file("cache_ttl = \"90m\"")).expect("0s disables");
        assert_eq!(c.cache_ttl, Duration::ZERO);
    }

    #[test]
    fn flags_beat_file() {
        let args = Args {
            ping_interval: Some(Duration::from_secs(5)),
            ..Args::default()
        };
        let c = Config::merge(
            args,
            file("ping_interval = \"9s\"\n[demo]\nconcurrency = 3"),
        )
        .expect("valid");
        assert_eq!(c.ping_interval, Duration::from_secs(5));
        assert_eq!(c.demo_concurrency, 3);
    }

    #[test]
    fn public_listen_without_auth_is_refused_naming_the_key() {
        let args = Args {
            listen: Some("0.0.0.0:8080".parse().expect("addr")),
            ..Args::default()
        };
        let e = Config::merge(args, FileConfig::default()).expect_err("refused");
        assert_eq!(e.key, "listen");
        let args = Args {
            listen: Some("0.0.0.0:8080".parse().expect("addr")),
            allow_public: true,
            ..Args::default()
        };
        assert!(Config::merge(args, FileConfig::default()).is_ok());
        let c = Config::merge(
            Args {
                listen: Some("0.0.0.0:8080".parse().expect("addr")),
                ..Args::default()
            },
            file("[auth.tokens]\nalice = \"0123456789abcdef\""),
        )
        .expect("auth makes public listening fine");
        assert_eq!(c.tokens.len(), 1);
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, key) in [
            ("ping_interval = \"0s\"", "ping_interval"),
            ("[exec]\ncommand = \"\"", "exec.command"),
            ("[auth.tokens]\nalice = \"short\"", "auth.tokens"),
            ("[demo]\nconcurrency = 0", "demo.concurrency"),
            ("[uploads]\nmax_chunk_bytes = 10", "uploads.max_chunk_bytes"),
            ("[uploads]\nexpiry = \"0s\"", "uploads.expiry"),
            (
                "[comfyui]\nservers = [\"https://gpu:8188\"]",
                "comfyui.servers",
            ),
            (
                "[comfyui]\nservers = [{url = \"http://gpu:8188\", concurrency = 0}]",
                "comfyui.servers",
            ),
            (
                "[comfyui]\nservers = [\"http://gpu:8188\", \"http://gpu:8188/\"]",
                "comfyui.servers",
            ),
            (
                "[comfyui]\nservers = [\"http://gpu:8188\"]\npoll_interval = \"0s\"",
                "comfyui.poll_interval",
            ),
            ("cache_ttl = \"3651days\"", "cache_ttl"),
        ] {
            let e = Config::merge(Args::default(), file(text)).expect_err(text);
            assert_eq!(e.key, key, "{text}");
        }
        assert!(toml::from_str::<FileConfig>("pign_interval = \"1s\"").is_err());
    }

    #[test]
    fn comfyui_pool_from_file_or_flags() {
        let c = Config::merge(
            Args::default(),
            file("[comfyui]\nservers = [\"http://a:8188/\", {url = \"http://b:8188\", concurrency = 2}]"),
        )
        .expect("valid");
        let comfy = c.comfyui.expect("enabled");
        assert_eq!(
            comfy.servers,
            vec![
                ComfyServer {
                    url: "http://a:8188".into(),
                    concurrency: 1
                },
                ComfyServer {
                    url: "http://b:8188".into(),
                    concurrency: 2
                }
            ]
        );
        assert_eq!(comfy.poll_interval, Duration::from_secs(5));
        let args = Args {
            comfyui: vec!["http://c:8188".into()],
            ..Args::default()
        };
        let c =
            Config::merge(args, file("[comfyui]\nservers = [\"http://a:8188\"]")).expect("valid");
        assert_eq!(c.comfyui.expect("enabled").servers[0].url, "http://c:8188");
        assert!(
            Config::merge(Args::default(), FileConfig::default())
                .expect("valid")
                .comfyui
                .is_none()
        );
    }
}
