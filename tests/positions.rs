//! Queue positions through the real binary: 500 queued jobs of one owner store one `queued`
//! event each (O(N) stored events, not O(N²) as when every shift was stored), while subscribers
//! see their place move up live over the WebSocket (both codecs), SSE and long-poll, and a
//! resumed or reconnected client gets its current place right after the replay and in every
//! snapshot.

use std::time::Duration;

use anyhow::{Context, bail};
use futures::StreamExt;
use outlast_e2e::Gateway;
use outlast_e2e::api::count;
use outlast_e2e::ws::{Client, Incoming};
use outlast_protocol::v1::{ClientMsg, Control, ServerMsg};
use outlast_protocol::{Codec, JobId, JobState, Seq};
use serde_json::json;

const T: Duration = Duration::from_secs(60);
/// Jobs queued behind the blocker.
const N: usize = 500;
/// Quick jobs at the head of the queue: they run and finish, moving everyone behind up.
const QUICK: usize = 20;

fn quick() -> serde_json::Value {
    json!({"backend": "demo", "workflow": {"steps": 1, "step_ms": 0}, "cache": false})
}

fn long() -> serde_json::Value {
    json!({"backend": "demo", "workflow": {"steps": 1, "step_ms": 600000}, "cache": false})
}

/// Submits `specs` in batches of 100; the job ids in order.
async fn submit_all(gw: &Gateway, specs: Vec<serde_json::Value>) -> anyhow::Result<Vec<JobId>> {
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for chunk in specs.chunks(100) {
        let r = http
            .post(format!("{}/v1/jobs/batch", gw.http()))
            .json(&json!({ "jobs": chunk }))
            .send()
            .await?;
        anyhow::ensure!(r.status() == 202, "batch answered {}", r.status());
        let v: serde_json::Value = r.json().await?;
        for answer in v["jobs"].as_array().context("jobs")? {
            let id = answer["job_id"]
                .as_str()
                .with_context(|| format!("refused: {answer}"))?;
            ids.push(id.parse()?);
        }
    }
    Ok(ids)
}

/// The next `position` message for `job` (skipping everything else), within `within`.
async fn next_place(ws: &mut Client, job: JobId, within: Duration) -> anyhow::Result<u32> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ws.recv(left).await? {
            Incoming::Msg(ServerMsg::Control(Control::Position {
                job_id, position, ..
            })) if job_id == job => return Ok(position),
            Incoming::Msg(ServerMsg::Event(e)) if e.job_id == job && e.seq > Seq(1) => {
                bail!("{job} got an event while queued: {e:?}")
            }
            Incoming::Msg(_) => {}
            Incoming::Closed(c) => bail!("closed: {c:?}"),
        }
    }
}

/// Reads `position` messages for `job` until one says `target`; every position seen, in order.
async fn places_until(ws: &mut Client, job: JobId, target: u32) -> anyhow::Result<Vec<u32>> {
    let mut seen = Vec::new();
    while seen.last() != Some(&target) {
        let p = next_place(ws, job, T)
            .await
            .with_context(|| format!("waiting for position {target}; saw {seen:?}"))?;
        seen.push(p);
    }
    Ok(seen)
}

/// One SSE stream's events as (event name, id, data) triples.
struct Sse {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl Sse {
    async fn open(gw: &Gateway, job: JobId, last_event_id: Option<u64>) -> anyhow::Result<Sse> {
        let mut req = reqwest::Client::new()
            .get(format!("{}/v1/jobs/{job}/events", gw.http()))
            .header("Accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("Last-Event-ID", id.to_string());
        }
        let r = req.send().await?;
        anyhow::ensure!(r.status() == 200, "SSE answered {}", r.status());
        Ok(Sse {
            body: Box::pin(r.bytes_stream()),
            buf: String::new(),
        })
    }

