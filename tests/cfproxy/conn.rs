//! One client connection through the edge: requests are read head by head (`http1`) and sent to
//! one origin connection; responses come back in order. The up half (client to origin) and the
//! down half (origin to client) run at once in one task: the up half forwards each request and
//! queues what the down half must expect (a [`Pending`]); the down half is the only writer to
//! the client, so the edge's own answers (403, 413, 502, 524) land in order. A `101` turns both
//! halves into byte pipes (the down one tracking frame boundaries for a clean `1001`).
//!
//! Timers: one idle watchdog per connection (no byte in either direction for `idle`, except while
//! a request waits for its response), and the origin timeout around every read from the origin
//! during a response.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::http1::{self, Body, ChunkedScan, HeadError, RequestHead};
use crate::wsframe::{self, Frames};

/// How long a `1001` cut may wait for the origin to finish the frame it is sending.
const CLOSE_WITHIN: Duration = Duration::from_secs(1);
/// How long a connection whose origin closed keeps reading what its client still sends.
const LINGER: Duration = Duration::from_secs(5);

/// Read buffer per direction (holds any head the edge accepts).
const BUF: usize = 64 * 1024;

/// The edge's fixed settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The origin, `HOST:PORT`.
    pub upstream: String,
    /// Idle cut (None: never).
    pub idle: Option<Duration>,
    /// Origin read timeout (None: never).
    pub origin: Option<Duration>,
    /// Largest request body forwarded.
    pub max_body: u64,
}

/// How a connection is ended on command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// A TCP reset: no close frame, no FIN.
    Abrupt,
    /// A `1001 going away` close frame between two frames, then FIN (WebSockets only).
    GoingAway,
    /// Stop forwarding, keep the connection open (WebSockets only).
    Stall,
}

/// Which connections an order applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Upgraded connections only.
    WebSockets,
    /// Every connection (those not upgraded are reset).
    All,
}

/// A cut sent to every connection.
#[derive(Debug, Clone, Copy)]
pub struct CutOrder {
    /// What to do.
    pub cut: Cut,
    /// To whom.
    pub scope: Scope,
}

/// Counters and switches shared by every connection and the control port.
#[derive(Debug, Default)]
pub struct Stats {
    pub up: AtomicU64,
    pub down: AtomicU64,
    pub up_rate: AtomicU64,
    pub down_rate: AtomicU64,
    pub refuse_ws: AtomicBool,
    pub refuse_sse: AtomicBool,
    connections: AtomicU64,
    connections_total: AtomicU64,
    requests: AtomicU64,
    ws_open: AtomicU64,
    ws_total: AtomicU64,
    ws_refused: AtomicU64,
    ws_stalled: AtomicU64,
    sse_refused: AtomicU64,
    idle_cuts: AtomicU64,
    origin_timeouts: AtomicU64,
    too_large: AtomicU64,
    cuts_abrupt: AtomicU64,
    cuts_1001: AtomicU64,
    random_cuts: AtomicU64,
    bad_gateway: AtomicU64,
}

impl Stats {
    /// The `/stats` answer.
    pub fn to_json(&self) -> String {
        let fields = [
            ("up", &self.up),
            ("down", &self.down),
            ("connections", &self.connections),
            ("connections_total", &self.connections_total),
            ("requests", &self.requests),
            ("ws_open", &self.ws_open),
            ("ws_total", &self.ws_total),
            ("ws_refused", &self.ws_refused),
            ("ws_stalled", &self.ws_stalled),
            ("sse_refused", &self.sse_refused),
            ("idle_cuts", &self.idle_cuts),
            ("origin_timeouts", &self.origin_timeouts),
            ("too_large", &self.too_large),
            ("cuts_abrupt", &self.cuts_abrupt),
            ("cuts_1001", &self.cuts_1001),
            ("random_cuts", &self.random_cuts),
            ("bad_gateway", &self.bad_gateway),
        ];
        let body: Vec<String> = fields
            .iter()
            .map(|(k, v)| format!("\"{k}\":{}", v.load(Ordering::SeqCst)))
            .collect();
        format!("{{{}}}", body.join(","))
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::SeqCst);
}

