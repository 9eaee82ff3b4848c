//! Every timer of following a prompt, in one sans-IO state machine: pings and the pong
//! deadline, the poll (reconcile) after silence, replacing a socket that stays silent while the
//! prompt runs, and reconnecting with backoff. No clock, no socket: inputs come in through
//! `handle_*(now, ..)`, [`FollowTimers::poll_timeout`] says when to call
//! [`FollowTimers::handle_timeout`] next, and that says what to do.

use std::time::{Duration, Instant};

use outlast_protocol::client::Backoff;
use outlast_protocol::keepalive::{Keepalive, KeepaliveAction};

/// Shortest wait before reconnecting a socket that closed or could not be opened.
const RECONNECT_MIN: Duration = Duration::from_millis(200);
/// Longest wait between reconnect tries.
const RECONNECT_MAX: Duration = Duration::from_secs(5);
/// A socket silent this many poll intervals while the prompt runs is replaced.
const SILENT_POLLS: u32 = 3;

/// What the driver must do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Action {
    /// Nothing is due yet.
    None,
    /// Send a WebSocket ping.
    Ping,
    /// Close the socket; a new one is due at once.
    Close(Why),
    /// Ask ComfyUI where the prompt is, then report with [`FollowTimers::handle_reconciled`].
    Reconcile,
    /// Open a socket, then report with `handle_connected` or `handle_connect_failed`.
    Connect,
}

/// Why a socket is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Why {
    /// A ping went unanswered for a ping interval.
    PongMissed,
    /// Silent for [`SILENT_POLLS`] poll intervals while ComfyUI runs the prompt: ComfyUI's
    /// client-id bug may have cut it off.
    Silent,
}

/// The socket, as the timers see it.
#[derive(Debug)]
enum Link {
    /// Open; pinged on this schedule.
    Open(Keepalive),
    /// None open; the next try is due then (`None` while a try is under way).
    Closed(Option<Instant>),
}

/// The timers of one followed prompt.
#[derive(Debug)]
pub(super) struct FollowTimers {
    ping_interval: Duration,
    poll_interval: Duration,
    link: Link,
    backoff: Backoff,
    /// The next poll tick.
    next_poll: Instant,
    /// When the socket last delivered something other than a pong (or was opened).
    last_message: Instant,
    /// The silence measured when the pending reconcile was asked for.
    silent_at_reconcile: Option<Duration>,
}

impl FollowTimers {
    /// Starts at `now`, with a socket already open or with a connect due at once.
    pub(super) fn new(
        now: Instant,
        ping_interval: Duration,
        poll_interval: Duration,
        open: bool,
    ) -> Self {
        FollowTimers {
            ping_interval,
            poll_interval,
            link: if open {
                Link::Open(Keepalive::new(now, ping_interval, ping_interval))
            } else {
                Link::Closed(Some(now))
            },
            backoff: Backoff::new(RECONNECT_MIN, RECONNECT_MAX),
            next_poll: now + poll_interval,
            last_message: now,
            silent_at_reconcile: None,
        }
    }

