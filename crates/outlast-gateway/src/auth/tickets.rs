//! Single-use tickets for browsers: `POST /v1/tickets` trades a bearer credential for a random
//! ticket valid for `tickets.ttl` (30 s by default), presented once in the WebSocket subprotocol
//! list or as `?ticket=` where no header can be set. Kept in this process's memory (a restart
//! forgets them; several gateway nodes would need a shared store).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use super::principal::Principal;

/// Outstanding tickets at most; past this, issuing refuses until some expire.
pub const MAX_OUTSTANDING: usize = 100_000;

/// The ticket store.
#[derive(Debug)]
pub struct Tickets {
    ttl: Duration,
    /// sha256(ticket) -> (what it grants, when it expires). Only hashes are kept.
    open: Mutex<HashMap<[u8; 32], (Principal, Instant)>>,
}

impl Tickets {
    /// A store whose tickets live `ttl`.
    pub fn new(ttl: Duration) -> Tickets {
        Tickets {
            ttl,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// How long a ticket lives.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A new ticket for `principal` (base64url of 32 random bytes), or `None` when too many are
    /// outstanding.
    pub fn issue(&self, principal: Principal) -> Option<String> {
        let mut raw = [0u8; 32];
        raw[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        raw[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        let ticket = URL_SAFE_NO_PAD.encode(raw);
        let now = Instant::now();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.retain(|_, (_, until)| *until > now);
        if open.len() >= MAX_OUTSTANDING {
            return None;
        }
        open.insert(
            Sha256::digest(ticket.as_bytes()).into(),
            (principal, now + self.ttl),
        );
        Some(ticket)
    }

    /// Spends a ticket: its principal if it is known and unexpired; it is gone afterwards.
    pub fn redeem(&self, ticket: &str) -> Option<Principal> {
        let key: [u8; 32] = Sha256::digest(ticket.as_bytes()).into();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let (principal, until) = open.remove(&key)?;
        (until > Instant::now()).then_some(principal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_use_and_expiry() {
        let t = Tickets::new(Duration::from_secs(30));
        let a = t.issue(Principal::local()).unwrap();
        assert_eq!(a.len(), 43);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(t.redeem(&a), Some(Principal::local()));
        assert_eq!(t.redeem(&a), None);
        let short = Tickets::new(Duration::ZERO);
        let b = short.issue(Principal::local()).unwrap();
        assert_eq!(short.redeem(&b), None);
    }
}