/// The edge: settings, counters, and the channels that reach every connection.
#[derive(Debug)]
pub struct Edge {
    settings: Settings,
    /// Counters and switches.
    pub stats: Stats,
    cuts: broadcast::Sender<CutOrder>,
    /// Mean WebSocket lifetime before a random cut, in ms (0: off).
    pub random_mean: watch::Sender<u64>,
}

/// How a connection ended.
#[derive(Debug)]
enum End {
    /// A side closed and the other was told.
    Closed,
    /// Nothing moved for the idle time.
    Idle,
    /// Cut with a reset.
    Abrupt,
    /// Cut with a `1001` close frame.
    GoingAway,
    /// Stalled on command (drained until the client gives up).
    Stall,
    /// The origin went silent inside a response body.
    OriginSilent,
    /// The edge answered by itself and closed.
    Local,
    /// A socket error (a peer reset, mostly).
    Failed(io::Error),
}

/// What the down half must do next, in request order.
#[derive(Debug)]
enum Pending {
    /// A request went to the origin: forward its response.
    Forwarded {
        /// Its method was HEAD (a response without a body).
        is_head: bool,
        /// For upgrade requests: told whether the origin switched protocols.
        upgraded: Option<oneshot::Sender<bool>>,
        /// Told when the request body has been sent whole (or was too large).
        body: oneshot::Receiver<BodyEnd>,
    },
    /// Write the edge's own answer, then close; `written` is told once it is out.
    Local {
        answer: Vec<u8>,
        written: oneshot::Sender<()>,
    },
}

/// How a forwarded request body ended (told to the down half).
#[derive(Debug)]
enum BodyEnd {
    /// Sent whole.
    Complete,
    /// Above the limit: answer 413, then tell the up half it is out.
    TooLarge(oneshot::Sender<()>),
}

/// How forwarding a body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forwarded {
    Complete,
    TooLarge,
}

