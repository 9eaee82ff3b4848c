//! What to send a client that (re)subscribes, which history may be coalesced, and the live
//! [`Cursor`] that sorts each incoming event into duplicate / next / gap.
//!
//! Sans-IO: the server tells this module what its history holds; the module decides.

use crate::ids::Seq;
use crate::job::EventKind;

/// What a job's stored history holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryBounds {
    /// The newest stored sequence number (`Seq::ZERO` for a job without events).
    pub last: Seq,
    /// Every event with `seq > complete_after` is stored; at or below it some coalescable events
    /// may have been dropped. `Seq::ZERO` when nothing was ever dropped.
    pub complete_after: Seq,
    /// False once the job's event history expired entirely (only its snapshot remains).
    pub retained: bool,
}

/// What the server sends on `subscribe`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayPlan {
    /// `subscribed { recovered: true }`, then every stored event with `seq > after`.
    Exact {
        /// Replay starts after this.
        after: Seq,
    },
    /// `subscribed { recovered: false, snapshot }`, then every stored event with `seq > snapshot.seq`.
    Snapshot {
        /// Why exact replay is impossible.
        reason: SnapshotReason,
    },
}

/// Why a subscriber gets a snapshot instead of an exact replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotReason {
    /// Events after the client's position were coalesced away.
    Coalesced,
    /// The job's history expired.
    Expired,
    /// The client claims a position the server never reached (e.g. another job's numbers).
    Ahead,
}

/// Decides how to answer a subscription from `after` (`None`: from the beginning).
pub fn plan(after: Option<Seq>, history: HistoryBounds) -> ReplayPlan {
    let after = after.unwrap_or(Seq::ZERO);
    if after > history.last {
        return ReplayPlan::Snapshot {
            reason: SnapshotReason::Ahead,
        };
    }
    if !history.retained {
        // Someone already at the end loses nothing; everyone else needs the snapshot.
        return if after == history.last {
            ReplayPlan::Exact { after }
        } else {
            ReplayPlan::Snapshot {
                reason: SnapshotReason::Expired,
            }
        };
    }
    if after >= history.complete_after {
        ReplayPlan::Exact { after }
    } else {
        ReplayPlan::Snapshot {
            reason: SnapshotReason::Coalesced,
        }
    }
}

/// Chooses which events of a long history to drop: every coalescable event that a later event
/// of the same type supersedes, keeping the newest of each type. Returns the sequence numbers to
/// drop and the new `complete_after` (the highest dropped seq, or the old value).
///
/// Only called when a history exceeds its bound, so short histories stay exact.
pub fn coalesce<'a>(
    events: impl IntoIterator<Item = (Seq, &'a EventKind)>,
    complete_after: Seq,
) -> (Vec<Seq>, Seq) {
    let events: Vec<(Seq, &EventKind)> = events.into_iter().collect();
    let mut newest: std::collections::HashMap<&'static str, Seq> = std::collections::HashMap::new();
    for (seq, kind) in &events {
        if kind.is_coalescable() {
            newest.insert(kind.name(), *seq);
        }
    }
    let drop: Vec<Seq> = events
        .iter()
        .filter(|(seq, kind)| kind.is_coalescable() && newest.get(kind.name()) != Some(seq))
        .map(|(seq, _)| *seq)
        .collect();
    let watermark = drop
        .iter()
        .copied()
        .max()
        .map_or(complete_after, |m| m.max(complete_after));
    (drop, watermark)
}

/// What to do with a live event (from the broadcast, or a frame a client received).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Live {
    /// Already delivered (a replay overlapping live delivery): drop it.
    Duplicate,
    /// The next event: deliver it (the cursor has advanced to it).
    Deliver,
    /// Events are missing before this one: re-read the store after `after` (server) or
    /// resubscribe from it (client). The cursor did not move.
    Gap {
        /// The last sequence number delivered.
        after: Seq,
    },
}

