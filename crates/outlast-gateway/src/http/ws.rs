//! `GET /v1/ws`: one long-lived WebSocket per client carrying every job stream.
//!
//! One task per connection runs the session: reads, subscriptions, keep-alive and writes. Writes
//! are bounded (one frame in tungstenite's buffer plus the kernel's socket buffer): a client that
//! does not take a frame within `slow_consumer_timeout` is disconnected; it loses nothing,
//! because it resumes from its last sequence number.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use outlast_protocol::codec::{DecodeError, SUBPROTOCOL_JSON, SUBPROTOCOL_MSGPACK};
use outlast_protocol::keepalive::{Keepalive, KeepaliveAction};
use outlast_protocol::replay::{Cursor, Live};
use outlast_protocol::v1::{BatchAnswer, ClientMsg, Control, PROTOCOL, ServerMsg};
use outlast_protocol::{Codec, ErrorCode, Frame, JobId, OwnerId, QueuePlace, Seq};
use tokio::time::Instant;
use tokio_stream::StreamMap;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use super::owner::Authed;
use super::state::AppState;
use super::stream_limit::StreamPermit;
use super::upload_ws::Wake;
use crate::auth::{Credential, Principal, Scope};
use crate::error::AppError;
use crate::hub::{JobSubscription, Pushed};
use crate::jobs::pages::Pages;
use crate::metrics as m;

/// Subscriptions one connection may hold.
const MAX_SUBSCRIPTIONS: usize = 1024;
/// Read buffer per connection: small, because most connections are idle (tungstenite's default
/// is 128 KiB and is allocated eagerly). Larger messages still arrive: the buffer grows to the
/// frame being read, in reads of this size that `read_ahead` serves from its burst buffer.
/// Measured with `ws-bench` (idle part, 19,000 connections): 2 KiB gave 5.92 KiB RSS per
/// connection, 1 KiB 4.91 KiB; `upload-bench`'s WebSocket path moved 324-379 MiB/s with 1 KiB
/// against 179-330 MiB/s for the build before it (2 KiB), in alternating runs.
const READ_BUFFER: usize = 1024;
/// How long the server waits for the peer's answer to its close frame.
const CLOSE_HANDSHAKE: std::time::Duration = std::time::Duration::from_secs(2);

/// Close codes the server uses (RFC 6455 and the 4000-4999 private range).
pub mod close {
    use outlast_protocol::close::CloseCode;
    /// The client closed, or the server ends a healthy session.
    pub const NORMAL: u16 = CloseCode::Normal.as_u16();
    /// A frame-level protocol violation.
    pub const PROTOCOL_ERROR: u16 = CloseCode::ProtocolError.as_u16();
    /// Text that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = CloseCode::InvalidPayload.as_u16();
    /// A frame or message over the size limit.
    pub const MESSAGE_TOO_BIG: u16 = CloseCode::MessageTooBig.as_u16();
    /// The gateway is restarting or shutting down; reconnect.
    pub const SERVICE_RESTART: u16 = CloseCode::ServiceRestart.as_u16();
    /// The client answered no ping in time.
    pub const PING_TIMEOUT: u16 = CloseCode::PingTimeout.as_u16();
    /// The credential expired without a `refresh`.
    pub const AUTH_EXPIRED: u16 = CloseCode::AuthExpired.as_u16();
}

/// The upgrade handler. A bad credential is answered before the upgrade (401 with a typed
/// body); a ticket in the subprotocol list is never echoed (only `outlast.v1.*` is).
pub async fn handler(
    ws: WebSocketUpgrade,
    principal: Result<Authed, AppError>,
    State(state): State<AppState>,
) -> Response {
    let principal = match principal {
        Ok(Authed(principal)) => principal,
        Err(e) => return e.into_response(),
    };
    let cfg = &state.config;
    let ws = ws
        .protocols([SUBPROTOCOL_MSGPACK, SUBPROTOCOL_JSON])
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(cfg.max_message_bytes.saturating_mul(4).max(1 << 20))
        .max_message_size(cfg.max_message_bytes)
        .max_frame_size(cfg.max_message_bytes);
    let Some(codec) = ws
        .selected_protocol()
        .and_then(|p| p.to_str().ok())
        .and_then(Codec::from_subprotocol)
    else {
        return AppError::new(
            ErrorCode::UnsupportedSubprotocol,
            format!("offer the WebSocket subprotocol {SUBPROTOCOL_MSGPACK} or {SUBPROTOCOL_JSON}"),
        )
        .into_response();
    };
    if state.shutdown.is_cancelled() {
        return AppError::new(ErrorCode::ShuttingDown, "the gateway is shutting down")
            .into_response();
    }
    // Boxed: the upgrade future keeps the callback for the connection's whole life.
    let setup = Box::new(Setup {
        state,
        principal,
        codec,
    });
    ws.on_upgrade(move |socket| Session::start(*setup, socket))
}