fn answer(status: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nServer: cf-proxy\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn head_error_answer(e: HeadError) -> Vec<u8> {
    match e {
        HeadError::TooLarge => answer("431 Request Header Fields Too Large", "head too large\n"),
        HeadError::Invalid => answer("400 Bad Request", "malformed request\n"),
    }
}

impl Edge {
    /// An edge with these settings, no cuts ordered yet.
    pub fn new(settings: Settings) -> Edge {
        Edge {
            settings,
            stats: Stats::default(),
            cuts: broadcast::channel(64).0,
            random_mean: watch::channel(0).0,
        }
    }

    /// Sends a cut to every connection; returns how many it applies to.
    pub fn order(&self, order: CutOrder) -> u64 {
        let _ = self.cuts.send(order);
        match order.scope {
            Scope::WebSockets => self.stats.ws_open.load(Ordering::SeqCst),
            Scope::All => self.stats.connections.load(Ordering::SeqCst),
        }
    }

    /// Serves one client connection to its end.
    pub async fn serve(&self, client: TcpStream) {
        let s = &self.stats;
        bump(&s.connections);
        bump(&s.connections_total);
        let _ = client.set_nodelay(true);
        let act = Activity::new(self.settings.idle);
        let (cr, mut cw) = client.into_split();
        let mut cr = Reader::new(cr, &act, &s.up_rate);
        let mut cuts = self.cuts.subscribe();
        let end = self.run(&mut cr, &mut cw, &mut cuts, &act).await;
        match end {
            End::Idle => bump(&s.idle_cuts),
            End::Abrupt => bump(&s.cuts_abrupt),
            End::GoingAway => bump(&s.cuts_1001),
            End::OriginSilent => bump(&s.origin_timeouts),
            End::Failed(ref e) => eprintln!("cf-proxy: connection: {e}"),
            End::Closed | End::Stall | End::Local => {}
        }
        if let End::Abrupt = end {
            // A reset, not a FIN: linger 0, and the write half is not shut down on drop.
            let _ = socket2::SockRef::from(cw.as_ref()).set_linger(Some(Duration::ZERO));
            cw.forget();
            drop(cr);
        }
        s.connections.fetch_sub(1, Ordering::SeqCst);
    }

    async fn run(
        &self,
        cr: &mut Reader<'_>,
        cw: &mut OwnedWriteHalf,
        cuts: &mut broadcast::Receiver<CutOrder>,
        act: &Activity,
    ) -> End {
        let first = tokio::select! {
            r = read_request(cr) => r,
            () = act.idle_wait() => return End::Idle,
            () = cut_all(cuts) => return End::Abrupt,
        };
        let first = match first {
            Ok(Some(h)) => h,
            Ok(None) => return End::Closed,
            Err(ReadErr::Io(e)) => return End::Failed(e),
            Err(ReadErr::Head(e)) => return local(cw, &head_error_answer(e)).await,
        };
        bump(&self.stats.requests);
        if let Some(refusal) = self.screen(&first) {
            // Nothing reaches the origin; the body is read and dropped so the client sees the
            // answer instead of a reset.
            let end = local(cw, &refusal).await;
            cr.consume(first.len);
            drain_body(cr, first.body).await;
            return end;
        }
        let server = match tokio::time::timeout(
            Duration::from_secs(10),
            TcpStream::connect(&self.settings.upstream),
        )
        .await
        {
            Ok(Ok(s)) => s,
            _ => {
                bump(&self.stats.bad_gateway);
                return local(
                    cw,
                    &answer("502 Bad Gateway", "the origin is unreachable\n"),
                )
                .await;
            }
        };
        let _ = server.set_nodelay(true);
        let (sr, mut sw) = server.into_split();
        let mut sr = Reader::new(sr, act, &self.stats.down_rate);
        let (tx, rx) = mpsc::channel(4);
        let ws = AtomicBool::new(false);
        let end = tokio::select! {
            e = self.up(cr, &mut sw, tx, first) => e,
            e = self.down(&mut sr, cw, rx, cuts, &ws, act) => e,
            () = act.idle_wait() => End::Idle,
        };
        if ws.load(Ordering::SeqCst) {
            self.stats.ws_open.fetch_sub(1, Ordering::SeqCst);
        }
        if let End::Closed = end {
            // The origin closed after its answer, perhaps before reading the whole request
            // body (an early 404 or 423): what the client still sends is read and dropped for
            // a while, so the answer reaches it instead of a reset (a lingering close).
            let _ = tokio::time::timeout(LINGER, drain(cr)).await;
        }
        if let End::Stall = end {
            // A black hole: read and drop both ways until the client gives up on the socket.
            bump(&self.stats.ws_stalled);
            tokio::select! {
                () = drain(cr) => {}
                () = async { drain(&mut sr).await; std::future::pending::<()>().await } => {}
            }
        }
        end
    }

    /// The edge's own answer to a request it will not forward, if any.
    fn screen(&self, head: &RequestHead) -> Option<Vec<u8>> {
        let s = &self.stats;
        if head.websocket && s.refuse_ws.load(Ordering::SeqCst) {
            bump(&s.ws_refused);
            return Some(answer("403 Forbidden", ""));
        }
        if !head.websocket && head.accepts_event_stream && s.refuse_sse.load(Ordering::SeqCst) {
            bump(&s.sse_refused);
            return Some(answer("403 Forbidden", ""));
        }
        if let Body::Length(n) = head.body
            && n > self.settings.max_body
        {
            bump(&s.too_large);
            return Some(self.too_large());
        }
        None
    }

    fn too_large(&self) -> Vec<u8> {
        answer(
            "413 Payload Too Large",
            &format!("request body above {} bytes\n", self.settings.max_body),
        )
    }

    /// Client to origin: requests one by one, then bytes once upgraded.
    async fn up(
        &self,
        cr: &mut Reader<'_>,
        sw: &mut OwnedWriteHalf,
        tx: mpsc::Sender<Pending>,
        first: RequestHead,
    ) -> End {
        let mut pacer = Pacer::new(&self.stats.up_rate, &self.stats.up);
        let mut next = Some(first);
        loop {
            let head = match next.take() {
                Some(h) => h,
                None => match read_request(cr).await {
                    Ok(Some(h)) => {
                        bump(&self.stats.requests);
                        h
                    }
                    Ok(None) => {
                        // The client is done: the origin is told, the down half finishes.
                        drop(tx);
                        let _ = sw.shutdown().await;
                        return std::future::pending().await;
                    }
                    Err(ReadErr::Io(e)) => return End::Failed(e),
                    Err(ReadErr::Head(e)) => {
                        return answer_locally(&tx, head_error_answer(e), cr, Body::None).await;
                    }
                },
            };
            if let Some(refusal) = self.screen(&head) {
                cr.consume(head.len);
                return answer_locally(&tx, refusal, cr, head.body).await;
            }
            // The down half learns of the request before the origin sees it, so a fast answer
            // can never be taken for bytes nobody asked for.
            let (body_tx, body_rx) = oneshot::channel();
            let (upgraded_tx, upgraded_rx) = oneshot::channel();
            let pending = Pending::Forwarded {
                is_head: head.is_head,
                upgraded: head.websocket.then_some(upgraded_tx),
                body: body_rx,
            };
            if tx.send(pending).await.is_err() {
                return std::future::pending().await;
            }
            if let Err(e) = pacer.write(sw, &cr.buffered()[..head.len]).await {
                return End::Failed(e);
            }
            cr.consume(head.len);
            let limit = Some(self.settings.max_body);
            match forward_body(cr, &mut Filler::Client, sw, &mut pacer, head.body, limit).await {
                Ok(Forwarded::Complete) => {
                    let _ = body_tx.send(BodyEnd::Complete);
                }
                Ok(Forwarded::TooLarge) => {
                    // The down half answers 413 and the origin connection goes with the edge's,
                    // so the origin never sees this body complete. The rest is read and dropped
                    // so that the client gets to read the answer.
                    bump(&self.stats.too_large);
                    let (written, done) = oneshot::channel();
                    let _ = body_tx.send(BodyEnd::TooLarge(written));
                    drain_body(cr, Body::Chunked).await;
                    let _ = done.await;
                    return End::Local;
                }
                Err(end) => return end,
            }
            if head.websocket {
                match upgraded_rx.await {
                    Ok(true) => return up_ws(cr, sw, pacer).await,
                    Ok(false) => {}
                    Err(_) => return std::future::pending().await,
                }
            }
        }
    }

    /// Origin to client: one response per forwarded request, the edge's own answers in their
    /// place, then frames once upgraded.
    async fn down(
        &self,
        sr: &mut Reader<'_>,
        cw: &mut OwnedWriteHalf,
        mut rx: mpsc::Receiver<Pending>,
        cuts: &mut broadcast::Receiver<CutOrder>,
        ws: &AtomicBool,
        act: &Activity,
    ) -> End {
        let mut pacer = Pacer::new(&self.stats.down_rate, &self.stats.down);
        loop {
            let pending = tokio::select! {
                // A queued request first: origin bytes after it are its response.
                biased;
                p = rx.recv() => p,
                r = sr.fill() => match r {
                    Ok(0) => {
                        let _ = cw.shutdown().await;
                        return End::Closed;
                    }
                    Ok(_) => {
                        // Bytes no request asked for (a 408 before closing): passed on as they are.
                        let n = sr.buffered().len();
                        if let Err(e) = pacer.write(cw, sr.buffered()).await {
                            return End::Failed(e);
                        }
                        sr.consume(n);
                        continue;
                    }
                    Err(e) => return End::Failed(e),
                },
                () = cut_all(cuts) => return End::Abrupt,
            };
            let Some(pending) = pending else {
                let _ = cw.shutdown().await;
                return End::Closed;
            };
            match pending {
                Pending::Local { answer, written } => {
                    let _ = cw.write_all(&answer).await;
                    let _ = cw.shutdown().await;
                    let _ = written.send(());
                    return std::future::pending().await;
                }
                Pending::Forwarded {
                    is_head,
                    upgraded,
                    body,
                } => {
                    let status = {
                        let _busy = act.busy();
                        match self.response(sr, cw, &mut pacer, is_head, body, cuts).await {
                            Ok(s) => s,
                            Err(end) => return end,
                        }
                    };
                    let switched = status == 101;
                    if let Some(tx) = upgraded {
                        let _ = tx.send(switched);
                    }
                    if switched {
                        ws.store(true, Ordering::SeqCst);
                        bump(&self.stats.ws_open);
                        bump(&self.stats.ws_total);
                        return self.down_ws(sr, cw, pacer, cuts).await;
                    }
                }
            }
        }
    }

    /// Forwards one response (interim `1xx` heads included); returns the final status.
    async fn response(
        &self,
        sr: &mut Reader<'_>,
        cw: &mut OwnedWriteHalf,
        pacer: &mut Pacer<'_>,
        is_head: bool,
        mut body: oneshot::Receiver<BodyEnd>,
        cuts: &mut broadcast::Receiver<CutOrder>,
    ) -> Result<u16, End> {
        let origin = self.settings.origin;
        let mut body_open = true;
        // Armed once the request is whole; every read from the origin re-arms it.
        let mut deadline: Option<Instant> = None;
        loop {
            let head = loop {
                match http1::parse_response(sr.buffered(), is_head) {
                    Ok(Some(h)) => break h,
                    Ok(None) => {}
                    Err(_) => {
                        bump(&self.stats.bad_gateway);
                        let bad = answer("502 Bad Gateway", "malformed response from the origin\n");
                        return Err(local(cw, &bad).await);
                    }
                }
                tokio::select! {
                    r = sr.fill() => match r {
                        Ok(0) => {
                            bump(&self.stats.bad_gateway);
                            let gone = answer("502 Bad Gateway", "the origin closed without answering\n");
                            return Err(local(cw, &gone).await);
                        }
                        Ok(_) => deadline = deadline.and(origin).map(|t| Instant::now() + t),
                        Err(e) => return Err(End::Failed(e)),
                    },
                    b = &mut body, if body_open => {
                        body_open = false;
                        if let Ok(BodyEnd::TooLarge(written)) = b {
                            let _ = cw.write_all(&self.too_large()).await;
                            let _ = cw.shutdown().await;
                            let _ = written.send(());
                            // The up half drains the body and ends the connection.
                            return Err(std::future::pending().await);
                        }
                        deadline = origin.map(|t| Instant::now() + t);
                    }
                    () = sleep_until_opt(deadline) => {
                        bump(&self.stats.origin_timeouts);
                        let late = answer("524 A Timeout Occurred", "the origin sent no response in time\n");
                        return Err(local(cw, &late).await);
                    }
                    () = cut_all(cuts) => return Err(End::Abrupt),
                }
            };
            pacer
                .write(cw, &sr.buffered()[..head.len])
                .await
                .map_err(End::Failed)?;
            sr.consume(head.len);
            if head.status == 101 {
                return Ok(101);
            }
            if (100..200).contains(&head.status) {
                continue;
            }
            let mut filler = Filler::Origin {
                cuts: &mut *cuts,
                timeout: origin,
            };
            forward_body(sr, &mut filler, cw, pacer, head.body, None).await?;
            if head.body == Body::UntilClose {
                let _ = cw.shutdown().await;
                return Err(End::Closed);
            }
            return Ok(head.status);
        }
    }

    /// Origin to client after `101`: bytes, with frame boundaries tracked for a clean `1001`,
    /// and the cuts ordered or drawn at random.
    async fn down_ws(
        &self,
        sr: &mut Reader<'_>,
        cw: &mut OwnedWriteHalf,
        mut pacer: Pacer<'_>,
        cuts: &mut broadcast::Receiver<CutOrder>,
    ) -> End {
        let mut frames = Frames::default();
        let mut mean = self.random_mean.subscribe();
        let mut random = random_deadline(*mean.borrow_and_update());
        let mut closing: Option<Instant> = None;
        loop {
            if !sr.buffered().is_empty() {
                let k = frames.advance(sr.buffered(), closing.is_some());
                if let Err(e) = pacer.write(cw, &sr.buffered()[..k]).await {
                    return End::Failed(e);
                }
                sr.consume(k);
            }
            if closing.is_some() && frames.at_boundary() {
                let _ = cw.write_all(&wsframe::CLOSE_GOING_AWAY).await;
                let _ = cw.shutdown().await;
                return End::GoingAway;
            }
            tokio::select! {
                r = sr.fill() => match r {
                    Ok(0) => {
                        let _ = cw.shutdown().await;
                        return End::Closed;
                    }
                    Ok(_) => {}
                    Err(e) => return End::Failed(e),
                },
                Ok(order) = cuts.recv(), if closing.is_none() => match order.cut {
                    Cut::Abrupt => return End::Abrupt,
                    Cut::GoingAway => closing = Some(Instant::now() + CLOSE_WITHIN),
                    Cut::Stall => return End::Stall,
                },
                Ok(()) = mean.changed(), if closing.is_none() => {
                    random = random_deadline(*mean.borrow_and_update());
                }
                () = sleep_until_opt(random), if closing.is_none() => {
                    bump(&self.stats.random_cuts);
                    if rand::rng().random_bool(0.5) {
                        closing = Some(Instant::now() + CLOSE_WITHIN);
                    } else {
                        return End::Abrupt;
                    }
                }
                () = sleep_until_opt(closing) => return End::Abrupt,
            }
        }
    }
}

/// Client to origin after `101`: bytes as they come.
async fn up_ws(cr: &mut Reader<'_>, sw: &mut OwnedWriteHalf, mut pacer: Pacer<'_>) -> End {
    loop {
        if !cr.buffered().is_empty() {
            let n = cr.buffered().len();
            if let Err(e) = pacer.write(sw, cr.buffered()).await {
                return End::Failed(e);
            }
            cr.consume(n);
        }
        match cr.fill().await {
            Ok(0) => {
                let _ = sw.shutdown().await;
                return std::future::pending().await;
            }
            Ok(_) => {}
            Err(e) => return End::Failed(e),
        }
    }
}

/// Writes the edge's own answer and closes the client's write side.
async fn local(cw: &mut OwnedWriteHalf, answer: &[u8]) -> End {
    let _ = cw.write_all(answer).await;
    let _ = cw.shutdown().await;
    End::Local
}

/// Has the down half write `answer` (after the responses before it), then drops the body.
async fn answer_locally(
    tx: &mpsc::Sender<Pending>,
    answer: Vec<u8>,
    cr: &mut Reader<'_>,
    body: Body,
) -> End {
    let (written, done) = oneshot::channel();
    if tx.send(Pending::Local { answer, written }).await.is_ok() {
        let _ = done.await;
    }
    drain_body(cr, body).await;
    End::Local
}

/// Reads and drops (the rest of) a refused request's body: its length, or a chunked body up
/// to EOF; bounded by 2 s without a byte.
async fn drain_body(cr: &mut Reader<'_>, body: Body) {
    let mut left = match body {
        Body::Length(n) => n,
        Body::Chunked => u64::MAX,
        Body::None | Body::UntilClose => return,
    };
    loop {
        let n = (cr.buffered().len() as u64).min(left);
        cr.consume(n as usize);
        left -= n;
        if left == 0 {
            return;
        }
        match tokio::time::timeout(Duration::from_secs(2), cr.fill()).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
}

/// Reads and drops everything until EOF or an error.
async fn drain(r: &mut Reader<'_>) {
    loop {
        match r.fill().await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let n = r.buffered().len();
                r.consume(n);
            }
        }
    }
}

