//! Live fan-out of stored events to subscribers. Only an optimisation over re-reading the
//! store: a subscriber that lags behind its channel re-reads from the store, so nothing is lost.
//! The same channels carry queued jobs' live places ([`LivePlace`]), which are never stored:
//! a subscriber that misses one reads the current place from the scheduler instead.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use outlast_protocol::v1::{Control, ServerMsg};
use outlast_protocol::{Codec, Frame, JobEvent, JobId, QueuePlace};

use crate::topics::{Subscription, Topics};

/// A stored event as published. Its wire encodings are computed once, by the first subscriber
/// that needs them, and shared by all others (1,000 subscribers: one encode, not 1,000).
#[derive(Debug)]
pub struct Published {
    /// The event.
    pub event: JobEvent,
    msgpack: OnceLock<Bytes>,
    json: OnceLock<Bytes>,
}

impl Published {
    /// Wraps a stored event.
    pub fn new(event: JobEvent) -> Self {
        Self {
            event,
            msgpack: OnceLock::new(),
            json: OnceLock::new(),
        }
    }

    /// The event encoded for `codec` (MessagePack bytes, or UTF-8 JSON bytes).
    pub fn encoded(&self, codec: Codec) -> Bytes {
        let cell = match codec {
            Codec::MsgPack => &self.msgpack,
            Codec::Json => &self.json,
        };
        cell.get_or_init(
            || match codec.encode(&ServerMsg::Event(self.event.clone())) {
                Ok(Frame::Binary(b)) => Bytes::from(b),
                Ok(Frame::Text(t)) => Bytes::from(t),
                // Protocol types always encode; an empty payload would only be dropped by clients.
                Err(_) => Bytes::new(),
            },
        )
        .clone()
    }
}

impl std::ops::Deref for Published {
    type Target = JobEvent;

    fn deref(&self) -> &JobEvent {
        &self.event
    }
}

/// A queued job's place as the scheduler announced it in one round. Sent live, never stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LivePlace {
    /// The job.
    pub job_id: JobId,
    /// Its place.
    pub place: QueuePlace,
    /// The scheduler's announcement round. Rounds only grow, and a round's places are published
    /// before the next round is counted: a subscriber that has shown round `r` drops any place
    /// of a round `<= r` as stale.
    pub round: u64,
}

impl LivePlace {
    /// The `position` message.
    pub fn message(&self) -> ServerMsg {
        ServerMsg::Control(Control::Position {
            job_id: self.job_id,
            position: self.place.position,
            reason: self.place.reason.clone(),
        })
    }
}

/// What a job's channel carries: stored events and live places.
#[derive(Debug, Clone)]
pub enum Pushed {
    /// A stored event.
    Event(Arc<Published>),
    /// A queued job's new place (not an event: no seq).
    Place(Arc<LivePlace>),
}

/// Buffered events per job channel before a slow receiver lags (and re-reads from the store).
const CHANNEL_CAPACITY: usize = 64;

/// A live subscription to one job's stored events; released when dropped.
pub type JobSubscription = Subscription<JobId, Pushed>;

/// Per-job broadcast channels, created on first subscription and dropped with the last.
#[derive(Debug)]
pub struct Hub {
    topics: Topics<JobId, Pushed>,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Self {
        Self {
            topics: Topics::new(CHANNEL_CAPACITY),
        }
    }

    /// Every event (and place) of `job` published from now on, until the subscription is dropped.
    pub fn subscribe(&self, job: JobId) -> JobSubscription {
        self.topics.subscribe(job)
    }

    /// Sends a stored event to the job's subscribers, if any.
    pub fn publish(&self, event: JobEvent) {
        let job = event.job_id;
        let pushed = Pushed::Event(Arc::new(Published::new(event)));
        self.topics.publish(&job, pushed);
    }

    /// Sends a queued job's new place to its subscribers, if any.
    pub fn publish_place(&self, place: LivePlace) {
        let job = place.job_id;
        self.topics.publish(&job, Pushed::Place(Arc::new(place)));
    }

    /// Number of jobs with live subscribers (for metrics).
    pub fn channel_count(&self) -> usize {
        self.topics.len()
    }
}
