//! Backends run jobs. One trait; `demo` is built in, `exec` runs a command, more (ComfyUI) plug in.

pub mod comfyui;
pub mod demo;
pub mod exec;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use outlast_protocol::{Blob, EventKind, Failure, FailureCode, JobId, JobSpec};

use crate::error::AppError;
use crate::jobs::Jobs;

/// What happens to a job that was running when the gateway stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Queue it again and run it from the start (safe for side-effect-free work).
    Rerun,
    /// Fail it with `interrupted` (work with side effects must not run twice unasked).
    Fail,
    /// Run it again first in line; the backend reattaches to work that went on elsewhere
    /// (a ComfyUI prompt) using its stored [`JobContext::backend_state`].
    Resume,
}

/// An input file of a job, resolved from a complete upload.
#[derive(Debug, Clone)]
pub struct InputFile {
    /// Where the bytes are.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// The uploader's file name, when known.
    pub filename: Option<String>,
    /// SHA-256 of the content (lowercase hex), when the resolver knows it; the result cache
    /// hashes the file itself otherwise.
    pub sha256: Option<String>,
}

/// A job backend.
#[async_trait]
pub trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// The name jobs use in `"backend"`.
    fn name(&self) -> &'static str;

    /// How many jobs may run at once.
    fn concurrency(&self) -> usize;

    /// What to do with a job interrupted by a gateway restart.
    fn restart_policy(&self) -> RestartPolicy;

    /// True when the same workflow and input contents always stand for the same result, so a
    /// completed job may answer an identical later one from its outputs (the result cache).
    /// Backends with side effects must keep the default.
    fn deterministic(&self) -> bool {
        false
    }

    /// Checks a submission cheaply before it is accepted.
    fn validate(&self, spec: &JobSpec) -> Result<(), AppError>;

    /// Why no job of this backend can start now (e.g. every server is unreachable); shown as
    /// the `reason` of queued jobs. Notify the scheduler when it changes.
    fn unavailable(&self) -> Option<String> {
        None
    }

    /// Called once with the scheduler's wake-up: notify it when [`Backend::concurrency`] grows
    /// (e.g. a server came back).
    fn attach_scheduler(&self, _wake: Arc<tokio::sync::Notify>) {}

    /// Runs the job to completion. Cancellation drops this future, so implementations must
    /// release what they hold on drop (e.g. kill their child process).
    async fn run(&self, ctx: &JobContext) -> Result<(), Failure>;
}

/// What a running job can see and do.
#[derive(Debug)]
pub struct JobContext {
    /// The job.
    pub job_id: JobId,
    /// 1 on the first run, higher after restarts.
    pub attempt: u32,
    /// The submission.
    pub spec: Arc<JobSpec>,
    /// Named inputs.
    pub inputs: BTreeMap<String, InputFile>,
    /// A scratch directory for this run, removed afterwards.
    pub work_dir: PathBuf,
    /// Names of outputs an earlier attempt already stored (never store them twice).
    pub existing_outputs: Vec<String>,
    pub(crate) jobs: Arc<Jobs>,
}

fn internal(e: impl std::fmt::Display) -> Failure {
    Failure {
        code: FailureCode::Internal,
        message: format!("could not record job progress: {e}"),
        detail: None,
    }
}

impl JobContext {
    /// The backend's private state stored for this job by an earlier attempt, if any.
    pub async fn backend_state(&self) -> Result<Option<serde_json::Value>, Failure> {
        self.jobs
            .store
            .backend_state(self.job_id)
            .await
            .map_err(internal)
    }

    /// Stores (durably, before returning) state the backend needs to reattach after a restart.
    pub async fn save_backend_state(
        &self,
        state: Option<serde_json::Value>,
    ) -> Result<(), Failure> {
        self.jobs
            .store
            .set_backend_state(self.job_id, state)
            .await
            .map_err(internal)
    }

    /// True once the gateway is stopping its runners: the job stays `running` for recovery, so
    /// a backend must not tear down remote work when its future is dropped now.
    pub fn shutting_down(&self) -> bool {
        self.jobs.stopping_runners()
    }

    /// Stores an event; a job that already ended (canceled meanwhile) stops the backend.
    async fn emit(&self, kind: EventKind) -> Result<(), Failure> {
        match self.jobs.emit(self.job_id, kind).await.map_err(internal)? {
            Some(_) => Ok(()),
            None => Err(Failure {
                code: FailureCode::Internal,
                message: "the job already ended".into(),
                detail: None,
            }),
        }
    }

    /// Reports step progress.
    pub async fn progress(
        &self,
        value: u64,
        max: u64,
        label: Option<String>,
    ) -> Result<(), Failure> {
        self.emit(EventKind::Progress { value, max, label }).await
    }

    /// Sends a small preview image.
    pub async fn preview(&self, mime: &str, data: Vec<u8>) -> Result<(), Failure> {
        self.emit(EventKind::Preview {
            mime: mime.to_owned(),
            data: Blob(data),
        })
        .await
    }

    /// Stores an output from memory and announces it.
    pub async fn output_bytes(&self, name: &str, mime: &str, bytes: &[u8]) -> Result<(), Failure> {
        let info = self
            .jobs
            .outputs
            .put_bytes(self.job_id, name, mime, bytes)
            .await
            .map_err(internal)?;
        self.emit(EventKind::Output(info)).await
    }

    /// Stores an output from a file (moved into storage) and announces it.
    pub async fn output_file(
        &self,
        name: &str,
        mime: &str,
        path: &std::path::Path,
    ) -> Result<(), Failure> {
        let info = self
            .jobs
            .outputs
            .put_file(self.job_id, name, mime, path)
            .await
            .map_err(internal)?;
        self.emit(EventKind::Output(info)).await
    }
}
