//! Following one accepted prompt over ComfyUI's WebSocket to its history entry: events become
//! job progress and previews; [`timers::FollowTimers`] decides when to ping, reconcile,
//! replace or reconnect the socket, and this driver does it with one sleep.
//!
//! Whenever the socket was gone or silent, the prompt is looked up from `/history` and
//! `/queue` (reconcile): events ComfyUI sent to no socket are gone, its history is not.

mod timers;

use std::time::Duration;

use outlast_protocol::{Failure, FailureCode};
use serde_json::Value;
use tokio::time::Instant;

use self::timers::{Action, FollowTimers, Why};
use super::Stop;
use super::client::{CallError, Server, Socket};
use super::failure::{execution_failure, fail, interrupted_failure};
use super::graph::Graph;
use super::history::{Place, locate};
use super::messages::{Event, Incoming};
use super::pool::Pool;
use crate::backend::JobContext;
use crate::config::ComfyConfig;
use crate::metrics as m;

/// Follows one accepted prompt to its history entry.
pub(super) struct Follow<'a> {
    pub(super) cfg: &'a ComfyConfig,
    pub(super) ctx: &'a JobContext,
    pub(super) graph: &'a Graph,
    pub(super) server: &'a Server,
    pub(super) pool: &'a Pool,
    /// The server's index in the pool.
    pub(super) index: usize,
    pub(super) prompt_id: &'a str,
    pub(super) client_id: &'a str,
    /// The socket, if one is open (the placement opens it before queueing).
    pub(super) socket: Option<Socket>,
    pub(super) last_node: Option<String>,
    pub(super) last_preview: Option<Instant>,
    /// Prompts ahead of ours in ComfyUI's queue, as last reported.
    pub(super) comfy_ahead: Option<usize>,
}

/// What woke the driver.
enum Wake {
    /// A frame, or `None`: the socket closed.
    Message(Option<Incoming>),
    /// The timers' deadline.
    Timer,
}

/// What a reconciliation found.
enum Found {
    /// The history entry.
    Finished(Value),
    /// ComfyUI is running it.
    Running,
    /// Pending in ComfyUI's queue, or ComfyUI did not answer (for less than
    /// `unreachable_timeout`).
    Waiting,
}

/// How ComfyUI said the prompt ended.
enum End {
    Done,
    Failed(Failure),
}

/// The timers' clock: tokio's, so paused test time applies.
fn now() -> std::time::Instant {
    Instant::now().into_std()
}

/// A random number in `[0, 1)` for the reconnect jitter (53 random bits of a v4 UUID).
fn unit_random() -> f64 {
    const BITS: u32 = 53;
    let bits = (uuid::Uuid::new_v4().as_u128() as u64) & ((1u64 << BITS) - 1);
    bits as f64 / (1u64 << BITS) as f64
}

