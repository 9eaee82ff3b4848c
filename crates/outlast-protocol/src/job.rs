//! Jobs on the wire: the submission, the events of a job's stream, and the snapshot folded from them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::blob::Blob;
use crate::ids::{IdempotencyKey, JobId, Seq, UploadId};

/// What a client submits. The same JSON over `POST /v1/jobs` and inside a `submit` message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The backend that runs the job (`demo`, `exec`, ...).
    pub backend: String,
    /// Backend-specific description of the work, e.g. `{"steps": 10, "step_ms": 500}` for `demo`.
    #[serde(default)]
    pub workflow: serde_json::Value,
    /// Named inputs: each value is a complete upload of the same owner.
    #[serde(default)]
    pub inputs: BTreeMap<String, UploadId>,
    /// Makes submission idempotent: the same key (per owner) always names the same job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<IdempotencyKey>,
    /// May a completed identical job (same backend, workflow and input contents) answer this
    /// one from its stored outputs? Default true; only backends that declare themselves
    /// deterministic are ever cached.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub cache: bool,
    /// How often the backend may run the work again after losing it (e.g. a ComfyUI restart
    /// forgot the prompt). Default 0: such a job fails with `backend_unavailable`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u32,
    /// Where to send signed webhooks about this job (`completed`, `failed` and `canceled`
    /// always; `progress` when asked). Without it the owner's configured default applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSpec>,
}

/// A job's webhook: the endpoint and which events besides the terminal ones it wants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSpec {
    /// `http://` or `https://` URL the gateway POSTs to.
    pub url: String,
    /// Events wanted. `completed`, `failed` and `canceled` are always sent, listed or not;
    /// `progress` only when listed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<WebhookEvent>,
    /// At most one `progress` webhook per this many seconds (default 5, at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_interval_s: Option<u32>,
}

/// The default `progress_interval_s`.
pub const DEFAULT_WEBHOOK_PROGRESS_INTERVAL_S: u32 = 5;

impl WebhookSpec {
    /// True when `progress` webhooks were asked for.
    pub fn wants_progress(&self) -> bool {
        self.events.contains(&WebhookEvent::Progress)
    }

    /// The progress coalescing interval in milliseconds.
    pub fn progress_interval_ms(&self) -> u64 {
        u64::from(
            self.progress_interval_s
                .unwrap_or(DEFAULT_WEBHOOK_PROGRESS_INTERVAL_S)
                .max(1),
        ) * 1000
    }
}

/// An event type a webhook can carry; on the wire the body's `type` is `job.<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookEvent {
    /// The job completed (always sent).
    Completed,
    /// The job failed (always sent).
    Failed,
    /// The job was canceled (always sent).
    Canceled,
    /// Step progress, coalesced to at most one per `progress_interval_s`.
    Progress,
}

impl WebhookEvent {
    /// The body's `type`: `job.completed`, `job.failed`, `job.canceled`, `job.progress`.
    pub fn type_name(self) -> &'static str {
        match self {
            WebhookEvent::Completed => "job.completed",
            WebhookEvent::Failed => "job.failed",
            WebhookEvent::Canceled => "job.canceled",
            WebhookEvent::Progress => "job.progress",
        }
    }

    /// The webhook event an event kind produces, if any.
    pub fn of(kind: &EventKind) -> Option<WebhookEvent> {
        match kind {
            EventKind::Completed { .. } => Some(WebhookEvent::Completed),
            EventKind::Failed(_) => Some(WebhookEvent::Failed),
            EventKind::Canceled { .. } => Some(WebhookEvent::Canceled),
            EventKind::Progress { .. } => Some(WebhookEvent::Progress),
            _ => None,
        }
    }
}

fn yes() -> bool {
    true
}

// serde's skip_serializing_if passes a reference.
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_true(v: &bool) -> bool {
    *v
}

#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_zero(v: &u32) -> bool {
    *v == 0
}

impl JobSpec {
    /// A submission for `backend` with `workflow`, no inputs and default options.
    pub fn new(backend: impl Into<String>, workflow: serde_json::Value) -> Self {
        Self {
            backend: backend.into(),
            workflow,
            inputs: BTreeMap::new(),
            idempotency_key: None,
            cache: true,
            retries: 0,
            webhook: None,
        }
    }
}

/// The lifecycle of a job: `queued -> running -> completed | failed | canceled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for a backend slot.
    Queued,
    /// A backend is working on it.
    Running,
    /// Finished; outputs are available.
    Completed,
    /// Finished with a typed failure.
    Failed,
    /// Canceled by its owner.
    Canceled,
}

impl JobState {
    /// Completed, failed and canceled jobs never change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Failed | JobState::Canceled
        )
    }

    /// The lowercase name used on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Canceled => "canceled",
        }
    }
}

