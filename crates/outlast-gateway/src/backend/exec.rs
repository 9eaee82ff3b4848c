//! The `exec` backend: runs a configured shell command once per job.
//!
//! Contract with the command (documented in docs/operations.md):
//! - stdin: the job as JSON `{"job_id", "attempt", "workflow", "inputs": {name: path}}`;
//! - environment: `OUTLAST_JOB_ID`, `OUTLAST_ATTEMPT`, `OUTLAST_INPUT_DIR`, `OUTLAST_OUTPUT_DIR`;
//! - stdout: JSON lines `{"progress": 3, "max": 10, "label": "..."}`; other lines are ignored;
//! - outputs: every regular file left in `$OUTLAST_OUTPUT_DIR` after exit status 0;
//! - failure: a non-zero exit is `command_failed` with the status and the tail of stderr;
//!   the time limit is `timeout`; cancel and shutdown kill the whole process group.

use std::collections::VecDeque;
use std::process::Stdio;

use async_trait::async_trait;
use outlast_protocol::{Failure, FailureCode, JobSpec};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

use super::{Backend, JobContext, RestartPolicy};
use crate::config::ExecConfig;
use crate::error::AppError;
use crate::outputs::{mime_for, valid_name};

/// Bytes of stderr kept for the failure message.
const STDERR_TAIL: usize = 4096;

/// The exec backend.
#[derive(Debug)]
pub struct Exec {
    config: ExecConfig,
}

impl Exec {
    /// An exec backend for `config`.
    pub fn new(config: ExecConfig) -> Self {
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

/// Kills the child's whole process group when dropped (cancel, shutdown, timeout).
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
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
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                fail(
                    FailureCode::BackendUnavailable,
                    format!("cannot start the command: {e}"),
                )
            })?;
        let _group = GroupGuard(child.id().and_then(|id| i32::try_from(id).ok()));

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
        let (status, stderr_tail) = match tokio::time::timeout(self.config.timeout, run).await {
            Ok(r) => r?,
            Err(_) => {
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
