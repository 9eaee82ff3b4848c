//! Lossless job streams over one WebSocket: keep-alive through an idle-cutting proxy, resume
//! after random drops, `kill -9` and restart, idempotent submission, SSE resume, long-poll.

use std::time::Duration;

use outlast_e2e::api::Submitted;
use outlast_e2e::ws::{Client, Incoming};
use outlast_e2e::{EdgeConfig, Gateway};
use outlast_protocol::v1::{ClientMsg, Control, ServerMsg};
use outlast_protocol::{Codec, EventKind, JobEvent, JobId, JobSpec, Seq};
use rand::Rng;

const T: Duration = Duration::from_secs(20);

fn demo(steps: u32, step_ms: u64) -> JobSpec {
    JobSpec::new(
        "demo",
        serde_json::json!({ "steps": steps, "step_ms": step_ms }),
    )
}

async fn submit_ws(client: &mut Client, spec: JobSpec) -> anyhow::Result<JobId> {
    client
        .send(&ClientMsg::Submit {
            req: Some(1),
            job: spec,
        })
        .await?;
    match client.next_control(T).await? {
        Some(Control::Submitted {
            job_id,
            req: Some(1),
            ..
        }) => Ok(job_id),
        other => anyhow::bail!("expected submitted, got {other:?}"),
    }
}

/// Reads events of `job` until the terminal one or until the connection ends; every event must
/// be the next in sequence.
async fn collect(
    client: &mut Client,
    job: JobId,
    log: &mut Vec<JobEvent>,
    stop_after: Option<Duration>,
) -> anyhow::Result<bool> {
    let deadline = stop_after.map(|d| tokio::time::Instant::now() + d);
    loop {
        let wait = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    return Ok(false);
                }
                left
            }
            None => T,
        };
        let msg = match client.recv(wait).await {
            Ok(m) => m,
            Err(_) if deadline.is_some() => return Ok(false),
            Err(e) => return Err(e),
        };
        match msg {
            Incoming::Msg(ServerMsg::Event(e)) => {
                anyhow::ensure!(e.job_id == job, "event of another job");
                let expected = log.last().map_or(Seq(1), |l| l.seq.next());
                anyhow::ensure!(
                    e.seq == expected,
                    "expected seq {expected}, got {} ({:?})",
                    e.seq,
                    e.kind
                );
                let terminal = e.kind.is_terminal();
                log.push(e);
                if terminal {
                    return Ok(true);
                }
            }
            Incoming::Msg(ServerMsg::Control(Control::Error { code, message, .. })) => {
                anyhow::bail!("{code}: {message}")
            }
            Incoming::Msg(ServerMsg::Control(Control::Subscribed { recovered, .. })) => {
                anyhow::ensure!(recovered, "history must be recoverable here");
            }
            Incoming::Msg(_) => {}
            Incoming::Closed(_) => return Ok(false),
        }
    }
}

async fn subscribe(client: &mut Client, job: JobId, log: &[JobEvent]) -> anyhow::Result<()> {
    let after = log.last().map(|e| e.seq);
    client
        .send(&ClientMsg::Subscribe {
            req: None,
            job_id: job,
            after,
        })
        .await
}

/// The stored log as the server has it, for comparing with what a client collected.
async fn stored_log(gw: &Gateway, job: JobId) -> anyhow::Result<Vec<JobEvent>> {
    gw.api().events(job).await
}

fn assert_one_terminal(log: &[JobEvent]) {
    assert_eq!(
        log.iter().filter(|e| e.kind.is_terminal()).count(),
        1,
        "exactly one terminal event"
    );
    assert!(
        log.last().is_some_and(|e| e.kind.is_terminal()),
        "the terminal event is last"
    );
}

