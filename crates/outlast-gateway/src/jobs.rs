//! The job service: submission (idempotent), cancel, stream access with owner checks, the
//! scheduler (a fair queue per backend with a concurrency limit) and the job runners.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use outlast_protocol::replay::{self, ReplayPlan};
use outlast_protocol::{
    ErrorCode, EventKind, Failure, FailureCode, JobEvent, JobId, JobSnapshot, JobSpec, JobState,
    OwnerId, Seq, UploadId,
};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::{Backend, InputFile, JobContext, RestartPolicy};
use crate::cache::ResultCache;
use crate::error::AppError;
use crate::outputs::OutputStore;
use crate::queue::FairQueue;
use crate::store::{Created, JobRecord, JobStore, Rejected, now_ms};

/// Resolves a job input (an upload id) to a complete file of the same owner.
#[async_trait]
pub trait InputResolver: Send + Sync + std::fmt::Debug + 'static {
    /// The file of a complete upload; `not_found` for unknown or foreign ids, `input_not_ready`
    /// for incomplete uploads.
    async fn resolve(&self, owner: &OwnerId, upload: UploadId) -> Result<InputFile, AppError>;
}

/// What a subscriber gets first.
#[derive(Debug, Clone)]
pub struct StreamOpen {
    /// True when `events` are exactly the events after the requested position.
    pub recovered: bool,
    /// Set when history was gone: continue after `snapshot.seq`.
    pub snapshot: Option<JobSnapshot>,
    /// Events to replay.
    pub events: Vec<JobEvent>,
    /// The job's state when the stream was opened.
    pub state: JobState,
}

/// Result of a submission.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// The job.
    pub job_id: JobId,
    /// False when an idempotency key named an existing job.
    pub created: bool,
    /// Its state at the time of the answer.
    pub snapshot: JobSnapshot,
}

#[derive(Debug, Default)]
struct Sched {
    queues: HashMap<&'static str, FairQueue>,
    running: HashMap<JobId, CancellationToken>,
    running_per_backend: HashMap<&'static str, usize>,
    /// The position (and waiting reason) last announced per queued job.
    positions: HashMap<JobId, (u32, Option<String>)>,
}

/// The job service. One per gateway process.
#[derive(Debug)]
pub struct Jobs {
    pub(crate) store: Arc<dyn JobStore>,
    pub(crate) outputs: OutputStore,
    backends: HashMap<&'static str, Arc<dyn Backend>>,
    inputs: Arc<dyn InputResolver>,
    // A std Mutex: only short, synchronous queue operations happen under it.
    sched: Mutex<Sched>,
    wake: Arc<Notify>,
    tracker: TaskTracker,
    /// Fired when the shutdown grace period is over: runners stop and leave their jobs
    /// `running`, so restart recovery applies to them.
    stop_runners: CancellationToken,
    work_root: PathBuf,
    cache: ResultCache,
}

fn spec_digest(spec: &JobSpec) -> [u8; 32] {
    // serde_json maps are ordered (BTreeMap), so this is canonical.
    Sha256::digest(serde_json::to_vec(spec).unwrap_or_default()).into()
}

impl Jobs {
    /// Builds the service; call [`Jobs::recover`] and then spawn [`Jobs::dispatch_loop`].
    pub fn new(
        store: Arc<dyn JobStore>,
        outputs: OutputStore,
        backends: Vec<Arc<dyn Backend>>,
        inputs: Arc<dyn InputResolver>,
        tracker: TaskTracker,
        work_root: PathBuf,
    ) -> Self {
        let wake = Arc::new(Notify::new());
        for backend in &backends {
            backend.attach_scheduler(Arc::clone(&wake));
        }
        Self {
            store,
            outputs,
            backends: backends.into_iter().map(|b| (b.name(), b)).collect(),
            inputs,
            sched: Mutex::new(Sched::default()),
            wake,
            tracker,
            stop_runners: CancellationToken::new(),
            work_root,
            cache: ResultCache::disabled(),
        }
    }

    /// Answers identical submissions from completed jobs' outputs (see [`crate::cache`]).
    pub fn with_cache(mut self, cache: ResultCache) -> Self {
        self.cache = cache;
        self
    }

    fn sched(&self) -> std::sync::MutexGuard<'_, Sched> {
        self.sched.lock().unwrap_or_else(PoisonError::into_inner)
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