/// Returns once an order for every connection arrives.
async fn cut_all(cuts: &mut broadcast::Receiver<CutOrder>) {
    loop {
        match cuts.recv().await {
            Ok(CutOrder {
                scope: Scope::All, ..
            }) => return,
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(broadcast::error::RecvError::Closed) => std::future::pending().await,
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// When a WebSocket opened now is cut at random: exponential with mean `mean_ms` (0: never).
fn random_deadline(mean_ms: u64) -> Option<Instant> {
    if mean_ms == 0 {
        return None;
    }
    let u: f64 = rand::rng().random();
    let ms = -(mean_ms as f64) * (1.0 - u).ln();
    Some(Instant::now() + Duration::from_secs_f64(ms / 1000.0))
}

#[derive(Debug)]
enum ReadErr {
    Io(io::Error),
    Head(HeadError),
}

/// The next request head (left in the buffer); None at EOF.
async fn read_request(cr: &mut Reader<'_>) -> Result<Option<RequestHead>, ReadErr> {
    loop {
        if !cr.buffered().is_empty() {
            match http1::parse_request(cr.buffered()) {
                Ok(Some(h)) => return Ok(Some(h)),
                Ok(None) => {}
                Err(e) => return Err(ReadErr::Head(e)),
            }
        }
        match cr.fill().await {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) => return Err(ReadErr::Io(e)),
        }
    }
}

/// Where a body's bytes come from: the client (no timeout; the idle watchdog covers it) or
/// the origin (the origin timeout per read, and cuts of every connection).
enum Filler<'a> {
    Client,
    Origin {
        cuts: &'a mut broadcast::Receiver<CutOrder>,
        timeout: Option<Duration>,
    },
}

impl Filler<'_> {
    async fn fill(&mut self, r: &mut Reader<'_>) -> Result<usize, End> {
        match self {
            Filler::Client => r.fill().await.map_err(End::Failed),
            Filler::Origin { cuts, timeout } => {
                let deadline = timeout.map(|t| Instant::now() + t);
                tokio::select! {
                    res = r.fill() => res.map_err(End::Failed),
                    () = cut_all(cuts) => Err(End::Abrupt),
                    () = sleep_until_opt(deadline) => Err(End::OriginSilent),
                }
            }
        }
    }
}

