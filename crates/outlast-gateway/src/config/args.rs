//! The command line and `OUTLAST_*` environment: every option is optional, with no defaults of
//! its own, and is laid over the configuration loaded from the defaults and `outlast.toml`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use super::{
    ComfyServer, Config, ConfigError, DEFAULT_COMFYUI_CONCURRENCY, LogFormat, err,
    tokens_from_pairs,
};

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
    /// On cancel or time limit an exec job's process group gets SIGTERM, then SIGKILL after this long [exec.kill_grace; default 10s]
    #[arg(long, env = "OUTLAST_EXEC_KILL_GRACE", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub exec_kill_grace: Option<Duration>,
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
    /// Stored upload bytes one owner may have, 0 = no quota [uploads.max_bytes_per_owner; default 21474836480]
    #[arg(long, env = "OUTLAST_UPLOAD_MAX_BYTES_PER_OWNER", value_name = "BYTES")]
    pub upload_max_bytes_per_owner: Option<u64>,
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
    /// Jobs each ComfyUI server runs at once; overrides the file's per-server value [comfyui.servers[].concurrency; default 1]
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
    /// How long a ComfyUI cancel is retried while the server does not answer; the job is then reported canceled and the slot stays drained until the server answers [comfyui.cancel_timeout; default 2m]
    #[arg(long, env = "OUTLAST_COMFYUI_CANCEL_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub comfyui_cancel_timeout: Option<Duration>,
    /// Longest edge of previews sent to clients, in pixels [comfyui.preview_max_edge; default 256]
    #[arg(long, env = "OUTLAST_COMFYUI_PREVIEW_MAX_EDGE", value_name = "PX")]
    pub comfyui_preview_max_edge: Option<u32>,
    /// At most one preview per job this often [comfyui.preview_interval; default 500ms]
    #[arg(long, env = "OUTLAST_COMFYUI_PREVIEW_INTERVAL", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub comfyui_preview_interval: Option<Duration>,
    /// A request's head must arrive within this (also ends idle keep-alive connections) [http.header_read_timeout; default 30s]
    #[arg(long, env = "OUTLAST_HTTP_HEADER_READ_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub http_header_read_timeout: Option<Duration>,
    /// Largest request head in bytes [http.max_header_bytes; default 65536]
    #[arg(long, env = "OUTLAST_HTTP_MAX_HEADER_BYTES", value_name = "BYTES")]
    pub http_max_header_bytes: Option<usize>,
    /// Close connections on which nothing moves this long [http.idle_timeout; default 120s]
    #[arg(long, env = "OUTLAST_HTTP_IDLE_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub http_idle_timeout: Option<Duration>,
    /// A job API body must arrive whole within this [http.body_read_timeout; default 60s]
    #[arg(long, env = "OUTLAST_HTTP_BODY_READ_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub http_body_read_timeout: Option<Duration>,
    /// Cut a request body that delivers nothing this long (a PATCH commits what arrived) [http.body_idle_timeout; default 30s]
    #[arg(long, env = "OUTLAST_HTTP_BODY_IDLE_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub http_body_idle_timeout: Option<Duration>,
    /// Open connections served normally [http.max_connections; default 10000]
    #[arg(long, env = "OUTLAST_HTTP_MAX_CONNECTIONS", value_name = "N")]
    pub http_max_connections: Option<usize>,
    /// Extra connections that serve only /healthz, /readyz and /metrics [http.reserved_connections; default 16]
    #[arg(long, env = "OUTLAST_HTTP_RESERVED_CONNECTIONS", value_name = "N")]
    pub http_reserved_connections: Option<usize>,
    /// Look for stranded jobs (stored unfinished, not queued) this often [jobs.sweep_interval; default 60s]
    #[arg(long, env = "OUTLAST_JOBS_SWEEP_INTERVAL", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub jobs_sweep_interval: Option<Duration>,
    /// Queued jobs one owner may have at once, 0 = no limit [jobs.max_queued_per_owner; default 1000]
    #[arg(long, env = "OUTLAST_JOBS_MAX_QUEUED_PER_OWNER", value_name = "N")]
    pub jobs_max_queued_per_owner: Option<usize>,
    /// New jobs per second per owner, 0 = no limit [jobs.submits_per_second; default 20]
    #[arg(long, env = "OUTLAST_JOBS_SUBMITS_PER_SECOND", value_name = "N")]
    pub jobs_submits_per_second: Option<u32>,
    /// New jobs one owner may create at once above the rate [jobs.submit_burst; default 200]
    #[arg(long, env = "OUTLAST_JOBS_SUBMIT_BURST", value_name = "N")]
    pub jobs_submit_burst: Option<u32>,
    /// Job streams (WebSocket subscriptions, SSE, long-polls) one owner may follow at once, 0 = no limit [streams.max_per_owner; default 1024]
    #[arg(long, env = "OUTLAST_STREAMS_MAX_PER_OWNER", value_name = "N")]
    pub streams_max_per_owner: Option<usize>,
    /// End an SSE response that cannot be written this long (the client stopped reading) [streams.sse_write_timeout; default 30s]
    #[arg(long, env = "OUTLAST_STREAMS_SSE_WRITE_TIMEOUT", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub streams_sse_write_timeout: Option<Duration>,
    /// Serve /metrics on this address alone, without a token (bind a private interface);
    /// without it /metrics is on the main address, behind the admin scope when auth is on
    /// [metrics.listen; default none]
    #[arg(long, env = "OUTLAST_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Log format: pretty or json [log_format; default pretty]
    #[arg(long, env = "OUTLAST_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// A Host name to serve besides the loopback ones; repeat for several, "*" for any
    /// [http.allowed_hosts; default none]
    #[arg(
        long = "allowed-host",
        env = "OUTLAST_ALLOWED_HOSTS",
        value_name = "HOST",
        value_delimiter = ','
    )]
    pub allowed_hosts: Vec<String>,
    /// Accept long-lived tokens in `?access_token=` (they land in proxy logs) [http.allow_query_token]
    #[arg(long, env = "OUTLAST_ALLOW_QUERY_TOKEN")]
    pub allow_query_token: bool,
    /// An origin (scheme://host[:port]) allowed to call the API cross-origin; repeat for
    /// several, "*" for any. CORS is off without one [cors.allowed_origins; default none]
    #[arg(
        long = "cors-origin",
        env = "OUTLAST_CORS_ALLOWED_ORIGINS",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,
    /// An origin allowed to open the WebSocket besides the gateway's own; repeat for several,
    /// "*" for any [ws.allowed_origins; default none]
    #[arg(
        long = "ws-origin",
        env = "OUTLAST_WS_ALLOWED_ORIGINS",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    pub ws_origins: Vec<String>,
    /// A signed-token verification key as KID=SECRET (32+ bytes); repeat during a rotation
    /// [jwt.keys]
    #[arg(
        long = "jwt-key",
        env = "OUTLAST_JWT_KEYS",
        value_name = "KID=SECRET",
        value_delimiter = ','
    )]
    pub jwt_keys: Vec<String>,
    /// The key `outlast token` signs with [jwt.signing_kid; default the only key]
    #[arg(long, env = "OUTLAST_JWT_SIGNING_KID", value_name = "KID")]
    pub jwt_signing_kid: Option<String>,
    /// How long a browser ticket from POST /v1/tickets is valid [tickets.ttl; default 30s]
    #[arg(long, env = "OUTLAST_TICKET_TTL", value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub ticket_ttl: Option<Duration>,
    /// A subcommand instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// What the binary does instead of serving.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print a signed token (HS256 JWT) for an owner, signed with a key of jwt.keys (from the
    /// file, OUTLAST_JWT_KEYS or --jwt-key before the subcommand)
    Token(TokenArgs),
    /// Exit 0 when the gateway on the configured listen address answers GET /healthz with
    /// 200 within 5 s, else 1 (for container health checks: no curl needed)
    Health,
}

