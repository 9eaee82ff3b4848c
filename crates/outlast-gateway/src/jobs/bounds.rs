//! Per-owner bounds on submissions: a cap on queued jobs (checked by [`super::Jobs`] against
//! the scheduler) and a token bucket of new jobs per second, so one owner cannot flood the
//! queue or the store.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use outlast_protocol::OwnerId;

use crate::config::JobsConfig;

/// Buckets kept before full, idle ones are forgotten.
const MAX_BUCKETS: usize = 10_000;

/// The limits and each owner's bucket.
#[derive(Debug, Default)]
pub struct Bounds {
    /// Queued jobs per owner; 0: none.
    pub max_queued: usize,
    rate: u32,
    burst: u32,
    buckets: Mutex<HashMap<OwnerId, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bounds {
    /// The configured limits.
    pub fn new(config: &JobsConfig) -> Self {
        Self {
            max_queued: config.max_queued_per_owner,
            rate: config.submits_per_second,
            burst: config.submit_burst,
            buckets: Mutex::default(),
        }
    }

    /// Whether new jobs per second are limited (tokens are taken).
    pub fn limits_rate(&self) -> bool {
        self.rate > 0
    }

    /// Takes one new-job token of `owner`, or says in how many seconds one will be there.
    pub fn try_take(&self, owner: &OwnerId, now: Instant) -> Result<(), u32> {
        if self.rate == 0 {
            return Ok(());
        }
        let (rate, burst) = (f64::from(self.rate), f64::from(self.burst));
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(owner) {
            // Forget owners whose buckets have refilled: they are as if new.
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let bucket = buckets.entry(owner.clone()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let refilled = bucket.tokens + now.duration_since(bucket.at).as_secs_f64() * rate;
        bucket.tokens = refilled.min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / rate;
            Err(wait.ceil().max(1.0) as u32)
        }
    }

    /// Returns a token taken for a submission that created nothing (a known key).
    pub fn give_back(&self, owner: &OwnerId) {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(b) = buckets.get_mut(owner) {
            b.tokens = (b.tokens + 1.0).min(f64::from(self.burst));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn bounds(rate: u32, burst: u32) -> Bounds {
        Bounds::new(&JobsConfig {
            submits_per_second: rate,
            submit_burst: burst,
            ..JobsConfig::default()
        })
    }

    #[test]
    fn a_burst_then_the_rate() {
        let b = bounds(2, 3);
        let (alice, bob): (OwnerId, OwnerId) = ("alice".parse().unwrap(), "bob".parse().unwrap());
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(b.try_take(&alice, t0), Ok(()));
        }
        assert_eq!(b.try_take(&alice, t0), Err(1), "the burst is used up");
        assert_eq!(
            b.try_take(&bob, t0),
            Ok(()),
            "owners have their own buckets"
        );
        // Two per second come back.
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(b.try_take(&alice, t1), Ok(()));
        assert!(b.try_take(&alice, t1).is_err());
        let t2 = t0 + Duration::from_secs(10);
        for _ in 0..3 {
            assert_eq!(
                b.try_take(&alice, t2),
                Ok(()),
                "refilled to the burst, not beyond"
            );
        }
        assert!(b.try_take(&alice, t2).is_err());
        b.give_back(&alice);
        assert_eq!(
            b.try_take(&alice, t2),
            Ok(()),
            "a token given back is there again"
        );
    }

    #[test]
    fn zero_means_no_limit() {
        let b = bounds(0, 0);
        let owner: OwnerId = "alice".parse().unwrap();
        let now = Instant::now();
        assert!((0..10_000).all(|_| b.try_take(&owner, now).is_ok()));
    }
}