/// Forwards one message body as framed; `limit` bounds a chunked body's data bytes.
async fn forward_body(
    r: &mut Reader<'_>,
    filler: &mut Filler<'_>,
    to: &mut OwnedWriteHalf,
    pacer: &mut Pacer<'_>,
    body: Body,
    limit: Option<u64>,
) -> Result<Forwarded, End> {
    match body {
        Body::None => Ok(Forwarded::Complete),
        Body::Length(mut left) => {
            while left > 0 {
                if r.buffered().is_empty() && filler.fill(r).await? == 0 {
                    return Err(End::Closed);
                }
                let k = (r.buffered().len() as u64).min(left) as usize;
                pacer
                    .write(to, &r.buffered()[..k])
                    .await
                    .map_err(End::Failed)?;
                r.consume(k);
                left -= k as u64;
            }
            Ok(Forwarded::Complete)
        }
        Body::Chunked => {
            let mut scan = ChunkedScan::default();
            loop {
                if r.buffered().is_empty() {
                    if filler.fill(r).await? == 0 {
                        return Err(End::Closed);
                    }
                    continue;
                }
                let k = scan
                    .advance(r.buffered())
                    .map_err(|_| End::Failed(io::Error::other("malformed chunked body")))?;
                if limit.is_some_and(|m| scan.data_bytes > m) {
                    return Ok(Forwarded::TooLarge);
                }
                pacer
                    .write(to, &r.buffered()[..k])
                    .await
                    .map_err(End::Failed)?;
                r.consume(k);
                if scan.done() {
                    return Ok(Forwarded::Complete);
                }
            }
        }
        Body::UntilClose => loop {
            if !r.buffered().is_empty() {
                let n = r.buffered().len();
                pacer.write(to, r.buffered()).await.map_err(End::Failed)?;
                r.consume(n);
            }
            if filler.fill(r).await? == 0 {
                return Ok(Forwarded::Complete);
            }
        },
    }
}

