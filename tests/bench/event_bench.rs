//! Event-store benchmark: durable events per second with many jobs emitting at once, as a ratio
//! to the disk's raw write+fsync rate measured in the same run (same directory), and the event
//! latency at low load.
//!
//! `cargo run --release -p outlast-e2e --bin event-bench -- [--jobs 32,256] [--events 16000]`.
//! Uses the release gateway (`target/release/outlast`, built first) unless `OUTLAST_BIN` is set
//! (point it at an older build to compare: each run measures its own disk baseline). Prints
//! figures; asserts nothing about speed.

use std::time::Duration;

use anyhow::Context;
use futures::{SinkExt, StreamExt};
use outlast_e2e::Gateway;
use outlast_e2e::bench::{disk_fsync_rate, now_ms, percentile};
use outlast_protocol::v1::{ClientMsg, ServerMsg};
use outlast_protocol::{Codec, EventKind, JobEvent, JobId, Seq};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// One throughput run: `jobs` demo jobs at once, `steps` progress events each, all slots free.
struct Throughput {
    events: usize,
    secs: f64,
}

async fn throughput(jobs: usize, steps: usize) -> anyhow::Result<Throughput> {
    let concurrency = jobs.to_string();
    let gw = Gateway::start(&[
        "--demo-concurrency",
        &concurrency,
        "--history-max-events",
        "1000000",
        "--jobs-submits-per-second",
        "0",
        "--jobs-max-queued-per-owner",
        "0",
    ])
    .await?;
    let api = gw.api();
    let mut ids: Vec<JobId> = Vec::with_capacity(jobs);
    // Every job's workflow differs (steps), so the result cache answers none of them.
    let specs: Vec<serde_json::Value> = (0..jobs)
        .map(|i| serde_json::json!({"backend": "demo", "workflow": {"steps": steps + i, "step_ms": 0}}))
        .collect();
    for chunk in specs.chunks(100) {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/jobs/batch", gw.http()))
            .json(&serde_json::json!({ "jobs": chunk }))
            .send()
            .await?
            .error_for_status()?;
        let v: serde_json::Value = r.json().await?;
        for item in v["jobs"].as_array().context("jobs")? {
            let id = item["job_id"].as_str().context("job_id")?;
            ids.push(id.parse().map_err(|_| anyhow::anyhow!("job id {id}"))?);
        }
    }
    anyhow::ensure!(ids.len() == jobs, "submitted {} of {jobs}", ids.len());
    for id in &ids {
        api.follow_to_end(id, Duration::from_secs(600)).await?;
    }
    // The store stamps every event when its transaction begins: the window from the first to the
    // last progress event is the time the store took to make them all durable.
    let (mut first, mut last, mut events) = (u64::MAX, 0u64, 0usize);
    for id in &ids {
        let log = api.follow_to_end(id, Duration::from_secs(10)).await?;
        for e in log
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Progress { .. }))
        {
            first = first.min(e.at_ms);
            last = last.max(e.at_ms);
            events += 1;
        }
    }
    anyhow::ensure!(
        events >= jobs * steps,
        "only {events} progress events stored, expected at least {}",
        jobs * steps
    );
    Ok(Throughput {
        events,
        secs: (last.saturating_sub(first)).max(1) as f64 / 1000.0,
    })
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str) -> anyhow::Result<Ws> {
    let mut req = url.into_client_request()?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("outlast.v1.msgpack"),
    );
    let (ws, _) = tokio_tungstenite::connect_async(req).await?;
    Ok(ws)
}

fn frame(msg: &ClientMsg) -> anyhow::Result<Message> {
    Ok(match Codec::MsgPack.encode(msg)? {
        outlast_protocol::Frame::Binary(b) => Message::Binary(b.into()),
        outlast_protocol::Frame::Text(t) => Message::Text(t.into()),
    })
}

/// Low load: one job emitting every 10 ms, one live subscriber; latency from the store's stamp
/// to arrival, in ms (1 ms clock resolution).
async fn latency(steps: u32) -> anyhow::Result<Vec<f64>> {
    let gw = Gateway::start(&["--demo-concurrency", "1", "--ping-interval", "5s"]).await?;
    // A blocker holds the one slot until the subscriber is in, so the measured events are live.
    gw.submit(serde_json::json!({"backend": "demo", "workflow": {"steps": 1, "step_ms": 1500}}))
        .await?;
    let job = gw
        .submit(serde_json::json!({"backend": "demo", "workflow": {"steps": steps, "step_ms": 10}}))
        .await?;
    let job: JobId = job.parse().map_err(|_| anyhow::anyhow!("job id {job}"))?;
    let mut ws = connect(&gw.ws_url()).await?;
    ws.send(frame(&ClientMsg::Subscribe {
        req: None,
        job_id: job,
        after: None,
    })?)
    .await?;
    let mut out = Vec::new();
    let mut last = Seq::ZERO;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await
            .context("no event for 60 s")?
            .context("closed")??;
        let arrived = now_ms();
        let Message::Binary(b) = m else { continue };
        let Ok(ServerMsg::Event(JobEvent {
            seq, at_ms, kind, ..
        })) = Codec::MsgPack.decode(&b)
        else {
            continue;
        };
        anyhow::ensure!(seq == last.next(), "event {seq:?} after {last:?}");
        last = seq;
        if matches!(kind, EventKind::Progress { .. }) {
            out.push(arrived.saturating_sub(at_ms) as f64);
        }
        if kind.is_terminal() {
            break;
        }
    }
    out.sort_by(|a, b| a.total_cmp(b));
    Ok(out)
}

async fn measure(jobs: &[usize], events: usize, disk: f64) -> anyhow::Result<()> {
    for &n in jobs {
        let steps = (events / n).max(10);
        let t = throughput(n, steps).await?;
        let rate = t.events as f64 / t.secs;
        println!(
            "{n:>4} jobs x {steps} steps: {} events in {:.2} s = {rate:.0} durable events/s, {:.2}x the disk's fsync rate (goal >= 3x)",
            t.events,
            t.secs,
            rate / disk
        );
    }
    let lat = latency(300).await?;
    println!(
        "low load (1 job, an event every 10 ms, 1 subscriber): latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} events",
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN),
        lat.len()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut jobs = vec![32usize, 256];
    let mut events = 16_000usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--jobs" => {
                jobs = args
                    .next()
                    .context("--jobs N,M")?
                    .split(',')
                    .map(|s| s.parse())
                    .collect::<Result<_, _>>()?;
            }
            "--events" => events = args.next().context("--events N")?.parse()?,
            other => anyhow::bail!(
                "unknown argument {other}; usage: event-bench [--jobs 32,256] [--events N]"
            ),
        }
    }
    outlast_e2e::use_release_binary()?;
    let bin = outlast_e2e::binary();
    // The disk baseline in the directory the gateways' data directories live in.
    let probe_dir = std::env::temp_dir().join(format!("event-bench-{}", std::process::id()));
    let disk = disk_fsync_rate(&probe_dir, 256, 3.0)?;
    let _ = std::fs::remove_dir_all(&probe_dir);
    println!("disk: {disk:.0} write+fsync per second (256-byte appends, 3 s)");
    println!("gateway: {}", bin.display());
    measure(&jobs, events, disk).await
}
