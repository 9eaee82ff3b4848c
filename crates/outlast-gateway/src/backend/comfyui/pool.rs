//! The ComfyUI servers: a slot count each, health, and leases.
//!
//! Outlast is the queue: the scheduler starts a job only when a healthy server has a free slot
//! ([`Pool::healthy_slots`]), so ComfyUI's own queue stays empty and the queue positions
//! Outlast reports are exact. A server that fails a call is taken out of rotation until a probe
//! (`GET /system_stats`) answers again.
//!
//! A slot whose canceled prompt ComfyUI has not confirmed stopped (the server stopped answering)
//! is *drained*: its lease is held by the task that keeps asking, and it counts for nobody until
//! the server confirms, so no job is started next to a prompt that may still run.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::client::Server;
use crate::metrics as m;

#[derive(Debug)]
struct Slot {
    busy: usize,
    healthy: bool,
    /// Busy slots held for an unconfirmed stop (see [`Lease::drain`]).
    draining: usize,
}

/// The configured servers.
#[derive(Debug)]
pub struct Pool {
    servers: Vec<(Server, usize)>,
    slots: Mutex<Vec<Slot>>,
    /// Serves ties round-robin, so equal servers share the work.
    next: Mutex<usize>,
    freed: Notify,
    scheduler: OnceLock<Arc<Notify>>,
}

/// One slot on one server, released on drop.
#[derive(Debug)]
pub struct Lease {
    pool: Arc<Pool>,
    /// Index of the server.
    pub index: usize,
    drained: bool,
}

impl Lease {
    /// The server.
    pub fn server(&self) -> &Server {
        &self.pool.servers[self.index].0
    }

