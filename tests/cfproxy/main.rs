//! `cf-proxy`: a Cloudflare-like edge for the test suites (Rust and browser), with a control port.
//!
//! `cf-proxy --upstream ADDR [--listen ADDR] [--control ADDR]` forwards every connection to the
//! origin at ADDR and prints `cf-proxy: listening on http://A/ control http://B/` as its first
//! stdout line. It reads HTTP/1.1 (request and response boundaries on kept-alive connections) and
//! behaves as Cloudflare's edge does (figures: shared/reference/cloudflare.md):
//! - `--idle-timeout-ms N` (default 100000, 0: never): a connection on which no byte moves in
//!   either direction for N ms is cut (WebSockets, and kept-alive connections between requests;
//!   while a request waits for its response the origin timeout applies instead);
//! - `--origin-timeout-ms N` (default 100000, 0: never): when the origin sends nothing for N ms
//!   while the edge waits for a response head, the client gets `524` and the connection closes;
//!   a silence of N ms inside a response body cuts the connection (Cloudflare's Proxy Read
//!   Timeout is the time between two reads from the origin). Counted from the end of the
//!   request body;
//! - `--max-body-bytes N` (default 104857600): a request whose `Content-Length` is above N gets
//!   `413` before anything of it reaches the origin; a chunked body is counted as it streams and
//!   the origin connection is reset (the request never completes there) once it passes N;
//! - `--random-cut-ms MEAN` (default 0: off): each WebSocket is ended after a random time
//!   (exponential, this mean), half the time with a `1001 going away` close frame placed between
//!   two of the origin's frames, half the time with a TCP reset, as an edge restart does;
//! - `--up-rate`/`--down-rate BYTES_PER_SEC` (default 0: unlimited): throttle per direction and
//!   connection (up: client to origin).
//!
//! Control (GET on the control address; every answer is JSON):
//! - `/cut?mode=abrupt|1001&scope=ws|all`: end every WebSocket (`scope=ws`, the default) or
//!   every connection (`all`) now; abrupt: a TCP reset, 1001: a close frame "going away" to the
//!   client between two frames (connections that are not WebSockets are reset);
//! - `/random_cut?mean_ms=N`: as `--random-cut-ms` from now on (0: off);
//! - `/refuse_ws?on=1|0`: answer WebSocket upgrades with 403 (a proxy that blocks them);
//! - `/refuse_sse?on=1|0`: answer requests accepting `text/event-stream` with 403;
//! - `/throttle?up=BYTES_PER_SEC&down=BYTES_PER_SEC` (0 = unlimited);
//! - `/stall`: every WebSocket open now stops forwarding in both directions, without closing
//!   (a dead NAT mapping or a hung edge: bytes are read and dropped); later connections work;
//! - `/stats`: counters: `up`/`down` (bytes client->origin, origin->client), `connections`
//!   (open), `connections_total`, `requests`, `ws_open`, `ws_total`, `ws_refused`,
//!   `ws_stalled`, `sse_refused`, `idle_cuts`, `origin_timeouts` (524s and cut bodies),
//!   `too_large` (413s), `cuts_abrupt`, `cuts_1001`, `random_cuts`, `bad_gateway` (502s).
//!
//! `/cut` and `/stall` answer `{"receivers": N}`, the connections they apply to.

mod conn;
mod http1;
mod wsframe;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use conn::{Cut, CutOrder, Edge, Scope, Settings};

