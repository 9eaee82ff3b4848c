//! The `exec` backend: runs a configured shell command once per job.
//!
//! Contract with the command (documented in docs/operations.md):
//! - stdin: the job as JSON `{"job_id", "attempt", "workflow", "inputs": {name: path}}`;
//! - environment: `OUTLAST_JOB_ID`, `OUTLAST_ATTEMPT`, `OUTLAST_INPUT_DIR`, `OUTLAST_OUTPUT_DIR`;
//! - stdout: JSON lines `{"progress": 3, "max": 10, "label": "..."}`; other lines are ignored;
//! - outputs: every regular file left in `$OUTLAST_OUTPUT_DIR` after exit status 0;
//! - failure: a non-zero exit is `command_failed` with the status and the tail of stderr;
//!   the time limit is `timeout`; cancel and shutdown kill the whole process group.
//!
//! Cancel means stopped: on cancel or the time limit the process group gets SIGTERM, SIGKILL
//! after `kill_grace`, and the run returns only once the group is gone: the command reaped
//! (`wait`), every other member reaped or gone (`waitpid(-pgid)`, then `kill(-pgid, 0)` answers
//! ESRCH). On Linux the gateway is a child subreaper, so members orphaned by the command's exit
//! become its children and are reaped here instead of lingering as zombies of an init that may
//! not reap. Shutdown drops the run: the group gets SIGKILL at once.

use std::collections::VecDeque;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use outlast_protocol::{Failure, FailureCode, JobSpec};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::{Backend, JobContext, RestartPolicy};
use crate::config::ExecConfig;
use crate::error::AppError;
use crate::outputs::{mime_for, valid_name};

/// Bytes of stderr kept for the failure message.
const STDERR_TAIL: usize = 4096;
/// How long members of a group may take to vanish after SIGKILL (reaping included).
const KILL_WAIT: Duration = Duration::from_secs(5);
/// How often a stopping group is looked at.
const GROUP_POLL: Duration = Duration::from_millis(10);

/// The exec backend.
#[derive(Debug)]
pub struct Exec {
    config: ExecConfig,
}

impl Exec {
    /// An exec backend for `config`. On Linux this makes the gateway a child subreaper (see
    /// the module docs).
    pub fn new(config: ExecConfig) -> Self {
        #[cfg(target_os = "linux")]
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            tracing::warn!(error = %e, "could not become a child subreaper; orphaned members of a canceled command's group are left to init");
        }
        Self { config }
    }
}

#[derive(Debug, Deserialize)]
struct ProgressLine {
    progress: u64,
    max: u64,
    #[serde(default)]
    label: Option<String>,
}

/// Kills the child's whole process group when dropped before [`stop_group`] ran (shutdown).
struct GroupGuard(Option<Pid>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            let _ = killpg(pgid, Signal::SIGKILL);
            reap_group(pgid);
        }
    }
}

