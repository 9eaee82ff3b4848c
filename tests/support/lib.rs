//! Test harness for the end-to-end suites: starts the real `outlast` binary on an ephemeral
//! port, talks to it with real clients (tokio-tungstenite, reqwest), and puts the Cloudflare-like
//! edge (`cf-proxy`, see [`proxy`]) in between: [`Gateway::start_behind_edge`] gives clients the
//! edge's address, so idle cuts, 524, 413 and cuts on command apply to everything they do.

pub mod api;
pub mod bench;
pub mod process;
pub mod proxy;
pub mod standin;
pub mod ws;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;

pub use api::Api;
pub use process::listening_addr;
use process::{Launch, Process};
pub use proxy::{EdgeConfig, Proxy};

static BIN: OnceLock<PathBuf> = OnceLock::new();

/// The `outlast` binary: `$OUTLAST_BIN`, or the workspace's debug build (built once if missing).
pub fn binary() -> PathBuf {
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("OUTLAST_BIN") {
            return PathBuf::from(p);
        }
        build_gateway(false).expect("building the outlast binary")
    })
    .clone()
}

/// Builds the gateway binary (release or debug) with cargo and returns its path, honouring
/// `CARGO_TARGET_DIR`.
pub fn build_gateway(release: bool) -> anyhow::Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?
        .to_path_buf();
    let mut args = vec![
        "build",
        "--quiet",
        "-p",
        "outlast-gateway",
        "--bin",
        "outlast",
    ];
    if release {
        args.push("--release");
    }
    let status = std::process::Command::new(env!("CARGO"))
        .args(&args)
        .current_dir(&root)
        .status()?;
    anyhow::ensure!(status.success(), "building the outlast binary failed");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    Ok(target
        .join(if release { "release" } else { "debug" })
        .join("outlast"))
}

/// For benchmarks: use the release build unless `OUTLAST_BIN` names a binary.
pub fn use_release_binary() -> anyhow::Result<()> {
    if std::env::var_os("OUTLAST_BIN").is_none() {
        set_binary(build_gateway(true)?);
    }
    Ok(())
}

/// Uses `path` as the binary for every gateway started afterwards (benchmarks use a release build).
pub fn set_binary(path: PathBuf) {
    let _ = BIN.set(path);
}

/// `--token owner=token` for each pair, then `args`.
fn token_args(tokens: &[(&str, &str)], args: &[&str]) -> Vec<String> {
    let mut all = Vec::new();
    for (o, t) in tokens {
        all.push("--token".to_owned());
        all.push(format!("{o}={t}"));
    }
    all.extend(args.iter().map(|a| (*a).to_owned()));
    all
}

/// A running gateway process with its own data directory.
#[derive(Debug)]
pub struct Gateway {
    process: Process,
    /// Where it listens (kept across restarts).
    pub addr: SocketAddr,
    /// Its data directory (kept across restarts).
    pub data_dir: PathBuf,
    /// The edge in front, when started behind one: clients use its address.
    edge: Option<Proxy>,
    _tmp: tempfile::TempDir,
}

impl Gateway {
    /// Starts a gateway with a fresh data directory and extra command-line flags.
    pub async fn start(args: &[&str]) -> anyhow::Result<Gateway> {
        Gateway::start_env(args, &[]).await
    }