    /// Marks the slot drained until this lease is dropped: it leaves [`Pool::healthy_slots`],
    /// so the scheduler starts nothing in its place while a prompt may still run there.
    pub fn drain(&mut self) {
        if !std::mem::replace(&mut self.drained, true) {
            self.pool.slots()[self.index].draining += 1;
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        {
            let mut slots = self.pool.slots();
            let slot = &mut slots[self.index];
            slot.busy = slot.busy.saturating_sub(1);
            if self.drained {
                slot.draining = slot.draining.saturating_sub(1);
            }
        }
        self.pool.freed.notify_waiters();
        if self.drained
            && let Some(wake) = self.pool.scheduler.get()
        {
            wake.notify_one(); // the slot counts again
        }
    }
}

impl Pool {
    /// Servers with their concurrency; all count as healthy until a call fails.
    pub fn new(servers: Vec<(Server, usize)>) -> Pool {
        let slots = servers
            .iter()
            .map(|_| Slot {
                busy: 0,
                healthy: true,
                draining: 0,
            })
            .collect();
        Pool {
            servers,
            slots: Mutex::new(slots),
            next: Mutex::new(0),
            freed: Notify::new(),
            scheduler: OnceLock::new(),
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Remembers the scheduler's wake-up.
    pub fn attach_scheduler(&self, wake: Arc<Notify>) {
        let _ = self.scheduler.set(wake);
    }

    /// Slots on healthy servers, drained ones not counted: how many jobs may run.
    pub fn healthy_slots(&self) -> usize {
        self.slots()
            .iter()
            .zip(&self.servers)
            .filter(|(s, _)| s.healthy)
            .map(|(s, (_, n))| n.saturating_sub(s.draining))
            .sum()
    }

    /// The server at `index`.
    pub fn server(&self, index: usize) -> &Server {
        &self.servers[index].0
    }

    /// The index of the server with this base URL.
    pub fn index_of(&self, base: &str) -> Option<usize> {
        self.servers.iter().position(|(s, _)| s.base == base)
    }

    /// A free slot on a healthy server (the least loaded; ties round-robin), if there is one.
    pub fn try_acquire(self: &Arc<Self>) -> Option<Lease> {
        let mut slots = self.slots();
        let mut next = self.next.lock().unwrap_or_else(PoisonError::into_inner);
        let n = self.servers.len();
        let best = (0..n)
            .map(|k| (*next + k) % n)
            .filter(|&i| slots[i].healthy && slots[i].busy < self.servers[i].1)
            .min_by(|&a, &b| {
                // busy/concurrency, compared without division.
                (slots[a].busy * self.servers[b].1).cmp(&(slots[b].busy * self.servers[a].1))
            })?;
        slots[best].busy += 1;
        *next = (best + 1) % n;
        Some(Lease {
            pool: Arc::clone(self),
            index: best,
            drained: false,
        })
    }

    /// Waits for a free slot on a healthy server.
    pub async fn acquire(self: &Arc<Self>) -> Lease {
        loop {
            let freed = self.freed.notified();
            if let Some(lease) = self.try_acquire() {
                return lease;
            }
            // Health changes do not notify `freed`; look again now and then.
            let _ = tokio::time::timeout(Duration::from_secs(1), freed).await;
        }
    }

    /// A slot on a given server, whatever its state: a resumed job goes back to where its
    /// prompt is.
    pub fn lease_on(self: &Arc<Self>, index: usize) -> Lease {
        self.slots()[index].busy += 1;
        Lease {
            pool: Arc::clone(self),
            index,
            drained: false,
        }
    }

    /// True when no server is in rotation.
    pub fn all_down(&self) -> bool {
        !self.slots().iter().any(|s| s.healthy)
    }

    /// Takes a server out of rotation after a failed call.
    pub fn mark_down(&self, index: usize, why: &str) {
        let was = std::mem::replace(&mut self.slots()[index].healthy, false);
        if was {
            if let Some(wake) = self.scheduler.get() {
                wake.notify_one(); // queued jobs may need a reason now
            }
            tracing::warn!(server = %self.servers[index].0.base, %why, "ComfyUI server out of rotation");
            metrics::gauge!(m::COMFYUI_SERVER_UP, "server" => self.servers[index].0.base.clone())
                .set(0.0);
        }
    }

    fn mark_up(&self, index: usize) {
        let was = std::mem::replace(&mut self.slots()[index].healthy, true);
        if !was {
            tracing::info!(server = %self.servers[index].0.base, "ComfyUI server back in rotation");
            if let Some(wake) = self.scheduler.get() {
                wake.notify_one();
            }
            self.freed.notify_waiters();
        }
        metrics::gauge!(m::COMFYUI_SERVER_UP, "server" => self.servers[index].0.base.clone())
            .set(1.0);
    }

    /// Probes every server every `interval` (`GET /system_stats`), so a server that went away
    /// leaves the rotation before a job is sent to it, and one that came back rejoins.
    pub async fn health_loop(self: Arc<Self>, interval: Duration, shutdown: CancellationToken) {
        loop {
            for index in 0..self.servers.len() {
                match self.servers[index].0.probe().await {
                    Ok(()) => self.mark_up(index),
                    Err(e) => self.mark_down(index, &e.to_string()),
                }
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(concurrency: &[usize]) -> Arc<Pool> {
        Arc::new(Pool::new(
            concurrency
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    (
                        Server::new(&format!("http://127.0.0.1:{}", 1000 + i)).expect("client"),
                        *n,
                    )
                })
                .collect(),
        ))
    }

    #[test]
    fn leases_spread_over_servers_and_skip_unhealthy_ones() {
        let p = pool(&[1, 2]);
        assert_eq!(p.healthy_slots(), 3);
        let a = p.try_acquire().expect("slot");
        let b = p.try_acquire().expect("slot");
        assert_ne!(
            a.index, b.index,
            "the first two jobs go to different servers"
        );
        let c = p.try_acquire().expect("slot");
        assert_eq!(c.index, 1);
        assert!(p.try_acquire().is_none(), "all three slots are busy");
        drop(a);
        let d = p.try_acquire().expect("a slot was freed");
        drop((b, c, d));
        p.mark_down(1, "test");
        assert_eq!(p.healthy_slots(), 1);
        let e = p.try_acquire().expect("server 0");
        assert_eq!(e.index, 0);
        assert!(p.try_acquire().is_none(), "server 1 is out of rotation");
        let f = p.lease_on(1);
        assert_eq!(f.index, 1, "a resumed job still gets its own server");
    }

    #[test]
    fn a_drained_slot_counts_for_nobody_until_its_lease_is_dropped() {
        let p = pool(&[2]);
        let mut a = p.try_acquire().expect("slot");
        a.drain();
        a.drain(); // once per lease
        assert_eq!(p.healthy_slots(), 1, "the drained slot is not offered");
        drop(a);
        assert_eq!(p.healthy_slots(), 2, "released with its lease");
    }
}
