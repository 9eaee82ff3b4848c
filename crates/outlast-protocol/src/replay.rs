//! What to send a client that (re)subscribes, and which history may be coalesced.
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
}