#[tokio::test]
async fn pings_keep_a_silent_stream_alive_through_an_idle_cutting_proxy() -> anyhow::Result<()> {
    // Ping every 300 ms; the proxy cuts connections idle for 450 ms (1.5 intervals). The job
    // lasts 3 intervals and is silent for all but its end.
    let edge = EdgeConfig {
        idle_timeout: Some(Duration::from_millis(450)),
        ..EdgeConfig::scaled(Duration::from_millis(300))
    };
    let gw = Gateway::start_behind(edge.clone(), &["--ping-interval", "300ms"]).await?;
    let proxy = gw.edge()?;
    let mut client = Client::connect(&gw.ws_url(), Codec::MsgPack).await?;
    let job = submit_ws(&mut client, demo(1, 900)).await?;
    subscribe(&mut client, job, &[]).await?;
    let mut log = Vec::new();
    let finished = collect(&mut client, job, &mut log, None).await?;
    assert!(
        finished,
        "the connection must survive until the terminal event"
    );
    assert_eq!(
        proxy.idle_cuts(),
        0,
        "no connection was idle long enough to be cut"
    );
    assert!(
        client.pings >= 2,
        "pings kept the link busy ({} seen)",
        client.pings
    );
    assert_eq!(log, stored_log(&gw, job).await?);
    let kinds: Vec<&str> = log.iter().map(|e| e.kind.name()).collect();
    assert_eq!(
        kinds,
        [
            "queued",
            "started",
            "progress",
            "preview",
            "output",
            "completed"
        ]
    );

    // Control: the same proxy cuts a connection when the gateway pings too rarely, so the
    // assertion above is not vacuous.
    let quiet = Gateway::start_behind(edge, &["--ping-interval", "60s"]).await?;
    let proxy = quiet.edge()?;
    let mut client = Client::connect(&quiet.ws_url(), Codec::MsgPack).await?;
    let job = submit_ws(&mut client, demo(1, 900)).await?;
    subscribe(&mut client, job, &[]).await?;
    let finished = collect(&mut client, job, &mut Vec::new(), None).await?;
    assert!(
        !finished,
        "without pings the proxy must cut the silent connection"
    );
    assert_eq!(proxy.idle_cuts(), 1);
    Ok(())
}

#[tokio::test]
async fn twenty_random_drops_lose_and_duplicate_nothing() -> anyhow::Result<()> {
    for codec in [Codec::MsgPack, Codec::Json] {
        let gw = Gateway::start_behind_edge(&[]).await?;
        let proxy = gw.edge()?;
        let url = gw.ws_url();
        let mut client = Client::connect(&url, codec).await?;
        let job = submit_ws(&mut client, demo(80, 30)).await?;
        let mut log = Vec::new();
        let mut drops = 0;
        let mut rng = rand::rng();
        loop {
            subscribe(&mut client, job, &log).await?;
            let stop = (drops < 20).then(|| Duration::from_millis(rng.random_range(5..90)));
            if collect(&mut client, job, &mut log, stop).await? {
                break;
            }
            // Alternate between a client-side drop and a proxy cut (no close frame at all).
            if drops % 2 == 0 {
                drop(client);
            } else {
                proxy.cut_all();
                drop(client);
            }
            drops += 1;
            client = Client::connect(&url, codec).await?;
        }
        assert!(
            drops >= 20,
            "the job must outlast 20 drops ({codec:?}: {drops})"
        );
        assert_one_terminal(&log);
        assert_eq!(
            log,
            stored_log(&gw, job).await?,
            "{codec:?}: the client holds exactly the stored log"
        );
    }
    Ok(())
}

#[tokio::test]
async fn kill_9_mid_job_reruns_the_demo_job_and_the_stream_continues() -> anyhow::Result<()> {
    let mut gw = Gateway::start_behind_edge(&["--ping-interval", "1s"]).await?;
    let mut client = Client::connect(&gw.ws_url(), Codec::Json).await?;
    let job = submit_ws(&mut client, demo(30, 60)).await?;
    subscribe(&mut client, job, &[]).await?;
    let mut log = Vec::new();
    // Read until some progress arrived, then kill the gateway without warning.
    while !log
        .iter()
        .any(|e: &JobEvent| matches!(e.kind, EventKind::Progress { value: 3.., .. }))
    {
        assert!(
            !collect(&mut client, job, &mut log, Some(Duration::from_millis(50))).await?,
            "finished too early"
        );
    }
    gw.restart().await?;
    // The client reconnects and resumes from its last sequence number.
    let mut client = Client::connect(&gw.ws_url(), Codec::Json).await?;
    subscribe(&mut client, job, &log).await?;
    assert!(collect(&mut client, job, &mut log, None).await?);
    assert_one_terminal(&log);
    assert!(matches!(
        log.last().map(|e| &e.kind),
        Some(EventKind::Completed { .. })
    ));
    // Documented outcome for `demo`: re-queued with a reason, started again as attempt 2.
    assert!(log.iter().any(
        |e| matches!(&e.kind, EventKind::Queued { reason: Some(r), .. } if r.contains("restarted"))
    ));
    assert!(
        log.iter()
            .any(|e| e.kind == EventKind::Started { attempt: 2 })
    );
    assert_eq!(log, stored_log(&gw, job).await?);
    Ok(())
}