    /// The record of `job` if `owner` owns it; `not_found` otherwise (also for foreign jobs).
    pub async fn owned(&self, owner: &OwnerId, job: JobId) -> Result<JobRecord, AppError> {
        match self.store.get(job).await? {
            Some(record) if &record.owner == owner => Ok(record),
            _ => Err(AppError::not_found("job")),
        }
    }

    /// Submits a job. Idempotent per (owner, idempotency key).
    pub async fn submit(&self, owner: &OwnerId, spec: JobSpec) -> Result<Submitted, AppError> {
        let backend = self
            .backends
            .get(spec.backend.as_str())
            .cloned()
            .ok_or_else(|| {
                let mut names: Vec<&str> = self.backends.keys().copied().collect();
                names.sort_unstable();
                AppError::new(
                    ErrorCode::UnknownBackend,
                    format!(
                        "unknown backend {:?}; configured: {}",
                        spec.backend,
                        names.join(", ")
                    ),
                )
            })?;
        backend.validate(&spec)?;
        let mut inputs = BTreeMap::new();
        for (name, upload) in &spec.inputs {
            inputs.insert(name.clone(), self.inputs.resolve(owner, *upload).await?);
        }
        let digest = spec_digest(&spec);
        match self
            .store
            .create(owner.clone(), spec, digest, now_ms())
            .await?
        {
            Created::New(record) => {
                let job_id = record.snapshot.job_id;
                metrics::counter!("outlast_jobs_submitted_total", "backend" => backend.name())
                    .increment(1);
                let cached = self
                    .cache
                    .answer(&*self.store, &self.outputs, &*backend, &record, &inputs)
                    .await;
                if let Some(snapshot) = cached {
                    return Ok(Submitted {
                        job_id,
                        created: true,
                        snapshot,
                    });
                }
                self.sched()
                    .queues
                    .entry(backend.name())
                    .or_default()
                    .push(owner.clone(), job_id);
                self.wake.notify_one();
                Ok(Submitted {
                    job_id,
                    created: true,
                    snapshot: record.snapshot,
                })
            }
            Created::Existing(record) => Ok(Submitted {
                job_id: record.snapshot.job_id,
                created: false,
                snapshot: record.snapshot,
            }),
            Created::Conflict => Err(AppError::new(
                ErrorCode::IdempotencyConflict,
                "this idempotency key was already used for a different job",
            )),
        }
    }

    /// Cancels a job; returns its state afterwards (`canceled`, or the terminal state it had).
    pub async fn cancel(&self, owner: &OwnerId, job: JobId) -> Result<JobState, AppError> {
        let record = self.owned(owner, job).await?;
        if record.snapshot.state.is_terminal() {
            return Ok(record.snapshot.state);
        }
        let backend = record.spec.backend.as_str();
        {
            let mut sched = self.sched();
            if let Some(queue) = sched.queues.get_mut(backend) {
                queue.remove(owner, job);
            }
            sched.positions.remove(&job);
            if let Some(token) = sched.running.get(&job) {
                token.cancel();
            }
        }
        self.wake.notify_one();
        match self
            .emit(
                job,
                EventKind::Canceled {
                    reason: "canceled by its owner".into(),
                },
            )
            .await?
        {
            Some(_) => {
                self.finished(&record, JobState::Canceled);
                Ok(JobState::Canceled)
            }
            None => Ok(self.owned(owner, job).await?.snapshot.state),
        }
    }

    /// Opens a job's stream for `owner` after `after` (None: from the beginning).
    pub async fn open_stream(
        &self,
        owner: &OwnerId,
        job: JobId,
        after: Option<Seq>,
    ) -> Result<StreamOpen, AppError> {
        let start = self
            .store
            .stream_start(job, after.unwrap_or(Seq::ZERO))
            .await?
            .filter(|s| &s.record.owner == owner)
            .ok_or_else(|| AppError::not_found("job"))?;
        let state = start.record.snapshot.state;
        Ok(match replay::plan(after, start.record.bounds()) {
            ReplayPlan::Exact { .. } => StreamOpen {
                recovered: true,
                snapshot: None,
                events: start.events,
                state,
            },
            ReplayPlan::Snapshot { .. } => StreamOpen {
                recovered: false,
                snapshot: Some(start.record.snapshot),
                events: Vec::new(),
                state,
            },
        })
    }