/// When the connection last moved a byte, and whether a request is waiting for its response.
#[derive(Debug)]
struct Activity {
    start: Instant,
    last_ms: AtomicU64,
    busy: AtomicU64,
    idle: Option<Duration>,
}

/// While held, the connection does not count as idle.
struct Busy<'a>(&'a Activity);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::SeqCst);
        self.0.touch();
    }
}

impl Activity {
    fn new(idle: Option<Duration>) -> Activity {
        Activity {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            busy: AtomicU64::new(0),
            idle,
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::SeqCst);
    }

    fn busy(&self) -> Busy<'_> {
        self.busy.fetch_add(1, Ordering::SeqCst);
        Busy(self)
    }

    /// Returns once nothing moved for the idle time (never without one).
    async fn idle_wait(&self) {
        let Some(idle) = self.idle else {
            return std::future::pending().await;
        };
        loop {
            let due =
                self.start + Duration::from_millis(self.last_ms.load(Ordering::SeqCst)) + idle;
            if Instant::now() < due {
                tokio::time::sleep_until(due).await;
            } else if self.busy.load(Ordering::SeqCst) > 0 {
                self.touch();
            } else {
                return;
            }
        }
    }
}

/// A read half with a buffer; every read counts as activity. Under a throttle it reads no more
/// than the pacer writes at once, so bytes wait in the sender's socket, not in the edge.
struct Reader<'a> {
    half: OwnedReadHalf,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    act: &'a Activity,
    rate: &'a AtomicU64,
}

