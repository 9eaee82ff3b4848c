//! Version 1 of the WebSocket protocol: every message a client or the server may send.
//!
//! Subprotocols `outlast.v1.msgpack` (binary frames) and `outlast.v1.json` (text frames)
//! carry exactly these messages. A future `v2` module can live beside this one.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{ErrorBody, ErrorCode};
use crate::ids::{JobId, Offset, Seq, UploadId};
use crate::job::{JobEvent, JobSnapshot, JobSpec, JobState};
use crate::upload::{UploadInfo, UploadLimits};

/// The protocol name sent in `welcome`.
pub const PROTOCOL: &str = "outlast.v1";

/// Every `type` a client may send, for telling "unknown type" from "bad fields".
pub const CLIENT_TYPES: &[&str] = &[
    "submit",
    "submit_batch",
    "subscribe",
    "unsubscribe",
    "cancel",
    "get",
    "ping",
    "upload_create",
    "upload_resume",
    "refresh",
];

/// Messages from client to server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMsg {
    /// Submit a job; answered by `submitted` (or `error` with the same `req`).
    Submit {
        /// Echoed in the answer.
        #[serde(default)]
        req: Option<u64>,
        /// The job.
        job: JobSpec,
    },
    /// Submit 1 to [`MAX_BATCH`] jobs in one round trip; answered by `submitted_batch` with one
    /// answer per job in request order (or by `error` with the same `req` when the batch as a
    /// whole is refused: an empty or too long list). The same semantics as
    /// `POST /v1/jobs/batch`: each job is submitted on its own with its own idempotency key,
    /// and one refused job does not refuse the others.
    SubmitBatch {
        /// Echoed in the answer.
        #[serde(default)]
        req: Option<u64>,
        /// The jobs' specs as sent, each read on its own: a spec that is not a valid
        /// [`JobSpec`] gets its own `invalid_request` answer instead of failing the message.
        jobs: Vec<serde_json::Value>,
    },
    /// Stream a job's events after `after` (all events when absent); answered by `subscribed`.
    Subscribe {
        /// Echoed in the answer.
        #[serde(default)]
        req: Option<u64>,
        /// The job.
        job_id: JobId,
        /// The last sequence number this client saw.
        #[serde(default)]
        after: Option<Seq>,
    },
    /// Stop streaming a job; answered by `unsubscribed`.
    Unsubscribe {
        /// Echoed in the answer.
        #[serde(default)]
        req: Option<u64>,
        /// The job.
        job_id: JobId,
    },
    /// Cancel a job; answered by `cancel_result`. Canceling a finished job is not an error.
    Cancel {
        /// Echoed in the answer.
        #[serde(default)]
        req: Option<u64>,
        /// The job.
        job_id: JobId,
    },
    /// Ask for a job's snapshot; answered by `snapshot`.
    Get {
        /// Echoed in the answer.
        #[serde(default)]
        req: Option<u64>,
        /// The job.
        job_id: JobId,
    },
    /// Application-level ping; answered by `pong` with the same nonce.
    Ping {
        /// Any number.
        nonce: u64,
    },
    /// Create an upload; answered by `upload_status`. Then send chunk frames (see
    /// [`crate::upload`]). With `sha256` set and an identical complete upload of this owner
    /// present, the answer is that upload, already complete: send nothing.
    UploadCreate {
        /// Echoed in the answer.
        #[serde(default)]
        req: Option<u64>,
        /// Total size; absent when not known yet (then it must come before the last chunk).
        #[serde(default)]
        length: Option<u64>,
        /// Free-form text metadata (e.g. `filename`).
        #[serde(default)]
        metadata: BTreeMap<String, String>,
        /// sha256 (64 hex digits) of the whole file, for dedup and verification.
        #[serde(default)]
        sha256: Option<String>,
    },
    /// Continue an upload (after a reconnect, or one begun over tus); answered by
    /// `upload_status` with the durable offset to send from.
    UploadResume {
        /// Echoed in the answer.
        #[serde(default)]
        req: Option<u64>,
        /// The upload.
        upload_id: UploadId,
    },
    /// Replace the connection's credential before it expires (a bearer token of the same
    /// owner); answered by `refreshed`, or `error` (`unauthorized`) leaving the old one in force.
    Refresh {
        /// Echoed in the answer.
        #[serde(default)]
        req: Option<u64>,
        /// The new bearer token (static or signed).
        token: Secret,
    },
}

