//! Stops a prompt in ComfyUI when its job ends first (canceled, over its time limit): the
//! run's future is dropped, and the guard's `Drop` asks ComfyUI to remove or interrupt it.
//!
//! The request runs on the backend's [`TaskTracker`], so shutdown waits for it. While the
//! gateway is stopping its runners nothing is sent: the prompt runs on, and the restarted
//! gateway picks it up.

use tokio_util::task::TaskTracker;

use super::client::Server;
use crate::backend::JobContext;

/// Armed with a prompt id while ComfyUI may be working on it.
pub(super) struct CancelGuard<'a> {
    ctx: &'a JobContext,
    tracker: &'a TaskTracker,
    server: Server,
    prompt_id: Option<String>,
}

impl<'a> CancelGuard<'a> {
    /// A disarmed guard for prompts of `ctx` on `server`.
    pub(super) fn new(ctx: &'a JobContext, tracker: &'a TaskTracker, server: Server) -> Self {
        CancelGuard {
            ctx,
            tracker,
            server,
            prompt_id: None,
        }
    }

    /// From now on, dropping the guard stops `prompt_id`.
    pub(super) fn arm(&mut self, prompt_id: &str) {
        self.prompt_id = Some(prompt_id.to_owned());
    }

    /// ComfyUI is done with the prompt (or never took it): nothing to stop.
    pub(super) fn disarm(&mut self) {
        self.prompt_id = None;
    }
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        let Some(prompt_id) = self.prompt_id.take() else {
            return;
        };
        if self.ctx.shutting_down() {
            return;
        }
        // Dropped outside a runtime (a test tearing down): there is nothing to send it with.
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let server = self.server.clone();
        self.tracker.spawn_on(
            async move {
                match server.cancel(&prompt_id).await {
                    Ok(()) => tracing::info!(prompt = %prompt_id, "ComfyUI prompt canceled"),
                    Err(e) => {
                        tracing::warn!(prompt = %prompt_id, error = %e, "could not cancel the ComfyUI prompt")
                    }
                }
            },
            &handle,
        );
    }
}
