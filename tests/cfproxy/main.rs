//! `cf-proxy`: a Cloudflare-like TCP proxy for the browser tests, with a control port.
//!
//! `cf-proxy --upstream ADDR` listens on an ephemeral port and forwards every connection to
//! ADDR; it prints `cf-proxy: listening on http://A/ control http://B/`. Control (GET on B):
//! - `/cut?mode=abrupt|1001`: end every WebSocket now (abrupt: no close frame; 1001: a close
//!   frame "going away" to the browser first, like an edge restart),
//! - `/refuse_ws?on=1|0`: answer WebSocket upgrades with 403 (a proxy that blocks them),
//! - `/throttle?up=BYTES_PER_SEC&down=BYTES_PER_SEC` (0 = unlimited),
//! - `/stall`: every WebSocket open now stops forwarding in both directions, without closing
//!   (a dead NAT mapping or a hung edge: bytes are read and dropped); later connections work,
//! - `/refuse_sse?on=1|0`: answer requests accepting `text/event-stream` with 403 (a proxy that
//!   breaks SSE),
//! - `/stats`: `{"up": bytes browser->server, "down": bytes server->browser, "ws_open": n,
//!   "ws_total": n, "ws_refused": n, "ws_stalled": n, "sse_refused": n}`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio::task::JoinSet;

#[derive(Default)]
struct Shared {
    up: AtomicU64,
    down: AtomicU64,
    up_rate: AtomicU64,
    down_rate: AtomicU64,
    refuse_ws: AtomicBool,
    ws_open: AtomicU64,
    ws_total: AtomicU64,
    ws_refused: AtomicU64,
    ws_stalled: AtomicU64,
    refuse_sse: AtomicBool,
    sse_refused: AtomicU64,
}