/// A credential on the wire: serialised as a plain string, never shown by `Debug`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Server messages that are not job events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Control {
    /// First message on every connection.
    Welcome {
        /// Always [`PROTOCOL`].
        protocol: String,
        /// The authenticated owner.
        owner: String,
        /// WebSocket ping (and `heartbeat`) interval in milliseconds.
        heartbeat_ms: u64,
        /// Largest message the server accepts, in bytes.
        max_message_bytes: u64,
    },
    /// Sent every `heartbeat_ms`: the newest sequence number of every subscribed job.
    /// A client that has seen less should expect more events, or resubscribe.
    Heartbeat {
        /// Newest stored sequence number per subscribed job.
        jobs: BTreeMap<JobId, Seq>,
    },
    /// A queued job's current place, sent live to its subscribers: after `subscribed` and the
    /// replayed events, and whenever the place changes (at most once per job per scheduling
    /// round). Not a job event: no `seq`, never stored, never replayed; only the newest one
    /// counts. Ignore one for a job that already left the queue (`started` or terminal).
    Position {
        /// The job.
        job_id: JobId,
        /// Jobs ahead of it for the same backend; 0 means it is next.
        position: u32,
        /// Why it waits, if something holds it besides the jobs ahead.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Answer to `submit`.
    Submitted {
        /// From the request.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<u64>,
        /// The job (the existing one when the idempotency key was seen before).
        job_id: JobId,
        /// False when the idempotency key named an existing job.
        created: bool,
    },
    /// Answer to `submit_batch`: one answer per job, in request order.
    SubmittedBatch {
        /// From the request.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<u64>,
        /// The answers, as many as the request had jobs.
        jobs: Vec<BatchAnswer>,
    },
    /// Answer to `subscribe`; the replayed events follow it.
    Subscribed {
        /// From the request.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<u64>,
        /// The job.
        job_id: JobId,
        /// True when every event after the client's `after` follows. False when that history
        /// is gone: then `snapshot` is set and the events after `snapshot.seq` follow.
        recovered: bool,
        /// The job's state when history could not be replayed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        snapshot: Option<JobSnapshot>,
    },
    /// Answer to `unsubscribe`.
    Unsubscribed {
        /// From the request.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<u64>,
        /// The job.
        job_id: JobId,
    },
    /// Answer to `cancel`: the job's state after the request.
    CancelResult {
        /// From the request.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<u64>,
        /// The job.
        job_id: JobId,
        /// `canceled`, or the terminal state it already had.
        state: JobState,
    },
    /// Answer to `get`.
    Snapshot {
        /// From the request.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<u64>,
        /// The job's state.
        snapshot: JobSnapshot,
    },
    /// Answer to `ping`.
    Pong {
        /// From the request.
        nonce: u64,
    },
    /// A request failed; the connection stays usable.
    Error {
        /// From the request when it could be read.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<u64>,
        /// Stable code.
        code: ErrorCode,
        /// Message for people.
        message: String,
    },
    /// Answer to `refresh`: the new credential is in force.
    Refreshed {
        /// From the request.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<u64>,
        /// When the connection's credential now expires (Unix ms); absent when it does not.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at_ms: Option<u64>,
    },
    /// The server is about to close the connection (shutdown, slow consumer); reconnect and
    /// resubscribe after `retry_ms`.
    Goaway {
        /// Why.
        reason: String,
        /// Suggested delay before reconnecting.
        retry_ms: u64,
    },
    /// Answer to `upload_create` and `upload_resume`: send chunks from `upload.offset`.
    UploadStatus {
        /// From the request.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<u64>,
        /// The upload.
        upload: UploadInfo,
        /// True when `upload_create` found an identical complete upload: nothing to send.
        deduplicated: bool,
        /// Chunk sizing and window.
        limits: UploadLimits,
    },
    /// Every byte of `upload_id` before `offset` is durable (on disk, fsynced).
    UploadAck {
        /// The upload.
        upload_id: UploadId,
        /// Durable offset.
        offset: Offset,
        /// True once the last byte arrived and the digest was checked.
        complete: bool,
    },
    /// Progress of one of this owner's uploads, whichever path (tus or WebSocket) the bytes
    /// take; sent to every connection of the owner.
    UploadProgress {
        /// The upload.
        upload_id: UploadId,
        /// Bytes received so far (not necessarily durable yet; acks and HEAD are).
        offset: Offset,
        /// Total size, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        length: Option<u64>,
        /// Receive rate of the current request or connection.
        bytes_per_sec: u64,
    },
    /// A message whose `type` this version does not know (from a newer gateway): clients
    /// ignore it. Never sent.
    #[serde(other)]
    Unknown,
}

/// Most jobs in one `submit_batch` (and one `POST /v1/jobs/batch`).
pub const MAX_BATCH: usize = 100;

/// One job's answer in `submitted_batch`: what `submitted` or `error` would have said for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BatchAnswer {
    /// Accepted, or found again by its idempotency key.
    Submitted {
        /// The job (the existing one when the idempotency key was seen before).
        job_id: JobId,
        /// False when the idempotency key named an existing job.
        created: bool,
        /// Its state at the time of the answer (`completed` at once for a cached job).
        state: JobState,
    },
    /// Refused; the other jobs of the batch are not affected.
    Refused {
        /// Why.
        error: ErrorBody,
    },
}

/// Messages from server to client: a job event (its `type` is the event type) or a control message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ServerMsg {
    /// `queued`, `started`, `progress`, `preview`, `output`, `completed`, `failed`, `canceled`.
    Event(JobEvent),
    /// Everything else.
    Control(Control),
}

impl From<Control> for ServerMsg {
    fn from(c: Control) -> Self {
        ServerMsg::Control(c)
    }
}

impl From<JobEvent> for ServerMsg {
    fn from(e: JobEvent) -> Self {
        ServerMsg::Event(e)
    }
}