#[tokio::test]
async fn exec_jobs_interrupted_by_kill_9_fail_with_a_clear_reason() -> anyhow::Result<()> {
    let mut gw = Gateway::start_behind_edge(&[
        "--exec-command",
        "echo '{\"progress\":1,\"max\":2}'; sleep 30",
    ])
    .await?;
    let job = gw
        .submit(serde_json::json!({"backend": "exec", "workflow": {}}))
        .await?;
    let job: JobId = job.parse()?;
    let mut client = Client::connect(&gw.ws_url(), Codec::Json).await?;
    subscribe(&mut client, job, &[]).await?;
    let mut log = Vec::new();
    while !log
        .iter()
        .any(|e: &JobEvent| matches!(e.kind, EventKind::Progress { .. }))
    {
        assert!(!collect(&mut client, job, &mut log, Some(Duration::from_millis(50))).await?);
    }
    gw.restart().await?;
    let mut client = Client::connect(&gw.ws_url(), Codec::Json).await?;
    subscribe(&mut client, job, &log).await?;
    assert!(collect(&mut client, job, &mut log, None).await?);
    assert_one_terminal(&log);
    match &log.last().map(|e| &e.kind) {
        Some(EventKind::Failed(f)) => {
            assert_eq!(f.code, outlast_protocol::FailureCode::Interrupted);
            assert!(f.message.contains("restarted"), "{}", f.message);
        }
        other => panic!("expected failed, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn same_idempotency_key_is_one_job_over_http_and_websocket() -> anyhow::Result<()> {
    let gw = Gateway::start_behind_edge(&[]).await?;
    let api = gw.api();
    let body = serde_json::json!({"backend": "demo", "workflow": {"steps": 1, "step_ms": 1}, "idempotency_key": "order-17"});
    let first = api.submit(&body).await?;
    let (status, second) = api.try_submit(&body).await?;
    assert_eq!(status, 202);
    let second: Submitted = serde_json::from_value(second)?;
    assert_eq!(first.job_id, second.job_id);
    assert_eq!((first.created, second.created), (true, false));
    // The header form names the same job.
    let third: Submitted = api
        .request(reqwest::Method::POST, "/v1/jobs")
        .header("Idempotency-Key", "order-17")
        .json(&serde_json::json!({"backend": "demo", "workflow": {"steps": 1, "step_ms": 1}}))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(third.job_id, first.job_id);
    // Over the WebSocket too.
    let mut client = Client::connect(&gw.ws_url(), Codec::MsgPack).await?;
    let mut spec = demo(1, 1);
    spec.idempotency_key = Some("order-17".parse()?);
    let id = submit_ws(&mut client, spec).await?;
    assert_eq!(id, first.job_id);
    // The same key with a different job is a conflict, not a silent reuse.
    let (status, body) = api
        .try_submit(&serde_json::json!({"backend": "demo", "workflow": {"steps": 2}, "idempotency_key": "order-17"}))
        .await?;
    assert_eq!(status, 409);
    assert_eq!(body["code"], "idempotency_conflict");
    Ok(())
}

/// Reads SSE events (id, event, data) until `n` events or the end of the stream.
async fn read_sse(
    resp: reqwest::Response,
    n: usize,
) -> anyhow::Result<Vec<(u64, String, serde_json::Value)>> {
    use futures::StreamExt;
    let mut stream = resp.bytes_stream();
    let mut buf = String::new();
    let mut out = Vec::new();
    while out.len() < n {
        let Some(chunk) = tokio::time::timeout(T, stream.next()).await? else {
            break;
        };
        buf.push_str(std::str::from_utf8(&chunk?)?);
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut id, mut event, mut data) = (None, None, None);
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.parse::<u64>()?);
                } else if let Some(v) = line.strip_prefix("event: ") {
                    event = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str(v)?);
                }
            }
            if let (Some(id), Some(event), Some(data)) = (id, event, data) {
                out.push((id, event, data));
            }
        }
    }
    Ok(out)
}