impl Follow<'_> {
    /// Follows the prompt until its history entry is there (or it failed, or was lost).
    /// Leaves the socket in `self.socket` for the caller to close.
    pub(super) async fn run(&mut self) -> Result<Value, Stop> {
        let mut timers = FollowTimers::new(
            now(),
            self.cfg.ping_interval,
            self.cfg.poll_interval,
            self.socket.is_some(),
        );
        let mut unreachable_since: Option<Instant> = None;
        // A resumed job has no socket yet and must look at the server first.
        let mut must_reconcile = self.socket.is_none();
        let sleep = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(sleep);
        loop {
            if must_reconcile {
                must_reconcile = false;
                if let Found::Finished(entry) = self.reconcile(&mut unreachable_since).await? {
                    return Ok(entry);
                }
            }
            if let Some(at) = timers.poll_timeout() {
                sleep.as_mut().reset(Instant::from_std(at));
            }
            let wake = {
                let socket = self.socket.as_mut();
                tokio::select! {
                    m = async { match socket { Some(s) => s.next().await, None => std::future::pending().await } } => Wake::Message(m),
                    () = &mut sleep => Wake::Timer,
                }
            };
            match wake {
                Wake::Message(None) => {
                    tracing::info!(job = %self.ctx.job_id, "ComfyUI WebSocket closed; reconnecting");
                    self.socket = None;
                    timers.handle_closed(now(), unit_random());
                }
                Wake::Message(Some(Incoming::Pong)) => timers.handle_pong(now()),
                Wake::Message(Some(msg)) => {
                    timers.handle_message(now());
                    if let Some(end) = self.handle(msg).await? {
                        return self.entry_after(end, &mut unreachable_since).await;
                    }
                }
                Wake::Timer => match timers.handle_timeout(now()) {
                    Action::None => {}
                    Action::Ping => {
                        if let Some(sock) = self.socket.as_mut()
                            && !sock.ping().await
                        {
                            tracing::info!(job = %self.ctx.job_id, "ComfyUI WebSocket broke; reconnecting");
                            self.close_socket().await;
                            timers.handle_ping_failed(now());
                        }
                    }
                    Action::Close(why) => {
                        if why == Why::PongMissed {
                            tracing::info!(job = %self.ctx.job_id, "ComfyUI WebSocket answers no pings; reconnecting");
                        }
                        self.close_socket().await;
                    }
                    Action::Reconcile => {
                        let running = match self.reconcile(&mut unreachable_since).await? {
                            Found::Finished(entry) => return Ok(entry),
                            Found::Running => true,
                            Found::Waiting => false,
                        };
                        // A socket that stays silent while the prompt runs may have been cut
                        // off by ComfyUI's client-id bug: replace it (closing it first).
                        if let Action::Close(_) = timers.handle_reconciled(now(), running) {
                            self.close_socket().await;
                        }
                    }
                    Action::Connect => match self.server.connect(self.client_id).await {
                        Ok(sock) => {
                            metrics::counter!(m::COMFYUI_RECONNECTS).increment(1);
                            self.socket = Some(sock);
                            timers.handle_connected(now());
                            // Events sent while no socket was open are gone: look them up.
                            must_reconcile = true;
                        }
                        Err(e) => {
                            tracing::debug!(job = %self.ctx.job_id, error = %e, "ComfyUI WebSocket reconnect failed");
                            self.note_unreachable(&mut unreachable_since, &e.to_string())?;
                            timers.handle_connect_failed(now(), unit_random());
                        }
                    },
                },
            }
        }
    }

    /// Closes the socket (waiting until ComfyUI forgot it), if one is open.
    async fn close_socket(&mut self) {
        if let Some(old) = self.socket.take() {
            old.close().await;
        }
    }

    fn note_unreachable(&self, since: &mut Option<Instant>, why: &str) -> Result<(), Stop> {
        let since = *since.get_or_insert_with(Instant::now);
        self.pool.mark_down(self.index, why);
        if since.elapsed() >= self.cfg.unreachable_timeout {
            return Err(Stop::Fail(fail(
                FailureCode::BackendUnavailable,
                format!(
                    "ComfyUI at {} has been unreachable for {}: {why}",
                    self.server.base,
                    humantime::format_duration(self.cfg.unreachable_timeout)
                ),
                None,
            )));
        }
        Ok(())
    }

    /// Asks ComfyUI where the prompt is; says how many are ahead in ComfyUI's own queue.
    async fn reconcile(&mut self, unreachable_since: &mut Option<Instant>) -> Result<Found, Stop> {
        metrics::counter!(m::COMFYUI_RECONCILIATIONS).increment(1);
        match locate(self.server, self.prompt_id).await {
            Ok(place) => {
                *unreachable_since = None;
                match place {
                    Place::Finished(entry) => Ok(Found::Finished(entry)),
                    Place::Running => Ok(Found::Running),
                    Place::Pending { ahead } => {
                        // Others queued on this ComfyUI directly: say how many are ahead.
                        if self.comfy_ahead.replace(ahead) != Some(ahead) {
                            let label = format!("waiting in ComfyUI's own queue: {ahead} ahead");
                            self.ctx.progress(0, 0, Some(label)).await?;
                        }
                        Ok(Found::Waiting)
                    }
                    Place::Unknown => Err(Stop::Lost(format!(
                        "ComfyUI at {} no longer knows prompt {} (it restarted?)",
                        self.server.base, self.prompt_id
                    ))),
                }
            }
            Err(CallError::Refused(e) | CallError::Unreachable(e)) => {
                self.note_unreachable(unreachable_since, &e)?;
                Ok(Found::Waiting)
            }
            Err(e) => Err(Stop::Fail(fail(
                FailureCode::BackendError,
                format!("ComfyUI at {} answered unexpectedly: {e}", self.server.base),
                None,
            ))),
        }
    }

    /// After ComfyUI announced the end, its history entry (written before the announcement).
    async fn entry_after(
        &mut self,
        end: End,
        unreachable_since: &mut Option<Instant>,
    ) -> Result<Value, Stop> {
        if let End::Failed(failure) = end {
            return Err(Stop::Fail(failure));
        }
        let deadline = Instant::now() + self.cfg.unreachable_timeout;
        loop {
            if let Found::Finished(entry) = self.reconcile(unreachable_since).await? {
                return Ok(entry);
            }
            if Instant::now() > deadline {
                return Err(Stop::Fail(fail(
                    FailureCode::BackendError,
                    "ComfyUI announced the end of the prompt but has no history entry for it",
                    None,
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Maps one ComfyUI message to job events; `Some` when the prompt ended.
    async fn handle(&mut self, msg: Incoming) -> Result<Option<End>, Stop> {
        match msg {
            Incoming::Event(event) => {
                // `executing` right after connecting carries no prompt id; the socket's client
                // id is ours, so is the prompt.
                let ours = match event.prompt_id() {
                    Some(id) => id == self.prompt_id,
                    None => matches!(event, Event::Executing(_)),
                };
                if !ours {
                    return Ok(None);
                }
                match event {
                    Event::Executing(e) => match e.node {
                        Some(node) if self.last_node.as_deref() != Some(node.as_str()) => {
                            self.ctx
                                .progress(0, 0, Some(self.graph.title(&node)))
                                .await?;
                            self.last_node = Some(node);
                        }
                        None if e.prompt_id.is_some() => return Ok(Some(End::Done)),
                        _ => {}
                    },
                    Event::Progress(p) => {
                        let label = p
                            .node
                            .as_deref()
                            .or(self.last_node.as_deref())
                            .map(|n| self.graph.title(n));
                        self.ctx
                            .progress(p.value.unwrap_or(0), p.max.unwrap_or(0), label)
                            .await?;
                    }
                    Event::ExecutionSuccess(_) => return Ok(Some(End::Done)),
                    Event::ExecutionError(e) => {
                        return Ok(Some(End::Failed(execution_failure(self.graph, &e))));
                    }
                    Event::ExecutionInterrupted(e) => {
                        return Ok(Some(End::Failed(interrupted_failure(self.graph, &e))));
                    }
                    _ => {}
                }
                Ok(None)
            }
            Incoming::Preview {
                mime,
                image,
                prompt_id,
            } => {
                if prompt_id.as_deref().is_some_and(|p| p != self.prompt_id) {
                    return Ok(None);
                }
                if self
                    .last_preview
                    .is_some_and(|at| at.elapsed() < self.cfg.preview_interval)
                {
                    return Ok(None);
                }
                self.last_preview = Some(Instant::now());
                let max_edge = self.cfg.preview_max_edge;
                let small = tokio::task::spawn_blocking(move || shrink(&image, mime, max_edge))
                    .await
                    .ok()
                    .flatten();
                if let Some((mime, bytes)) = small {
                    self.ctx.preview(mime, bytes).await?;
                }
                Ok(None)
            }
            Incoming::Pong | Incoming::Ignored => Ok(None),
        }
    }
}

/// A preview small enough for a slow link: at most `max_edge` pixels, JPEG.
fn shrink(image: &[u8], mime: &'static str, max_edge: u32) -> Option<(&'static str, Vec<u8>)> {
    let mut options = outlast_image::Options::preset(outlast_image::Preset::Eco);
    options.max_edge = Some(max_edge);
    options.quality = 70;
    options.format = Some(outlast_image::Format::Jpeg);
    match outlast_image::process(image, &options) {
        Ok(out) => Some(("image/jpeg", out.bytes)),
        // A format the image crate does not read: pass small previews through unchanged.
        Err(_) if image.len() <= 64 * 1024 => Some((mime, image.to_vec())),
        Err(_) => None,
    }
}
