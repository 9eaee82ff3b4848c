//! What every network part shares: the run context, WebSocket connect with auth and
//! subprotocol, the upload bandwidth limiter, and retry with jittered backoff that gives up
//! after `--retry-for` without success.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use outlast_protocol::client::Backoff;
use outlast_protocol::codec::{Codec, Frame};
use outlast_protocol::v1::{ClientMsg, ServerMsg};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

use crate::cli::Args;
use crate::report::{Event, Reporter};
use crate::state::Store;

/// A client WebSocket.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why the run stops early.
#[derive(Debug, thiserror::Error)]
pub enum Stop {
    /// No success within `--retry-for`.
    #[error("gave up on the connection: {0}")]
    GiveUp(String),
    /// Ctrl-C.
    #[error("interrupted")]
    Interrupted,
}

/// Everything the tasks share.
#[derive(Debug)]
pub struct Ctx {
    /// The flags.
    pub args: Args,
    /// Output.
    pub report: Reporter,
    /// Resume state.
    pub store: Store,
    /// HTTP (uploads over tus, submissions, downloads).
    pub http: reqwest::Client,
    /// Set by the first Ctrl-C.
    pub cancel: CancellationToken,
    /// `--bwlimit`.
    pub limiter: Option<Limiter>,
    /// The base URL without a trailing slash.
    pub base: String,
}

impl Ctx {
    /// `base + path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Adds the bearer token.
    pub fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.args.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Opens `/v1/ws` with the JSON subprotocol and reads `welcome`.
    pub async fn connect_ws(&self) -> anyhow::Result<Ws> {
        Ok(self.connect_ws_limited().await?.0)
    }

    /// [`Ctx::connect_ws`], also returning the welcome's `max_message_bytes`.
    pub async fn connect_ws_limited(&self) -> anyhow::Result<(Ws, u64)> {
        let ws_base = if let Some(rest) = self.base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = self.base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            self.base.clone()
        };
        let mut req = format!("{ws_base}/v1/ws").into_client_request()?;
        req.headers_mut()
            .insert("sec-websocket-protocol", Codec::Json.subprotocol().parse()?);
        if let Some(t) = &self.args.token {
            req.headers_mut()
                .insert("authorization", format!("Bearer {t}").parse()?);
        }
        let (mut ws, _) = tokio::time::timeout(
            Duration::from_secs(15),
            tokio_tungstenite::connect_async(req),
        )
        .await
        .map_err(|_| anyhow::anyhow!("WebSocket connect timed out"))??;
        match recv(&mut ws, Duration::from_secs(15)).await? {
            Some(ServerMsg::Control(outlast_protocol::v1::Control::Welcome {
                max_message_bytes,
                ..
            })) => Ok((ws, max_message_bytes)),
            other => anyhow::bail!("expected welcome, got {other:?}"),
        }
    }
}

/// Sends one client message as JSON.
pub async fn send(ws: &mut Ws, msg: &ClientMsg) -> anyhow::Result<()> {
    match Codec::Json.encode(msg)? {
        Frame::Text(t) => ws.send(Message::text(t)).await?,
        Frame::Binary(b) => ws.send(Message::binary(b)).await?,
    }
    Ok(())
}

/// The next server message within `timeout` (`Ok(None)` on timeout). Pings are answered by
/// tungstenite itself while we read.
pub async fn recv(ws: &mut Ws, timeout: Duration) -> anyhow::Result<Option<ServerMsg>> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let next = match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return Ok(None),
            Ok(None) => anyhow::bail!("connection closed"),
            Ok(Some(m)) => m?,
        };
        match next {
            Message::Text(t) => return Ok(Some(Codec::Json.decode(t.as_bytes())?)),
            Message::Close(c) => anyhow::bail!("connection closed by the server ({c:?})"),
            _ => continue,
        }
    }
}

/// Token bucket shared by every upload: `rate` bytes per second, bursts of at most 100 ms.
#[derive(Debug)]
pub struct Limiter {
    rate: f64,
    next_free: Mutex<Instant>,
}

impl Limiter {
    /// A limiter of `rate` bytes per second.
    pub fn new(rate: u64) -> Limiter {
        Limiter {
            rate: rate.max(1) as f64,
            next_free: Mutex::new(Instant::now()),
        }
    }

    /// Waits until `bytes` may be sent.
    pub async fn take(&self, bytes: usize) {
        let wait = {
            let mut next = self.next_free.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            // Idle time earns at most 100 ms of credit.
            let floor = now.checked_sub(Duration::from_millis(100)).unwrap_or(now);
            let start = (*next).max(floor);
            *next = start + Duration::from_secs_f64(bytes as f64 / self.rate);
            start.saturating_duration_since(now)
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Retries with full-jitter backoff; gives up after `give_up` without a success.
#[derive(Debug)]
pub struct Retry {
    what: &'static str,
    backoff: Backoff,
    give_up: Duration,
    failing_since: Option<Instant>,
}

impl Retry {
    /// A retry policy for one part of the program.
    pub fn new(what: &'static str, give_up: Duration) -> Retry {
        Retry {
            what,
            backoff: Backoff::new(Duration::from_millis(250), Duration::from_secs(10)),
            give_up,
            failing_since: None,
        }
    }

    /// Something worked: reset the backoff and the give-up clock.
    pub fn ok(&mut self) {
        self.backoff.reset();
        self.failing_since = None;
    }

    /// Something failed: wait the next jittered delay, or stop.
    pub async fn failed(&mut self, ctx: &Ctx, error: &anyhow::Error) -> Result<(), Stop> {
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= self.give_up {
            return Err(Stop::GiveUp(format!("{}: {error:#}", self.what)));
        }
        let delay = self
            .backoff
            .next_delay(rand::random::<f64>())
            .min(self.give_up.saturating_sub(since.elapsed()) + Duration::from_millis(10));
        ctx.report.emit(Event::ConnectionRetry {
            what: self.what.into(),
            delay_ms: delay.as_millis() as u64,
            error: format!("{error:#}"),
        });
        tokio::select! {
            () = tokio::time::sleep(delay) => Ok(()),
            () = ctx.cancel.cancelled() => Err(Stop::Interrupted),
        }
    }
}