/// Why a job failed: a stable machine-readable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureCode {
    /// The backend reported an error while running the work.
    BackendError,
    /// The backend rejected the workflow (e.g. ComfyUI validation errors).
    InvalidWorkflow,
    /// The job ran longer than its time limit.
    Timeout,
    /// The job was running when the gateway stopped, and its backend cannot safely re-run it.
    Interrupted,
    /// A command backend exited with a non-zero status.
    CommandFailed,
    /// The backend is unreachable or lost the job.
    BackendUnavailable,
    /// An unexpected gateway error; details are in the gateway's log.
    Internal,
    /// A job submitted before its input upload finished lost that input (deleted, expired or
    /// failed verification) before it could start.
    InputUnavailable,
    /// A code this client version does not know yet.
    #[serde(other)]
    Unknown,
}

/// A typed job failure: code, human-readable message and optional backend details.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// Stable code for programs.
    pub code: FailureCode,
    /// Message for people.
    pub message: String,
    /// Backend specifics, e.g. `{"exit_status": 2, "stderr_tail": "..."}` or the failing node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

/// A stored output of a job, downloadable at `/v1/jobs/{job_id}/outputs/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputInfo {
    /// File name, unique within the job.
    pub name: String,
    /// Media type, e.g. `image/png`.
    pub mime: String,
    /// Size in bytes.
    pub size: u64,
    /// Hex SHA-256 of the content; the HTTP `ETag` is this value in quotes.
    pub sha256: String,
}

/// The variable part of an event; the `type` field on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    /// The job entered the queue (on submission, or again after a restart); `position` 0 means
    /// it is next. Stored once per entry: later moves are sent live as `position` messages
    /// ([`crate::v1::Control::Position`]), never stored.
    Queued {
        /// Jobs ahead of this one for the same backend when it entered.
        position: u32,
        /// Why it is (again) queued, e.g. after a gateway restart.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// A backend started the job; `attempt` counts re-runs after restarts, from 1.
    Started {
        /// 1 for the first run.
        attempt: u32,
    },
    /// Step progress.
    Progress {
        /// Done so far.
        value: u64,
        /// Total; `value == max` means this phase is done.
        max: u64,
        /// What is being worked on, e.g. a node title.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        label: Option<String>,
    },
    /// A small intermediate image.
    Preview {
        /// Media type of `data`.
        mime: String,
        /// The image bytes (binary in MessagePack, base64 in JSON).
        data: Blob,
    },
    /// An output was stored and can be downloaded.
    Output(OutputInfo),
    /// The job finished successfully. Terminal.
    Completed {
        /// True when the result came from the result cache.
        #[serde(default)]
        cached: bool,
    },
    /// The job failed. Terminal.
    Failed(Failure),
    /// The job was canceled. Terminal.
    Canceled {
        /// Who or what canceled it.
        reason: String,
    },
}

impl EventKind {
    /// The `type` string, also the SSE `event:` field.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Queued { .. } => "queued",
            EventKind::Started { .. } => "started",
            EventKind::Progress { .. } => "progress",
            EventKind::Preview { .. } => "preview",
            EventKind::Output(_) => "output",
            EventKind::Completed { .. } => "completed",
            EventKind::Failed(_) => "failed",
            EventKind::Canceled { .. } => "canceled",
        }
    }

    /// Events that a later event of the same type supersedes; history may drop them.
    /// State changes and outputs are never coalescable.
    pub fn is_coalescable(&self) -> bool {
        matches!(
            self,
            EventKind::Queued { .. } | EventKind::Progress { .. } | EventKind::Preview { .. }
        )
    }

    /// The state a job is in after this event, if the event changes it.
    pub fn state_after(&self) -> Option<JobState> {
        match self {
            EventKind::Queued { .. } => Some(JobState::Queued),
            EventKind::Started { .. } => Some(JobState::Running),
            EventKind::Completed { .. } => Some(JobState::Completed),
            EventKind::Failed(_) => Some(JobState::Failed),
            EventKind::Canceled { .. } => Some(JobState::Canceled),
            EventKind::Progress { .. } | EventKind::Preview { .. } | EventKind::Output(_) => None,
        }
    }

    /// True for `completed`, `failed` and `canceled`.
    pub fn is_terminal(&self) -> bool {
        self.state_after().is_some_and(JobState::is_terminal)
    }
}

/// One event of a job's stream, as stored and as sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    /// The job.
    pub job_id: JobId,
    /// Position in the job's stream, from 1, without gaps except where history was coalesced.
    pub seq: Seq,
    /// When the gateway stored it, Unix milliseconds.
    pub at_ms: u64,
    /// Type and payload.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// A queued job's place in its backend's queue: what `position` messages, snapshots and long-poll
/// answers carry. Live state, never stored as an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuePlace {
    /// Jobs ahead of this one for the same backend; 0 means it is next.
    pub position: u32,
    /// Why it waits, if something holds it besides the jobs ahead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Latest progress, as kept in a snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressInfo {
    /// Done so far.
    pub value: u64,
    /// Total.
    pub max: u64,
    /// What is being worked on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

