//! Harness for `comfy-standin`, the stand-in ComfyUI server: starts it on an ephemeral port
//! with its own data directory, restarts it on the same port, and drives its `/_standin/*`
//! control endpoints.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};

use crate::process::{Launch, Process};

static BIN: OnceLock<PathBuf> = OnceLock::new();

/// The `comfy-standin` binary: `$OUTLAST_STANDIN_BIN`, else the debug build in the target
/// directory of the running test executable (built once with cargo if missing).
pub fn binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = BIN.get() {
        return Ok(p.clone());
    }
    let path =
        crate::process::workspace_binary("OUTLAST_STANDIN_BIN", "outlast-e2e", "comfy-standin")?;
    Ok(BIN.get_or_init(|| path).clone())
}

/// A running stand-in ComfyUI process.
#[derive(Debug)]
pub struct StandIn {
    process: Process,
    /// Where it listens (kept across restarts).
    pub addr: SocketAddr,
    /// Its data directory with input/, output/, temp/ (kept across restarts).
    pub data_dir: PathBuf,
    _tmp: tempfile::TempDir,
    http: reqwest::Client,
}

impl StandIn {
    /// Starts a stand-in on `127.0.0.1:0` with a fresh data directory and extra flags
    /// (`--step-ms`, `--preview-method`).
    pub async fn start(args: &[&str]) -> anyhow::Result<StandIn> {
        let tmp = tempfile::tempdir()?;
        let data_dir = tmp.path().join("data");
        let mut launch = Launch::new("comfy-standin", binary()?, tmp.path().join("standin.log"))
            .args(["--data".as_ref(), data_dir.as_os_str()])
            .args(args.iter().copied());
        launch.start_within = Duration::from_secs(30);
        let process = Process::start(launch).await?;
        Ok(StandIn {
            addr: process.addr(),
            process,
            data_dir,
            _tmp: tmp,
            http: reqwest::Client::new(),
        })
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `ws://127.0.0.1:PORT/ws?clientId=ID`
    pub fn ws_url(&self, client_id: &str) -> String {
        format!("ws://{}/ws?clientId={client_id}", self.addr)
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Its stderr so far (for assertion messages).
    pub fn log_text(&self) -> String {
        self.process.log_text()
    }

    /// `kill -9`: queue, history and cache are lost; files on disk stay.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        self.process.kill9().await
    }

    /// `kill -9`, then starts again on the same port and data directory (retrying the bind
    /// for a few seconds).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.process.restart().await
    }

    async fn control(&self, path: &str, body: Value) -> anyhow::Result<reqwest::Response> {
        let r = self
            .http
            .post(format!("{}/_standin/{path}", self.url()))
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "/_standin/{path}: {}", r.status());
        Ok(r)
    }

    /// Drops every WebSocket without a close frame (like an edge restart).
    pub async fn drop_ws(&self) -> anyhow::Result<()> {
        self.control("drop_ws", json!({})).await.map(drop)
    }

    /// The worker goes silent and makes no progress for `ms` milliseconds.
    pub async fn stall(&self, ms: u64) -> anyhow::Result<()> {
        self.control("stall", json!({"ms": ms})).await.map(drop)
    }

    /// From now on, every `/view` answer waits `ms` first (a slow download).
    pub async fn slow_view(&self, ms: u64) -> anyhow::Result<()> {
        self.control("slow_view", json!({"ms": ms})).await.map(drop)
    }

    /// The next execution of `class_type` raises `RuntimeError(message)`.
    pub async fn fail_next(&self, class_type: &str, message: &str) -> anyhow::Result<()> {
        self.control(
            "fail",
            json!({"class_type": class_type, "exception_message": message, "exception_type": "RuntimeError"}),
        )
        .await
        .map(drop)
    }

    /// In-process restart: queue, running prompt (stopped silently), history and cache
    /// forgotten; every socket cut without a close frame.
    pub async fn forget(&self) -> anyhow::Result<()> {
        self.control("forget", json!({})).await.map(drop)
    }

    /// `{"executed_prompts": [...], "interrupts": N, "uploads": N}`
    pub async fn stats(&self) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(format!("{}/_standin/stats", self.url()))
            .send()
            .await?
            .json()
            .await?)
    }
}
