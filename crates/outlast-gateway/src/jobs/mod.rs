//! The job service: submission (idempotent), cancel, stream access with owner checks, restart
//! recovery, the sweep for stranded jobs and the dispatch loop. The scheduling decisions live
//! in [`scheduler`], the runs in [`runner`], the queue discipline in [`queue`], the result cache
//! in [`cache`] and the healing of jobs whose store state and queue disagree in [`heal`]
//! (its bookkeeping in [`admission`]).

pub mod admission;
pub mod bounds;
pub mod cache;
pub mod heal;
pub mod pages;
pub mod queue;
mod runner;
pub mod scheduler;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use outlast_protocol::replay::{self, ReplayPlan};
use outlast_protocol::{
    ErrorCode, EventKind, Failure, FailureCode, JobEvent, JobId, JobSnapshot, JobSpec, JobState,
    OwnerId, QueuePlace, Seq, UploadId,
};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use tokio::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::{Backend, InputResolver, JobHandle, Readiness};
use crate::clock::{now_ms, sleep_until_opt};
use crate::error::AppError;
use crate::hub::{Hub, LivePlace};
use crate::metrics as m;
use crate::outputs::OutputStore;
use crate::store::{Created, JobRecord, JobStore, PageLimit};
use crate::webhooks::WebhookPolicy;
use cache::ResultCache;
use scheduler::{Scheduler, Waiting};

/// Moved queue places are sent live at most this often (see [`Jobs::dispatch_loop`]).
pub const PLACE_INTERVAL: Duration = Duration::from_millis(250);

/// The reason stored with `canceled` when the owner canceled the job.
const CANCEL_REASON: &str = "canceled by its owner";

/// What a subscriber gets first.
#[derive(Debug, Clone)]
pub struct StreamOpen {
    /// True when `events` are exactly the events after the requested position.
    pub recovered: bool,
    /// Set when history was gone: continue after `snapshot.seq`.
    pub snapshot: Option<JobSnapshot>,
    /// Events to replay: one page ([`PageLimit::REPLAY`]), never the whole of a long history.
    pub events: Vec<JobEvent>,
    /// The job's state when the stream was opened.
    pub state: JobState,
    /// The queued job's live place when the stream was opened (none when it is not queued or
    /// not announced yet); send it after the replayed events.
    pub place: Option<QueuePlace>,
    /// The scheduler's round at that time: live places of this round or earlier are stale.
    pub round: u64,
    /// More stored events follow this page: read on after it ([`pages::Pages`] does).
    pub more: bool,
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

/// The job service. One per gateway process.
#[derive(Debug)]
pub struct Jobs {
    /// The job store; also what runners store through. `handle.stop_token()` fires when the
    /// shutdown grace period is over: runners stop and leave their jobs `running`, so restart
    /// recovery applies to them.
    handle: JobHandle,
    backends: HashMap<&'static str, Arc<dyn Backend>>,
    inputs: Arc<dyn InputResolver>,
    // A std Mutex: only short, synchronous queue operations happen under it (and the hub's
    // publication of live places, itself a short std-locked map operation).
    sched: Mutex<Scheduler>,
    /// Where live queue places go (the same channels as stored events).
    hub: Arc<Hub>,
    wake: Arc<Notify>,
    tracker: TaskTracker,
    work_root: PathBuf,
    cache: ResultCache,
    webhooks: WebhookPolicy,
    /// Per-owner bounds on new jobs (queued cap, rate).
    bounds: bounds::Bounds,
    /// Submissions between their store commit and their queueing (see [`heal`]).
    in_flight: admission::InFlight,
}

/// The digest `submit` stores with a job: tells an idempotent retry from a conflicting reuse of
/// its key.
pub fn spec_digest(spec: &JobSpec) -> [u8; 32] {
    // serde_json maps are ordered (BTreeMap), so this is canonical.
    Sha256::digest(serde_json::to_vec(spec).unwrap_or_default()).into()
}

impl Jobs {
    /// Builds the service; call [`Jobs::recover`] and then spawn [`Jobs::dispatch_loop`].
    /// `hub` is the one the store publishes to: live places travel beside stored events.
    pub fn new(
        store: Arc<dyn JobStore>,
        hub: Arc<Hub>,
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
        inputs.watch(Arc::clone(&wake));
        Self {
            handle: JobHandle::new(store, outputs, CancellationToken::new()),
            backends: backends.into_iter().map(|b| (b.name(), b)).collect(),
            inputs,
            sched: Mutex::new(Scheduler::default()),
            hub,
            wake,
            tracker,
            work_root,
            cache: ResultCache::disabled(),
            webhooks: WebhookPolicy::default(),
            bounds: bounds::Bounds::default(),
            in_flight: admission::InFlight::default(),
        }
    }

