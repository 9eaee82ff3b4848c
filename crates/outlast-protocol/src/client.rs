//! Client-side stream bookkeeping: where to resume, duplicates and gaps (one
//! [`crate::replay::Cursor`] per job), reconnect backoff. Sans-IO.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::ids::{JobId, Seq};
use crate::job::{JobEvent, JobSnapshot};
use crate::replay::{Cursor, Live};

/// What a client should do with an incoming event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The next event: show it.
    New,
    /// Already seen (a replay overlapping live delivery): drop it.
    Duplicate,
    /// Events are missing before this one: resubscribe after `resume_after`.
    Gap {
        /// The last sequence number seen before the gap.
        resume_after: Seq,
    },
}

/// Remembers the newest sequence number seen per job, across reconnects: one
/// [`Cursor`] per job, plus which jobs have a position at all.
#[derive(Debug, Default, Clone)]
pub struct StreamTracker {
    cursors: HashMap<JobId, Cursor>,
    /// Jobs with a position (an event delivered or a snapshot taken); `resume_after` is
    /// `None` for the others.
    positioned: HashSet<JobId>,
}

impl StreamTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Where to resume `job`: `None` before anything was seen.
    pub fn resume_after(&self, job: JobId) -> Option<Seq> {
        if !self.positioned.contains(&job) {
            return None;
        }
        self.cursors.get(&job).map(Cursor::position)
    }

    /// Classifies an event and, when it is new, advances the position.
    pub fn handle_event(&mut self, event: &JobEvent) -> Delivery {
        let cursor = self.cursors.entry(event.job_id).or_default();
        match cursor.on_live(event.seq) {
            Live::Duplicate => Delivery::Duplicate,
            Live::Gap { after } => Delivery::Gap {
                resume_after: after,
            },
            Live::Deliver => {
                self.positioned.insert(event.job_id);
                Delivery::New
            }
        }
    }

    /// The server answered a subscription with a snapshot: continue after it.
    pub fn handle_snapshot(&mut self, snapshot: &JobSnapshot) {
        let cursor = self.cursors.entry(snapshot.job_id).or_default();
        // Never move back: events this client showed stay shown.
        if snapshot.seq > cursor.position() {
            cursor.on_snapshot(snapshot.seq);
        }
        self.positioned.insert(snapshot.job_id);
    }

    /// Marks that the server's history for `job` is incomplete up to `seq`.
    pub fn allow_gaps_through(&mut self, job: JobId, seq: Seq) {
        self.cursors.entry(job).or_default().allow_gaps_through(seq);
    }

    /// True when a heartbeat's newest seq for `job` shows events this client has not seen.
    pub fn is_behind(&self, job: JobId, newest: Seq) -> bool {
        self.cursors
            .get(&job)
            .map_or(Seq::ZERO < newest, |c| c.is_behind(newest))
    }
}

/// Reconnect delays with full jitter: `min + rand * min(max, min * 2^attempt)`, capped at `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff between `min` and `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            attempt: 0,
        }
    }

    /// The delay before the next attempt. `unit_random` is a random number in `[0, 1)`,
    /// supplied by the caller so this stays deterministic in tests.
    pub fn next_delay(&mut self, unit_random: f64) -> Duration {
        let exp = self
            .min
            .saturating_mul(1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX));
        let span = exp.min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        (self.min + span.mul_f64(unit_random.clamp(0.0, 1.0))).min(self.max)
    }

    /// A connection succeeded: start again from `min`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::EventKind;

    fn ev(job: JobId, seq: u64) -> JobEvent {
        JobEvent {
            job_id: job,
            seq: Seq(seq),
            at_ms: 0,
            kind: EventKind::Started { attempt: 1 },
        }
    }

    #[test]
    fn tracker_detects_duplicates_and_gaps() {
        let job = JobId::random();
        let mut t = StreamTracker::new();
        assert_eq!(t.handle_event(&ev(job, 1)), Delivery::New);
        assert_eq!(t.handle_event(&ev(job, 2)), Delivery::New);
        assert_eq!(t.handle_event(&ev(job, 2)), Delivery::Duplicate);
        assert_eq!(
            t.handle_event(&ev(job, 4)),
            Delivery::Gap {
                resume_after: Seq(2)
            }
        );
        assert_eq!(t.resume_after(job), Some(Seq(2)));
        assert!(t.is_behind(job, Seq(4)));
        assert!(!t.is_behind(job, Seq(2)));
    }

    #[test]
    fn backoff_grows_with_jitter_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(20));
        assert_eq!(b.next_delay(0.0), Duration::from_millis(500));
        assert_eq!(b.next_delay(1.0), Duration::from_millis(1500));
        for _ in 0..40 {
            assert!(b.next_delay(1.0) <= Duration::from_secs(20));
        }
        b.reset();
        assert_eq!(b.next_delay(0.5), Duration::from_millis(750));
    }
}