/// `outlast token`.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The owner (the token's `sub`)
    #[arg(long, value_name = "NAME")]
    pub owner: String,
    /// How long the token is valid, e.g. 1h or 15m
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// A scope: submit, read, upload or admin; repeat for several [default: all but admin]
    #[arg(long = "scope", value_name = "SCOPE", value_delimiter = ',')]
    pub scopes: Vec<String>,
    /// A backend the token may submit to; repeat for several [default: any]
    #[arg(long = "backend", value_name = "NAME", value_delimiter = ',')]
    pub backends: Vec<String>,
    /// The key to sign with [default: jwt.signing_kid, or the only key]
    #[arg(long, value_name = "KID")]
    pub kid: Option<String>,
}

impl Args {
    /// Lays every option that was given over `config` (flags and environment beat the file).
    /// Lists (`--token`, `--comfyui`) replace the file's list rather than extending it.
    pub(super) fn overlay(self, config: &mut Config) -> Result<(), ConfigError> {
        fn set<T>(slot: &mut T, value: Option<T>) {
            if let Some(v) = value {
                *slot = v;
            }
        }
        set(&mut config.listen, self.listen);
        config.allow_public |= self.allow_public;
        set(&mut config.data_dir, self.data_dir);
        set(&mut config.ping_interval, self.ping_interval);
        set(&mut config.pong_timeout, self.pong_timeout);
        set(&mut config.max_message_bytes, self.max_message_bytes);
        set(
            &mut config.slow_consumer_timeout,
            self.slow_consumer_timeout,
        );
        set(&mut config.long_poll_timeout, self.long_poll_timeout);
        set(&mut config.shutdown_grace, self.shutdown_grace);
        set(&mut config.history_max_events, self.history_max_events);
        set(&mut config.cache_ttl, self.cache_ttl);
        set(&mut config.log_format, self.log_format);
        set(&mut config.metrics.listen, self.metrics_listen.map(Some));
        set(&mut config.demo_concurrency, self.demo_concurrency);
        if self.exec_command.is_some()
            || self.exec_timeout.is_some()
            || self.exec_concurrency.is_some()
            || self.exec_kill_grace.is_some()
        {
            let exec = config.exec.get_or_insert_with(Default::default);
            set(&mut exec.command, self.exec_command);
            set(&mut exec.timeout, self.exec_timeout);
            set(&mut exec.concurrency, self.exec_concurrency);
            set(&mut exec.kill_grace, self.exec_kill_grace);
        }
        if !self.tokens.is_empty() {
            let pairs = self
                .tokens
                .iter()
                .map(|t| {
                    t.split_once('=')
                        .map(|(o, s)| (o.to_owned(), s.to_owned()))
                        .ok_or_else(|| err("auth.tokens", "expected OWNER=SECRET"))
                })
                .collect::<Result<Vec<_>, _>>()?;
            config.tokens = tokens_from_pairs(pairs)?;
        }
        if !self.allowed_hosts.is_empty() {
            config.http.allowed_hosts = self.allowed_hosts;
        }
        config.http.allow_query_token |= self.allow_query_token;
        if !self.cors_origins.is_empty() {
            config.cors.allowed_origins = self.cors_origins;
        }
        if !self.ws_origins.is_empty() {
            config.ws.allowed_origins = self.ws_origins;
        }
        if !self.jwt_keys.is_empty() {
            let mut keys = std::collections::BTreeMap::new();
            for pair in &self.jwt_keys {
                let (kid, secret) = pair
                    .split_once('=')
                    .ok_or_else(|| err("jwt.keys", "expected KID=SECRET"))?;
                keys.insert(kid.to_owned(), secret.to_owned());
            }
            config.jwt.keys = keys;
        }
        set(&mut config.jwt.signing_kid, self.jwt_signing_kid.map(Some));
        set(&mut config.tickets.ttl, self.ticket_ttl);
        let u = &mut config.uploads;
        set(&mut u.max_size, self.upload_max_size);
        set(&mut u.max_chunk_bytes, self.upload_max_chunk_bytes);
        set(&mut u.target_chunk, self.upload_target_chunk);
        set(&mut u.expiry, self.upload_expiry);
        set(&mut u.retention, self.upload_retention);
        set(&mut u.max_open_per_owner, self.upload_max_open_per_owner);
        set(&mut u.max_bytes_per_owner, self.upload_max_bytes_per_owner);
        set(&mut u.min_free_bytes, self.upload_min_free_bytes);
        let h = &mut config.http;
        set(&mut h.header_read_timeout, self.http_header_read_timeout);
        set(&mut h.max_header_bytes, self.http_max_header_bytes);
        set(&mut h.idle_timeout, self.http_idle_timeout);
        set(&mut h.body_read_timeout, self.http_body_read_timeout);
        set(&mut h.body_idle_timeout, self.http_body_idle_timeout);
        set(&mut h.max_connections, self.http_max_connections);
        set(&mut h.reserved_connections, self.http_reserved_connections);
        set(&mut config.jobs.sweep_interval, self.jobs_sweep_interval);
        set(
            &mut config.jobs.max_queued_per_owner,
            self.jobs_max_queued_per_owner,
        );
        set(
            &mut config.jobs.submits_per_second,
            self.jobs_submits_per_second,
        );
        set(&mut config.jobs.submit_burst, self.jobs_submit_burst);
        set(
            &mut config.streams.max_per_owner,
            self.streams_max_per_owner,
        );
        set(
            &mut config.streams.sse_write_timeout,
            self.streams_sse_write_timeout,
        );
        let any_comfy = !self.comfyui.is_empty()
            || self.comfyui_concurrency.is_some()
            || self.comfyui_poll_interval.is_some()
            || self.comfyui_ping_interval.is_some()
            || self.comfyui_unreachable_timeout.is_some()
            || self.comfyui_retry_interval.is_some()
            || self.comfyui_timeout.is_some()
            || self.comfyui_cancel_timeout.is_some()
            || self.comfyui_preview_max_edge.is_some()
            || self.comfyui_preview_interval.is_some();
        if any_comfy {
            let c = config.comfyui.get_or_insert_with(Default::default);
            if !self.comfyui.is_empty() {
                c.servers = self
                    .comfyui
                    .into_iter()
                    .map(|url| ComfyServer {
                        url,
                        concurrency: DEFAULT_COMFYUI_CONCURRENCY,
                    })
                    .collect();
            }
            if let Some(n) = self.comfyui_concurrency {
                for s in &mut c.servers {
                    s.concurrency = n;
                }
            }
            set(&mut c.poll_interval, self.comfyui_poll_interval);
            set(&mut c.ping_interval, self.comfyui_ping_interval);
            set(&mut c.unreachable_timeout, self.comfyui_unreachable_timeout);
            set(&mut c.retry_interval, self.comfyui_retry_interval);
            set(&mut c.timeout, self.comfyui_timeout);
            set(&mut c.cancel_timeout, self.comfyui_cancel_timeout);
            set(&mut c.preview_max_edge, self.comfyui_preview_max_edge);
            set(&mut c.preview_interval, self.comfyui_preview_interval);
        }
        Ok(())
    }
}
