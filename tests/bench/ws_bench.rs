//! WebSocket benchmark: memory per idle connection with pings running, and delivery latency
//! from a backend event to many subscribers (with a loss check).
//!
//! `cargo run --release -p outlast-e2e --bin ws-bench -- [IDLE_CONNECTIONS] [SUBSCRIBERS]`
//! (defaults 10000 and 1000). Uses the release gateway (`target/release/outlast`, built first)
//! unless `OUTLAST_BIN` is set. Prints figures; asserts nothing about speed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use outlast_e2e::Gateway;
use outlast_protocol::v1::{ClientMsg, Control, ServerMsg};
use outlast_protocol::{Codec, JobEvent, Seq};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str) -> anyhow::Result<Ws> {
    let mut req = url.into_client_request()?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("outlast.v1.msgpack"),
    );
    // Small client buffers so the benchmark process itself fits 10k connections.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(config), false).await?;
    Ok(ws)
}

fn decode(msg: &Message) -> Option<ServerMsg> {
    match msg {
        Message::Binary(b) => Codec::MsgPack.decode(b).ok(),
        _ => None,
    }
}

fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let idle: usize = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(10_000);
    let subscribers: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(1_000);
    raise_fd_limit();
    outlast_e2e::use_release_binary()?;

    // 1. Memory per idle connection, with pings every second.
    let gw = Gateway::start(&["--ping-interval", "1s", "--pong-timeout", "5s"]).await?;
    let pid = gw.pid().expect("gateway pid");
    let url = gw.ws_url();
    // Warm up allocator arenas with a few connections, then take the baseline.
    let mut warm = Vec::new();
    for _ in 0..50 {
        warm.push(connect(&url).await?);
    }
    drop(warm);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = rss_kib(pid);
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(256));
    let mut tasks = Vec::with_capacity(idle);
    let (alive_tx, alive_rx) = tokio::sync::watch::channel(());
    for _ in 0..idle {
        let url = url.clone();
        let gate = Arc::clone(&gate);
        let mut stop = alive_rx.clone();
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.ok()?;
            let mut ws = connect(&url).await.ok()?;
            drop(permit);
            let mut pings = 0u32;
            loop {
                tokio::select! {
                    m = ws.next() => match m {
                        Some(Ok(Message::Ping(_))) => pings += 1,
                        Some(Ok(_)) => {}
                        _ => return Some((pings, false)),
                    },
                    _ = stop.changed() => return Some((pings, true)),
                }
            }
        }));
    }
    // Wait until every connection is up (each holds its permit only while connecting).
    while gate.available_permits() < 256 || started.elapsed() < Duration::from_millis(100) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    // Three ping intervals with everything idle but the pings.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let loaded = rss_kib(pid);
    alive_tx.send(())?;
    let mut open = 0usize;
    let mut pinged = 0usize;
    for t in tasks {
        if let Ok(Some((pings, still_open))) = t.await {
            open += usize::from(still_open);
            pinged += usize::from(pings >= 2);
        }
    }
    let per_conn = (loaded.saturating_sub(base)) as f64 * 1024.0 / idle as f64;
    println!(
        "idle connections:        {idle} opened in {connect_secs:.1} s, {open} still open, {pinged} received >= 2 pings"
    );
    println!("gateway RSS:             {base} KiB before, {loaded} KiB with all connected");
    println!(
        "memory per connection:   {:.2} KiB (goal <= 8 KiB; ratio to goal {:.2})",
        per_conn / 1024.0,
        per_conn / 8192.0
    );
    drop(gw);

    // 2. Delivery latency from a backend event to N subscribers, and loss.
    // One demo slot, taken by a 4 s blocker, so every subscriber is in before the measured job
    // starts and its events are live deliveries, not replays.
    let gw = Gateway::start(&["--ping-interval", "5s", "--demo-concurrency", "1"]).await?;
    gw.submit(serde_json::json!({"backend": "demo", "workflow": {"steps": 1, "step_ms": 4000}}))
        .await?;
    let url = gw.ws_url();
    let mut submitter = connect(&url).await?;
    let steps = 100u32;
    let submit = ClientMsg::Submit {
        req: Some(1),
        job: serde_json::from_value(
            serde_json::json!({"backend": "demo", "workflow": {"steps": steps, "step_ms": 50}}),
        )?,
    };
    // Subscribers connect and subscribe first; the job starts after a delay long enough for that.
    let mut clients = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        clients.push(connect(&url).await?);
    }
    let mut frame = Vec::new();
    if let outlast_protocol::Frame::Binary(b) = Codec::MsgPack.encode(&submit)? {
        frame = b;
    }
    submitter.send(Message::Binary(frame.into())).await?;
    let job_id = loop {
        let m = submitter
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("closed"))??;
        if let Some(ServerMsg::Control(Control::Submitted { job_id, .. })) = decode(&m) {
            break job_id;
        }
    };
    let sub = ClientMsg::Subscribe {
        req: None,
        job_id,
        after: None,
    };
    let sub_bytes = match Codec::MsgPack.encode(&sub)? {
        outlast_protocol::Frame::Binary(b) => b,
        outlast_protocol::Frame::Text(t) => t.into_bytes(),
    };
    let mut handles = Vec::with_capacity(subscribers);
    for mut ws in clients {
        let sub_bytes = sub_bytes.clone();
        handles.push(tokio::spawn(async move {
            ws.send(Message::Binary(sub_bytes.into())).await.ok()?;
            let mut latencies = Vec::new();
            let mut last = Seq::ZERO;
            let mut ok = true;
            loop {
                let m = tokio::time::timeout(Duration::from_secs(60), ws.next())
                    .await
                    .ok()??
                    .ok()?;
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .ok()?
                    .as_millis() as u64;
                if let Some(ServerMsg::Event(JobEvent {
                    seq, at_ms, kind, ..
                })) = decode(&m)
                {
                    ok &= seq == last.next();
                    last = seq;
                    if !matches!(kind, outlast_protocol::EventKind::Queued { .. }) {
                        latencies.push(now_ms.saturating_sub(at_ms) as f64);
                    }
                    if kind.is_terminal() {
                        return Some((latencies, ok, last));
                    }
                }
            }
        }));
    }
    let mut all = Vec::new();
    let mut lossless = 0usize;
    let mut finals = std::collections::BTreeSet::new();
    for h in handles {
        if let Ok(Some((lat, ok, last))) = h.await {
            lossless += usize::from(ok);
            finals.insert(last);
            all.extend(lat);
        }
    }
    all.sort_by(|a, b| a.total_cmp(b));
    println!(
        "subscribers:             {subscribers}, {lossless} received every event in order, final seq {:?}",
        finals
    );
    println!(
        "delivery latency (ms):   p50 {:.1}  p99 {:.1}  max {:.1} over {} deliveries (goal p99 < 20 ms; ratio to goal {:.2}; 1 ms clock resolution)",
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        all.last().copied().unwrap_or(f64::NAN),
        all.len(),
        percentile(&all, 0.99) / 20.0
    );
    Ok(())
}
