//! Child processes for the suites: spawned with piped stdout and stderr in a log file, started
//! when their first stdout line names the listening URL, killed with `kill -9` (or on drop),
//! terminated with SIGTERM, and restarted on the same address.

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A binary of this workspace that the suites start: `$env_var` if set, else `bin` next to the
/// running test executable (`target/debug/deps/<test>` -> `target/debug/<bin>`), else built
/// once with cargo (package `package`, debug, honouring `CARGO_TARGET_DIR`).
pub fn workspace_binary(env_var: &str, package: &str, bin: &str) -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os(env_var) {
        return Ok(PathBuf::from(p));
    }
    let near = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent().map(|d| d.join(bin)))
        .filter(|p| p.is_file());
    if let Some(p) = near {
        return Ok(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?
        .to_path_buf();
    let status = std::process::Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", package, "--bin", bin])
        .current_dir(&root)
        .status()?;
    anyhow::ensure!(status.success(), "building {bin} failed");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target"));
    Ok(target.join("debug").join(bin))
}

/// How to start a process; the listen address is added on every (re)start.
#[derive(Debug, Clone)]
pub struct Launch {
    /// Name in messages (`gateway`, `comfy-standin`).
    pub what: &'static str,
    /// The executable.
    pub program: PathBuf,
    /// The flag that takes the listen address (`--listen`); None: none is passed.
    pub listen_flag: Option<&'static str>,
    /// Every other argument.
    pub args: Vec<OsString>,
    /// Environment variables to set.
    pub env: Vec<(OsString, OsString)>,
    /// Environment variables to remove.
    pub env_remove: Vec<OsString>,
    /// Working directory (default: the test's).
    pub current_dir: Option<PathBuf>,
    /// How long to wait for the first stdout line.
    pub start_within: Duration,
    /// Where stderr goes (appended across restarts).
    pub log: PathBuf,
}

impl Launch {
    /// `program --listen ADDR`, logging to `log`, given `start_within` to start.
    pub fn new(what: &'static str, program: PathBuf, log: PathBuf) -> Self {
        Self {
            what,
            program,
            listen_flag: Some("--listen"),
            args: Vec::new(),
            env: Vec::new(),
            env_remove: Vec::new(),
            current_dir: None,
            start_within: Duration::from_secs(60),
            log,
        }
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }
}

/// A running (or killed) child process started from a [`Launch`].
#[derive(Debug)]
pub struct Process {
    launch: Launch,
    child: Option<Child>,
    addr: SocketAddr,
    first_line: String,
}

impl Process {
    /// Starts on `127.0.0.1:0` (an ephemeral port) and waits for the listening line.
    pub async fn start(launch: Launch) -> anyhow::Result<Process> {
        let mut p = Process {
            launch,
            child: None,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            first_line: String::new(),
        };
        p.spawn().await?;
        Ok(p)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let l = &self.launch;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&l.log)?;
        let mut cmd = Command::new(&l.program);
        if let Some(flag) = l.listen_flag {
            cmd.arg(flag).arg(self.addr.to_string());
        }
        cmd.args(&l.args);
        for (k, v) in &l.env {
            cmd.env(k, v);
        }
        for k in &l.env_remove {
            cmd.env_remove(k);
        }
        if let Some(dir) = &l.current_dir {
            cmd.current_dir(dir);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawning {}", l.what))?;
        let (line, addr) = listening_line(&mut child, l.what, l.start_within, &l.log).await?;
        self.first_line = line;
        self.addr = addr;
        self.child = Some(child);
        Ok(())
    }

    /// Where it listens (kept across restarts).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its first stdout line, which named the address.
    pub fn first_line(&self) -> &str {
        &self.first_line
    }

    /// The process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(|c| c.id())
    }

    /// Its stderr so far (for assertion messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.launch.log).unwrap_or_default()
    }

    /// `kill -9`: no chance to flush or clean up. Nothing happens when it is not running.
    pub async fn kill9(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.start_kill()?;
            child.wait().await?;
        }
        Ok(())
    }

    /// SIGTERM, then waits up to `within` for the exit status.
    pub async fn terminate(
        &mut self,
        within: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("not running")?;
        let pid = child.id().context("no pid")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid)?),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        Ok(tokio::time::timeout(within, child.wait()).await??)
    }

    /// `kill -9` (if running), then starts again on the same address with the same arguments,
    /// retrying for up to 5 s while the port is still taken.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill9().await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match self.spawn().await {
                Ok(()) => return Ok(()),
                Err(e) if tokio::time::Instant::now() < deadline => {
                    eprintln!("{} restart: {e:#}; retrying", self.launch.what);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Reads a child's first stdout line, which names its URL (`... http://ADDR/...`), and keeps
/// draining stdout so the child never blocks on a full pipe. `log` is shown if it exits.
pub async fn listening_addr(
    child: &mut Child,
    what: &str,
    within: Duration,
    log: &Path,
) -> anyhow::Result<SocketAddr> {
    Ok(listening_line(child, what, within, log).await?.1)
}

/// Like [`listening_addr`], also returning the line itself.
pub async fn listening_line(
    child: &mut Child,
    what: &str,
    within: Duration,
    log: &Path,
) -> anyhow::Result<(String, SocketAddr)> {
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
    // Drains stdout until the child exits (the pipe closes); ends on its own.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((line, addr))
}
