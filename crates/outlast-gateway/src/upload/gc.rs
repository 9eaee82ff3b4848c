//! Garbage collection of uploads: expired open uploads and complete ones past their retention
//! are removed, unless a writer holds them.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Uploads;
use crate::clock::now_ms;
use crate::error::AppError;
use crate::metrics as m;

impl Uploads {
    /// Removes expired uploads that nobody is writing; returns how many.
    pub async fn collect_garbage(self: &Arc<Self>) -> Result<usize, AppError> {
        let now = now_ms();
        let all = self.blocking(|s| s.all()).await?;
        let mut removed = 0;
        for r in all {
            if self.expires_ms(&r) >= now {
                continue;
            }
            let slot = self.slot(r.id);
            let Ok(guard) = slot.try_lock_owned() else {
                continue;
            };
            // Re-check under the lock: a writer may have touched it meanwhile.
            let id = r.id;
            let fresh = self.blocking(move |s| s.get(id)).await?;
            if let Some(fresh) = fresh
                && self.expires_ms(&fresh) < now
            {
                self.remove(fresh).await?;
                removed += 1;
            }
            drop(guard);
            self.drop_slot(id);
        }
        if removed > 0 {
            metrics::counter!(m::UPLOADS_EXPIRED).increment(removed as u64);
            tracing::info!(removed, "removed expired uploads");
        }
        Ok(removed)
    }

    /// Runs garbage collection until `shutdown`.
    pub async fn gc_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let shortest = self.cfg.expiry.min(self.cfg.retention);
        let every = (shortest / 4).clamp(Duration::from_millis(50), Duration::from_secs(60));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.collect_garbage().await {
                tracing::warn!(error = %e, "upload garbage collection failed");
            }
        }
    }
}
