//! When to ping, when to send a heartbeat, and when a silent peer is dead. Sans-IO.

use std::time::{Duration, Instant};

/// What the connection driver must do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepaliveAction {
    /// Send a WebSocket ping frame and an application `heartbeat` message.
    Ping,
    /// The peer did not answer a ping in time: close the connection.
    TimedOut,
}

/// Keep-alive state of one connection.
///
/// Every `interval` the driver sends a ping (and a heartbeat). A ping not answered by any
/// inbound frame within `timeout` means the peer is gone. Any inbound frame counts as an
/// answer: a peer that is busy sending is evidently alive.
#[derive(Debug, Clone)]
pub struct Keepalive {
    interval: Duration,
    timeout: Duration,
    next_ping: Instant,
    unanswered_since: Option<Instant>,
}

impl Keepalive {
    /// Starts the schedule at `now`; the first ping is due one interval later.
    pub fn new(now: Instant, interval: Duration, timeout: Duration) -> Self {
        Self {
            interval,
            timeout,
            next_ping: now + interval,
            unanswered_since: None,
        }
    }

    /// Any frame arrived from the peer (a pong, a message, a ping).
    pub fn handle_inbound(&mut self, _now: Instant) {
        self.unanswered_since = None;
    }

    /// The next instant at which [`Keepalive::poll`] has something to do.
    pub fn poll_timeout(&self) -> Instant {
        match self.unanswered_since {
            Some(sent) => self.next_ping.min(sent + self.timeout),
            None => self.next_ping,
        }
    }

    /// What to do at `now`, if anything.
    pub fn poll(&mut self, now: Instant) -> Option<KeepaliveAction> {
        if let Some(sent) = self.unanswered_since
            && now >= sent + self.timeout
        {
            return Some(KeepaliveAction::TimedOut);
        }
        if now >= self.next_ping {
            // Skip missed ticks instead of bursting pings after a stall.
            while self.next_ping <= now {
                self.next_ping += self.interval;
            }
            if self.unanswered_since.is_none() {
                self.unanswered_since = Some(now);
            }
            return Some(KeepaliveAction::Ping);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn pings_every_interval_while_answered() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(t0, 25 * S, 10 * S);
        assert_eq!(k.poll_timeout(), t0 + 25 * S);
        assert_eq!(k.poll(t0 + 24 * S), None);
        for i in 1..=5u32 {
            let now = t0 + 25 * S * i;
            assert_eq!(k.poll(now), Some(KeepaliveAction::Ping));
            assert_eq!(k.poll_timeout(), now + 10 * S);
            k.handle_inbound(now + S);
            assert_eq!(k.poll_timeout(), now + 25 * S);
        }
    }

    #[test]
    fn silent_peer_times_out_after_timeout() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(t0, 25 * S, 10 * S);
        assert_eq!(k.poll(t0 + 25 * S), Some(KeepaliveAction::Ping));
        assert_eq!(k.poll(t0 + 34 * S), None);
        assert_eq!(k.poll(t0 + 35 * S), Some(KeepaliveAction::TimedOut));
    }

    #[test]
    fn timeout_longer_than_interval_keeps_pinging_then_times_out() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(t0, 10 * S, 25 * S);
        assert_eq!(k.poll(t0 + 10 * S), Some(KeepaliveAction::Ping));
        assert_eq!(k.poll(t0 + 20 * S), Some(KeepaliveAction::Ping));
        assert_eq!(k.poll(t0 + 30 * S), Some(KeepaliveAction::Ping));
        assert_eq!(k.poll(t0 + 35 * S), Some(KeepaliveAction::TimedOut));
    }

    #[test]
    fn stall_does_not_burst() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(t0, S, 100 * S);
        assert_eq!(k.poll(t0 + 10 * S), Some(KeepaliveAction::Ping));
        assert_eq!(k.poll(t0 + 10 * S), None);
        assert_eq!(k.poll_timeout(), t0 + 11 * S);
    }
}
