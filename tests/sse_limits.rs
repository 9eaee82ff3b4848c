//! SSE and long-poll held to the WebSocket's standard: a client that stops reading is cut within
//! `streams.sse_write_timeout` while the gateway's memory stays bounded (history is read a
//! page at a time, never held whole), a cut client resumes with `Last-Event-ID` and gets exactly
//! the rest, a long history replays exactly and in order over SSE, long-poll and the WebSocket,
//! and one owner's streams on every transport count against `streams.max_per_owner` (429).

use std::time::Duration;

use anyhow::Context;
use outlast_e2e::Gateway;
use outlast_e2e::api::Api;
use outlast_e2e::ws::{Client, Incoming};
use outlast_protocol::v1::{ClientMsg, Control, ServerMsg};
use outlast_protocol::{Codec, EventKind, JobId, JobState, Seq};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const T: Duration = Duration::from_secs(30);

/// An exec command printing `n` progress lines whose labels are `label_bytes` long.
fn big_progress_script(n: u32, label_bytes: usize) -> String {
    format!(
        "pad=$(head -c {label_bytes} /dev/zero | tr '\\0' x); i=0; while [ $i -lt {n} ]; do \
         i=$((i+1)); printf '{{\"progress\":%d,\"max\":{n},\"label\":\"%s\"}}\\n' $i \"$pad\"; done"
    )
}

/// The gateway's resident memory (VmRSS) in bytes.
fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .context("VmRSS line")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib * 1024)
}

/// A raw TCP client with a tiny receive window that asks for a job's SSE stream.
async fn raw_sse(
    gw: &Gateway,
    job: JobId,
    last_event_id: Option<u64>,
) -> anyhow::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let mut stream = socket.connect(gw.addr).await?;
    let resume = last_event_id.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
    let request = format!(
        "GET /v1/jobs/{job}/events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n{resume}\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    Ok(stream)
}

/// Complete SSE events `(id, event, data)` in `text` (chunked transfer framing is skipped:
/// chunk-size lines are neither `id:`, `event:` nor `data:` lines).
fn parse_sse(text: &str) -> anyhow::Result<Vec<(u64, String, serde_json::Value)>> {
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let mut out = Vec::new();
    let (mut id, mut event, mut data) = (None, None, None);
    for line in body.split('\n') {
        let line = line.trim_end_matches('\r');
        if let Some(v) = line.strip_prefix("id: ") {
            id = Some(v.parse::<u64>()?);
        } else if let Some(v) = line.strip_prefix("event: ") {
            event = Some(v.to_owned());
        } else if let Some(v) = line.strip_prefix("data: ") {
            // A data line cut by the end of what arrived is not an event.
            match serde_json::from_str(v) {
                Ok(v) => data = Some(v),
                Err(_) => break,
            }
        } else if line.is_empty()
            && let (Some(i), Some(e), Some(d)) = (id.take(), event.take(), data.take())
        {
            out.push((i, e, d));
        }
    }
    Ok(out)
}

/// Reads an SSE response over reqwest to its end: `(id, event, data)` of every event.
async fn read_sse_to_end(
    resp: reqwest::Response,
) -> anyhow::Result<Vec<(u64, String, serde_json::Value)>> {
    use futures::StreamExt;
    anyhow::ensure!(resp.status() == 200, "SSE answered {}", resp.status());
    let mut stream = resp.bytes_stream();
    let mut text = String::from("\r\n\r\n");
    while let Some(chunk) = tokio::time::timeout(T, stream.next()).await? {
        text.push_str(std::str::from_utf8(&chunk?)?);
    }
    parse_sse(&text)
}

