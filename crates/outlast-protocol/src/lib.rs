//! Outlast's wire protocol: typed ids, every message, MessagePack/JSON codecs and the sans-IO
//! logic (sequence replay and the live cursor, keep-alive deadlines, client resume bookkeeping,
//! tus request classification, upload ack cadence, close codes) shared by the
//! gateway and its clients.
//!
//! This crate does no I/O, owns no clock and has no async runtime: callers pass `now` in and
//! act on what the state machines return.

pub mod blob;
pub mod client;
pub mod close;
pub mod codec;
pub mod error;
pub mod ids;
pub mod job;
pub mod keepalive;
pub mod replay;
pub mod tus;
pub mod upload;
pub mod v1;

pub use blob::Blob;
pub use codec::{Codec, DecodeError, Frame};
pub use error::{ErrorBody, ErrorCode};
pub use ids::{IdempotencyKey, JobId, Offset, OwnerId, Seq, UploadId};
pub use job::{
    EventKind, Failure, FailureCode, JobEvent, JobSnapshot, JobSpec, JobState, OutputInfo,
    ProgressInfo, QueuePlace, WebhookEvent, WebhookSpec,
};
