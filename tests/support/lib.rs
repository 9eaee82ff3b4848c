//! Test harness for the end-to-end suites: starts the real `outlast` binary on an ephemeral
//! port, talks to it with real clients (tokio-tungstenite, reqwest), and puts a TCP proxy in
//! between that can cut connections (idle timeouts like Cloudflare's, or on command).

pub mod proxy;
pub mod standin;
pub mod ws;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

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

/// A running gateway process with its own data directory.
#[derive(Debug)]
pub struct Gateway {
    child: Option<Child>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its data directory (kept across restarts).
    pub data_dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    args: Vec<String>,
    log: PathBuf,
}

impl Gateway {
    /// Starts a gateway with a fresh data directory and extra command-line flags.
    pub async fn start(args: &[&str]) -> anyhow::Result<Gateway> {
        let tmp = tempfile::tempdir()?;
        let data_dir = tmp.path().join("data");
        let mut gw = Gateway {
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir,
            log: tmp.path().join("gateway.log"),
            _tmp: Some(tmp),
            args: args.iter().map(|s| s.to_string()).collect(),
        };
        gw.spawn().await?;
        Ok(gw)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut child = Command::new(binary())
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.args)
            .env("OUTLAST_LOG", "info,outlast_gateway=debug")
            .env_remove("OUTLAST_CONFIG")
            .current_dir(self.data_dir.parent().unwrap_or(Path::new(".")))
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .context("spawning outlast")?;
        self.addr =
            listening_addr(&mut child, "gateway", Duration::from_secs(60), &self.log).await?;
        self.child = Some(child);
        Ok(())
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// `http://addr`
    pub fn http(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `ws://addr/v1/ws`
    pub fn ws_url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    /// The gateway's log so far (for assertion messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`: no chance to flush or clean up.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.start_kill()?;
            child.wait().await?;
        }
        Ok(())
    }

    /// SIGTERM and wait for the exit status.
    pub async fn terminate(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("not running")?;
        let pid = child.id().context("no pid")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        Ok(tokio::time::timeout(Duration::from_secs(30), child.wait()).await??)
    }

    /// Starts the gateway again on the same address and data directory.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9().await?;
        self.spawn().await
    }

    /// Waits (bounded, polling `/metrics`) until the counter `name` is above zero.
    pub async fn wait_for_counter(&self, name: &str, within: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let metrics = reqwest::get(format!("{}/metrics", self.http()))
                .await?
                .text()
                .await?;
            if metrics
                .lines()
                .any(|l| l.starts_with(name) && !l.ends_with(" 0"))
            {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{name} stayed at zero"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Submits a job over HTTP and returns its id.
    pub async fn submit(&self, body: serde_json::Value) -> anyhow::Result<String> {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/jobs", self.http()))
            .json(&body)
            .send()
            .await?;
        let status = r.status();
        let v: serde_json::Value = r.json().await?;
        anyhow::ensure!(status == 202, "submit answered {status}: {v}");
        Ok(v["job_id"].as_str().context("job_id")?.to_owned())
    }

    /// Every stored event of a job from the long-poll endpoint (job must be finished).
    pub async fn full_log(&self, job: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let url = format!("{}/v1/jobs/{job}/poll?after=0&timeout_ms=0", self.http());
        let v: serde_json::Value = reqwest::get(url).await?.json().await?;
        Ok(v["events"].as_array().context("events")?.clone())
    }
}

/// Reads a child's first stdout line, which names its URL (`... http://ADDR/...`), and keeps
/// draining stdout so the child never blocks on a full pipe. `log` is shown if it exits.
pub async fn listening_addr(
    child: &mut tokio::process::Child,
    what: &str,
    within: Duration,
    log: &Path,
) -> anyhow::Result<SocketAddr> {
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(within, lines.next_line())
        .await
        .with_context(|| format!("{what} did not start within {within:?}"))??;
    let Some(line) = line else {
        bail!(
            "{what} exited at start; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    };
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .with_context(|| format!("unexpected first line {line:?}"))?
        .trim()
        .parse()?;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(addr)
}
