//! The Cloudflare-like edge of the suites: starts the `cf-proxy` binary (`tests/cfproxy`, the
//! one the browser suite uses too) in front of a gateway and drives its control port.
//!
//! The binary is `$OUTLAST_CFPROXY_BIN`, else `cf-proxy` next to the test executable, else built
//! once with cargo. [`EdgeConfig::scaled`] holds the settings the suites run behind: Cloudflare's
//! figures shrunk so that tests see every limit within seconds.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;

use crate::process::{Launch, Process, workspace_binary};

/// The gateway's ping interval behind a scaled edge (Cloudflare: 25 s pings, 100 s idle cut).
pub const SCALED_PING_INTERVAL: Duration = Duration::from_secs(1);
/// The gateway's long-poll wait behind a scaled edge (below the idle cut and origin timeout).
pub const SCALED_LONG_POLL: Duration = Duration::from_secs(2);
/// A scaled edge cuts connections idle this much longer than the gateway's ping interval.
pub const SCALED_IDLE_ABOVE_PING: Duration = Duration::from_secs(3);
/// A scaled edge answers 524 after this much origin silence (Cloudflare: 100 s).
pub const SCALED_ORIGIN_TIMEOUT: Duration = Duration::from_secs(8);
/// A scaled edge's request body limit (Cloudflare Free/Pro: 100 MB). The suites' largest single
/// request body is a 24 MiB tus PATCH.
pub const SCALED_MAX_BODY: u64 = 32 << 20;
/// The gateway's largest tus chunk behind a scaled edge (below [`SCALED_MAX_BODY`], as 64 MiB
/// is below Cloudflare's 100 MB).
pub const SCALED_MAX_CHUNK: u64 = 24 << 20;

/// How the edge behaves (each maps to a `cf-proxy` flag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeConfig {
    /// Cut connections without a byte either way for this long (None: never).
    pub idle_timeout: Option<Duration>,
    /// 524 when the origin is silent this long before answering (None: never).
    pub origin_timeout: Option<Duration>,
    /// 413 above this request body size.
    pub max_body_bytes: u64,
    /// Mean WebSocket lifetime before a random `1001` or reset (None: no random cuts).
    pub random_cut_mean: Option<Duration>,
}

impl EdgeConfig {
    /// Cloudflare's own figures: 100 s idle cut, 100 s origin timeout, 100 MiB bodies.
    pub fn cloudflare() -> EdgeConfig {
        EdgeConfig {
            idle_timeout: Some(Duration::from_secs(100)),
            origin_timeout: Some(Duration::from_secs(100)),
            max_body_bytes: 100 << 20,
            random_cut_mean: None,
        }
    }

    /// Scaled down for tests in front of a gateway that pings every `ping`.
    pub fn scaled(ping: Duration) -> EdgeConfig {
        EdgeConfig {
            idle_timeout: Some(ping + SCALED_IDLE_ABOVE_PING),
            origin_timeout: Some(SCALED_ORIGIN_TIMEOUT),
            max_body_bytes: SCALED_MAX_BODY,
            random_cut_mean: None,
        }
    }

    fn args(&self) -> Vec<String> {
        let ms = |d: Option<Duration>| d.map_or(0, |d| d.as_millis().max(1)).to_string();
        vec![
            "--idle-timeout-ms".into(),
            ms(self.idle_timeout),
            "--origin-timeout-ms".into(),
            ms(self.origin_timeout),
            "--max-body-bytes".into(),
            self.max_body_bytes.to_string(),
            "--random-cut-ms".into(),
            ms(self.random_cut_mean),
        ]
    }
}

static BIN: OnceLock<PathBuf> = OnceLock::new();

/// The `cf-proxy` binary (see the module documentation).
pub fn binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = BIN.get() {
        return Ok(p.clone());
    }
    let path = workspace_binary("OUTLAST_CFPROXY_BIN", "outlast-e2e", "cf-proxy")?;
    Ok(BIN.get_or_init(|| path).clone())
}

/// A running `cf-proxy`; dropping it kills the process (every connection through it ends).
#[derive(Debug)]
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Its control port.
    pub control: SocketAddr,
    _process: Process,
    _tmp: tempfile::TempDir,
}

impl Proxy {
    /// Forwards to `target` with Cloudflare's figures, except that connections without traffic
    /// in either direction for `idle_limit` are cut (None: never).
    pub async fn start(target: SocketAddr, idle_limit: Option<Duration>) -> anyhow::Result<Proxy> {
        let config = EdgeConfig {
            idle_timeout: idle_limit,
            ..EdgeConfig::cloudflare()
        };
        Proxy::start_with(target, &config).await
    }

    /// Forwards to `target` as `config` says.
    pub async fn start_with(target: SocketAddr, config: &EdgeConfig) -> anyhow::Result<Proxy> {
        let tmp = tempfile::tempdir()?;
        let mut launch = Launch::new("cf-proxy", binary()?, tmp.path().join("cf-proxy.log"))
            .args(["--upstream".to_owned(), target.to_string()])
            .args(config.args());
        launch.start_within = Duration::from_secs(30);
        let process = Process::start(launch).await?;
        let control = process
            .first_line()
            .split("control http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .with_context(|| format!("no control address in {:?}", process.first_line()))?
            .parse()?;
        Ok(Proxy {
            addr: process.addr(),
            control,
            _process: process,
            _tmp: tmp,
        })
    }

    /// `http://addr`
    pub fn http(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Resets every open connection now (WebSockets and HTTP alike), as a proxy restart does.
    pub fn cut_all(&self) {
        if let Err(e) = self.control("/cut?mode=abrupt&scope=all") {
            eprintln!("cf-proxy: cut_all: {e:#}");
        }
    }

    /// Ends every open WebSocket now: with a `1001 going away` close frame (`going_away`) or a
    /// reset. Returns how many were open.
    pub fn cut_websockets(&self, going_away: bool) -> anyhow::Result<u64> {
        let mode = if going_away { "1001" } else { "abrupt" };
        let v = self.control(&format!("/cut?mode={mode}&scope=ws"))?;
        v["receivers"].as_u64().context("receivers")
    }

    /// How many connections were cut for being idle.
    pub fn idle_cuts(&self) -> u64 {
        self.stat("idle_cuts")
    }

    /// One counter of `/stats` (0 when unreadable, with the reason on stderr).
    pub fn stat(&self, name: &str) -> u64 {
        match self.control("/stats") {
            Ok(v) => v[name].as_u64().unwrap_or(0),
            Err(e) => {
                eprintln!("cf-proxy: stats: {e:#}");
                0
            }
        }
    }

    /// GETs a control endpoint (`/stats`, `/cut?...`, `/throttle?...`) and returns its JSON.
    /// Blocking, but brief: the proxy is another process on loopback.
    pub fn control(&self, path_and_query: &str) -> anyhow::Result<serde_json::Value> {
        let mut sock = std::net::TcpStream::connect_timeout(&self.control, Duration::from_secs(5))?;
        sock.set_read_timeout(Some(Duration::from_secs(5)))?;
        sock.set_write_timeout(Some(Duration::from_secs(5)))?;
        write!(
            sock,
            "GET {path_and_query} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )?;
        let mut answer = Vec::new();
        sock.read_to_end(&mut answer)?;
        let text = String::from_utf8(answer)?;
        let (head, body) = text.split_once("\r\n\r\n").context("no head")?;
        anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "{path_and_query}: {head}");
        Ok(serde_json::from_str(body)?)
    }
}