/// Reaps every exited member of the group that is our child (orphans, with the subreaper).
fn reap_group(pgid: Pid) {
    let group = Pid::from_raw(-pgid.as_raw());
    while let Ok(status) = waitpid(group, Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

/// True when no process of the group exists any more (zombies count as existing).
fn group_gone(pgid: Pid) -> bool {
    killpg(pgid, None) == Err(Errno::ESRCH)
}

/// Stops the command's whole group: SIGTERM, SIGKILL after `grace`, and returns once every
/// member is gone and reaped (Ok), or an error when members outlive SIGKILL by [`KILL_WAIT`].
/// A group already gone returns at once.
async fn stop_group(child: &mut Child, pgid: Pid, grace: Duration) -> Result<(), String> {
    let started = Instant::now();
    let mut killed_at: Option<Instant> = None;
    let mut command_reaped = false;
    if !group_gone(pgid) {
        let _ = killpg(pgid, Signal::SIGTERM);
    }
    loop {
        // The command itself is tokio's to reap; the others only after it (waitpid(-pgid)
        // must not take the command's status from tokio).
        if !command_reaped {
            command_reaped = !matches!(child.try_wait(), Ok(None));
        }
        if command_reaped {
            reap_group(pgid);
            if group_gone(pgid) {
                return Ok(());
            }
        }
        match killed_at {
            None if started.elapsed() >= grace => {
                tracing::info!(
                    pgid = pgid.as_raw(),
                    "the process group outlived SIGTERM by the grace period; SIGKILL"
                );
                let _ = killpg(pgid, Signal::SIGKILL);
                killed_at = Some(Instant::now());
            }
            Some(at) if at.elapsed() >= KILL_WAIT => {
                return Err(format!(
                    "process group {} still has members {} after SIGKILL",
                    pgid.as_raw(),
                    humantime::format_duration(KILL_WAIT)
                ));
            }
            _ => {}
        }
        tokio::time::sleep(GROUP_POLL).await;
    }
}

fn fail(code: FailureCode, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
        detail: None,
    }
}

#[async_trait]
impl Backend for Exec {
    fn name(&self) -> &'static str {
        "exec"
    }

    fn concurrency(&self) -> usize {
        self.config.concurrency
    }

    /// Commands may have side effects: an interrupted one is failed, never silently re-run.
    fn restart_policy(&self) -> RestartPolicy {
        RestartPolicy::Fail
    }

    /// Never cached: a command may have side effects or depend on the world outside the job.
    fn deterministic(&self) -> bool {
        false
    }

    /// The runner waits for `run` after a cancel: it returns once the process group is gone.
    fn confirms_cancel(&self) -> bool {
        true
    }

    fn validate(&self, spec: &JobSpec) -> Result<(), AppError> {
        if let Some(bad) = spec.inputs.keys().find(|k| !valid_name(k)) {
            return Err(AppError::invalid(format!(
                "input name {bad:?} must match [A-Za-z0-9._-]{{1,128}}"
            )));
        }
        Ok(())
    }

    async fn run(&self, ctx: &JobContext) -> Result<(), Failure> {
        let io = |e: std::io::Error| fail(FailureCode::Internal, format!("exec backend: {e}"));
        let input_dir = ctx.work_dir.join("inputs");
        let output_dir = ctx.work_dir.join("outputs");
        tokio::fs::create_dir_all(&input_dir).await.map_err(io)?;
        tokio::fs::create_dir_all(&output_dir).await.map_err(io)?;
        let mut inputs = serde_json::Map::new();
        for (name, file) in &ctx.inputs {
            let dest = input_dir.join(name);
            if tokio::fs::hard_link(&file.path, &dest).await.is_err() {
                tokio::fs::copy(&file.path, &dest).await.map_err(io)?;
            }
            inputs.insert(
                name.clone(),
                serde_json::Value::String(dest.display().to_string()),
            );
        }
        let job_json = serde_json::json!({
            "job_id": ctx.job_id,
            "attempt": ctx.attempt,
            "workflow": ctx.spec.workflow,
            "inputs": inputs,
        });

        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&self.config.command)
            .current_dir(&ctx.work_dir)
            .env("OUTLAST_JOB_ID", ctx.job_id.to_string())
            .env("OUTLAST_ATTEMPT", ctx.attempt.to_string())
            .env("OUTLAST_INPUT_DIR", &input_dir)
            .env("OUTLAST_OUTPUT_DIR", &output_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| {
                fail(
                    FailureCode::BackendUnavailable,
                    format!("cannot start the command: {e}"),
                )
            })?;
        let pgid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw)
            .ok_or_else(|| fail(FailureCode::Internal, "the command has no process id"))?;
        let mut group = GroupGuard(Some(pgid));

        let mut stdin = child
            .stdin
            .take()
            .ok_or_else(|| fail(FailureCode::Internal, "no stdin"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| fail(FailureCode::Internal, "no stdout"))?;
        let mut stderr = child
            .stderr
            .take()
            .ok_or_else(|| fail(FailureCode::Internal, "no stderr"))?;
        let body = serde_json::to_vec(&job_json)
            .map_err(|e| fail(FailureCode::Internal, e.to_string()))?;

        let feed = async move {
            // A command that does not read stdin closes it early; that is not an error.
            let _ = stdin.write_all(&body).await;
            drop(stdin);
        };
        let progress = async {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(p) = serde_json::from_str::<ProgressLine>(&line) {
                    ctx.progress(p.progress, p.max, p.label).await?;
                }
            }
            Ok::<(), Failure>(())
        };
        let tail = async move {
            let mut tail: VecDeque<u8> = VecDeque::with_capacity(STDERR_TAIL);
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf).await {
                if n == 0 {
                    break;
                }
                tail.extend(&buf[..n]);
                while tail.len() > STDERR_TAIL {
                    tail.pop_front();
                }
            }
            String::from_utf8_lossy(tail.make_contiguous()).into_owned()
        };
        let run = async {
            let ((), progress, stderr_tail) = tokio::join!(feed, progress, tail);
            progress?;
            let status = child.wait().await.map_err(io)?;
            Ok::<_, Failure>((status, stderr_tail))
        };
        let ended = tokio::select! {
            r = tokio::time::timeout(self.config.timeout, run) => Some(r),
            () = ctx.canceled() => None,
        };
        // Whatever happened, nothing of the group outlives the run (leftovers of a command that
        // exited get the same SIGTERM, grace, SIGKILL).
        let stopped = stop_group(&mut child, pgid, self.config.kill_grace).await;
        group.0 = None;
        if let Err(e) = &stopped {
            tracing::error!(job = %ctx.job_id, error = %e, "could not confirm the command's process group is gone");
            if ended.is_none() {
                metrics::counter!(crate::metrics::CANCELS_UNCONFIRMED, "backend" => "exec")
                    .increment(1);
            }
        }
        let (status, stderr_tail) = match ended {
            None => {
                tracing::info!(job = %ctx.job_id, "the canceled command's process group is gone");
                return Err(fail(FailureCode::CommandFailed, "canceled"));
            }
            Some(Ok(r)) => r?,
            Some(Err(_)) => {
                return Err(Failure {
                    code: FailureCode::Timeout,
                    message: format!(
                        "the command ran longer than {}",
                        humantime::format_duration(self.config.timeout)
                    ),
                    detail: None,
                });
            }
        };
        if !status.success() {
            return Err(Failure {
                code: FailureCode::CommandFailed,
                message: match status.code() {
                    Some(code) => format!("the command exited with status {code}"),
                    None => "the command was killed by a signal".to_owned(),
                },
                detail: Some(
                    serde_json::json!({ "exit_status": status.code(), "stderr_tail": stderr_tail }),
                ),
            });
        }
        let mut entries = tokio::fs::read_dir(&output_dir).await.map_err(io)?;
        let mut files = Vec::new();
        while let Some(entry) = entries.next_entry().await.map_err(io)? {
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type().await.map_err(io)?.is_file() && valid_name(&name) {
                files.push((name, entry.path()));
            }
        }
        files.sort();
        for (name, path) in files {
            ctx.output_file(&name, &mime_for(&name), &path).await?;
        }
        Ok(())
    }
}