    /// Rebuilds the queue after a start: queued jobs wait again; running jobs are re-run or
    /// failed according to their backend's [`RestartPolicy`].
    pub async fn recover(&self) -> Result<(), AppError> {
        for record in self.store.unfinished().await? {
            let job = record.snapshot.job_id;
            let Some(backend) = self.backends.get(record.spec.backend.as_str()).cloned() else {
                let failure = Failure {
                    code: FailureCode::BackendUnavailable,
                    message: format!("backend {:?} is no longer configured", record.spec.backend),
                    detail: None,
                };
                self.emit(job, EventKind::Failed(failure)).await?;
                continue;
            };
            let mut first_in_line = false;
            if record.snapshot.state == JobState::Running {
                match backend.restart_policy() {
                    RestartPolicy::Resume => {
                        let reason = Some(
                            "the gateway restarted while the job was running; it resumes where it was"
                                .into(),
                        );
                        self.emit(
                            job,
                            EventKind::Queued {
                                position: 0,
                                reason,
                            },
                        )
                        .await?;
                        first_in_line = true;
                    }
                    RestartPolicy::Rerun => {
                        let reason = Some(
                            "the gateway restarted while the job was running; it runs again".into(),
                        );
                        self.emit(
                            job,
                            EventKind::Queued {
                                position: 0,
                                reason,
                            },
                        )
                        .await?;
                    }
                    RestartPolicy::Fail => {
                        let failure = Failure {
                            code: FailureCode::Interrupted,
                            message: "the gateway restarted while the job was running; this backend does not re-run jobs"
                                .into(),
                            detail: None,
                        };
                        self.emit(job, EventKind::Failed(failure)).await?;
                        self.finished(&record, JobState::Failed);
                        continue;
                    }
                }
            }
            let mut sched = self.sched();
            let queue = sched.queues.entry(backend.name()).or_default();
            if first_in_line {
                queue.push_front(record.owner.clone(), job);
            } else {
                queue.push(record.owner.clone(), job);
            }
        }
        Ok(())
    }

    /// True once runners are being stopped for shutdown.
    pub fn stopping_runners(&self) -> bool {
        self.stop_runners.is_cancelled()
    }

    /// Cancels runners at once (used after the grace period, and by tests).
    pub fn stop_runners_now(&self) {
        self.stop_runners.cancel();
    }