    /// Bounds each owner's queued jobs and new jobs per second.
    pub fn with_bounds(mut self, bounds: bounds::Bounds) -> Self {
        self.bounds = bounds;
        self
    }

    /// Refuses a new job beyond the owner's bounds (429 with `Retry-After`); a repeat of a
    /// known idempotency key always passes, so a client re-attaching is never refused.
    /// True when it took a new-job token (given back if the job turns out to exist).
    async fn check_bounds(&self, owner: &OwnerId, spec: &JobSpec) -> Result<bool, AppError> {
        let max = self.bounds.max_queued;
        let refusal = if max > 0 && self.sched().queued_of(owner) >= max {
            Some((
                "queued",
                AppError::new(
                    ErrorCode::LimitExceeded,
                    format!("at most {max} queued jobs per owner; wait until some have started"),
                )
                .retry_after(5),
            ))
        } else {
            self.bounds
                .try_take(owner, std::time::Instant::now())
                .err()
                .map(|wait| {
                    let e = AppError::new(
                        ErrorCode::LimitExceeded,
                        "too many new jobs per second for this owner",
                    );
                    ("rate", e.retry_after(wait))
                })
        };
        let Some((reason, e)) = refusal else {
            return Ok(self.bounds.limits_rate());
        };
        if let Some(key) = &spec.idempotency_key
            && self
                .handle
                .store
                .job_for_key(owner.clone(), key.as_str().to_owned())
                .await?
                .is_some()
        {
            return Ok(false);
        }
        metrics::counter!(m::JOBS_REFUSED, "reason" => reason).increment(1);
        Err(e)
    }

    /// Applies the webhook rules (owner defaults, egress, secrets) to submissions.
    pub fn with_webhooks(mut self, webhooks: WebhookPolicy) -> Self {
        self.webhooks = webhooks;
        self
    }

    /// Answers identical submissions from completed jobs' outputs (see [`crate::cache`]).
    pub fn with_cache(mut self, cache: ResultCache) -> Self {
        self.cache = cache;
        self
    }

    fn sched(&self) -> std::sync::MutexGuard<'_, Scheduler> {
        self.sched.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The job store.
    pub fn store(&self) -> &Arc<dyn JobStore> {
        &self.handle.store
    }

    /// The output store.
    pub fn outputs(&self) -> &OutputStore {
        &self.handle.outputs
    }

    /// Appends one event; `Ok(None)` when the job is already terminal (the event is dropped).
    pub async fn emit(&self, job: JobId, kind: EventKind) -> Result<Option<JobEvent>, AppError> {
        self.handle.emit(job, kind).await
    }

    /// The record of `job` if `owner` owns it; `not_found` otherwise (also for foreign jobs).
    pub async fn owned(&self, owner: &OwnerId, job: JobId) -> Result<JobRecord, AppError> {
        match self.handle.store.get(job).await? {
            Some(record) if &record.owner == owner => Ok(record),
            _ => Err(AppError::not_found("job")),
        }
    }

    /// The snapshot of `job` if `owner` owns it, with its live queue place.
    pub async fn snapshot(&self, owner: &OwnerId, job: JobId) -> Result<JobSnapshot, AppError> {
        let record = self.owned(owner, job).await?;
        let (place, _) = self.sched().place_of(job);
        Ok(record.snapshot.with_place(place.as_ref()))
    }

