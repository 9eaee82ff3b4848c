//! The HTTP server under the router: accepts connections and serves each with hyper's
//! HTTP/1.1 connection builder (with upgrades, for WebSockets) under the `[http]` limits.
//!
//! - **Heads**: hyper's `header_read_timeout` (a request head must arrive within it, counted
//!   from when the connection waits for one, so it also ends idle keep-alive connections) and
//!   its read buffer capped at `max_header_bytes` (a larger head gets 431).
//! - **Idle connections**: every connection's socket is [`Watched`]; one with no byte moving
//!   either way for `idle_timeout` is closed (before a first request too).
//! - **Bodies**: every request body is a [`TimedBody`]: a body that delivers nothing for
//!   `body_idle_timeout` ends in an error (a tus PATCH commits what arrived and releases its
//!   upload), and a job API body must be whole within `body_read_timeout`. The answer is then
//!   408 `request_timeout` with `Connection: close`.
//! - **Stalled writes**: every request carries the connection's [`WriteStall`]; a streaming
//!   response (SSE) arms it, and then a write that makes no progress for the armed time (the
//!   client stopped reading and every buffer is full) fails: the connection is reset and
//!   dropped with everything the response held.
//! - **Closing**: a lingering close. The write side is shut first, then what the client
//!   still sends is read and dropped until it closes too or `LINGER` (2 s) passes, so an answer
//!   given before its body was read (404, 413, 423) reaches a client still writing that body
//!   instead of a reset. A lingering connection keeps its place in the count.
//! - **Connection count**: up to `max_connections` are served normally; the next
//!   `reserved_connections` serve only `/healthz`, `/readyz` and `/metrics` (others get 503
//!   `overloaded`), so probes answer at the limit; beyond those a connection gets a short 503
//!   and is closed. An upgraded WebSocket keeps its place until it closes (the count lives in
//!   the socket wrapper, which moves into the upgrade).
//!
//! HTTP/2 is not offered: Cloudflare and the usual proxies speak HTTP/1.1 to origins, and
//! WebSockets over HTTP/2 need extended CONNECT, which browsers behind them do not use.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use super::read_ahead::ReadAhead;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use outlast_protocol::{ErrorBody, ErrorCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::config::HttpConfig;
use crate::metrics as m;

/// Paths served on the reserved connections above `max_connections`.
const PROBES: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// How long a refused connection may take to receive its 503.
const REFUSAL_WRITE: Duration = Duration::from_secs(1);

/// How long a closing connection keeps reading (and dropping) what its client still sends
/// after the answer went out; see [`Watched`]'s `poll_shutdown`.
const LINGER: Duration = Duration::from_secs(2);

/// Serves `router` on `listener` until `shutdown` fires: then accepting stops and every
/// connection is asked to finish (the request in flight completes, then it closes). The
/// connections run on `tracker`, so the caller's drain waits for them.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: &HttpConfig,
    shutdown: CancellationToken,
    tracker: &TaskTracker,
) -> io::Result<()> {
    let open = Arc::new(AtomicUsize::new(0));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .max_buf_size(config.max_header_bytes);
    let limits = Arc::new(config.clone());
    loop {
        let (tcp, _peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: give connections time to close.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(50)) => continue,
                        () = shutdown.cancelled() => break,
                    }
                }
            },
            () = shutdown.cancelled() => break,
        };
        let place = Place::take(&open);
        let n = place.number;
        metrics::gauge!(m::HTTP_CONNECTIONS).set(n as f64);
        if n > limits.max_connections + limits.reserved_connections {
            metrics::counter!(m::HTTP_REFUSED).increment(1);
            tracker.spawn(refuse(tcp, place));
            continue;
        }
        let probes_only = n > limits.max_connections;
        let connection = Connection {
            builder: builder.clone(),
            router: router.clone(),
            limits: Arc::clone(&limits),
            probes_only,
            shutdown: shutdown.clone(),
        };
        tracker.spawn(connection.run(tcp, place));
    }
    Ok(())
}

/// One place among the open connections; given back when dropped.
#[derive(Debug)]
struct Place {
    open: Arc<AtomicUsize>,
    /// How many connections were open with this one.
    number: usize,
}

impl Place {
    fn take(open: &Arc<AtomicUsize>) -> Place {
        let number = open.fetch_add(1, Ordering::AcqRel) + 1;
        Place {
            open: Arc::clone(open),
            number,
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let left = self.open.fetch_sub(1, Ordering::AcqRel).saturating_sub(1);
        metrics::gauge!(m::HTTP_CONNECTIONS).set(left as f64);
    }
}

/// A connection over the limit: a short 503 and close, without reading the request.
async fn refuse(mut tcp: TcpStream, place: Place) {
    let body = error_json(ErrorCode::Overloaded, "too many connections; retry shortly");
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_WRITE, async {
        tcp.write_all(answer.as_bytes()).await?;
        tcp.shutdown().await
    })
    .await;
    drop(place);
}