    async fn next(&mut self) -> anyhow::Result<(String, Option<u64>, serde_json::Value)> {
        let (mut name, mut id, mut data) = (String::new(), None, String::new());
        loop {
            while let Some(nl) = self.buf.find('\n') {
                let line: String = self.buf.drain(..=nl).collect();
                let line = line.trim_end_matches(['\n', '\r']);
                if line.is_empty() {
                    if !data.is_empty() {
                        return Ok((name, id, serde_json::from_str(&data)?));
                    }
                    (name, id) = (String::new(), None);
                } else if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("id:") {
                    id = Some(v.trim().parse()?);
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            let chunk = tokio::time::timeout(T, self.body.next())
                .await
                .context("SSE silent")?
                .context("SSE ended")??;
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Positions from `event: position` (never with an `id:`) until `target`.
    async fn places_until(&mut self, target: u32) -> anyhow::Result<Vec<u32>> {
        let mut seen = Vec::new();
        while seen.last() != Some(&target) {
            let (name, id, data) = self.next().await?;
            match name.as_str() {
                "position" => {
                    anyhow::ensure!(id.is_none(), "a place is not an event: {id:?}");
                    anyhow::ensure!(data["type"] == "position", "{data}");
                    seen.push(u32::try_from(
                        data["position"].as_u64().context("position")?,
                    )?);
                }
                // The stored entry (replayed first); the live place follows it.
                "queued" => anyhow::ensure!(id == Some(1), "one queued event, seq 1: {id:?}"),
                other => bail!("unexpected SSE event {other}: {data}"),
            }
        }
        Ok(seen)
    }
}

fn strictly_decreasing(seen: &[u32]) -> bool {
    seen.windows(2).all(|w| w[1] < w[0])
}

#[tokio::test]
async fn five_hundred_queued_jobs_store_one_queued_event_each_and_move_live() -> anyhow::Result<()>
{
    let gw = Gateway::start(&[
        "--demo-concurrency",
        "1",
        "--jobs-max-queued-per-owner",
        "0",
        "--jobs-submits-per-second",
        "0",
    ])
    .await?;
    let api = gw.api();
    // The only slot is held by a blocker; behind it QUICK quick jobs, a second blocker that
    // freezes the queue once the quick ones are through, and the rest.
    let blocker = submit_all(&gw, vec![long()]).await?[0];
    api.wait_for_snapshot(blocker, T, |s| s.state == JobState::Running)
        .await?;
    let mut specs: Vec<serde_json::Value> = (0..N).map(|_| quick()).collect();
    specs[QUICK] = long();
    let ids = submit_all(&gw, specs).await?;
    let last = N as u32 - 1;
    let (watched, sse_job, poll_job) = (ids[N - 1], ids[N - 2], ids[N - 3]);
    api.wait_for_snapshot(watched, T, |s| s.position == Some(last))
        .await?;

    // Subscribers before the queue moves: the WebSocket (JSON) from the start, SSE, long-poll.
    let mut ws = Client::connect(&gw.ws_url(), Codec::Json).await?;
    ws.send(&ClientMsg::Subscribe {
        req: Some(1),
        job_id: watched,
        after: None,
    })
    .await?;
    let mut sse = Sse::open(&gw, sse_job, None).await?;
    let first = api.poll(poll_job, Seq::ZERO, Duration::ZERO).await?;
    assert_eq!(count(&first.events, "queued"), 1, "{:?}", first.events);

    // Release the head: the quick jobs run, everyone behind moves up QUICK + 1 places, then
    // the second blocker holds the queue still.
    let released = tokio::time::Instant::now();
    assert_eq!(api.cancel(blocker).await?, JobState::Canceled);
    api.wait_for_snapshot(ids[QUICK], T, |s| s.state == JobState::Running)
        .await?;
    let moved = QUICK as u32 + 1;

    // Stored: one `queued` per job, however often the queue moved (the old scheme stored a
    // `queued` for every waiting job on every shift: here about QUICK x N = 10,000).
    let mut stored = 0;
    let mut queued = 0;
    for id in ids.iter().chain([&blocker]) {
        let log = api.events(id).await?;
        stored += log.len();
        queued += count(&log, "queued");
    }
    assert_eq!(queued, N + 1, "one queued event per job");
    assert!(stored < 3 * N, "{stored} stored events for {N} queued jobs");

    // Live: the WebSocket subscriber saw its place go down to where it is now, step by step.
    let ws_seen = places_until(&mut ws, watched, last - moved).await?;
    let window = released.elapsed();
    assert!(strictly_decreasing(&ws_seen), "{ws_seen:?}");
    assert!(ws_seen.len() >= 2, "moved live: {ws_seen:?}");
    // Moves coalesce: after the place shown on subscribing, at most a leading and one trailing
    // place per 250 ms (PLACE_INTERVAL), where one per round (QUICK + 1 here) would be sent
    // without it.
    let most = 3 + window.as_millis() / 250;
    assert!(
        ws_seen.len() as u128 <= most,
        "{} places in {window:?} (at most {most}): {ws_seen:?}",
        ws_seen.len()
    );
    let sse_seen = sse.places_until(last - 1 - moved).await?;
    assert!(strictly_decreasing(&sse_seen), "{sse_seen:?}");
    assert!(sse_seen.len() >= 2, "moved live over SSE: {sse_seen:?}");
    // Long-poll: the answers carry the live place; a poll at the newest seq still shows it.
    let p = api.poll(poll_job, first.next_after, Duration::ZERO).await?;
    assert!(p.events.is_empty(), "{:?}", p.events);
    assert_eq!(p.next_after, Seq(1));
    let raw: serde_json::Value = api
        .get(&format!("/v1/jobs/{poll_job}/poll?after=1&timeout_ms=0"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(raw["position"], last - 2 - moved, "{raw}");

    // Snapshots carry the live place (the stored one would say `last`); seq is unchanged.
    let snap = api.snapshot(watched).await?;
    assert_eq!(
        (snap.state, snap.position, snap.seq),
        (JobState::Queued, Some(last - moved), Seq(1))
    );
    let listed: serde_json::Value = api.get("/v1/jobs?limit=1000").send().await?.json().await?;
    let entry = listed["jobs"]
        .as_array()
        .context("jobs")?
        .iter()
        .find(|j| j["job_id"] == watched.to_string())
        .context("watched job listed")?;
    assert_eq!(entry["position"], last - moved);

    // A reconnected client (MessagePack) resuming after its last seq: nothing to replay, and at
    // once its current place.
    let mut again = Client::connect(&gw.ws_url(), Codec::MsgPack).await?;
    again
        .send(&ClientMsg::Subscribe {
            req: Some(2),
            job_id: watched,
            after: Some(Seq(1)),
        })
        .await?;
    match again.recv(T).await? {
        Incoming::Msg(ServerMsg::Control(Control::Subscribed { recovered, .. })) => {
            assert!(recovered);
        }
        other => bail!("expected subscribed, got {other:?}"),
    }
    assert_eq!(next_place(&mut again, watched, T).await?, last - moved);
    // The `get` message's snapshot too.
    again
        .send(&ClientMsg::Get {
            req: Some(3),
            job_id: watched,
        })
        .await?;
    loop {
        if let Some(Control::Snapshot { snapshot, .. }) = again.next_control(T).await? {
            assert_eq!(snapshot.position, Some(last - moved));
            break;
        }
    }
    // A client claiming a seq the job never reached gets a snapshot: with the live place.
    again
        .send(&ClientMsg::Subscribe {
            req: Some(4),
            job_id: watched,
            after: Some(Seq(99)),
        })
        .await?;
    match again.recv(T).await? {
        Incoming::Msg(ServerMsg::Control(Control::Subscribed {
            recovered: false,
            snapshot: Some(s),
            ..
        })) => assert_eq!(s.position, Some(last - moved)),
        other => bail!("expected a snapshot, got {other:?}"),
    }
    // SSE resumed with Last-Event-ID: no replay, then the current place (without an id).
    let mut resumed = Sse::open(&gw, sse_job, Some(1)).await?;
    let (name, id, data) = resumed.next().await?;
    assert_eq!((name.as_str(), id), ("position", None), "{data}");
    assert_eq!(data["position"], last - 1 - moved);
    Ok(())
}
