//! Upload progress to the owner's WebSocket connections: one broadcast channel per owner,
//! created when the owner's first connection subscribes and dropped with the last.

use outlast_protocol::v1::Control;
use outlast_protocol::{Offset, OwnerId, UploadId};

use crate::topics::{Subscription, Topics};

/// Progress messages buffered per owner before a slow connection skips some (progress is a
/// snapshot; skipping is harmless).
const CAPACITY: usize = 32;

/// A connection's subscription to its owner's upload progress; released when dropped.
pub type ProgressSubscription = Subscription<OwnerId, Control>;

/// Owner-level fan-out of `upload_progress`.
#[derive(Debug)]
pub struct ProgressHub {
    topics: Topics<OwnerId, Control>,
}

impl Default for ProgressHub {
    fn default() -> Self {
        Self {
            topics: Topics::new(CAPACITY),
        }
    }
}

impl ProgressHub {
    /// Progress of every upload of `owner` from now on, until the subscription is dropped.
    pub fn subscribe(&self, owner: &OwnerId) -> ProgressSubscription {
        self.topics.subscribe(owner.clone())
    }

    /// Sends progress to the owner's connections, if any.
    pub fn publish(
        &self,
        owner: &OwnerId,
        upload_id: UploadId,
        offset: u64,
        length: Option<u64>,
        bytes_per_sec: u64,
    ) {
        self.topics.publish(
            owner,
            Control::UploadProgress {
                upload_id,
                offset: Offset(offset),
                length,
                bytes_per_sec,
            },
        );
    }
}
