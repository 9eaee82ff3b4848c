//! What a running job sees: its spec, inputs and scratch directory, and a [`JobHandle`] through
//! which its events and outputs are stored. A backend never sees the job service itself.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use outlast_protocol::{Blob, EventKind, Failure, FailureCode, JobEvent, JobId, JobSpec};
use tokio_util::sync::CancellationToken;

use crate::error::AppError;
use crate::outputs::OutputStore;
use crate::store::{JobStore, Rejected};

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

/// The small part of the gateway a running job may use: the job store (events, backend
/// state), the output store, and the token that fires when runners stop for shutdown.
#[derive(Debug, Clone)]
pub struct JobHandle {
    /// Durable jobs and events.
    pub store: Arc<dyn JobStore>,
    /// Output files.
    pub outputs: OutputStore,
    stop: CancellationToken,
}

impl JobHandle {
    /// A handle over these stores; `stop` fires when runners are stopped for shutdown.
    pub fn new(store: Arc<dyn JobStore>, outputs: OutputStore, stop: CancellationToken) -> Self {
        Self {
            store,
            outputs,
            stop,
        }
    }

    /// Appends one event; `Ok(None)` when the job is already terminal (the event is dropped).
    pub async fn emit(&self, job: JobId, kind: EventKind) -> Result<Option<JobEvent>, AppError> {
        let mut results = self.store.append(vec![(job, kind)]).await?;
        match results.pop() {
            Some(Ok(event)) => Ok(Some(event)),
            Some(Err(Rejected::AlreadyTerminal)) => Ok(None),
            Some(Err(Rejected::UnknownJob)) | None => Err(AppError::not_found("job")),
        }
    }

    /// True once the gateway is stopping its runners (the grace period is over).
    pub fn shutting_down(&self) -> bool {
        self.stop.is_cancelled()
    }

    /// A token that fires when runners stop; child tokens of it stop single runs.
    pub fn stop_token(&self) -> &CancellationToken {
        &self.stop
    }
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
    /// Where the job's events and outputs go.
    pub handle: JobHandle,
    /// The run's token: fires when the owner cancels the job, and at shutdown (a child of the
    /// handle's stop token). Read it through [`JobContext::canceled`].
    pub cancel: CancellationToken,
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
        self.handle
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
        self.handle
            .store
            .set_backend_state(self.job_id, state)
            .await
            .map_err(internal)
    }

    /// True once the gateway is stopping its runners: the job stays `running` for recovery, so
    /// a backend must not tear down remote work when its future is dropped now.
    pub fn shutting_down(&self) -> bool {
        self.handle.shutting_down()
    }

    /// Resolves once the job's owner canceled it. Never during shutdown: the runner then drops
    /// the run and the job stays `running` for recovery, so remote work must go on.
    pub async fn canceled(&self) {
        self.cancel.cancelled().await;
        if self.shutting_down() {
            std::future::pending::<()>().await;
        }
    }

    /// Stores an event; a job that already ended (canceled meanwhile) stops the backend.
    async fn emit(&self, kind: EventKind) -> Result<(), Failure> {
        match self
            .handle
            .emit(self.job_id, kind)
            .await
            .map_err(internal)?
        {
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
            .handle
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
            .handle
            .outputs
            .put_file(self.job_id, name, mime, path)
            .await
            .map_err(internal)?;
        self.emit(EventKind::Output(info)).await
    }
}