/// What a session starts from once the connection is upgraded.
struct Setup {
    state: AppState,
    principal: Principal,
    codec: Codec,
}

/// Why a session ends.
enum End {
    /// Close with this code and reason (after anything queued).
    Close(u16, &'static str),
    /// The peer is gone or too slow; drop the socket without waiting.
    Abort,
}

struct Session {
    state: AppState,
    owner: OwnerId,
    /// The connection's credential: scopes per message, and when it expires.
    principal: Principal,
    /// When the credential expires; replaced by a `refresh`.
    expires: Option<Instant>,
    codec: Codec,
    /// Written to directly: the outbound buffer is tungstenite's (bounded by
    /// `max_write_buffer_size`) plus the kernel's, and a send that cannot complete within
    /// `slow_consumer_timeout` ends the session. No writer task, no extra queue per connection.
    socket: WebSocket,
    subs: StreamMap<JobId, JobSubscription>,
    /// What the connection holds per subscribed job (the same keys as `subs`).
    followed: HashMap<JobId, Followed>,
    /// Uploads written over this connection, and the owner's upload progress.
    uploads: super::upload_ws::SessionUploads,
}

/// One subscribed job's state in a session.
struct Followed {
    /// The newest sequence number sent.
    cursor: Cursor,
    /// The newest scheduler round whose place was shown: an older place still in the channel
    /// is stale and dropped.
    place_round: u64,
    /// The subscription's place among its owner's `streams.max_per_owner`.
    _permit: StreamPermit,
}

impl Session {
    /// Builds the session on the heap and returns the future that runs it. The session's
    /// state is boxed and every rarely taken branch's future too, so what an idle connection
    /// keeps is the session, its socket and the one `select!` it waits in (`ws-bench` idle).
    fn start(setup: Setup, socket: WebSocket) -> impl Future<Output = ()> + Send + 'static {
        let Setup {
            state,
            principal,
            codec,
        } = setup;
        let owner = principal.owner.clone();
        let uploads = super::upload_ws::SessionUploads::new(state.uploads.clone(), owner.clone());
        let session = Box::new(Session {
            uploads,
            state,
            owner,
            expires: expiry_instant(principal.expires_at_ms),
            principal,
            codec,
            socket,
            subs: StreamMap::new(),
            followed: HashMap::new(),
        });
        session.run()
    }

    async fn run(mut self: Box<Self>) {
        // The upgraded connection escapes axum's graceful shutdown; this token keeps the
        // shutdown waiting for it.
        let _alive = self.state.tracker.token();
        metrics::gauge!(m::WS_CONNECTIONS).increment(1.0);
        metrics::counter!(m::WS_CONNECTIONS_TOTAL).increment(1);
        let end = self.drive().await;
        Box::pin(self.finish(end)).await;
        metrics::gauge!(m::WS_CONNECTIONS).decrement(1.0);
    }