impl<'a> Reader<'a> {
    fn new(half: OwnedReadHalf, act: &'a Activity, rate: &'a AtomicU64) -> Reader<'a> {
        Reader {
            half,
            buf: vec![0; BUF],
            start: 0,
            end: 0,
            act,
            rate,
        }
    }

    fn buffered(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Reads more (0: EOF). Cancel-safe: nothing is lost if the future is dropped.
    async fn fill(&mut self) -> io::Result<usize> {
        if self.end == self.buf.len() {
            if self.start == 0 {
                return Err(io::Error::other("read buffer full"));
            }
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let room = match self.rate.load(Ordering::SeqCst) {
            0 => self.buf.len(),
            limit => piece_for(limit),
        };
        let until = self.buf.len().min(self.end + room);
        let n = self.half.read(&mut self.buf[self.end..until]).await?;
        self.end += n;
        if n > 0 {
            self.act.touch();
        }
        Ok(n)
    }
}

/// Bytes per paced write (and per read) at `limit` bytes per second: a twentieth of a second.
fn piece_for(limit: u64) -> usize {
    usize::try_from(limit / 20)
        .unwrap_or(usize::MAX)
        .clamp(256, 64 * 1024)
}

/// Writes at most `rate` bytes per second (0: unlimited), counting what went out.
struct Pacer<'a> {
    rate: &'a AtomicU64,
    count: &'a AtomicU64,
    start: Instant,
    sent: u64,
    limit: u64,
}