    /// Announces queue positions and starts jobs in free slots, until `shutdown`.
    pub async fn dispatch_loop(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            if let Err(e) = self.announce_positions().await {
                tracing::error!(error = %e, "could not store queue positions");
            }
            if shutdown.is_cancelled() {
                break;
            }
            let started = self.take_startable();
            let any = !started.is_empty();
            for (job, backend, token) in started {
                let this = Arc::clone(&self);
                self.tracker
                    .spawn(async move { this.run_job(job, backend, token).await });
            }
            if any {
                continue;
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = shutdown.cancelled() => break,
            }
        }
    }

    async fn announce_positions(&self) -> Result<(), AppError> {
        let changes: Vec<(JobId, EventKind)> = {
            let mut sched = self.sched();
            let mut changes = Vec::new();
            let orders: Vec<(&'static str, Vec<JobId>)> =
                sched.queues.iter().map(|(b, q)| (*b, q.order())).collect();
            for (backend, order) in orders {
                metrics::gauge!("outlast_queue_depth", "backend" => backend)
                    .set(order.len() as f64);
                let reason = self.backends.get(backend).and_then(|b| b.unavailable());
                for (i, job) in order.into_iter().enumerate() {
                    let now = (u32::try_from(i).unwrap_or(u32::MAX), reason.clone());
                    if sched.positions.get(&job) != Some(&now) {
                        sched.positions.insert(job, now.clone());
                        changes.push((
                            job,
                            EventKind::Queued {
                                position: now.0,
                                reason: now.1,
                            },
                        ));
                    }
                }
            }
            changes
        };
        if !changes.is_empty() {
            self.store.append(changes).await?;
        }
        Ok(())
    }

    fn take_startable(&self) -> Vec<(JobId, Arc<dyn Backend>, CancellationToken)> {
        let mut sched = self.sched();
        let mut started = Vec::new();
        for backend in self.backends.values() {
            loop {
                let running = sched
                    .running_per_backend
                    .get(backend.name())
                    .copied()
                    .unwrap_or(0);
                if running >= backend.concurrency() {
                    break;
                }
                let Some((_, job)) = sched
                    .queues
                    .get_mut(backend.name())
                    .and_then(FairQueue::pop)
                else {
                    break;
                };
                let token = self.stop_runners.child_token();
                sched.running.insert(job, token.clone());
                sched.positions.remove(&job);
                *sched.running_per_backend.entry(backend.name()).or_default() += 1;
                started.push((job, Arc::clone(backend), token));
            }
        }
        started
    }

    async fn run_job(
        self: Arc<Self>,
        job: JobId,
        backend: Arc<dyn Backend>,
        cancel: CancellationToken,
    ) {
        let name = backend.name();
        metrics::gauge!("outlast_jobs_running", "backend" => name).increment(1.0);
        if let Err(e) = Arc::clone(&self).run_job_inner(job, backend, &cancel).await {
            tracing::error!(%job, error = %e, "job runner failed");
        }
        metrics::gauge!("outlast_jobs_running", "backend" => name).decrement(1.0);
        {
            let mut sched = self.sched();
            sched.running.remove(&job);
            if let Some(n) = sched.running_per_backend.get_mut(name) {
                *n = n.saturating_sub(1);
            }
        }
        self.wake.notify_one();
    }

    async fn run_job_inner(
        self: Arc<Self>,
        job: JobId,
        backend: Arc<dyn Backend>,
        cancel: &CancellationToken,
    ) -> Result<(), AppError> {
        let record = self
            .store
            .get(job)
            .await?
            .ok_or_else(|| AppError::not_found("job"))?;
        let attempt = record.snapshot.attempt + 1;
        if self
            .emit(job, EventKind::Started { attempt })
            .await?
            .is_none()
        {
            return Ok(()); // canceled before it started
        }
        tracing::info!(%job, backend = backend.name(), attempt, "job started");
        let mut inputs = BTreeMap::new();
        for (name, upload) in &record.spec.inputs {
            match self.inputs.resolve(&record.owner, *upload).await {
                Ok(file) => {
                    inputs.insert(name.clone(), file);
                }
                Err(e) => {
                    let failure = Failure {
                        code: FailureCode::BackendError,
                        message: format!("input {name:?} is no longer available: {}", e.message),
                        detail: None,
                    };
                    self.emit(job, EventKind::Failed(failure)).await?;
                    self.finished(&record, JobState::Failed);
                    return Ok(());
                }
            }
        }
        let work_dir = self.work_root.join(format!("{job}-{attempt}"));
        tokio::fs::create_dir_all(&work_dir)
            .await
            .map_err(AppError::internal)?;
        let ctx = JobContext {
            job_id: job,
            attempt,
            spec: Arc::new(record.spec.clone()),
            inputs,
            work_dir: work_dir.clone(),
            existing_outputs: record
                .snapshot
                .outputs
                .iter()
                .map(|o| o.name.clone())
                .collect(),
            jobs: Arc::clone(&self),
        };
        let outcome = tokio::select! {
            r = backend.run(&ctx) => Some(r),
            // Cancel already stored `canceled`; shutdown leaves the job `running` for recovery.
            () = cancel.cancelled() => None,
        };
        drop(ctx);
        let _ = tokio::fs::remove_dir_all(&work_dir).await;
        let (kind, state) = match outcome {
            None => return Ok(()),
            Some(Ok(())) => (EventKind::Completed { cached: false }, JobState::Completed),
            Some(Err(failure)) => (EventKind::Failed(failure), JobState::Failed),
        };
        if state == JobState::Completed {
            let (store, inputs) = (&*self.store, &*self.inputs);
            self.cache.remember(store, inputs, &*backend, &record).await;
        }
        if self.emit(job, kind).await?.is_some() {
            if let Err(e) = self.store.set_backend_state(job, None).await {
                tracing::warn!(%job, error = %e, "could not clear the backend state");
            }
            tracing::info!(%job, state = state.as_str(), "job finished");
            self.finished(&record, state);
        }
        Ok(())
    }

    fn finished(&self, record: &JobRecord, state: JobState) {
        let backend = record.spec.backend.clone();
        let secs = now_ms().saturating_sub(record.snapshot.created_at_ms) as f64 / 1000.0;
        metrics::counter!("outlast_jobs_finished_total", "backend" => backend.clone(), "state" => state.as_str()).increment(1);
        metrics::histogram!("outlast_job_duration_seconds", "backend" => backend).record(secs);
    }
}

/// The resolver used until an upload store is configured: no upload exists.
#[derive(Debug)]
pub struct NoUploads;

#[async_trait]
impl InputResolver for NoUploads {
    async fn resolve(&self, _owner: &OwnerId, _upload: UploadId) -> Result<InputFile, AppError> {
        Err(AppError::not_found("upload"))
    }
}