#[tokio::test]
async fn sse_resumes_exactly_from_last_event_id() -> anyhow::Result<()> {
    let gw = Gateway::start_behind_edge(&["--ping-interval", "200ms"]).await?;
    let job = gw
        .submit(serde_json::json!({"backend": "demo", "workflow": {"steps": 6, "step_ms": 40}}))
        .await?;
    let url = format!("{}/v1/jobs/{job}/events", gw.http());
    let http = reqwest::Client::new();
    let resp = http.get(&url).send().await?;
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["cache-control"], "no-cache");
    let first = read_sse(resp, 3).await?;
    assert_eq!(first.iter().map(|e| e.0).collect::<Vec<_>>(), [1, 2, 3]);
    let resp = http.get(&url).header("Last-Event-ID", "3").send().await?;
    let rest = read_sse(resp, usize::MAX).await?;
    let stored = gw.full_log(&job).await?;
    assert_eq!(
        rest.first().map(|e| e.0),
        Some(4),
        "resumes right after Last-Event-ID"
    );
    let all: Vec<serde_json::Value> = first.iter().chain(&rest).map(|e| e.2.clone()).collect();
    assert_eq!(all, stored, "SSE delivered exactly the stored log");
    for (id, event, data) in first.iter().chain(&rest) {
        assert_eq!(data["seq"], *id);
        assert_eq!(data["type"], event.as_str());
    }
    assert_eq!(
        rest.last().map(|e| e.1.as_str()),
        Some("completed"),
        "the stream ends after the terminal event"
    );
    // After the end, a reconnect is told to stop.
    let last = rest.last().map(|e| e.0).unwrap_or_default();
    let resp = http
        .get(&url)
        .header("Last-Event-ID", last.to_string())
        .send()
        .await?;
    assert_eq!(resp.status(), 204);
    // A keep-alive comment arrives while a job is silent.
    let job = gw
        .submit(serde_json::json!({"backend": "demo", "workflow": {"steps": 1, "step_ms": 700}}))
        .await?;
    let resp = http
        .get(format!("{}/v1/jobs/{job}/events", gw.http()))
        .send()
        .await?;
    let mut stream = resp.bytes_stream();
    let mut text = String::new();
    while !text.contains("\n: ping\n") {
        use futures::StreamExt;
        let chunk = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await?
            .expect("stream open")?;
        text.push_str(std::str::from_utf8(&chunk)?);
    }
    Ok(())
}

#[tokio::test]
async fn long_poll_returns_events_after_a_position_and_waits_boundedly() -> anyhow::Result<()> {
    let gw = Gateway::start_behind_edge(&["--long-poll-timeout", "2s"]).await?;
    let job = gw
        .submit(serde_json::json!({"backend": "demo", "workflow": {"steps": 3, "step_ms": 150}}))
        .await?;
    let http = reqwest::Client::new();
    let mut after = 0u64;
    let mut seen = Vec::new();
    loop {
        let v: serde_json::Value = http
            .get(format!("{}/v1/jobs/{job}/poll?after={after}", gw.http()))
            .send()
            .await?
            .json()
            .await?;
        for e in v["events"].as_array().expect("events") {
            assert_eq!(e["seq"], after + 1);
            after += 1;
            seen.push(e.clone());
        }
        assert_eq!(v["next_after"], after);
        if v["done"] == true {
            break;
        }
    }
    assert_eq!(seen, gw.full_log(&job).await?);
    // A poll with nothing new waits no longer than asked.
    let job = gw
        .submit(serde_json::json!({"backend": "demo", "workflow": {"steps": 1, "step_ms": 5000}}))
        .await?;
    let v: serde_json::Value = http
        .get(format!(
            "{}/v1/jobs/{job}/poll?after=2&timeout_ms=100",
            gw.http()
        ))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(v["events"].as_array().map(Vec::len), Some(0));
    assert_eq!(v["done"], false);
    Ok(())
}

