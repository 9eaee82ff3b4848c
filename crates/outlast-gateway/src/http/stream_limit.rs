//! The per-owner limit on concurrent job streams (`streams.max_per_owner`): every WebSocket
//! subscription, SSE response and long-poll in progress holds a [`StreamPermit`] from the one
//! [`StreamLimit`], so the three transports share one count per owner. A permit gives its place
//! back when dropped (an unsubscribe, a stream that ends, a request cut mid-wait), so nobody
//! has to remember to release it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use outlast_protocol::{ErrorCode, OwnerId};

use crate::error::AppError;
use crate::metrics as m;

/// Seconds a refused client is asked to wait (`Retry-After`).
const RETRY_AFTER_S: u32 = 5;

/// Open streams per owner, bounded.
#[derive(Debug)]
pub struct StreamLimit {
    /// At most this many per owner; 0: no limit.
    max: usize,
    /// A std Mutex: held only for a map update, never across an await.
    open: Mutex<HashMap<OwnerId, usize>>,
}

/// One open stream of an owner; its place is given back when dropped.
#[derive(Debug)]
pub struct StreamPermit {
    limit: Arc<StreamLimit>,
    owner: OwnerId,
}

impl StreamLimit {
    /// A limit of `max` streams per owner (0: none).
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more stream of `owner`, or 429 `limit_exceeded` when it has `max`.
    pub fn acquire(self: &Arc<Self>, owner: &OwnerId) -> Result<StreamPermit, AppError> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(owner.clone()).or_insert(0);
        if self.max > 0 && *n >= self.max {
            drop(open);
            metrics::counter!(m::STREAMS_REFUSED).increment(1);
            return Err(AppError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "at most {} job streams (WebSocket subscriptions, SSE, long-polls) per owner \
                     at once (streams.max_per_owner); close one first",
                    self.max
                ),
            )
            .retry_after(RETRY_AFTER_S));
        }
        *n += 1;
        Ok(StreamPermit {
            limit: Arc::clone(self),
            owner: owner.clone(),
        })
    }

    /// How many streams `owner` holds now.
    pub fn open(&self, owner: &OwnerId) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(owner).copied().unwrap_or(0)
    }
}

impl Drop for StreamPermit {
    fn drop(&mut self) {
        let mut open = self
            .limit
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.owner) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.owner);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_count_per_owner_and_come_back_when_dropped() {
        let limit = StreamLimit::new(2);
        let (a, b): (OwnerId, OwnerId) = ("alice".parse().expect("a"), "bob".parse().expect("b"));
        let first = limit.acquire(&a).expect("1 of 2");
        let _second = limit.acquire(&a).expect("2 of 2");
        let refused = limit.acquire(&a).expect_err("3 of 2");
        assert_eq!(refused.code, ErrorCode::LimitExceeded);
        assert_eq!(refused.retry_after_s, Some(RETRY_AFTER_S));
        let _other = limit.acquire(&b).expect("another owner has its own count");
        drop(first);
        assert_eq!(limit.open(&a), 1);
        let _again = limit.acquire(&a).expect("a place came back");
        assert_eq!(limit.open(&a), 2);
    }

    #[test]
    fn zero_means_no_limit_and_empty_owners_leave_the_map() {
        let limit = StreamLimit::new(0);
        let a: OwnerId = "alice".parse().expect("a");
        let permits: Vec<_> = (0..5000)
            .map(|_| limit.acquire(&a).expect("no limit"))
            .collect();
        assert_eq!(limit.open(&a), 5000);
        drop(permits);
        assert_eq!(limit.open(&a), 0);
        assert!(limit.open.lock().expect("lock").is_empty());
    }
}