impl<'a> Pacer<'a> {
    fn new(rate: &'a AtomicU64, count: &'a AtomicU64) -> Pacer<'a> {
        Pacer {
            rate,
            count,
            start: Instant::now(),
            sent: 0,
            limit: 0,
        }
    }

    async fn write(
        &mut self,
        to: &mut (impl AsyncWrite + Unpin),
        mut data: &[u8],
    ) -> io::Result<()> {
        while !data.is_empty() {
            let limit = self.rate.load(Ordering::SeqCst);
            if limit != self.limit {
                // A new rate counts from now: no burst for the time the connection ran before.
                (self.start, self.sent, self.limit) = (Instant::now(), 0, limit);
            }
            let piece = if limit == 0 {
                data.len()
            } else {
                piece_for(limit).min(data.len())
            };
            to.write_all(&data[..piece]).await?;
            self.count.fetch_add(piece as u64, Ordering::SeqCst);
            data = &data[piece..];
            if limit > 0 {
                // The bytes so far may not have taken less than sent/limit seconds.
                self.sent += piece as u64;
                let due = Duration::from_secs_f64(self.sent as f64 / limit as f64);
                let elapsed = self.start.elapsed();
                if due > elapsed {
                    tokio::time::sleep(due - elapsed).await;
                }
            }
        }
        Ok(())
    }
}