#[tokio::test]
async fn a_client_whose_history_was_coalesced_gets_told_and_gets_a_snapshot() -> anyhow::Result<()>
{
    // With at most 16 stored events per job, a 40-step job's old progress events are coalesced.
    let gw = Gateway::start_behind_edge(&["--history-max-events", "16"]).await?;
    let mut client = Client::connect(&gw.ws_url(), Codec::Json).await?;
    let job = submit_ws(&mut client, demo(40, 5)).await?;
    // Follow it live from the start: a live subscriber still sees every event in order.
    subscribe(&mut client, job, &[]).await?;
    let mut live = Vec::new();
    assert!(collect(&mut client, job, &mut live, None).await?);
    assert_eq!(
        live.len(),
        40 + 5,
        "queued, started, 40 progress, preview, output, completed"
    );
    // The long poll from the start cannot replay exactly either: it answers with a snapshot.
    let v = gw.api().poll(job, Seq::ZERO, Duration::ZERO).await?;
    assert!(!v.recovered);
    assert_eq!(
        v.snapshot.map(|s| s.state),
        Some(outlast_protocol::JobState::Completed)
    );
    assert!(v.done);
    // Resuming from an early position cannot be exact: the server says so and sends a snapshot.
    client
        .send(&ClientMsg::Subscribe {
            req: Some(5),
            job_id: job,
            after: Some(Seq(3)),
        })
        .await?;
    match client.next_control(T).await? {
        Some(Control::Subscribed {
            req: Some(5),
            recovered: false,
            snapshot: Some(s),
            ..
        }) => {
            assert_eq!(s.seq, live.last().map(|e| e.seq).unwrap_or_default());
            assert_eq!(s.state, outlast_protocol::JobState::Completed);
            assert_eq!(s.outputs.len(), 1);
            assert_eq!(
                s.progress.as_ref().map(|p| (p.value, p.max)),
                Some((40, 40))
            );
        }
        other => panic!("expected a snapshot, got {other:?}"),
    }
    // Resuming from the newest position is exact (nothing to send).
    let newest = live.last().map(|e| e.seq);
    client
        .send(&ClientMsg::Subscribe {
            req: Some(6),
            job_id: job,
            after: newest,
        })
        .await?;
    assert!(matches!(
        client.next_control(T).await?,
        Some(Control::Subscribed {
            req: Some(6),
            recovered: true,
            snapshot: None,
            ..
        })
    ));
    // SSE clients get the snapshot as the first event.
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/jobs/{job}/events", gw.http()))
        .header("Last-Event-ID", "3")
        .send()
        .await?;
    let events = read_sse(resp, 1).await?;
    assert_eq!(events.first().map(|e| e.1.as_str()), Some("snapshot"));
    Ok(())
}

#[tokio::test]
async fn a_client_that_does_not_read_is_disconnected_and_loses_nothing() -> anyhow::Result<()> {
    use futures::SinkExt;
    // 400 progress events with 16 KiB labels: 6.4 MB, far more than socket buffers hold.
    let script = "pad=$(head -c 16384 /dev/zero | tr '\\0' x); i=0; while [ $i -lt 400 ]; do i=$((i+1)); \
                  printf '{\"progress\":%d,\"max\":400,\"label\":\"%s\"}\\n' $i \"$pad\"; done";
    // Direct, not behind the edge: a proxy in between buffers megabytes in its own sockets, so
    // the gateway would never see this client as slow. This test is about the gateway's writer.
    let gw =
        Gateway::start(&["--slow-consumer-timeout", "300ms", "--exec-command", script]).await?;
    let job = gw.submit(serde_json::json!({"backend": "exec"})).await?;
    let job: JobId = job.parse()?;
    // Wait (long-poll) for the job to finish so its whole history is replayed at once.
    gw.api()
        .wait_for_snapshot(job, T, |s| s.state == outlast_protocol::JobState::Completed)
        .await?;
    // A client with a tiny receive window that subscribes and then does not read.
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(2048)?;
    let stream = socket.connect(gw.addr).await?;
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            gw.ws_url(),
        )?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "outlast.v1.json".parse()?);
    let (ws, _) =
        tokio_tungstenite::client_async(request, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await?;
    let mut slow = Client {
        ws,
        codec: Codec::Json,
        pings: 0,
    };
    slow.ws
        .send(tokio_tungstenite::tungstenite::Message::Text(
            serde_json::to_string(&ClientMsg::Subscribe {
                req: None,
                job_id: job,
                after: None,
            })?
            .into(),
        ))
        .await?;
    // Wait until the gateway gave up on it (its metric says so), without reading.
    gw.wait_for_counter("outlast_ws_slow_consumers_total", T)
        .await?;
    // It now reads what had reached it, sees the connection end, and resumes: nothing is lost.
    let mut log = Vec::new();
    assert!(
        !collect(&mut slow, job, &mut log, None).await?,
        "the connection ended before the terminal event"
    );
    assert!(
        !log.is_empty() && log.len() < 403,
        "a prefix arrived ({} events)",
        log.len()
    );
    let mut client = Client::connect(&gw.ws_url(), Codec::Json).await?;
    subscribe(&mut client, job, &log).await?;
    assert!(collect(&mut client, job, &mut log, None).await?);
    assert_eq!(log, stored_log(&gw, job).await?);
    Ok(())
}