    /// After the session loop: commit uploads, release subscriptions, close.
    async fn finish(&mut self, end: End) {
        // Commit what arrived for uploads before anything else, so a resume sees it.
        self.uploads.close().await;
        for job in self.subs.keys().copied().collect::<Vec<_>>() {
            self.unsubscribe(job);
        }
        if let End::Close(code, reason) = end {
            let frame = CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            };
            if self.send_raw(Message::Close(Some(frame))).await.is_ok() {
                // Finish the closing handshake: read until the peer's close frame (briefly).
                // Closing the socket with unread input would send a TCP reset, which can destroy
                // our close frame in the peer's receive buffer before it reads it.
                let _ = tokio::time::timeout(CLOSE_HANDSHAKE, async {
                    while let Some(Ok(msg)) = self.socket.recv().await {
                        if matches!(msg, Message::Close(_)) {
                            break;
                        }
                    }
                })
                .await;
            }
        }
    }

    async fn drive(&mut self) -> End {
        let cfg = Arc::clone(&self.state.config);
        let mut keepalive = Keepalive::new(
            Instant::now().into_std(),
            cfg.ping_interval,
            cfg.pong_timeout,
        );
        let welcome = Control::Welcome {
            protocol: PROTOCOL.to_owned(),
            owner: self.owner.to_string(),
            heartbeat_ms: cfg.ping_interval.as_millis() as u64,
            max_message_bytes: cfg.max_message_bytes as u64,
        };
        if Box::pin(self.send(welcome.into())).await.is_err() {
            return End::Abort;
        }
        let shutdown = self.state.shutdown.clone();
        loop {
            // One timer for the keep-alive, the credential's expiry and the uploads' flushes:
            // an idle connection waits in this `select!`, so each timer in it is memory per
            // connection.
            let deadline = [self.expires, self.uploads.deadline()]
                .into_iter()
                .flatten()
                .fold(Instant::from_std(keepalive.poll_timeout()), Instant::min);
            let step = tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    let bye = Control::Goaway { reason: "the gateway is restarting".into(), retry_ms: 1000 };
                    let _ = Box::pin(self.send(bye.into())).await;
                    return End::Close(close::SERVICE_RESTART, "gateway restarting; reconnect and resume");
                }
                frame = self.socket.recv() => {
                    // Nothing is acted on once the credential has expired.
                    if self.expired() {
                        return Box::pin(self.expire()).await;
                    }
                    keepalive.handle_inbound(Instant::now().into_std());
                    match frame {
                        None => return End::Abort,
                        Some(Err(e)) => return close_for(e),
                        Some(Ok(Message::Close(_))) => return End::Close(close::NORMAL, ""),
                        Some(Ok(Message::Ping(_) | Message::Pong(_))) => Ok(()),
                        Some(Ok(Message::Text(text))) => Box::pin(self.handle_frame(text.as_bytes(), true)).await,
                        Some(Ok(Message::Binary(bytes))) if super::upload_ws::is_data(&bytes) => {
                            Box::pin(self.upload_data(bytes)).await
                        }
                        Some(Ok(Message::Binary(bytes))) => Box::pin(self.handle_frame(&bytes, false)).await,
                    }
                }
                Some((job, item)) = self.subs.next(), if !self.subs.is_empty() => Box::pin(self.forward(job, item)).await,
                progress = self.uploads.next_progress() => {
                    Box::pin(self.upload_wake(Wake::Progress(Box::new(progress)))).await
                }
                () = tokio::time::sleep_until(deadline) => {
                    if self.expired() {
                        return Box::pin(self.expire()).await;
                    }
                    let now = Instant::now();
                    let uploads_due = self.uploads.deadline().is_some_and(|d| d <= now);
                    let ping = match keepalive.poll(now.into_std()) {
                        Some(KeepaliveAction::Ping) => true,
                        Some(KeepaliveAction::TimedOut) => {
                            metrics::counter!(m::WS_PING_TIMEOUTS).increment(1);
                            return End::Close(close::PING_TIMEOUT, "no pong received in time");
                        }
                        None => false,
                    };
                    Box::pin(self.on_timer(uploads_due, ping)).await
                }
            };
            if step.is_err() {
                metrics::counter!(m::WS_SLOW_CONSUMERS).increment(1);
                tracing::info!(owner = %self.owner, "closing a connection that does not keep up");
                return End::Abort;
            }
        }
    }

    /// The credential has expired (a `refresh` moves `expires`).
    fn expired(&self) -> bool {
        self.expires.is_some_and(|at| at <= Instant::now())
    }

    /// Tells the client its credential expired; the session then closes.
    async fn expire(&mut self) -> End {
        let msg = "credential expired; reconnect with a new token or ticket".to_owned();
        let _ = self.error(None, ErrorCode::Unauthorized, msg).await;
        End::Close(close::AUTH_EXPIRED, "credential expired")
    }

    /// The session's timer fired: flush what uploads have due, then ping if it is time.
    async fn on_timer(&mut self, uploads_due: bool, ping: bool) -> Result<(), ()> {
        if uploads_due {
            self.upload_wake(Wake::Timer).await?;
        }
        if ping {
            self.ping().await?;
        }
        Ok(())
    }

    /// An upload chunk frame: written, and answered by what it acknowledges.
    async fn upload_data(&mut self, frame: bytes::Bytes) -> Result<(), ()> {
        let out = self.uploads.data(frame).await;
        self.send_all(out).await
    }

    /// An upload timer or progress wake-up, and the messages it produces.
    async fn upload_wake(&mut self, wake: Wake) -> Result<(), ()> {
        let out = self.uploads.on_wake(wake).await;
        self.send_all(out).await
    }

    /// Sends a message. Err means the client did not keep up (or is gone).
    async fn send(&mut self, msg: ServerMsg) -> Result<(), ()> {
        if matches!(msg, ServerMsg::Event(_)) {
            metrics::counter!(m::EVENTS_SENT, "transport" => "ws").increment(1);
        }
        let frame = match self.codec.encode(&msg) {
            Ok(Frame::Binary(b)) => Message::Binary(b.into()),
            Ok(Frame::Text(t)) => Message::Text(t.into()),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a server message");
                return Ok(());
            }
        };
        self.send_raw(frame).await
    }

    async fn send_all(&mut self, msgs: Vec<ServerMsg>) -> Result<(), ()> {
        for msg in msgs {
            self.send(msg).await?;
        }
        Ok(())
    }

    async fn send_raw(&mut self, frame: Message) -> Result<(), ()> {
        match tokio::time::timeout(
            self.state.config.slow_consumer_timeout,
            self.socket.send(frame),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            _ => Err(()),
        }
    }

    async fn ping(&mut self) -> Result<(), ()> {
        self.send_raw(Message::Ping(bytes::Bytes::new())).await?;
        let jobs = self
            .followed
            .iter()
            .map(|(j, f)| (*j, f.cursor.position()))
            .collect();
        self.send(Control::Heartbeat { jobs }.into()).await
    }

    async fn error(
        &mut self,
        req: Option<u64>,
        code: ErrorCode,
        message: String,
    ) -> Result<(), ()> {
        self.send(Control::Error { req, code, message }.into())
            .await
    }

    async fn handle_frame(&mut self, bytes: &[u8], text: bool) -> Result<(), ()> {
        let expected_text = self.codec == Codec::Json;
        if text != expected_text {
            let e = DecodeError::WrongFrameType(if text { "text" } else { "binary" });
            return self.error(None, e.code(), e.to_string()).await;
        }
        let msg = match self
            .codec
            .decode_client(bytes, self.state.config.max_message_bytes)
        {
            Ok(msg) => msg,
            Err((e, req)) => {
                metrics::counter!(m::WS_BAD_MESSAGES, "code" => e.code().as_str()).increment(1);
                return self.error(req, e.code(), e.to_string()).await;
            }
        };
        if let Some((req, scope)) = needed_scope(&msg)
            && let Err(e) = self.principal.require(scope)
        {
            return self.error(req, e.code, e.message).await;
        }
        match msg {
            ClientMsg::Ping { nonce } => self.send(Control::Pong { nonce }.into()).await,
            ClientMsg::Refresh { req, token } => self.refresh(req, &token.0).await,
            ClientMsg::Submit { req, job } => {
                if let Err(e) = self.principal.may_submit(&job.backend) {
                    return self.error(req, e.code, e.message).await;
                }
                match self.state.jobs.submit(&self.owner, job).await {
                    Ok(s) => {
                        self.send(
                            Control::Submitted {
                                req,
                                job_id: s.job_id,
                                created: s.created,
                            }
                            .into(),
                        )
                        .await
                    }
                    Err(e) => self.error(req, e.code, e.message).await,
                }
            }
            ClientMsg::SubmitBatch { req, jobs } => self.submit_batch(req, jobs).await,
            msg @ (ClientMsg::UploadCreate { .. } | ClientMsg::UploadResume { .. }) => {
                let out = self.uploads.handle(msg).await;
                self.send_all(out).await
            }
            ClientMsg::Subscribe { req, job_id, after } => self.subscribe(req, job_id, after).await,
            ClientMsg::Unsubscribe { req, job_id } => {
                self.unsubscribe(job_id);
                self.send(Control::Unsubscribed { req, job_id }.into())
                    .await
            }
            ClientMsg::Cancel { req, job_id } => {
                match self.state.jobs.cancel(&self.owner, job_id).await {
                    Ok(state) => {
                        self.send(Control::CancelResult { req, job_id, state }.into())
                            .await
                    }
                    Err(e) => self.error(req, e.code, e.message).await,
                }
            }
            ClientMsg::Get { req, job_id } => {
                match self.state.jobs.snapshot(&self.owner, job_id).await {
                    Ok(snapshot) => self.send(Control::Snapshot { req, snapshot }.into()).await,
                    Err(e) => self.error(req, e.code, e.message).await,
                }
            }
        }
    }

    /// `refresh`: a new bearer token of the same owner replaces the connection's credential.
    async fn refresh(&mut self, req: Option<u64>, token: &str) -> Result<(), ()> {
        let principal = match self.state.auth.resolve(Some(Credential::Bearer(token))) {
            Ok(p) if p.owner == self.owner => p,
            Ok(_) => {
                let msg = "a refresh must carry a token of the same owner".to_owned();
                return self.error(req, ErrorCode::Unauthorized, msg).await;
            }
            Err(e) => return self.error(req, e.code, e.message).await,
        };
        self.expires = expiry_instant(principal.expires_at_ms);
        let expires_at_ms = principal.expires_at_ms;
        self.principal = principal;
        self.send(Control::Refreshed { req, expires_at_ms }.into())
            .await
    }

    /// `submit_batch`: the HTTP batch's code path ([`super::api::submit_each`]), answered by
    /// `submitted_batch` (or `error` when the batch as a whole is refused).
    async fn submit_batch(
        &mut self,
        req: Option<u64>,
        jobs: Vec<serde_json::Value>,
    ) -> Result<(), ()> {
        // Like the HTTP batch: a backend the credential may not use refuses the whole batch.
        for job in &jobs {
            if let Some(backend) = job.get("backend").and_then(serde_json::Value::as_str)
                && let Err(e) = self.principal.may_submit(backend)
            {
                return self.error(req, e.code, e.message).await;
            }
        }
        let outcomes = match super::api::submit_each(&self.state, &self.owner, jobs).await {
            Ok(outcomes) => outcomes,
            Err(e) => return self.error(req, e.code, e.message).await,
        };
        let jobs = outcomes
            .into_iter()
            .map(|outcome| match outcome {
                Ok(s) => BatchAnswer::Submitted {
                    job_id: s.job_id,
                    created: s.created,
                    state: s.snapshot.state,
                },
                Err(e) => BatchAnswer::Refused { error: e.body() },
            })
            .collect();
        self.send(Control::SubmittedBatch { req, jobs }.into())
            .await
    }

    async fn subscribe(
        &mut self,
        req: Option<u64>,
        job: JobId,
        after: Option<Seq>,
    ) -> Result<(), ()> {
        if !self.subs.contains_key(&job) && self.subs.len() >= MAX_SUBSCRIPTIONS {
            let msg = format!("at most {MAX_SUBSCRIPTIONS} subscriptions per connection");
            return self.error(req, ErrorCode::LimitExceeded, msg).await;
        }
        self.unsubscribe(job);
        let permit = match self.state.streams.acquire(&self.owner) {
            Ok(permit) => permit,
            Err(e) => return self.error(req, e.code, e.message).await,
        };
        // Subscribe to live events before reading history, so nothing falls in between;
        // overlaps are dropped by sequence number.
        let live = self.state.hub.subscribe(job);
        let pages = Pages::new(self.owner.clone(), job, after);
        let Some((last, place, round)) =
            self.replay(job, pages, Some(req), after.is_some()).await?
        else {
            // Nothing can follow a terminal event (dropping `live` releases the channel).
            return Ok(());
        };
        self.subs.insert(job, live);
        self.followed.insert(
            job,
            Followed {
                cursor: Cursor::new(Some(last)),
                place_round: round,
                _permit: permit,
            },
        );
        self.show_place(job, place).await
    }

    /// After a replay: the queued job's current place (its round is in `followed`).
    async fn show_place(&mut self, job: JobId, place: Option<QueuePlace>) -> Result<(), ()> {
        match place {
            Some(QueuePlace { position, reason }) => {
                let msg = Control::Position {
                    job_id: job,
                    position,
                    reason,
                };
                self.send(msg.into()).await
            }
            None => Ok(()),
        }
    }

    /// Sends a job's stored history a page at a time, each page read only once the one before
    /// was sent. `subscribe` is the `req` of a `subscribe`, answered by `subscribed` before the
    /// first page; a catch-up (`None`) sends `subscribed` only with a snapshot. Ok(None) when
    /// the job is finished or a `subscribe` cannot read it (the client got an `error`), else
    /// the position to follow live from (a catch-up that failed stays where it was) with the
    /// queued job's place and scheduler round as of the last page read.
    async fn replay(
        &mut self,
        job: JobId,
        mut pages: Pages,
        mut subscribe: Option<Option<u64>>,
        resume: bool,
    ) -> Result<Option<(Seq, Option<QueuePlace>, u64)>, ()> {
        let catching_up = subscribe.is_none();
        let mut terminal = false;
        let (mut place, mut round) = (None, 0);
        loop {
            let page = match pages.next(&self.state.jobs).await {
                Ok(Some(page)) => page,
                Ok(None) => break,
                Err(e) => {
                    self.error(subscribe.flatten(), e.code, e.message).await?;
                    return Ok(catching_up.then(|| (pages.position(), None, 0)));
                }
            };
            if resume && subscribe.is_some() {
                metrics::counter!(m::WS_RESUMES, "recovered" => if page.recovered { "true" } else { "false" })
                    .increment(1);
            }
            if subscribe.is_some() || page.snapshot.is_some() {
                let msg = Control::Subscribed {
                    req: subscribe.take().flatten(),
                    job_id: job,
                    recovered: page.recovered,
                    snapshot: page.snapshot,
                };
                self.send(msg.into()).await?;
            }
            terminal = page.state.is_terminal();
            (place, round) = (page.place, page.round);
            for event in page.events {
                self.send(event.into()).await?;
            }
        }
        Ok((!terminal).then(|| (pages.position(), place, round)))
    }

    fn unsubscribe(&mut self, job: JobId) {
        self.subs.remove(&job);
        self.followed.remove(&job);
    }

    async fn forward(
        &mut self,
        job: JobId,
        item: Result<Pushed, BroadcastStreamRecvError>,
    ) -> Result<(), ()> {
        let item = match item {
            Ok(Pushed::Place(place)) => {
                // Not an event: no cursor. Only a place newer than the one shown goes out.
                let Some(followed) = self.followed.get_mut(&job) else {
                    return Ok(());
                };
                if place.round <= followed.place_round {
                    return Ok(());
                }
                followed.place_round = place.round;
                return self.send(place.message()).await;
            }
            Ok(Pushed::Event(event)) => Ok(event),
            Err(e) => Err(e),
        };
        let Some(followed) = self.followed.get_mut(&job) else {
            return Ok(());
        };
        let cursor = &mut followed.cursor;
        let live = match &item {
            Ok(event) => cursor.on_live(event.seq),
            Err(_) => cursor.on_lagged(),
        };
        match (live, item) {
            (Live::Duplicate, _) => Ok(()),
            (Live::Deliver, Ok(event)) => {
                let terminal = event.kind.is_terminal();
                let bytes = event.encoded(self.codec);
                let frame = match self.codec {
                    Codec::MsgPack => Message::Binary(bytes),
                    Codec::Json => match Utf8Bytes::try_from(bytes) {
                        Ok(text) => Message::Text(text),
                        Err(_) => return Ok(()),
                    },
                };
                self.send_raw(frame).await?;
                metrics::counter!(m::EVENTS_SENT, "transport" => "ws").increment(1);
                if terminal {
                    self.unsubscribe(job);
                }
                Ok(())
            }
            // A gap (this receiver lagged, or history was coalesced meanwhile): re-read the store
            // after the position, which a gap leaves where it was.
            _ => {
                let after = self
                    .followed
                    .get(&job)
                    .map_or(Seq::ZERO, |f| f.cursor.position());
                self.catch_up(job, after).await
            }
        }
    }

    async fn catch_up(&mut self, job: JobId, last: Seq) -> Result<(), ()> {
        let pages = Pages::new(self.owner.clone(), job, Some(last));
        match self.replay(job, pages, None, false).await? {
            Some((newest, place, round)) => {
                if let Some(followed) = self.followed.get_mut(&job) {
                    followed.cursor = Cursor::new(Some(newest));
                    followed.place_round = round;
                }
                // Places may have been lost with the lagged events: show the current one.
                self.show_place(job, place).await?;
            }
            None => self.unsubscribe(job),
        }
        Ok(())
    }
}

