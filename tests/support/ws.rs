//! A real WebSocket client (tokio-tungstenite) speaking Outlast's v1 protocol in either codec.

use std::time::Duration;

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use outlast_protocol::v1::{ClientMsg, Control, ServerMsg};
use outlast_protocol::{Codec, Frame, JobEvent};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// What arrived.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // test helper: matched by value everywhere, size irrelevant
pub enum Incoming {
    /// A protocol message.
    Msg(ServerMsg),
    /// The connection ended, with the server's close frame if it sent one.
    Closed(Option<CloseFrame>),
}

/// A connected client.
#[derive(Debug)]
pub struct Client {
    /// The raw socket, for tests that send hand-made frames.
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// The negotiated codec.
    pub codec: Codec,
    /// WebSocket pings received (answered automatically).
    pub pings: u64,
}

/// Opens a WebSocket offering `protocol` (None: no subprotocol header).
pub async fn raw_connect(
    url: &str,
    protocol: Option<&str>,
) -> Result<WebSocketStream<MaybeTlsStream<TcpStream>>, tokio_tungstenite::tungstenite::Error> {
    let mut request = url.into_client_request()?;
    if let Some(p) = protocol {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(p).expect("header value"),
        );
    }
    let (ws, _) = tokio_tungstenite::connect_async(request).await?;
    Ok(ws)
}

impl Client {
    /// Connects with the codec's subprotocol and reads the `welcome`.
    pub async fn connect(url: &str, codec: Codec) -> anyhow::Result<Client> {
        let ws = raw_connect(url, Some(codec.subprotocol())).await?;
        let mut client = Client {
            ws,
            codec,
            pings: 0,
        };
        match client.recv(Duration::from_secs(10)).await? {
            Incoming::Msg(ServerMsg::Control(Control::Welcome { .. })) => Ok(client),
            other => bail!("expected welcome, got {other:?}"),
        }
    }

    /// Connects like [`Client::connect`] with `Authorization: Bearer <token>`.
    pub async fn connect_bearer(url: &str, codec: Codec, token: &str) -> anyhow::Result<Client> {
        let mut request = url.into_client_request()?;
        let headers = request.headers_mut();
        headers.insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(codec.subprotocol())?,
        );
        headers.insert(
            "Authorization",
            HeaderValue::from_str(&format!("Bearer {token}"))?,
        );
        let (ws, _) = tokio_tungstenite::connect_async(request).await?;
        let mut client = Client {
            ws,
            codec,
            pings: 0,
        };
        match client.recv(Duration::from_secs(10)).await? {
            Incoming::Msg(ServerMsg::Control(Control::Welcome { .. })) => Ok(client),
            other => bail!("expected welcome, got {other:?}"),
        }
    }

    /// Sends a message in this connection's codec.
    pub async fn send(&mut self, msg: &ClientMsg) -> anyhow::Result<()> {
        let frame = match self.codec.encode(msg)? {
            Frame::Binary(b) => Message::Binary(b.into()),
            Frame::Text(t) => Message::Text(t.into()),
        };
        self.ws.send(frame).await?;
        Ok(())
    }

    /// The next protocol message or the end of the connection, within `timeout`.
    pub async fn recv(&mut self, timeout: Duration) -> anyhow::Result<Incoming> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .context("timed out waiting for a message")?;
            let msg = match next {
                None => return Ok(Incoming::Closed(None)),
                Some(Err(e)) => {
                    eprintln!("websocket error: {e}");
                    return Ok(Incoming::Closed(None));
                }
                Some(Ok(m)) => m,
            };
            let bytes: Vec<u8> = match msg {
                Message::Ping(_) => {
                    self.pings += 1;
                    continue;
                }
                Message::Pong(_) | Message::Frame(_) => continue,
                Message::Close(frame) => return Ok(Incoming::Closed(frame)),
                Message::Text(t) => t.as_bytes().to_vec(),
                Message::Binary(b) => b.to_vec(),
            };
            return Ok(Incoming::Msg(self.codec.decode(&bytes)?));
        }
    }

    /// The next job event, skipping control messages other than errors.
    pub async fn next_event(&mut self, timeout: Duration) -> anyhow::Result<Option<JobEvent>> {
        loop {
            match self.recv(timeout).await? {
                Incoming::Msg(ServerMsg::Event(e)) => return Ok(Some(e)),
                Incoming::Msg(ServerMsg::Control(Control::Error { code, message, .. })) => {
                    bail!("error {code}: {message}")
                }
                Incoming::Msg(_) => continue,
                Incoming::Closed(_) => return Ok(None),
            }
        }
    }

    /// The next control message, skipping job events, heartbeats and live queue places
    /// (`position`: read those with [`Client::recv`]).
    pub async fn next_control(&mut self, timeout: Duration) -> anyhow::Result<Option<Control>> {
        loop {
            match self.recv(timeout).await? {
                Incoming::Msg(ServerMsg::Control(
                    Control::Heartbeat { .. } | Control::Position { .. },
                )) => continue,
                Incoming::Msg(ServerMsg::Control(c)) => return Ok(Some(c)),
                Incoming::Msg(ServerMsg::Event(_)) => continue,
                Incoming::Closed(_) => return Ok(None),
            }
        }
    }
}