    /// The next time [`FollowTimers::handle_timeout`] should be called. Always `Some` while
    /// following: the poll tick never stops.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        let link = match &self.link {
            Link::Open(k) => Some(k.poll_timeout()),
            Link::Closed(at) => *at,
        };
        Some(link.map_or(self.next_poll, |at| at.min(self.next_poll)))
    }

    /// What is due at `now`; call again until it says [`Action::None`].
    pub(super) fn handle_timeout(&mut self, now: Instant) -> Action {
        match &mut self.link {
            Link::Closed(Some(at)) if *at <= now => {
                self.link = Link::Closed(None);
                return Action::Connect;
            }
            Link::Open(keepalive) => match keepalive.poll(now) {
                Some(KeepaliveAction::Ping) => return Action::Ping,
                Some(KeepaliveAction::TimedOut) => {
                    self.link = Link::Closed(Some(now));
                    return Action::Close(Why::PongMissed);
                }
                None => {}
            },
            Link::Closed(_) => {}
        }
        if now >= self.next_poll {
            // Like a missed interval tick that is delayed: the next one is a period later.
            self.next_poll = now + self.poll_interval;
            let silent = now.saturating_duration_since(self.last_message);
            let open = matches!(self.link, Link::Open(_));
            if !open || silent >= self.poll_interval {
                self.silent_at_reconcile = Some(silent);
                return Action::Reconcile;
            }
        }
        Action::None
    }

    /// A frame other than a pong arrived.
    pub(super) fn handle_message(&mut self, now: Instant) {
        self.last_message = now;
    }

    /// A pong arrived: the pending ping is answered.
    pub(super) fn handle_pong(&mut self, now: Instant) {
        if let Link::Open(k) = &mut self.link {
            k.handle_inbound(now);
        }
    }

    /// Sending a ping failed: the socket is broken; a new one is due at once.
    pub(super) fn handle_ping_failed(&mut self, now: Instant) {
        self.link = Link::Closed(Some(now));
    }

    /// ComfyUI closed the socket; the next try waits a backoff delay. `unit_random` is a
    /// random number in `[0, 1)` for the jitter.
    pub(super) fn handle_closed(&mut self, now: Instant, unit_random: f64) {
        self.link = Link::Closed(Some(now + self.backoff.next_delay(unit_random)));
    }

    /// A socket was opened.
    pub(super) fn handle_connected(&mut self, now: Instant) {
        self.link = Link::Open(Keepalive::new(now, self.ping_interval, self.ping_interval));
        self.backoff.reset();
        self.last_message = now;
    }

    /// Opening a socket failed; the next try waits a longer backoff delay.
    pub(super) fn handle_connect_failed(&mut self, now: Instant, unit_random: f64) {
        self.link = Link::Closed(Some(now + self.backoff.next_delay(unit_random)));
    }

    /// The reconcile asked for by [`Action::Reconcile`] found the prompt running (or not).
    /// Returns [`Action::Close`] when the socket must be replaced.
    pub(super) fn handle_reconciled(&mut self, now: Instant, running: bool) -> Action {
        let silent = self.silent_at_reconcile.take().unwrap_or_default();
        if running
            && silent >= self.poll_interval * SILENT_POLLS
            && matches!(self.link, Link::Open(_))
        {
            self.link = Link::Closed(Some(now));
            self.last_message = now;
            return Action::Close(Why::Silent);
        }
        Action::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PING: Duration = Duration::from_secs(10);
    const POLL: Duration = Duration::from_secs(4);

    /// One step of a table: an input at `ms` after the start, and what must follow.
    #[derive(Debug, Clone, Copy)]
    enum Step {
        /// `handle_timeout(ms)` returns this.
        Timeout(u64, Action),
        /// `poll_timeout()` is `ms`.
        Next(u64),
        Message(u64),
        Pong(u64),
        /// `handle_closed(ms, random)`.
        Closed(u64, f64),
        Connected(u64),
        /// `handle_connect_failed(ms, random)`.
        ConnectFailed(u64, f64),
        PingFailed(u64),
        /// `handle_reconciled(ms, running)` returns this.
        Reconciled(u64, bool, Action),
    }

    fn run(name: &str, open: bool, steps: &[Step]) {
        run_with(name, open, POLL, steps)
    }

    fn run_with(name: &str, open: bool, poll: Duration, steps: &[Step]) {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut t = FollowTimers::new(t0, PING, poll, open);
        for (i, step) in steps.iter().enumerate() {
            let here = format!("{name}, step {i}: {step:?}");
            match *step {
                Step::Timeout(ms, want) => assert_eq!(t.handle_timeout(at(ms)), want, "{here}"),
                Step::Next(ms) => assert_eq!(t.poll_timeout(), Some(at(ms)), "{here}"),
                Step::Message(ms) => t.handle_message(at(ms)),
                Step::Pong(ms) => t.handle_pong(at(ms)),
                Step::Closed(ms, r) => t.handle_closed(at(ms), r),
                Step::Connected(ms) => t.handle_connected(at(ms)),
                Step::ConnectFailed(ms, r) => t.handle_connect_failed(at(ms), r),
                Step::PingFailed(ms) => t.handle_ping_failed(at(ms)),
                Step::Reconciled(ms, running, want) => {
                    assert_eq!(t.handle_reconciled(at(ms), running), want, "{here}")
                }
            }
        }
    }

    use Action::{Close, Connect, Ping, Reconcile};
    use Step::*;

    #[test]
    fn pings_are_due_every_interval_and_a_missed_pong_closes() {
        // Messages keep the poll quiet, so only the ping schedule matters.
        run(
            "ping due, answered",
            true,
            &[
                Next(4_000),
                Message(3_900),
                Timeout(4_000, Action::None),
                Message(7_900),
                Timeout(8_000, Action::None),
                Next(10_000),
                Timeout(10_000, Ping),
                Pong(10_050),
                Next(12_000),
                Message(11_900),
                Timeout(12_000, Action::None),
                Message(15_900),
                Timeout(16_000, Action::None),
                Message(19_900),
                Next(20_000),
                Timeout(20_000, Ping),
            ],
        );
        run(
            "pong missed",
            true,
            &[
                Timeout(10_000, Ping),
                Message(11_000),
                Message(15_000),
                Timeout(15_000, Action::None),
                Message(19_000),
                Timeout(19_999, Action::None),
                Timeout(20_000, Close(Why::PongMissed)),
                // A new socket is due at once, without backoff.
                Next(20_000),
                Timeout(20_000, Connect),
                Connected(20_100),
                // The poll tick (moved to 23.999 s at 19.999 s) comes before the next ping.
                Next(23_999),
            ],
        );
        run(
            "a failed ping send reconnects at once",
            true,
            &[
                Message(9_000),
                Timeout(10_000, Ping),
                Timeout(10_000, Action::None),
                PingFailed(10_001),
                Next(10_001),
                Timeout(10_001, Connect),
            ],
        );
    }

    #[test]
    fn silence_while_running_reconciles_then_replaces_the_socket() {
        run(
            "silent while running",
            true,
            &[
                Next(4_000),
                Timeout(4_000, Reconcile),
                Reconciled(4_100, true, Action::None),
                Timeout(8_000, Reconcile),
                Reconciled(8_100, true, Action::None),
                Timeout(10_000, Ping),
                Pong(10_010),
                Timeout(12_000, Reconcile),
                Reconciled(12_100, true, Close(Why::Silent)),
                Next(12_100),
                Timeout(12_100, Connect),
                Connected(12_200),
                // Silence is counted from the new socket.
                Timeout(16_000, Action::None),
                Timeout(20_000, Reconcile),
            ],
        );
        run(
            "silent while waiting in ComfyUI's queue: kept",
            true,
            &[
                Timeout(4_000, Reconcile),
                Reconciled(4_100, false, Action::None),
                Timeout(8_000, Reconcile),
                Reconciled(8_100, false, Action::None),
                Timeout(10_000, Ping),
                Pong(10_010),
                Timeout(12_000, Reconcile),
                Reconciled(12_100, false, Action::None),
                Timeout(16_000, Reconcile),
                Reconciled(16_100, false, Action::None),
            ],
        );
        run(
            "without a socket every poll reconciles",
            false,
            &[
                Timeout(0, Connect),
                ConnectFailed(100, 0.0),
                Next(300),
                Timeout(4_000, Connect),
                ConnectFailed(4_000, 0.0),
                Timeout(4_000, Reconcile),
                Reconciled(4_100, true, Action::None),
            ],
        );
    }

    #[test]
    fn reconnect_delays_grow_with_backoff_and_reset_after_success() {
        // A long poll interval keeps the poll tick out of the way.
        run_with(
            "backoff",
            false,
            Duration::from_secs(60),
            &[
                Next(0),
                Timeout(0, Connect),
                ConnectFailed(0, 1.0),
                Next(400),
                Timeout(399, Action::None),
                Timeout(400, Connect),
                ConnectFailed(400, 1.0),
                Next(1_000),
                Timeout(1_000, Connect),
                ConnectFailed(1_000, 1.0),
                Next(2_000),
                Timeout(2_000, Connect),
                ConnectFailed(2_000, 1.0),
                Next(3_800),
                Timeout(3_800, Connect),
                ConnectFailed(3_800, 1.0),
                Next(7_200),
                Timeout(7_200, Connect),
                // Capped at 5 s.
                ConnectFailed(7_200, 1.0),
                Next(12_200),
                Timeout(12_200, Connect),
                ConnectFailed(12_200, 1.0),
                Next(17_200),
                Timeout(17_200, Connect),
                Connected(17_300),
                // ComfyUI closes it: the wait starts again from the shortest.
                Closed(18_000, 1.0),
                Next(18_400),
                Timeout(18_400, Connect),
                ConnectFailed(18_400, 0.0),
                Next(18_600),
            ],
        );
    }
}
