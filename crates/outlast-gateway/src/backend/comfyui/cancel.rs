//! Stopping a prompt in ComfyUI when its job ends first (canceled, over its time limit, failed
//! while ComfyUI still had it), and *confirming* it stopped: the job is reported and its slot
//! freed only once ComfyUI says the prompt left its queue (its history entry is there, or it is
//! in neither the queue nor the history).
//!
//! ComfyUI's interrupt is asynchronous (it takes effect at the prompt's next step or node), so
//! the stop is: `POST /queue {"delete"}`, `POST /interrupt {"prompt_id"}` if it runs, then
//! `/history` + `/queue` until it is gone. While the server does not answer, the request is
//! sent again with capped, jittered backoff, each retry logged, up to `comfyui.cancel_timeout`.
//! After that the job is reported anyway and the slot stays drained: a task on the backend's
//! tracker keeps asking until the server answers and confirms, then gives the slot back.
//!
//! [`Current`] is what a run holds in ComfyUI (its lease and, once it may be queued there, its
//! prompt id), kept outside the run's future so that dropping the future at a cancel or the
//! time limit does not drop the slot with it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use outlast_protocol::JobId;
use outlast_protocol::client::Backoff;
use tokio::time::Instant;

use super::client::Server;
use super::history::{Place, locate};
use super::pool::Lease;
use crate::metrics as m;

/// First and longest delay between two cancel requests to a server that does not answer.
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How often ComfyUI is asked whether an interrupted prompt left its queue yet.
const CONFIRM_POLL: Duration = Duration::from_millis(100);
/// A prompt still running this long after its interrupt is interrupted again (a prompt that
/// started between the queue read and the interrupt was not hit).
const REASK_AFTER: Duration = Duration::from_secs(5);

/// What one run holds: a slot and, while ComfyUI may have it, the prompt.
#[derive(Debug)]
pub(super) struct Placed {
    pub(super) lease: Lease,
    pub(super) prompt_id: Option<String>,
}

/// The run's hold on ComfyUI, shared by [`super::ComfyUi::run`] and the attempt inside it.
#[derive(Debug, Default)]
pub(super) struct Current {
    // A std Mutex: only short, synchronous swaps happen under it.
    placed: Mutex<Option<Placed>>,
    /// Set before the run's future is dropped at a cancel or the time limit: what it holds
    /// stays here for the stop.
    abandoned: AtomicBool,
}

impl Current {
    fn lock(&self) -> MutexGuard<'_, Option<Placed>> {
        self.placed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Holds `lease` for an attempt; dropping the returned guard gives it back, unless the
    /// prompt is armed (ComfyUI may still run it: the run stops it first) or the run was
    /// abandoned.
    pub(super) fn hold(&self, lease: Lease) -> Hold<'_> {
        *self.lock() = Some(Placed {
            lease,
            prompt_id: None,
        });
        Hold { current: self }
    }

    /// From now on ComfyUI may have `prompt_id`: it must be stopped if the run ends first.
    pub(super) fn arm(&self, prompt_id: &str) {
        if let Some(p) = self.lock().as_mut() {
            p.prompt_id = Some(prompt_id.to_owned());
        }
    }

    /// ComfyUI is done with the prompt (or never took it): nothing to stop.
    pub(super) fn disarm(&self) {
        if let Some(p) = self.lock().as_mut() {
            p.prompt_id = None;
        }
    }

    /// Called before the run's future is dropped: keep what it holds.
    pub(super) fn abandon(&self) {
        self.abandoned.store(true, Ordering::SeqCst);
    }

    /// What the run still holds.
    pub(super) fn take(&self) -> Option<Placed> {
        self.lock().take()
    }
}

/// An attempt's hold on its slot (see [`Current::hold`]).
pub(super) struct Hold<'a> {
    current: &'a Current,
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        if self.current.abandoned.load(Ordering::SeqCst) {
            return;
        }
        let mut placed = self.current.lock();
        if placed.as_ref().is_some_and(|p| p.prompt_id.is_none()) {
            *placed = None; // the lease goes back to the pool
        }
    }
}

/// A random number in `[0, 1)` for the retry jitter (53 random bits of a v4 UUID).
fn unit_random() -> f64 {
    const BITS: u32 = 53;
    let bits = (uuid::Uuid::new_v4().as_u128() as u64) & ((1u64 << BITS) - 1);
    bits as f64 / (1u64 << BITS) as f64
}

/// Stops `prompt_id` on `server` and waits until ComfyUI confirms it is gone from its queue.
/// Retries while the server does not answer; gives up (false) at `deadline`, if any.
pub(super) async fn stop_prompt(
    server: &Server,
    prompt_id: &str,
    job: JobId,
    deadline: Option<Instant>,
) -> bool {
    let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
    let mut retries = 0u32;
    // When the stop was last requested; None: (again) to be requested.
    let mut asked: Option<Instant> = None;
    loop {
        let step = async {
            if asked.is_none_or(|at| at.elapsed() >= REASK_AFTER) {
                server.cancel(prompt_id).await?;
                asked = Some(Instant::now());
            }
            locate(server, prompt_id).await
        };
        let wait = match step.await {
            Ok(Place::Finished(_)) => {
                tracing::info!(%job, server = %server.base, prompt = %prompt_id, retries, "ComfyUI confirmed the prompt stopped (its history entry is written)");
                return true;
            }
            Ok(Place::Unknown) => {
                tracing::info!(%job, server = %server.base, prompt = %prompt_id, retries, "ComfyUI confirmed the prompt is gone (in neither its queue nor its history)");
                return true;
            }
            Ok(Place::Running | Place::Pending { .. }) => {
                backoff.reset();
                CONFIRM_POLL
            }
            Err(e) => {
                asked = None;
                retries += 1;
                metrics::counter!(m::COMFYUI_CANCEL_RETRIES).increment(1);
                let delay = backoff.next_delay(unit_random());
                tracing::warn!(%job, server = %server.base, prompt = %prompt_id, retry = retries, retry_in = ?delay, error = %e, "ComfyUI did not answer the cancel; retrying");
                delay
            }
        };
        let now = Instant::now();
        match deadline {
            Some(d) if now >= d => return false,
            Some(d) => tokio::time::sleep(wait.min(d - now)).await,
            None => tokio::time::sleep(wait).await,
        }
    }
}