/// One job stream's position: the last sequence number delivered. Sans-IO; one per
/// subscription (gateway WebSocket, SSE, long-poll) or per followed job (client).
///
/// Rules: a live `seq` at or below the position is a [`Live::Duplicate`]; exactly the next one
/// is [`Live::Deliver`]; anything later is a [`Live::Gap`], except that a jump to just past
/// [`Cursor::allow_gaps_through`] is delivered (the history there was coalesced). Events read
/// back from the store never move the position backwards; a snapshot sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Cursor {
    last: Seq,
    gaps_through: Seq,
}

impl Cursor {
    /// A cursor that has delivered everything up to `after` (`None`: nothing yet).
    pub fn new(after: Option<Seq>) -> Self {
        Self {
            last: after.unwrap_or(Seq::ZERO),
            gaps_through: Seq::ZERO,
        }
    }

    /// The last sequence number delivered (`Seq::ZERO` before any): resume after it.
    pub fn position(&self) -> Seq {
        self.last
    }

    /// Classifies a live event; advances only on [`Live::Deliver`].
    pub fn on_live(&mut self, seq: Seq) -> Live {
        if seq <= self.last {
            return Live::Duplicate;
        }
        if seq != self.last.next() && seq > self.gaps_through.next() {
            return Live::Gap { after: self.last };
        }
        self.last = seq;
        Live::Deliver
    }

    /// The live feed lost events (a lagged broadcast receiver): re-read after this.
    pub fn on_lagged(&self) -> Live {
        Live::Gap { after: self.last }
    }

    /// An event read back from the store (subscribe or catch-up) was delivered.
    pub fn on_replayed(&mut self, seq: Seq) {
        self.last = self.last.max(seq);
    }

    /// A snapshot was delivered in place of history: continue after it. The snapshot is the
    /// server's word, so this may move the position back (a client that claimed a position the
    /// server never reached, [`SnapshotReason::Ahead`]).
    pub fn on_snapshot(&mut self, seq: Seq) {
        self.last = seq;
    }

    /// The history up to `seq` is known to be incomplete (coalesced): a jump from the
    /// position to just past `seq` is not a gap.
    pub fn allow_gaps_through(&mut self, seq: Seq) {
        self.gaps_through = seq;
    }