    /// [`Gateway::start`] with extra environment variables (set last: they win).
    pub async fn start_env(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<Gateway> {
        Gateway::launch(args, env, None).await
    }

    /// Starts a gateway behind a Cloudflare-like edge scaled for tests
    /// ([`EdgeConfig::scaled`] from the gateway's ping interval): [`Gateway::http`],
    /// [`Gateway::ws_url`] and [`Gateway::api`] then name the edge. Unless `args` set them, the
    /// gateway pings every [`proxy::SCALED_PING_INTERVAL`], long-polls at most
    /// [`proxy::SCALED_LONG_POLL`] and takes tus chunks up to [`proxy::SCALED_MAX_CHUNK`].
    pub async fn start_behind_edge(args: &[&str]) -> anyhow::Result<Gateway> {
        let ping = match args.iter().position(|a| *a == "--ping-interval") {
            Some(i) => {
                let value = args.get(i + 1).context("--ping-interval without a value")?;
                humantime::parse_duration(value)?
            }
            None => proxy::SCALED_PING_INTERVAL,
        };
        Gateway::start_behind(EdgeConfig::scaled(ping), args).await
    }

    /// [`Gateway::start_behind_edge`] with bearer tokens (`owner`, `token`).
    pub async fn start_behind_edge_with_tokens(
        tokens: &[(&str, &str)],
        args: &[&str],
    ) -> anyhow::Result<Gateway> {
        let all = token_args(tokens, args);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        Gateway::start_behind_edge(&refs).await
    }

    /// Starts a gateway behind an edge configured as `edge` (the gateway defaults of
    /// [`Gateway::start_behind_edge`] apply).
    pub async fn start_behind(edge: EdgeConfig, args: &[&str]) -> anyhow::Result<Gateway> {
        Gateway::launch(args, &[], Some(edge)).await
    }

    async fn launch(
        args: &[&str],
        env: &[(&str, &str)],
        edge: Option<EdgeConfig>,
    ) -> anyhow::Result<Gateway> {
        let tmp = tempfile::tempdir()?;
        let data_dir = tmp.path().join("data");
        let mut launch = Launch::new("gateway", binary(), tmp.path().join("gateway.log"))
            .args(["--data-dir".as_ref(), data_dir.as_os_str()])
            .args(args.iter().copied());
        launch
            .env
            .push(("OUTLAST_LOG".into(), "info,outlast_gateway=debug".into()));
        launch.env_remove.push("OUTLAST_CONFIG".into());
        if edge.is_some() {
            // Environment, so that a test's own flags win.
            for (k, v) in [
                (
                    "OUTLAST_PING_INTERVAL",
                    humantime::format_duration(proxy::SCALED_PING_INTERVAL).to_string(),
                ),
                (
                    "OUTLAST_LONG_POLL_TIMEOUT",
                    humantime::format_duration(proxy::SCALED_LONG_POLL).to_string(),
                ),
                (
                    "OUTLAST_UPLOAD_MAX_CHUNK_BYTES",
                    proxy::SCALED_MAX_CHUNK.to_string(),
                ),
            ] {
                launch.env.push((k.into(), v.into()));
            }
        }
        for (k, v) in env {
            launch.env.push(((*k).into(), (*v).into()));
        }
        launch.current_dir = Some(tmp.path().to_path_buf());
        let process = Process::start(launch).await?;
        let addr = process.addr();
        let edge = match edge {
            Some(config) => Some(Proxy::start_with(addr, &config).await?),
            None => None,
        };
        Ok(Gateway {
            addr,
            process,
            data_dir,
            edge,
            _tmp: tmp,
        })
    }

    /// Starts a gateway with bearer tokens (`owner`, `token`) and extra flags.
    pub async fn start_with_tokens(
        tokens: &[(&str, &str)],
        args: &[&str],
    ) -> anyhow::Result<Gateway> {
        let all = token_args(tokens, args);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        Gateway::start(&refs).await
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Where clients connect: the edge when there is one, else the gateway.
    pub fn client_addr(&self) -> SocketAddr {
        self.edge.as_ref().map_or(self.addr, |e| e.addr)
    }

    /// `http://addr` of [`Gateway::client_addr`].
    pub fn http(&self) -> String {
        format!("http://{}", self.client_addr())
    }

    /// `http://addr` (the same as [`Gateway::http`]).
    pub fn url(&self) -> String {
        self.http()
    }

    /// `ws://addr/v1/ws` of [`Gateway::client_addr`].
    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.client_addr())
    }

    /// The HTTP job API without a token, through the edge when there is one.
    pub fn api(&self) -> Api {
        Api::new(self.http())
    }

    /// `http://addr` of the gateway itself, past any edge.
    pub fn direct_http(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `ws://addr/v1/ws` of the gateway itself, past any edge.
    pub fn direct_ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    /// The edge in front (fails for a gateway started without one).
    pub fn edge(&self) -> anyhow::Result<&Proxy> {
        self.edge
            .as_ref()
            .context("this gateway was started without an edge")
    }

    /// The gateway's log so far (for assertion messages).
    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    /// `kill -9`: no chance to flush or clean up.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        self.process.kill9().await
    }

    /// SIGTERM and wait for the exit status.
    pub async fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        self.process.terminate(Duration::from_secs(30)).await
    }

    /// Starts the gateway again on the same address and data directory (`kill -9` first if it
    /// still runs).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.process.restart().await
    }

    /// Waits (bounded, polling `/metrics`) until the counter `name` is above zero.
    pub async fn wait_for_counter(&self, name: &str, within: Duration) -> anyhow::Result<()> {
        self.api()
            .wait_for_metric(within, |l| l.starts_with(name) && !l.ends_with(" 0"))
            .await
            .with_context(|| format!("{name} stayed at zero"))
    }

    /// Submits a job over HTTP and returns its id.
    pub async fn submit(&self, body: serde_json::Value) -> anyhow::Result<String> {
        Ok(self.api().submit(&body).await?.job_id.to_string())
    }

    /// Every stored event of a job as raw JSON (for wire-format comparisons), polled page by
    /// page without waiting.
    pub async fn full_log(&self, job: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let mut all = Vec::new();
        let mut after = 0;
        loop {
            let url = format!(
                "{}/v1/jobs/{job}/poll?after={after}&timeout_ms=0",
                self.http()
            );
            let v: serde_json::Value = reqwest::get(url).await?.json().await?;
            all.extend(v["events"].as_array().context("events")?.iter().cloned());
            if v["more"] != true {
                return Ok(all);
            }
            after = v["next_after"].as_u64().context("next_after")?;
        }
    }
}