    /// The newest `limit` jobs of `owner`, newest first, with their live queue places.
    pub async fn list(&self, owner: &OwnerId, limit: usize) -> Result<Vec<JobSnapshot>, AppError> {
        let records = self.handle.store.owned_by(owner.clone(), limit).await?;
        let sched = self.sched();
        Ok(records
            .into_iter()
            .map(|r| {
                let (place, _) = sched.place_of(r.snapshot.job_id);
                r.snapshot.with_place(place.as_ref())
            })
            .collect())
    }

    /// Submits a job. Idempotent per (owner, idempotency key).
    ///
    /// Creating the job in the store and queueing it run in a task on the gateway's tracker
    /// that the caller only awaits: a request dropped mid-way (its client reset the connection)
    /// drops this future, never that task, so a stored job is always queued (or answered from
    /// the cache). Shutdown waits for the task like for any other.
    pub async fn submit(
        self: &Arc<Self>,
        owner: &OwnerId,
        spec: JobSpec,
    ) -> Result<Submitted, AppError> {
        let this = Arc::clone(self);
        let owner = owner.clone();
        self.tracker
            .spawn(async move { this.admit(&owner, spec).await })
            .await
            .map_err(AppError::internal)?
    }

    /// Validates, creates (or finds) and queues a job: the body of [`Jobs::submit`].
    async fn admit(&self, owner: &OwnerId, mut spec: JobSpec) -> Result<Submitted, AppError> {
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
        self.webhooks.prepare(owner, &mut spec)?;
        // Inputs still uploading do not refuse the job: it waits for them in the queue.
        let mut inputs = BTreeMap::new();
        let mut pending = Vec::new();
        for (name, upload) in &spec.inputs {
            match self.inputs.check(owner, *upload).await? {
                Readiness::Ready(file) => {
                    inputs.insert(name.clone(), file);
                }
                Readiness::Pending { .. } => pending.push(*upload),
            }
        }
        let took_token = self.check_bounds(owner, &spec).await?;
        let digest = spec_digest(&spec);
        // Marks this (owner, key) as being submitted until the job is queued, so a concurrent
        // resubmit does not take the job for a stranded one.
        let key = self
            .in_flight
            .submitting(owner, spec.idempotency_key.as_ref());
        match self
            .handle
            .store
            .create(owner.clone(), spec, digest, now_ms())
            .await?
        {
            Created::New(record) => {
                let job_id = record.snapshot.job_id;
                let _admitting = self.in_flight.admitting(job_id);
                metrics::counter!(m::JOBS_SUBMITTED, "backend" => backend.name()).increment(1);
                let (store, outputs) = (&*self.handle.store, &self.handle.outputs);
                let cached = match pending.is_empty() {
                    true => {
                        self.cache
                            .answer(store, outputs, &*backend, &record, &inputs)
                            .await
                    }
                    false => None,
                };
                if let Some(snapshot) = cached {
                    return Ok(Submitted {
                        job_id,
                        created: true,
                        snapshot,
                    });
                }
                {
                    let mut sched = self.sched();
                    let _ = sched.enqueue(backend.name(), owner.clone(), job_id);
                    let waiting = Waiting {
                        owner: owner.clone(),
                        uploads: pending,
                    };
                    sched.set_waiting(job_id, Some(waiting));
                }
                self.wake.notify_one();
                Ok(Submitted {
                    job_id,
                    created: true,
                    snapshot: record.snapshot,
                })
            }
            Created::Existing(record) => {
                // A repeat creates nothing: it gives back the new-job token it took.
                if took_token {
                    self.bounds.give_back(owner);
                }
                // A job stored but unknown to the scheduler is stranded (by a bug, or a gateway
                // older than this one): the resubmit queues it.
                let job_id = record.snapshot.job_id;
                if !record.snapshot.state.is_terminal() && !key.shared() {
                    self.heal(job_id, admission::FoundBy::Resubmit).await?;
                }
                Ok(Submitted {
                    job_id,
                    created: false,
                    snapshot: record.snapshot,
                })
            }
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
        let running = self
            .sched()
            .cancel(record.spec.backend.as_str(), owner, job);
        self.wake.notify_one();
        if running {
            // Its runner stores `canceled` once the work has stopped (see `runner`).
            return self.await_stop(owner, job).await;
        }
        match self
            .emit(
                job,
                EventKind::Canceled {
                    reason: CANCEL_REASON.into(),
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

    /// Opens a job's stream for `owner` after `after` (None: from the beginning): the first
    /// page of what follows `after`, or the snapshot when that history is gone.
    pub async fn open_stream(
        &self,
        owner: &OwnerId,
        job: JobId,
        after: Option<Seq>,
    ) -> Result<StreamOpen, AppError> {
        let start = self
            .handle
            .store
            .stream_start(job, after.unwrap_or(Seq::ZERO), PageLimit::REPLAY)
            .await?
            .filter(|s| &s.record.owner == owner)
            .ok_or_else(|| AppError::not_found("job"))?;
        let state = start.record.snapshot.state;
        // Read after the store: a place announced before that read was published before it too,
        // so `round` covers every place already in the subscriber's channel.
        let (place, round) = match state {
            JobState::Queued => self.sched().place_of(job),
            _ => (None, self.sched().place_of(job).1),
        };
        Ok(match replay::plan(after, start.record.bounds()) {
            ReplayPlan::Exact { .. } => StreamOpen {
                recovered: true,
                snapshot: None,
                events: start.events,
                state,
                place,
                round,
                more: start.more,
            },
            // The snapshot stands for everything up to its seq, which is the newest stored.
            ReplayPlan::Snapshot { .. } => StreamOpen {
                recovered: false,
                snapshot: Some(start.record.snapshot.with_place(place.as_ref())),
                events: Vec::new(),
                state,
                place,
                round,
                more: false,
            },
        })
    }

    /// Rebuilds the queue after a start: queued jobs wait again; running jobs are re-run or
    /// failed according to their backend's [`crate::backend::RestartPolicy`].
    pub async fn recover(&self) -> Result<(), AppError> {
        for record in self.handle.store.unfinished().await? {
            self.requeue(&record, admission::Cause::Restart).await?;
        }
        Ok(())
    }

    /// True once runners are being stopped for shutdown.
    pub fn stopping_runners(&self) -> bool {
        self.handle.shutting_down()
    }

    /// Cancels runners at once (used after the grace period, and by tests).
    pub fn stop_runners_now(&self) {
        self.handle.stop_token().cancel();
    }

    /// The inputs of `spec` whose uploads are still in progress (errors count as not pending:
    /// the run then reports them).
    async fn pending_inputs(&self, owner: &OwnerId, spec: &JobSpec) -> Vec<UploadId> {
        let mut pending = Vec::new();
        for upload in spec.inputs.values() {
            if let Ok(Readiness::Pending { .. }) = self.inputs.check(owner, *upload).await {
                pending.push(*upload);
            }
        }
        pending
    }

    /// Looks again at jobs waiting for uploads: ready ones may start, and one whose upload was
    /// deleted, expired or failed verification fails with `input_unavailable`.
    async fn recheck_waiting(&self) -> Result<(), AppError> {
        let waiting = self.sched().waiting();
        for (job, w) in waiting {
            let mut still = Vec::new();
            let mut lost = None;
            for upload in &w.uploads {
                match self.inputs.check(&w.owner, *upload).await {
                    Ok(Readiness::Ready(_)) => {}
                    Ok(Readiness::Pending { .. }) => still.push(*upload),
                    Err(e) => {
                        lost = Some((*upload, e));
                        break;
                    }
                }
            }
            let Some((upload, e)) = lost else {
                self.sched().refresh_waiting(job, still);
                continue;
            };
            let Some(record) = self.handle.store.get(job).await? else {
                continue;
            };
            self.sched()
                .cancel(record.spec.backend.as_str(), &record.owner, job);
            let failure = Failure {
                code: FailureCode::InputUnavailable,
                message: format!(
                    "input {upload} is no longer available ({}): {}",
                    e.code.as_str(),
                    e.message
                ),
                detail: None,
            };
            if self.emit(job, EventKind::Failed(failure)).await?.is_some() {
                self.finished(&record, JobState::Failed);
            }
        }
        Ok(())
    }

    /// Announces queue positions and starts jobs in free slots, until `shutdown`.
    ///
    /// Moved places go out at most once per [`PLACE_INTERVAL`]: a burst of starts, finishes
    /// and cancels runs a round each and moves every queued job each time, which would send
    /// every subscriber of every queued job a `position` per round. The first move after a
    /// quiet interval goes out at once; moves within the interval wait for one trailing round
    /// that sends each moved job's newest place. Jobs entering the queue are never held back.
    pub async fn dispatch_loop(self: Arc<Self>, shutdown: CancellationToken) {
        // When moved places were last sent.
        let mut moves_sent: Option<Instant> = None;
        loop {
            if let Err(e) = self.recheck_waiting().await {
                tracing::error!(error = %e, "could not look at jobs waiting for uploads");
            }
            let now = Instant::now();
            // While set, moves are held back, and a trailing round is due then.
            let held_until = moves_sent
                .map(|at| at + PLACE_INTERVAL)
                .filter(|until| *until > now);
            match self.announce_positions(held_until.is_none()).await {
                Ok(moved) if moved > 0 => moves_sent = Some(now),
                Ok(_) => {}
                Err(e) => tracing::error!(error = %e, "could not store queue entries"),
            }
            if shutdown.is_cancelled() {
                break;
            }
            let started = self.take_startable();
            let any = !started.is_empty();
            for start in started {
                let Some(backend) = self.backends.get(start.backend).cloned() else {
                    continue;
                };
                let this = Arc::clone(&self);
                self.tracker
                    .spawn(async move { this.run_job(start.job, backend, start.token).await });
            }
            if any {
                continue;
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = sleep_until_opt(held_until) => {}
                () = shutdown.cancelled() => break,
            }
        }
    }

    /// One announcement round: stores a `queued` event for each job that entered the queue and,
    /// with `moves`, sends every moved job's new place live (nothing stored), so a queue of N
    /// jobs costs O(N) stored events however often it shifts. Returns how many places moved.
    async fn announce_positions(&self, moves: bool) -> Result<usize, AppError> {
        let (entered, depths, moved) = {
            let mut sched = self.sched();
            let places = sched.place_changes(
                |b| self.backends.get(b).and_then(|b| b.unavailable()),
                moves,
            );
            let moved = places.moved.len();
            // Published under the scheduler's lock: a job leaves the queue (start, cancel) under
            // it too, before its `started` or `canceled` is stored, so no place of a job can
            // follow its leaving in a subscriber's channel.
            for (job_id, place) in places.moved {
                self.hub.publish_place(LivePlace {
                    job_id,
                    place,
                    round: places.round,
                });
            }
            (places.entered, places.depths, moved)
        };
        for (backend, depth) in depths {
            metrics::gauge!(m::QUEUE_DEPTH, "backend" => backend).set(depth as f64);
        }
        if entered.is_empty() {
            return Ok(moved);
        }
        let jobs: Vec<JobId> = entered.iter().map(|(job, _)| *job).collect();
        let batch = entered
            .into_iter()
            .map(|(job, p)| {
                let kind = EventKind::Queued {
                    position: p.position,
                    reason: p.reason,
                };
                (job, kind)
            })
            .collect();
        if let Err(e) = self.handle.store.append(batch).await {
            // Not stored: the next round announces these jobs as entering again.
            self.sched().forget_entered(jobs);
            return Err(e.into());
        }
        Ok(moved)
    }

    fn take_startable(&self) -> Vec<scheduler::Start> {
        let slots: Vec<(&'static str, usize)> = self
            .backends
            .values()
            .map(|b| (b.name(), b.concurrency()))
            .collect();
        let stop = self.handle.stop_token().clone();
        self.sched().take_startable(&slots, || stop.child_token())
    }
}