/// The scope a message needs, with its `req` for the refusal.
fn needed_scope(msg: &ClientMsg) -> Option<(Option<u64>, Scope)> {
    match msg {
        ClientMsg::Submit { req, .. }
        | ClientMsg::SubmitBatch { req, .. }
        | ClientMsg::Cancel { req, .. } => Some((*req, Scope::Submit)),
        ClientMsg::Subscribe { req, .. } | ClientMsg::Get { req, .. } => Some((*req, Scope::Read)),
        ClientMsg::UploadCreate { req, .. } | ClientMsg::UploadResume { req, .. } => {
            Some((*req, Scope::Upload))
        }
        ClientMsg::Unsubscribe { .. } | ClientMsg::Ping { .. } | ClientMsg::Refresh { .. } => None,
    }
}

/// The monotonic instant of a Unix-ms expiry (now when it has passed).
fn expiry_instant(at_ms: Option<u64>) -> Option<Instant> {
    let at_ms = at_ms?;
    let left = at_ms.saturating_sub(crate::clock::now_ms());
    Some(Instant::now() + std::time::Duration::from_millis(left))
}

/// Maps a transport error to the close code the client should see.
fn close_for(e: axum::Error) -> End {
    use tungstenite::error::{CapacityError, Error as WsError};
    let inner = e.into_inner();
    match inner.downcast_ref::<WsError>() {
        Some(WsError::Capacity(CapacityError::MessageTooLong { .. })) => {
            End::Close(close::MESSAGE_TOO_BIG, "message exceeds max_message_bytes")
        }
        Some(WsError::Capacity(_)) => End::Close(close::MESSAGE_TOO_BIG, "frame too large"),
        Some(WsError::Utf8(_)) => {
            End::Close(close::INVALID_PAYLOAD, "text frame is not valid UTF-8")
        }
        Some(WsError::Protocol(_)) => {
            End::Close(close::PROTOCOL_ERROR, "WebSocket protocol violation")
        }
        _ => End::Abort,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn returned_size<A, B, F>(_: fn(A, B) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// What every open connection holds in its task besides the boxed session: the future of
    /// the session loop waiting in its `select!`. A rarely taken branch awaited without
    /// `Box::pin`, or another timer in the loop, grows every idle connection (ws-bench's idle
    /// part measures the whole: 8.05 KiB per connection before the session was boxed).
    #[test]
    fn an_idle_sessions_future_and_state_stay_small() {
        let future = returned_size(Session::start);
        let session = std::mem::size_of::<Session>();
        println!("session future {future} bytes, session {session} bytes");
        assert!(future <= 1024, "the session's future is {future} bytes");
        assert!(session <= 1024, "the session is {session} bytes");
    }
}