/// Everything a raw client can still read (until the end or a reset), as text.
async fn drain(mut stream: TcpStream) -> String {
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(T, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => bytes.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Waits (bounded) until `/metrics` shows the counter at `at_least`.
async fn wait_counter(
    api: &Api,
    name: &str,
    at_least: u64,
    within: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if api.counter(name).await? >= at_least {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{name} stayed below {at_least} for {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_sse_is_cut_in_time_and_memory_stays_bounded()
-> anyhow::Result<()> {
    // 1,000 progress events with 64 KiB labels: a 64 MiB history, of which three clients that
    // never read would be sent 192 MiB.
    let events = 1000;
    let script = big_progress_script(events, 64 * 1024);
    let gw = Gateway::start(&[
        "--exec-command",
        &script,
        "--streams-sse-write-timeout",
        "1s",
    ])
    .await?;
    let pid = gw.pid().context("gateway pid")?;
    let api = gw.api();
    let job: JobId = gw
        .submit(serde_json::json!({"backend": "exec"}))
        .await?
        .parse()?;
    api.wait_for_snapshot(job, Duration::from_secs(240), |s| {
        s.state == JobState::Completed
    })
    .await?;
    // Read the whole history once (long-poll pages), so the store's own page cache is warm
    // before the baseline: growth below is what the streams hold, not what redb caches.
    let stored = api.events(job).await?;
    let history_bytes: usize = stored
        .iter()
        .map(|e| serde_json::to_vec(e).map_or(0, |v| v.len()))
        .sum();
    assert!(
        history_bytes > 60 << 20,
        "the history is {history_bytes} bytes"
    );
    let baseline = rss_bytes(pid)?;

    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(raw_sse(&gw, job, None).await?);
    }
    // None of them reads. Sample the gateway's memory until all three were cut.
    let mut peak = baseline;
    let deadline = started + Duration::from_secs(20);
    loop {
        peak = peak.max(rss_bytes(pid)?);
        if api.counter("outlast_http_write_stalls_total").await? >= 3 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the non-reading clients were not cut within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let cut_after = started.elapsed();
    peak = peak.max(rss_bytes(pid)?);
    assert!(
        cut_after >= Duration::from_secs(1) && cut_after < Duration::from_secs(6),
        "cut after {cut_after:?}; the limit is 1 s of no progress"
    );
    let growth = peak.saturating_sub(baseline);
    assert!(
        growth < 50 << 20,
        "the gateway grew by {} MiB while three clients stalled on {} MiB each",
        growth >> 20,
        history_bytes >> 20
    );
    // Everything was freed: no live channel is left, and the owner's places came back (a
    // limit of 1024 would not show it; the channel gauge and a clean resume do).
    let deadline = Instant::now() + T;
    while api.counter("outlast_live_job_channels").await? != 0 {
        anyhow::ensure!(Instant::now() < deadline, "a live channel was left behind");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // What reached each client is a prefix of the history, and the connection ended.
    for client in clients {
        let got = parse_sse(&drain(client).await)?;
        assert!(got.len() < stored.len(), "a cut client cannot have it all");
        for (i, (id, _, _)) in got.iter().enumerate() {
            assert_eq!(*id, i as u64 + 1, "a prefix in order");
        }
    }
    println!(
        "sse stall: cut after {cut_after:?}, rss baseline {} MiB, peak growth {} KiB, history {} MiB x 3",
        baseline >> 20,
        growth >> 10,
        history_bytes >> 20
    );
    Ok(())
}

#[tokio::test]
async fn a_cut_sse_client_resumes_with_last_event_id_and_gets_exactly_the_rest()
-> anyhow::Result<()> {
    // 400 events of 16 KiB: 6.4 MB, far more than the socket buffers hold.
    let script = big_progress_script(400, 16 * 1024);
    let gw = Gateway::start(&[
        "--exec-command",
        &script,
        "--streams-sse-write-timeout",
        "500ms",
    ])
    .await?;
    let api = gw.api();
    let job: JobId = gw
        .submit(serde_json::json!({"backend": "exec"}))
        .await?
        .parse()?;
    api.wait_for_snapshot(job, T, |s| s.state == JobState::Completed)
        .await?;
    let stored = gw.full_log(&job.to_string()).await?;
    // The client reads a little, then stops reading until the gateway gave up on it.
    let mut client = raw_sse(&gw, job, None).await?;
    let mut head = vec![0u8; 20_000];
    let mut got = 0;
    while got < head.len() {
        let n = tokio::time::timeout(T, client.read(&mut head[got..])).await??;
        anyhow::ensure!(n > 0, "the stream ended early");
        got += n;
    }
    wait_counter(&api, "outlast_http_write_stalls_total", 1, T).await?;
    let mut text = String::from_utf8_lossy(&head).into_owned();
    text.push_str(&drain(client).await);
    let first = parse_sse(&text)?;
    assert!(
        !first.is_empty() && first.len() < stored.len(),
        "a prefix arrived ({} events)",
        first.len()
    );
    let last = first.last().map(|e| e.0).context("a last id")?;
    // It resumes with the last id it saw: exactly the rest, starting right after it.
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/jobs/{job}/events", gw.http()))
        .header("Last-Event-ID", last.to_string())
        .send()
        .await?;
    let rest = read_sse_to_end(resp).await?;
    assert_eq!(rest.first().map(|e| e.0), Some(last + 1));
    let all: Vec<serde_json::Value> = first.iter().chain(&rest).map(|e| e.2.clone()).collect();
    assert_eq!(all.len(), stored.len());
    assert!(
        all == stored,
        "prefix + resumed rest is exactly the stored log"
    );
    for (id, event, data) in first.iter().chain(&rest) {
        assert_eq!(data["seq"], *id);
        assert_eq!(data["type"], event.as_str());
    }
    Ok(())
}

#[tokio::test]
async fn a_long_history_replays_exactly_over_sse_long_poll_and_the_websocket() -> anyhow::Result<()>
{
    let steps = 2000u64;
    let gw = Gateway::start(&[]).await?;
    let api = gw.api();
    let job: JobId = gw
        .submit(serde_json::json!({"backend": "demo", "workflow": {"steps": steps, "step_ms": 0}}))
        .await?
        .parse()?;
    let snapshot = api
        .wait_for_snapshot(job, Duration::from_secs(240), |s| {
            s.state == JobState::Completed
        })
        .await?;
    let newest = snapshot.seq.0;
    assert!(newest > steps, "{newest} events stored");
    // What every transport must deliver: seq 1..=newest, progress 1..=steps in order, one
    // terminal event last.
    let check = |seqs: &[u64], progress: &[u64], what: &str| {
        assert_eq!(
            seqs,
            (1..=newest).collect::<Vec<_>>(),
            "{what}: every seq once, in order"
        );
        assert_eq!(
            progress,
            (1..=steps).collect::<Vec<_>>(),
            "{what}: progress in order"
        );
    };

    // SSE from the beginning, read to its end.
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/jobs/{job}/events", gw.http()))
        .send()
        .await?;
    let sse = read_sse_to_end(resp).await?;
    let seqs: Vec<u64> = sse.iter().map(|e| e.0).collect();
    let progress: Vec<u64> = sse
        .iter()
        .filter(|e| e.1 == "progress")
        .filter_map(|e| e.2["value"].as_u64())
        .collect();
    check(&seqs, &progress, "SSE");
    assert_eq!(sse.last().map(|e| e.1.as_str()), Some("completed"));

    // Long-poll from 0: pages of at most 256 events, each saying whether more follow.
    let mut after = Seq::ZERO;
    let mut polled = Vec::new();
    let mut pages = 0;
    loop {
        let p = api.poll(job, after, Duration::ZERO).await?;
        pages += 1;
        assert!(p.events.len() <= 256, "a page of {} events", p.events.len());
        assert!(p.recovered && p.snapshot.is_none());
        assert_eq!(
            p.done, !p.more,
            "done exactly on the last page of a finished job"
        );
        polled.extend(p.events);
        after = p.next_after;
        if !p.more {
            break;
        }
        anyhow::ensure!(pages < 100, "the pages never end");
    }
    assert!(
        pages >= newest.div_ceil(256),
        "{pages} pages for {newest} events"
    );
    let seqs: Vec<u64> = polled.iter().map(|e| e.seq.0).collect();
    let progress: Vec<u64> = polled
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Progress { value, .. } => Some(value),
            _ => None,
        })
        .collect();
    check(&seqs, &progress, "long-poll");

    // The WebSocket reads history through the same pages.
    let mut ws = Client::connect(&gw.ws_url(), Codec::MsgPack).await?;
    ws.send(&ClientMsg::Subscribe {
        req: Some(1),
        job_id: job,
        after: None,
    })
    .await?;
    let mut over_ws = Vec::new();
    while over_ws.len() < newest as usize {
        match ws.recv(T).await? {
            Incoming::Msg(ServerMsg::Event(e)) => over_ws.push(e),
            Incoming::Msg(ServerMsg::Control(Control::Subscribed { recovered, .. })) => {
                assert!(recovered);
            }
            Incoming::Msg(_) => {}
            Incoming::Closed(c) => anyhow::bail!("closed: {c:?}"),
        }
    }
    assert!(over_ws == polled, "the WebSocket delivered the same log");
    Ok(())
}

#[tokio::test]
async fn one_owners_streams_on_every_transport_share_one_limit_answered_with_429()
-> anyhow::Result<()> {
    let (alice_token, bob_token) = ("alice-token-0123456789", "bob-token-0123456789ab");
    let gw = Gateway::start_with_tokens(
        &[("alice", alice_token), ("bob", bob_token)],
        &["--streams-max-per-owner", "2", "--ping-interval", "200ms"],
    )
    .await?;
    let alice = gw.api().with_token(alice_token);
    let bob = gw.api().with_token(bob_token);
    let long = serde_json::json!({"backend": "demo", "workflow": {"steps": 1, "step_ms": 60000}});
    let a1 = alice.submit(&long).await?.job_id;
    let a2 = alice.submit(&long).await?.job_id;
    let b1 = bob.submit(&long).await?.job_id;

    // Alice holds two streams: an SSE response and a WebSocket subscription.
    let sse = alice.get(&format!("/v1/jobs/{a1}/events")).send().await?;
    assert_eq!(sse.status(), 200);
    let mut ws = Client::connect_bearer(&gw.ws_url(), Codec::Json, alice_token).await?;
    ws.send(&ClientMsg::Subscribe {
        req: Some(1),
        job_id: a2,
        after: None,
    })
    .await?;
    match ws.next_control(T).await? {
        Some(Control::Subscribed { req: Some(1), .. }) => {}
        other => anyhow::bail!("expected subscribed, got {other:?}"),
    }

    // A third, on any transport, is refused with the stable code.
    let refused = |what: &'static str| {
        move |status: u16, retry: Option<String>, body: serde_json::Value| {
            assert_eq!(status, 429, "{what}");
            assert_eq!(body["code"], "limit_exceeded", "{what}: {body}");
            assert!(
                body["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("streams.max_per_owner")),
                "{what}: {body}"
            );
            assert_eq!(retry.as_deref(), Some("5"), "{what}: Retry-After");
        }
    };
    for (path, what) in [
        (format!("/v1/jobs/{a1}/events"), "SSE"),
        (
            format!("/v1/jobs/{a2}/poll?after=0&timeout_ms=0"),
            "long-poll",
        ),
    ] {
        let r = alice.get(&path).send().await?;
        let status = r.status().as_u16();
        let retry = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        refused(what)(status, retry, r.json().await?);
    }
    ws.send(&ClientMsg::Subscribe {
        req: Some(2),
        job_id: a1,
        after: None,
    })
    .await?;
    match ws.next_control(T).await? {
        Some(Control::Error {
            req: Some(2), code, ..
        }) => assert_eq!(code.as_str(), "limit_exceeded"),
        other => anyhow::bail!("expected a limit_exceeded error, got {other:?}"),
    }

    // Another owner has a count of its own.
    let r = bob.get(&format!("/v1/jobs/{b1}/events")).send().await?;
    assert_eq!(r.status(), 200, "bob is not limited by alice's streams");
    drop(r);

    // Unsubscribing gives the place back at once: a long-poll now answers.
    ws.send(&ClientMsg::Unsubscribe {
        req: Some(3),
        job_id: a2,
    })
    .await?;
    match ws.next_control(T).await? {
        Some(Control::Unsubscribed { req: Some(3), .. }) => {}
        other => anyhow::bail!("expected unsubscribed, got {other:?}"),
    }
    let r = alice
        .get(&format!("/v1/jobs/{a2}/poll?after=0&timeout_ms=0"))
        .send()
        .await?;
    assert_eq!(r.status(), 200, "the WebSocket's place came back");
    // Closing the SSE response gives its place back too (once the gateway notices).
    drop(sse);
    ws.send(&ClientMsg::Subscribe {
        req: Some(4),
        job_id: a2,
        after: None,
    })
    .await?;
    match ws.next_control(T).await? {
        Some(Control::Subscribed { req: Some(4), .. }) => {}
        other => anyhow::bail!("expected subscribed, got {other:?}"),
    }
    let deadline = Instant::now() + T;
    loop {
        let r = alice.get(&format!("/v1/jobs/{a1}/events")).send().await?;
        if r.status() == 200 {
            break;
        }
        assert_eq!(r.status(), 429);
        anyhow::ensure!(
            Instant::now() < deadline,
            "the closed SSE stream kept its place"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}
