//! Live fan-out of stored events to subscribers. Only an optimisation over re-reading the
//! store: a subscriber that lags behind its channel re-reads from the store, so nothing is lost.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use bytes::Bytes;
use outlast_protocol::v1::ServerMsg;
use outlast_protocol::{Codec, Frame, JobEvent, JobId};
use tokio::sync::broadcast;

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

/// Buffered events per job channel before a slow receiver lags (and re-reads from the store).
const CHANNEL_CAPACITY: usize = 64;

/// Per-job broadcast channels, created on first subscription and dropped with the last.
#[derive(Debug, Default)]
pub struct Hub {
    // A std Mutex: it is held only for map operations, never across an await.
    channels: Mutex<HashMap<JobId, broadcast::Sender<Arc<Published>>>>,
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// A receiver of every event of `job` published from now on.
    pub fn subscribe(&self, job: JobId) -> broadcast::Receiver<Arc<Published>> {
        let mut map = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(job)
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .subscribe()
    }

    /// Drops the channel of `job` when no receiver is left. Call after dropping a receiver.
    pub fn release(&self, job: JobId) {
        let mut map = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if map.get(&job).is_some_and(|tx| tx.receiver_count() == 0) {
            map.remove(&job);
        }
    }

    /// Sends a stored event to the job's subscribers, if any.
    pub fn publish(&self, event: JobEvent) {
        let map = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = map.get(&event.job_id) {
            // An error only means every receiver is gone; release() removes the entry.
            let _ = tx.send(Arc::new(Published::new(event)));
        }
    }

    /// Number of jobs with live subscribers (for metrics).
    pub fn channel_count(&self) -> usize {
        self.channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}