fn error_json(code: ErrorCode, message: &str) -> String {
    serde_json::to_string(&ErrorBody {
        code,
        message: message.to_owned(),
    })
    .unwrap_or_default()
}

/// A JSON error answer that closes the connection.
fn closing_error(code: ErrorCode, message: &str) -> Response<Body> {
    let mut r = Response::new(Body::from(error_json(code, message)));
    *r.status_mut() =
        StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

/// What serves one connection.
struct Connection {
    builder: hyper::server::conn::http1::Builder,
    router: Router,
    limits: Arc<HttpConfig>,
    probes_only: bool,
    shutdown: CancellationToken,
}

impl Connection {
    async fn run(self, tcp: TcpStream, place: Place) {
        let activity = Arc::new(Activity::now());
        let stall = WriteStall::default();
        let io = TokioIo::new(Watched {
            inner: tcp,
            activity: Arc::clone(&activity),
            stall: stall.clone(),
            stall_timer: None,
            read_ahead: ReadAhead::default(),
            closing: Closing::Open,
            _place: place,
        });
        let (router, limits, probes_only) =
            (self.router, Arc::clone(&self.limits), self.probes_only);
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let (router, limits) = (router.clone(), Arc::clone(&limits));
            req.extensions_mut().insert(stall.clone());
            async move {
                Ok::<_, std::convert::Infallible>(answer(router, &limits, probes_only, req).await)
            }
        });
        let conn = self.builder.serve_connection(io, service).with_upgrades();
        tokio::pin!(conn);
        let idle = self.limits.idle_timeout;
        let mut draining = false;
        loop {
            let quiet_until = activity.last() + idle;
            tokio::select! {
                done = conn.as_mut() => {
                    if let Err(e) = done {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    break;
                }
                () = tokio::time::sleep_until(quiet_until) => {
                    if activity.last() + idle <= Instant::now() {
                        tracing::debug!(?idle, "closing an idle connection");
                        metrics::counter!(m::HTTP_IDLE_CLOSED).increment(1);
                        break;
                    }
                }
                () = self.shutdown.cancelled(), if !draining => {
                    conn.as_mut().graceful_shutdown();
                    draining = true;
                }
            }
        }
    }
}

/// Answers one request: probes only on a reserved connection, bodies timed, the router.
async fn answer(
    router: Router,
    limits: &HttpConfig,
    probes_only: bool,
    req: Request<Incoming>,
) -> Response<Body> {
    if probes_only && !PROBES.contains(&req.uri().path()) {
        return closing_error(
            ErrorCode::Overloaded,
            "too many connections; only /healthz, /readyz and /metrics answer now",
        );
    }
    // Uploads stream large bodies at the client's pace: only silence ends them.
    let whole_within = (!req.uri().path().starts_with("/v1/uploads"))
        .then(|| Instant::now() + limits.body_read_timeout);
    let timed_out = Arc::new(AtomicBool::new(false));
    let req = req.map(|body| {
        Body::new(TimedBody {
            inner: body,
            idle: limits.body_idle_timeout,
            deadline: whole_within,
            timer: None,
            timed_out: Arc::clone(&timed_out),
        })
    });
    let Ok(mut response) = router.oneshot(req).await;
    if timed_out.load(Ordering::Acquire) {
        metrics::counter!(m::HTTP_BODY_TIMEOUTS).increment(1);
        if response.status().is_success() {
            // The handler kept what arrived (a PATCH's committed offset): keep its answer.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        } else {
            response = closing_error(
                ErrorCode::RequestTimeout,
                "the request body did not arrive in time",
            );
        }
    }
    response
}

/// The error a [`TimedBody`] ends with.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyTimeout;

/// A request body with time limits: silence between frames, and optionally a deadline for
/// the whole body. The silence is counted from the handler's first read.
struct TimedBody {
    inner: Incoming,
    idle: Duration,
    deadline: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
    timed_out: Arc<AtomicBool>,
}