#[derive(Clone, Copy, Debug)]
enum Cut {
    Abrupt,
    GoingAway,
    /// Stop forwarding, keep the connection open.
    Stall,
    /// A request on this (non-WebSocket) connection accepts `text/event-stream`: refuse it.
    RefuseSse,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut upstream = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--upstream" {
            upstream = args.next();
        }
    }
    let upstream = upstream.ok_or_else(|| anyhow::anyhow!("usage: cf-proxy --upstream ADDR"))?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let control = TcpListener::bind("127.0.0.1:0").await?;
    println!(
        "cf-proxy: listening on http://{}/ control http://{}/",
        listener.local_addr()?,
        control.local_addr()?
    );
    let shared = Arc::new(Shared::default());
    let (cut_tx, _) = broadcast::channel::<Cut>(16);
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => {
                let (sock, _) = r?;
                let (shared, upstream, cut) = (Arc::clone(&shared), upstream.clone(), cut_tx.subscribe());
                tasks.spawn(async move {
                    if let Err(e) = proxy(sock, &upstream, &shared, cut).await {
                        eprintln!("cf-proxy: connection: {e}");
                    }
                });
            }
            r = control.accept() => {
                let (sock, _) = r?;
                let (shared, cut_tx) = (Arc::clone(&shared), cut_tx.clone());
                tasks.spawn(async move {
                    if let Err(e) = control_request(sock, &shared, &cut_tx).await {
                        eprintln!("cf-proxy: control: {e}");
                    }
                });
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

/// Reads until the end of the first request head (or EOF); returns what was read.
async fn read_head(sock: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(2048);
    let mut tmp = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 64 * 1024 {
        let n = sock.read(&mut tmp).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    Ok(buf)
}

fn accepts_event_stream(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    text.lines()
        .any(|l| l.starts_with("accept:") && l.contains("text/event-stream"))
}

fn is_ws_upgrade(head: &[u8]) -> bool {
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    text.lines()
        .any(|l| l.starts_with("upgrade:") && l.contains("websocket"))
}

async fn proxy(
    mut client: TcpStream,
    upstream: &str,
    shared: &Shared,
    mut cut: broadcast::Receiver<Cut>,
) -> anyhow::Result<()> {
    let head = read_head(&mut client).await?;
    if head.is_empty() {
        return Ok(());
    }
    let ws = is_ws_upgrade(&head);
    if ws && shared.refuse_ws.load(Ordering::SeqCst) {
        shared.ws_refused.fetch_add(1, Ordering::SeqCst);
        client
            .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await?;
        return Ok(());
    }
    if !ws && shared.refuse_sse.load(Ordering::SeqCst) && accepts_event_stream(&head) {
        shared.sse_refused.fetch_add(1, Ordering::SeqCst);
        client
            .write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await?;
        return Ok(());
    }
    let mut server = TcpStream::connect(upstream).await?;
    server.set_nodelay(true)?;
    client.set_nodelay(true)?;
    shared.up.fetch_add(head.len() as u64, Ordering::SeqCst);
    server.write_all(&head).await?;
    if ws {
        shared.ws_open.fetch_add(1, Ordering::SeqCst);
        shared.ws_total.fetch_add(1, Ordering::SeqCst);
    }
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let result = {
        // Later requests on a kept-alive connection are checked for SSE too.
        let sse_guard = (!ws).then_some(&shared.refuse_sse);
        let up = pipe(&mut cr, &mut sw, &shared.up, &shared.up_rate, sse_guard);
        let down = pipe(&mut sr, &mut cw, &shared.down, &shared.down_rate, None);
        tokio::select! {
            r = up => r.map(|sse| sse.then_some(Cut::RefuseSse)),
            r = down => r.map(|_| None),
            c = async { loop { match cut.recv().await { Ok(c) => break Some(c), Err(broadcast::error::RecvError::Lagged(_)) => continue, Err(_) => break None } } }, if ws => {
                if let Some(Cut::GoingAway) = c {
                    // Close frame from the server side: FIN + opcode 8, unmasked, code 1001.
                    let _ = cw.write_all(&[0x88, 0x02, 0x03, 0xE9]).await;
                }
                Ok(c)
            }
        }
    };
    if let Ok(Some(Cut::Stall)) = result {
        // A black hole: read and drop both ways until the browser gives up on the socket.
        shared.ws_stalled.fetch_add(1, Ordering::SeqCst);
        tokio::select! {
            () = drain(&mut cr) => {}
            () = async { drain(&mut sr).await; std::future::pending::<()>().await } => {}
        }
    }
    if let Ok(Some(Cut::RefuseSse)) = result {
        shared.sse_refused.fetch_add(1, Ordering::SeqCst);
        cw.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .await?;
    }
    let result = result.map(|_| ());
    if ws {
        shared.ws_open.fetch_sub(1, Ordering::SeqCst);
    }
    let _ = cw.shutdown().await;
    result
}

/// Reads and drops everything until EOF or an error.
async fn drain(from: &mut (impl AsyncRead + Unpin)) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

/// Copies `from` to `to`, counting bytes and keeping to `rate` bytes/s when it is non-zero.
/// With `refuse_sse` set, a read holding a request that accepts `text/event-stream` is not
/// forwarded and the copy ends with `true`.
async fn pipe(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    count: &AtomicU64,
    rate: &AtomicU64,
    refuse_sse: Option<&AtomicBool>,
) -> anyhow::Result<bool> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut start = Instant::now();
    let mut sent: u64 = 0;
    let mut prev_limit = 0;
    loop {
        let limit = rate.load(Ordering::SeqCst);
        if limit != prev_limit {
            // A new rate counts from now: no burst for the time the connection ran before.
            (start, sent, prev_limit) = (Instant::now(), 0, limit);
        }
        let max = if limit == 0 {
            buf.len()
        } else {
            (limit as usize / 20).clamp(256, buf.len())
        };
        let n = from.read(&mut buf[..max]).await?;
        if n == 0 {
            to.shutdown().await?;
            return Ok(false);
        }
        if refuse_sse.is_some_and(|r| r.load(Ordering::SeqCst)) && accepts_event_stream(&buf[..n]) {
            return Ok(true);
        }
        to.write_all(&buf[..n]).await?;
        count.fetch_add(n as u64, Ordering::SeqCst);
        sent += n as u64;
        if limit > 0 {
            // Pace: the bytes so far may not have taken less than sent/limit seconds.
            let due = Duration::from_secs_f64(sent as f64 / limit as f64);
            let elapsed = start.elapsed();
            if due > elapsed {
                tokio::time::sleep(due - elapsed).await;
            }
        } else {
            sent = 0;
        }
    }
}

async fn control_request(
    mut sock: TcpStream,
    shared: &Shared,
    cut: &broadcast::Sender<Cut>,
) -> anyhow::Result<()> {
    let head = read_head(&mut sock).await?;
    let line = String::from_utf8_lossy(&head)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned();
    let target = line.split_whitespace().nth(1).unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let param = |k: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
            .map(str::to_owned)
    };
    let (status, body) = match path {
        "/cut" => {
            let mode = if param("mode").as_deref() == Some("1001") {
                Cut::GoingAway
            } else {
                Cut::Abrupt
            };
            let n = cut.send(mode).unwrap_or(0);
            ("200 OK", format!("{{\"receivers\":{n}}}"))
        }
        "/stall" => {
            let n = cut.send(Cut::Stall).unwrap_or(0);
            ("200 OK", format!("{{\"receivers\":{n}}}"))
        }
        "/refuse_sse" => {
            shared
                .refuse_sse
                .store(param("on").as_deref() == Some("1"), Ordering::SeqCst);
            ("200 OK", "{}".to_owned())
        }
        "/refuse_ws" => {
            shared
                .refuse_ws
                .store(param("on").as_deref() == Some("1"), Ordering::SeqCst);
            ("200 OK", "{}".to_owned())
        }
        "/throttle" => {
            let num = |k| param(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            shared.up_rate.store(num("up"), Ordering::SeqCst);
            shared.down_rate.store(num("down"), Ordering::SeqCst);
            ("200 OK", "{}".to_owned())
        }
        "/stats" => (
            "200 OK",
            format!(
                "{{\"up\":{},\"down\":{},\"ws_open\":{},\"ws_total\":{},\"ws_refused\":{},\"ws_stalled\":{},\"sse_refused\":{}}}",
                shared.up.load(Ordering::SeqCst),
                shared.down.load(Ordering::SeqCst),
                shared.ws_open.load(Ordering::SeqCst),
                shared.ws_total.load(Ordering::SeqCst),
                shared.ws_refused.load(Ordering::SeqCst),
                shared.ws_stalled.load(Ordering::SeqCst),
                shared.sse_refused.load(Ordering::SeqCst)
            ),
        ),
        _ => ("404 Not Found", "{}".to_owned()),
    };
    let answer = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(answer.as_bytes()).await?;
    sock.shutdown().await?;
    Ok(())
}