/// Command line (see the module documentation).
#[derive(Debug, Parser)]
#[command(
    name = "cf-proxy",
    about = "A Cloudflare-like edge for the test suites"
)]
struct Args {
    /// The origin: `HOST:PORT`.
    #[arg(long)]
    upstream: String,
    /// Where clients connect.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Where the control endpoints answer.
    #[arg(long, default_value = "127.0.0.1:0")]
    control: SocketAddr,
    /// Cut connections idle this long (0: never).
    #[arg(long, default_value_t = 100_000)]
    idle_timeout_ms: u64,
    /// 524 when the origin is silent this long before a response head (0: never).
    #[arg(long, default_value_t = 100_000)]
    origin_timeout_ms: u64,
    /// 413 for request bodies above this.
    #[arg(long, default_value_t = 100 << 20)]
    max_body_bytes: u64,
    /// Mean lifetime of a WebSocket before a random edge-restart cut (0: off).
    #[arg(long, default_value_t = 0)]
    random_cut_ms: u64,
    /// Client-to-origin bytes per second per connection (0: unlimited).
    #[arg(long, default_value_t = 0)]
    up_rate: u64,
    /// Origin-to-client bytes per second per connection (0: unlimited).
    #[arg(long, default_value_t = 0)]
    down_rate: u64,
}

fn millis(ms: u64) -> Option<Duration> {
    (ms > 0).then(|| Duration::from_millis(ms))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen).await?;
    let control = TcpListener::bind(args.control).await?;
    let edge = Arc::new(Edge::new(Settings {
        upstream: args.upstream,
        idle: millis(args.idle_timeout_ms),
        origin: millis(args.origin_timeout_ms),
        max_body: args.max_body_bytes,
    }));
    edge.random_mean.send_replace(args.random_cut_ms);
    edge.stats.up_rate.store(args.up_rate, Ordering::SeqCst);
    edge.stats.down_rate.store(args.down_rate, Ordering::SeqCst);
    println!(
        "cf-proxy: listening on http://{}/ control http://{}/",
        listener.local_addr()?,
        control.local_addr()?
    );
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => {
                let (sock, _) = r?;
                let edge = Arc::clone(&edge);
                tasks.spawn(async move { edge.serve(sock).await });
            }
            r = control.accept() => {
                let (sock, _) = r?;
                let edge = Arc::clone(&edge);
                tasks.spawn(async move {
                    if let Err(e) = control_request(sock, &edge).await {
                        eprintln!("cf-proxy: control: {e}");
                    }
                });
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

/// Answers one control request (see the module documentation).
async fn control_request(mut sock: TcpStream, edge: &Edge) -> anyhow::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut tmp = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        let n = tokio::time::timeout(Duration::from_secs(10), sock.read(&mut tmp)).await??;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&tmp[..n]);
    }
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
    let num = |k: &str| param(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let flag = |k: &str| param(k).as_deref() == Some("1");
    let s = &edge.stats;
    let (status, body) = match path {
        "/cut" => {
            let cut = if param("mode").as_deref() == Some("1001") {
                Cut::GoingAway
            } else {
                Cut::Abrupt
            };
            let scope = if param("scope").as_deref() == Some("all") {
                Scope::All
            } else {
                Scope::WebSockets
            };
            let n = edge.order(CutOrder { cut, scope });
            ("200 OK", format!("{{\"receivers\":{n}}}"))
        }
        "/stall" => {
            let n = edge.order(CutOrder {
                cut: Cut::Stall,
                scope: Scope::WebSockets,
            });
            ("200 OK", format!("{{\"receivers\":{n}}}"))
        }
        "/random_cut" => {
            edge.random_mean.send_replace(num("mean_ms"));
            ("200 OK", "{}".to_owned())
        }
        "/refuse_sse" => {
            s.refuse_sse.store(flag("on"), Ordering::SeqCst);
            ("200 OK", "{}".to_owned())
        }
        "/refuse_ws" => {
            s.refuse_ws.store(flag("on"), Ordering::SeqCst);
            ("200 OK", "{}".to_owned())
        }
        "/throttle" => {
            s.up_rate.store(num("up"), Ordering::SeqCst);
            s.down_rate.store(num("down"), Ordering::SeqCst);
            ("200 OK", "{}".to_owned())
        }
        "/stats" => ("200 OK", s.to_json()),
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