    /// True when `newest` (e.g. from a heartbeat) shows events not yet delivered.
    pub fn is_behind(&self, newest: Seq) -> bool {
        self.last < newest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(last: u64, complete_after: u64, retained: bool) -> HistoryBounds {
        HistoryBounds {
            last: Seq(last),
            complete_after: Seq(complete_after),
            retained,
        }
    }

    #[test]
    fn plan_table() {
        use ReplayPlan::*;
        use SnapshotReason::*;
        let cases: &[(Option<u64>, HistoryBounds, ReplayPlan)] = &[
            (None, h(0, 0, true), Exact { after: Seq(0) }),
            (None, h(10, 0, true), Exact { after: Seq(0) }),
            (Some(4), h(10, 0, true), Exact { after: Seq(4) }),
            (Some(10), h(10, 0, true), Exact { after: Seq(10) }),
            (Some(11), h(10, 0, true), Snapshot { reason: Ahead }),
            (Some(3), h(10, 5, true), Snapshot { reason: Coalesced }),
            (Some(5), h(10, 5, true), Exact { after: Seq(5) }),
            (None, h(10, 5, true), Snapshot { reason: Coalesced }),
            (Some(9), h(10, 0, false), Snapshot { reason: Expired }),
            (Some(10), h(10, 0, false), Exact { after: Seq(10) }),
        ];
        for (after, bounds, want) in cases {
            assert_eq!(
                plan(after.map(Seq), *bounds),
                *want,
                "after={after:?} bounds={bounds:?}"
            );
        }
    }

    #[test]
    fn coalesce_keeps_state_changes_outputs_and_newest_progress() {
        let kinds = [
            EventKind::Queued {
                position: 2,
                reason: None,
            },
            EventKind::Queued {
                position: 1,
                reason: None,
            },
            EventKind::Started { attempt: 1 },
            EventKind::Progress {
                value: 1,
                max: 3,
                label: None,
            },
            EventKind::Progress {
                value: 2,
                max: 3,
                label: None,
            },
            EventKind::Output(crate::job::OutputInfo {
                name: "a.png".into(),
                mime: "image/png".into(),
                size: 1,
                sha256: "00".into(),
            }),
            EventKind::Progress {
                value: 3,
                max: 3,
                label: None,
            },
            EventKind::Completed { cached: false },
        ];
        let (drop, watermark) = coalesce(
            kinds
                .iter()
                .enumerate()
                .map(|(i, k)| (Seq(i as u64 + 1), k)),
            Seq::ZERO,
        );
        assert_eq!(drop, vec![Seq(1), Seq(4), Seq(5)]);
        assert_eq!(watermark, Seq(5));
    }

    #[derive(Debug, Clone, Copy)]
    enum Step {
        On(u64, Live),
        Lagged(Live),
        Replayed(u64),
        Snapshot(u64),
        AllowGaps(u64),
    }

    #[test]
    fn cursor_table() {
        use Step::*;
        let gap = |after| Live::Gap { after: Seq(after) };
        // (start, steps, final position)
        let cases: &[(Option<u64>, &[Step], u64)] = &[
            (None, &[On(1, Live::Deliver), On(2, Live::Deliver)], 2),
            (None, &[On(1, Live::Deliver), On(1, Live::Duplicate)], 1),
            (None, &[On(2, gap(0))], 0),
            (
                Some(4),
                &[On(3, Live::Duplicate), On(4, Live::Duplicate)],
                4,
            ),
            (Some(4), &[On(5, Live::Deliver), On(7, gap(5))], 5),
            // Gap, then the store is re-read: replay moves forward, live overlap is dropped.
            (
                Some(4),
                &[
                    On(7, gap(4)),
                    Replayed(5),
                    Replayed(6),
                    Replayed(7),
                    On(7, Live::Duplicate),
                    On(8, Live::Deliver),
                ],
                8,
            ),
            (Some(3), &[Lagged(gap(3)), Replayed(9)], 9),
            // Replays never move backwards; a snapshot is the server's word.
            (Some(9), &[Replayed(5)], 9),
            (Some(9), &[Snapshot(2), On(3, Live::Deliver)], 3),
            (
                None,
                &[Snapshot(6), On(6, Live::Duplicate), On(7, Live::Deliver)],
                7,
            ),
            (None, &[Snapshot(6), On(8, gap(6))], 6),
            // Coalesced history: the jump to just past the watermark is delivered.
            (None, &[AllowGaps(5), On(6, Live::Deliver)], 6),
            (None, &[AllowGaps(5), On(7, gap(0))], 0),
            (Some(6), &[AllowGaps(5), On(8, gap(6))], 6),
        ];
        for (start, steps, end) in cases {
            let mut c = Cursor::new(start.map(Seq));
            for (i, step) in steps.iter().enumerate() {
                match *step {
                    On(seq, want) => {
                        assert_eq!(c.on_live(Seq(seq)), want, "{start:?} {steps:?} step {i}")
                    }
                    Lagged(want) => assert_eq!(c.on_lagged(), want, "{start:?} step {i}"),
                    Replayed(seq) => c.on_replayed(Seq(seq)),
                    Snapshot(seq) => c.on_snapshot(Seq(seq)),
                    AllowGaps(seq) => c.allow_gaps_through(Seq(seq)),
                }
            }
            assert_eq!(c.position(), Seq(*end), "{start:?} {steps:?}");
            assert!(!c.is_behind(Seq(*end)));
            assert!(c.is_behind(Seq(*end + 1)));
        }
    }
}
