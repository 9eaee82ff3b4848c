//! Upload progress to the owner's WebSocket connections: one broadcast channel per owner,
//! created when the owner's first connection subscribes and dropped with the last.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use outlast_protocol::v1::Control;
use outlast_protocol::{Offset, OwnerId, UploadId};
use tokio::sync::broadcast;

/// Progress messages buffered per owner before a slow connection skips some (progress is a
/// snapshot; skipping is harmless).
const CAPACITY: usize = 32;

/// Owner-level fan-out of `upload_progress`.
#[derive(Debug, Default)]
pub struct ProgressHub {
    // A std Mutex: map operations only, never held across an await.
    owners: Mutex<HashMap<OwnerId, broadcast::Sender<Control>>>,
}

impl ProgressHub {
    /// Progress of every upload of `owner` from now on.
    pub fn subscribe(&self, owner: &OwnerId) -> broadcast::Receiver<Control> {
        let mut map = self.owners.lock().unwrap_or_else(PoisonError::into_inner);
        map.entry(owner.clone())
            .or_insert_with(|| broadcast::channel(CAPACITY).0)
            .subscribe()
    }

    /// Drops the owner's channel when no receiver is left; call after dropping a receiver.
    pub fn release(&self, owner: &OwnerId) {
        let mut map = self.owners.lock().unwrap_or_else(PoisonError::into_inner);
        if map.get(owner).is_some_and(|tx| tx.receiver_count() == 0) {
            map.remove(owner);
        }
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
        let map = self.owners.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = map.get(owner) {
            let _ = tx.send(Control::UploadProgress {
                upload_id,
                offset: Offset(offset),
                length,
                bytes_per_sec,
            });
        }
    }
}
