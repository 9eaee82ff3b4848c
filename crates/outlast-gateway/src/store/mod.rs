//! Durable job state and event logs, behind one interface.
//!
//! The embedded implementation ([`embedded::EmbeddedStore`], redb + files) is the default. The
//! trait is shaped for a shared implementation on Redis later: `create` is one atomic
//! check-and-insert (a Lua script / MULTI there), `append` assigns sequence numbers atomically
//! per job and notifies subscribers after the write is durable (XADD + PUBLISH), and reads of
//! a stream's start come from one consistent view. The result cache's index (cache key to the
//! completed job that answers it) lives here too: a small key-value table (a plain SET there).

pub mod embedded;
mod index;
pub mod outbox;

use std::sync::Arc;

use async_trait::async_trait;
use outlast_protocol::replay::HistoryBounds;
use outlast_protocol::{EventKind, JobEvent, JobId, JobSnapshot, JobSpec, OwnerId, Seq};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

pub use index::{CacheEntry, CacheKey};
pub use outbox::{Attempt, Delivery, DeliveryStatus};

use crate::error::AppError;

/// Everything stored about a job besides its events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// Who submitted it; nobody else may see it.
    pub owner: OwnerId,
    /// What was submitted.
    pub spec: JobSpec,
    /// SHA-256 of the canonical spec, to tell an idempotent retry from a conflicting reuse of a key.
    pub spec_digest: [u8; 32],
    /// Order of submission, used to rebuild the queue after a restart.
    pub ticket: u64,
    /// The job's state folded from all its events.
    pub snapshot: JobSnapshot,
    /// Every event after this is stored; some coalescable ones at or below it were dropped.
    pub complete_after: Seq,
    /// Number of events currently stored.
    pub stored_events: u64,
    /// `stored_events` right after the last coalescing pass (0 before any): the next pass
    /// waits until the history has grown by half its bound again.
    #[serde(default)]
    pub kept_after_coalescing: u64,
}

impl JobRecord {
    /// What the stored history holds.
    pub fn bounds(&self) -> HistoryBounds {
        HistoryBounds {
            last: self.snapshot.seq,
            complete_after: self.complete_after,
            retained: true,
        }
    }
}

/// The answer to `create`.
#[derive(Debug, Clone)]
pub enum Created {
    /// A new job.
    New(JobRecord),
    /// The idempotency key named this existing job with the same spec.
    Existing(JobRecord),
    /// The idempotency key names a job with a different spec.
    Conflict,
}

/// Why one event of an append batch was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// No such job.
    UnknownJob,
    /// The job already reached a terminal state; nothing may follow it.
    AlreadyTerminal,
}

/// How much of a stream's history one read returns: a page is never held whole when a job has
/// a long history, so a subscriber that resumes from 0 costs one page of memory at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimit {
    /// Most events in a page (at least 1).
    pub events: usize,
    /// A page ends once its events' stored bytes reach this (a page holds at least one
    /// event, so one event larger than this is still a page).
    pub bytes: usize,
}

impl PageLimit {
    /// The page every subscriber reads (WebSocket, SSE, long-poll): 256 events or 256 KiB.
    pub const REPLAY: PageLimit = PageLimit {
        events: 256,
        bytes: 256 * 1024,
    };
}

/// One page of a stream, read from one consistent view.
#[derive(Debug, Clone)]
pub struct StreamStart {
    /// The job.
    pub record: JobRecord,
    /// The first stored events with `seq > after`, in order, within the page limit.
    pub events: Vec<JobEvent>,
    /// True when more events after the last of `events` were stored when this page was read.
    pub more: bool,
}

/// A storage failure (I/O, corruption). Never caused by client input.
#[derive(Debug, thiserror::Error)]
#[error("storage error: {0}")]
pub struct StoreError(pub String);

/// Durable jobs and event logs.
#[async_trait]
pub trait JobStore: Send + Sync + std::fmt::Debug + 'static {
    /// Creates a job, or finds the one its idempotency key names. Atomic.
    async fn create(
        &self,
        owner: OwnerId,
        spec: JobSpec,
        spec_digest: [u8; 32],
        now_ms: u64,
    ) -> Result<Created, StoreError>;

    /// Appends events (possibly for several jobs) in one durable write, assigning each job's next
    /// sequence numbers, then publishes the stored events to live subscribers in order.
    async fn append(
        &self,
        batch: Vec<(JobId, EventKind)>,
    ) -> Result<Vec<Result<JobEvent, Rejected>>, StoreError>;

    /// The job's record.
    async fn get(&self, job: JobId) -> Result<Option<JobRecord>, StoreError>;

    /// The job an owner's idempotency key names, if any.
    async fn job_for_key(&self, owner: OwnerId, key: String) -> Result<Option<JobId>, StoreError>;

    /// The record and the first stored events after `after` (one page within `limit`), from
    /// one consistent view. A reader continues after the page's last event while `more`.
    async fn stream_start(
        &self,
        job: JobId,
        after: Seq,
        limit: PageLimit,
    ) -> Result<Option<StreamStart>, StoreError>;

    /// Every job that is not terminal, in submission order (for recovery after a restart).
    async fn unfinished(&self) -> Result<Vec<JobRecord>, StoreError>;

    /// Durably stores a backend's private state of a running job (e.g. the ComfyUI server and
    /// prompt id), so that the backend can reattach after a gateway restart. `None` clears it.
    async fn set_backend_state(
        &self,
        job: JobId,
        state: Option<serde_json::Value>,
    ) -> Result<(), StoreError>;

    /// The backend state stored for `job`.
    async fn backend_state(&self, job: JobId) -> Result<Option<serde_json::Value>, StoreError>;
    /// Records the completed job that answers `key` from now on, replacing any older entry.
    /// Durable when it returns.
    async fn put_cache_entry(&self, key: CacheKey, entry: CacheEntry) -> Result<(), StoreError>;

    /// The job recorded for `key`, if any (it may have expired: the caller checks the time).
    async fn cache_entry(&self, key: CacheKey) -> Result<Option<CacheEntry>, StoreError>;

    /// Fired after a commit that added or re-armed a webhook delivery.
    fn outbox_wake(&self) -> Arc<Notify>;

    /// Pending deliveries due at `now_ms` (at most `limit`, earliest first), and when the
    /// earliest of the others is due.
    async fn due_deliveries(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<(Vec<Delivery>, Option<u64>), StoreError>;

    /// Stores a delivery's new state (durable when it returns) if the stored one is still at
    /// `delivery.version`, the version it was read at (a delivery not stored yet is at 0); the
    /// stored copy gets the next version. Ok(false), storing nothing, when another save came
    /// first (a resend while an attempt was in flight): read it again and decide anew. Wakes
    /// the outbox when a pending state is stored.
    async fn save_delivery(&self, delivery: Delivery) -> Result<bool, StoreError>;

    /// Every delivery of `job`, in seq order.
    async fn deliveries(&self, job: JobId) -> Result<Vec<Delivery>, StoreError>;

    /// The newest `limit` jobs of `owner`, newest first (a scan of every job: for listings
    /// and checks, not for hot paths).
    async fn owned_by(&self, owner: OwnerId, limit: usize) -> Result<Vec<JobRecord>, StoreError>;
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        AppError::internal(e)
    }
}