/// Everything a client needs to show a job, folded from its events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSnapshot {
    /// The job.
    pub job_id: JobId,
    /// Its backend.
    pub backend: String,
    /// Current state.
    pub state: JobState,
    /// The newest event folded in; resume a stream after this.
    pub seq: Seq,
    /// Submission time, Unix milliseconds.
    pub created_at_ms: u64,
    /// Time of the newest event, Unix milliseconds.
    pub updated_at_ms: u64,
    /// Queue position while queued: the live one in the gateway's answers, the one at entry
    /// when folded from stored events alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u32>,
    /// Why a queued job waits (an input still uploading, no backend server reachable, a
    /// restart); like `position`, live in the gateway's answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_reason: Option<String>,
    /// Run attempt (0 before the first start).
    pub attempt: u32,
    /// Latest progress while running (kept after completion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<ProgressInfo>,
    /// Outputs stored so far.
    pub outputs: Vec<OutputInfo>,
    /// Set when the job failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Failure>,
    /// Set when the job was canceled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
    /// True when the result came from the result cache.
    #[serde(default)]
    pub cached: bool,
}

impl JobSnapshot {
    /// Puts a queued job's live place in (the scheduler's, newer than the stored `queued`
    /// event); does nothing for a job that is not queued.
    pub fn with_place(mut self, place: Option<&QueuePlace>) -> Self {
        if let (JobState::Queued, Some(p)) = (self.state, place) {
            self.position = Some(p.position);
            self.queue_reason = p.reason.clone();
        }
        self
    }

    /// The snapshot of a job that has no events yet.
    pub fn new(job_id: JobId, backend: String, created_at_ms: u64) -> Self {
        Self {
            job_id,
            backend,
            state: JobState::Queued,
            seq: Seq::ZERO,
            created_at_ms,
            updated_at_ms: created_at_ms,
            position: None,
            queue_reason: None,
            attempt: 0,
            progress: None,
            outputs: Vec::new(),
            error: None,
            cancel_reason: None,
            cached: false,
        }
    }

    /// Folds one event in. Events at or below `self.seq` are ignored, so folding is idempotent.
    pub fn apply(&mut self, event: &JobEvent) {
        if event.seq <= self.seq {
            return;
        }
        self.seq = event.seq;
        self.updated_at_ms = event.at_ms;
        if let Some(state) = event.kind.state_after() {
            self.state = state;
            if state != JobState::Queued {
                self.position = None;
                self.queue_reason = None;
            }
        }
        match &event.kind {
            EventKind::Queued { position, reason } => {
                self.position = Some(*position);
                self.queue_reason = reason.clone();
            }
            EventKind::Started { attempt } => {
                self.attempt = *attempt;
                self.progress = None;
            }
            EventKind::Progress { value, max, label } => {
                self.progress = Some(ProgressInfo {
                    value: *value,
                    max: *max,
                    label: label.clone(),
                })
            }
            EventKind::Preview { .. } => {}
            EventKind::Output(info) => {
                self.outputs.retain(|o| o.name != info.name);
                self.outputs.push(info.clone());
            }
            EventKind::Completed { cached } => self.cached = *cached,
            EventKind::Failed(failure) => self.error = Some(failure.clone()),
            EventKind::Canceled { reason } => self.cancel_reason = Some(reason.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(job: JobId, seq: u64, kind: EventKind) -> JobEvent {
        JobEvent {
            job_id: job,
            seq: Seq(seq),
            at_ms: seq,
            kind,
        }
    }

    #[test]
    fn a_snapshot_shows_the_live_place_only_while_queued() {
        let job = JobId::random();
        let mut s = JobSnapshot::new(job, "demo".into(), 0);
        let entered = EventKind::Queued {
            position: 7,
            reason: Some("waiting for input".into()),
        };
        s.apply(&event(job, 1, entered));
        assert_eq!(
            (s.position, s.queue_reason.as_deref()),
            (Some(7), Some("waiting for input"))
        );
        // The scheduler's place is newer than the stored entry.
        let live = QueuePlace {
            position: 2,
            reason: None,
        };
        let shown = s.clone().with_place(Some(&live));
        assert_eq!((shown.position, shown.queue_reason), (Some(2), None));
        assert_eq!(shown.seq, Seq(1), "a place is not an event: seq stays");
        assert_eq!(
            s.clone().with_place(None),
            s,
            "no live place: the stored one"
        );
        s.apply(&event(job, 2, EventKind::Started { attempt: 1 }));
        assert_eq!((s.position, s.queue_reason.clone()), (None, None));
        let stale = s.clone().with_place(Some(&live));
        assert_eq!(stale.position, None, "a running job has no place");
    }
}