impl TimedBody {
    fn next_deadline(&self) -> Instant {
        let quiet = Instant::now() + self.idle;
        self.deadline.map_or(quiet, |d| d.min(quiet))
    }
}

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.timer.is_none() {
            let at = self.next_deadline();
            self.timer = Some(Box::pin(tokio::time::sleep_until(at)));
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let at = self.next_deadline();
                if let Some(t) = self.timer.as_mut() {
                    t.as_mut().reset(at);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if let Some(t) = self.timer.as_mut() {
                    ready!(t.as_mut().poll(cx));
                }
                self.timed_out.store(true, Ordering::Release);
                Poll::Ready(Some(Err(Box::new(BodyTimeout))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The last time bytes moved on a connection, as milliseconds since a process-wide origin.
#[derive(Debug)]
struct Activity(AtomicU64);

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

impl Activity {
    fn now() -> Activity {
        let a = Activity(AtomicU64::new(0));
        a.touch();
        a
    }

    fn touch(&self) {
        let ms = Instant::now().duration_since(origin()).as_millis();
        self.0
            .store(u64::try_from(ms).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        origin() + Duration::from_millis(self.0.load(Ordering::Relaxed))
    }
}

/// A connection's limit on stalled writes, in every request's extensions. Off until a
/// response that must not wait for a client that stopped reading arms it ([`WriteStall::arm`]);
/// then a write that makes no progress for that long fails the connection.
#[derive(Debug, Clone, Default)]
pub struct WriteStall(Arc<AtomicU64>);

/// An armed [`WriteStall`]; dropping it (the response's body ended) disarms it.
#[derive(Debug)]
pub struct StallArmed(WriteStall);

impl WriteStall {
    /// Arms the limit at `limit` until the returned guard is dropped.
    pub fn arm(&self, limit: Duration) -> StallArmed {
        let ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX).max(1);
        self.0.store(ms, Ordering::Relaxed);
        StallArmed(self.clone())
    }

    fn limit(&self) -> Option<Duration> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }
}

impl Drop for StallArmed {
    fn drop(&mut self) {
        self.0.0.store(0, Ordering::Relaxed);
    }
}

/// A socket that notes when bytes move, fails writes stalled past an armed [`WriteStall`],
/// and holds its connection's [`Place`].
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
    stall: WriteStall,
    /// Runs while a write waits for room under an armed limit; any progress clears it.
    stall_timer: Option<Pin<Box<Sleep>>>,
    /// Small reads of a streaming socket (an upgraded WebSocket's) go through a burst buffer.
    read_ahead: ReadAhead,
    closing: Closing,
    _place: Place,
}

/// Where a [`Watched`] socket is in closing.
enum Closing {
    Open,
    /// The write side is shut (the answer and a FIN are on their way); what the client still
    /// sends is read and dropped until it closes too or the timer fires.
    Lingering(Pin<Box<Sleep>>),
    /// Closed, or reset on purpose (a stalled reader): nothing more to wait for.
    Done,
}

impl Watched {
    /// A write's outcome with the activity and stall rules applied. While armed, a write that
    /// stays pending for the limit fails with `TimedOut`; the timer registers the waker, so
    /// hyper polls the write again when it fires even though the socket never became writable.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.activity.touch();
                }
                self.stall_timer = None;
                Poll::Ready(Ok(n))
            }
            Poll::Pending => {
                let Some(limit) = self.stall.limit() else {
                    self.stall_timer = None;
                    return Poll::Pending;
                };
                let timer = self
                    .stall_timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.stall_timer = None;
                metrics::counter!(m::HTTP_WRITE_STALLS).increment(1);
                tracing::info!(?limit, "ending a response the client stopped reading");
                // Reset rather than close: nobody will read the unsent bytes, so the kernel
                // should not keep them (and retry them) for minutes.
                let _ = self.inner.set_zero_linger();
                self.closing = Closing::Done;
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client stopped reading",
                )))
            }
            other => other,
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let r = this.read_ahead.poll_read(&mut this.inner, cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.after_write(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.after_write(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// A lingering close, as nginx and Apache do it. An answer can go out before its request
    /// body was read (404, 413, 423, 401): closing the socket then, with the client's bytes
    /// still arriving, makes the kernel reset the connection, and a client busy writing its
    /// body sees a broken pipe instead of the answer (an edge in between drops the answer
    /// too). So the write side is shut first, and what still arrives is read and dropped
    /// until the client closes its side or [`LINGER`] passes.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            match &mut this.closing {
                Closing::Open => {
                    ready!(Pin::new(&mut this.inner).poll_shutdown(cx))?;
                    this.read_ahead = ReadAhead::default();
                    this.closing = Closing::Lingering(Box::pin(tokio::time::sleep(LINGER)));
                }
                Closing::Lingering(timer) => {
                    let mut scratch = [0u8; 8 * 1024];
                    loop {
                        let mut dropped = ReadBuf::new(&mut scratch);
                        match Pin::new(&mut this.inner).poll_read(cx, &mut dropped) {
                            // More of what the client sends: dropped (tokio's budget bounds
                            // how long one poll reads).
                            Poll::Ready(Ok(())) if !dropped.filled().is_empty() => {}
                            // The client closed (or reset) its side: done.
                            Poll::Ready(_) => break,
                            Poll::Pending => {
                                if timer.as_mut().poll(cx).is_pending() {
                                    return Poll::Pending;
                                }
                                break;
                            }
                        }
                    }
                    this.closing = Closing::Done;
                }
                Closing::Done => return Poll::Ready(Ok(())),
            }
        }
    }
}
