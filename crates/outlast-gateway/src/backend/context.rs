//! What a running job sees: its spec, inputs and scratch directory, and a [`JobHandle`] through
//! which its events and outputs are stored. A backend never sees the job service itself.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError};

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
    /// The job's events in emission order (started on the first event).
    pub events: EventQueue,
}

/// Progress queued at most this far ahead of its commits before `progress` waits.
const QUEUE_AHEAD: usize = 64;
/// At most this many queued events go into one append.
const APPEND_MAX: usize = 256;

/// One job's events on their way to the store, in the order the backend emitted them, by one
/// task per run. Progress is queued without waiting for its commit, so a backend that reports
/// faster than the store commits is not held to one event per commit: what queued meanwhile
/// goes into the next append together. Previews and outputs wait for theirs (an output is
/// announced durably before the backend goes on). Nothing is published before it is stored:
/// the store publishes after its commit, as for every append. The runner drains the queue
/// ([`EventQueue::drain`]) before it stores the terminal event, so that comes last.
#[derive(Debug, Default)]
pub struct EventQueue {
    writer: std::sync::OnceLock<Writer>,
}

#[derive(Debug)]
struct Writer {
    tx: tokio::sync::mpsc::Sender<Queued>,
    /// Set once an append found the job ended, or failed: later events are refused.
    stopped: Arc<std::sync::Mutex<Option<Failure>>>,
}

#[derive(Debug)]
struct Queued {
    /// `None`: a marker, answered once everything queued before it was appended.
    kind: Option<EventKind>,
    /// Told the outcome once committed, for an event whose emitter waits.
    done: Option<tokio::sync::oneshot::Sender<Result<(), Failure>>>,
}

fn ended() -> Failure {
    Failure {
        code: FailureCode::Internal,
        message: "the job already ended".into(),
        detail: None,
    }
}

impl EventQueue {
    fn writer(&self, job: JobId, handle: &JobHandle) -> &Writer {
        self.writer.get_or_init(|| {
            let (tx, rx) = tokio::sync::mpsc::channel::<Queued>(QUEUE_AHEAD);
            let stopped = Arc::new(std::sync::Mutex::new(None));
            tokio::spawn(write_queued(
                job,
                Arc::clone(&handle.store),
                rx,
                Arc::clone(&stopped),
            ));
            Writer { tx, stopped }
        })
    }

    /// Queues `kind`; with `wait`, returns once it is stored.
    async fn push(
        &self,
        job: JobId,
        handle: &JobHandle,
        kind: EventKind,
        wait: bool,
    ) -> Result<(), Failure> {
        let writer = self.writer(job, handle);
        if let Some(f) = writer
            .stopped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
        {
            return Err(f);
        }
        let (done, answer) = if wait {
            let (tx, rx) = tokio::sync::oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        writer
            .tx
            .send(Queued {
                kind: Some(kind),
                done,
            })
            .await
            .map_err(|_| internal("the event queue stopped"))?;
        match answer {
            Some(rx) => rx.await.map_err(|_| internal("the event queue stopped"))?,
            None => Ok(()),
        }
    }

    /// Waits until every queued event was appended; later events are refused (the runner
    /// stores the terminal event next).
    pub async fn drain(&self) {
        let Some(writer) = self.writer.get() else {
            return;
        };
        writer
            .stopped
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_or_insert_with(ended);
        let (done, answer) = tokio::sync::oneshot::channel();
        let marker = Queued {
            kind: None,
            done: Some(done),
        };
        if writer.tx.send(marker).await.is_ok() {
            let _ = answer.await;
        }
    }
}

/// The writer task of one job's [`EventQueue`]: appends what queued, in order, until every
/// sender is gone; answers each waiting emitter and marker once its append is done.
async fn write_queued(
    job: JobId,
    store: Arc<dyn JobStore>,
    mut rx: tokio::sync::mpsc::Receiver<Queued>,
    stop: Arc<std::sync::Mutex<Option<Failure>>>,
) {
    let mut items: Vec<Queued> = Vec::new();
    while rx.recv_many(&mut items, APPEND_MAX).await > 0 {
        let is_event: Vec<bool> = items.iter().map(|q| q.kind.is_some()).collect();
        let batch: Vec<(JobId, EventKind)> = items
            .iter_mut()
            .filter_map(|q| Some((job, q.kind.take()?)))
            .collect();
        let appended = batch.len();
        let results: Vec<Result<(), Failure>> = if appended == 0 {
            Vec::new()
        } else {
            match store.append(batch).await {
                Ok(results) => results.into_iter().map(stored).collect(),
                Err(e) => vec![Err(internal(&e)); appended],
            }
        };
        let mut results = results.into_iter();
        for (q, is_event) in items.drain(..).zip(is_event) {
            let result = if is_event {
                results.next().unwrap_or_else(|| Err(ended()))
            } else {
                Ok(())
            };
            if let Err(f) = &result {
                stop.lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get_or_insert_with(|| f.clone());
            }
            if let Some(done) = q.done {
                let _ = done.send(result);
            }
        }
    }
}

/// An append's answer for one event, as its emitter sees it.
fn stored(r: Result<JobEvent, Rejected>) -> Result<(), Failure> {
    match r {
        Ok(_) => Ok(()),
        Err(Rejected::AlreadyTerminal) => Err(ended()),
        Err(Rejected::UnknownJob) => Err(internal("the job is unknown")),
    }
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

    /// Stores an event (returns once it is stored); a job that already ended (canceled
    /// meanwhile) stops the backend.
    async fn emit(&self, kind: EventKind) -> Result<(), Failure> {
        self.events
            .push(self.job_id, &self.handle, kind, true)
            .await
    }

    /// Reports step progress.
    pub async fn progress(
        &self,
        value: u64,
        max: u64,
        label: Option<String>,
    ) -> Result<(), Failure> {
        // Queued: stored (and then published) in order, without waiting for its commit.
        self.events
            .push(
                self.job_id,
                &self.handle,
                EventKind::Progress { value, max, label },
                false,
            )
            .await
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
