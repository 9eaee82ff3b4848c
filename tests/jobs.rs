//! Job lifecycle through the real binary: cancel, the exec backend, fair queueing across
//! owners, graceful shutdown, and a start with nothing but the embedded defaults.

use std::time::Duration;

use outlast_e2e::process::{Launch, Process};
use outlast_e2e::ws::{Client, Incoming};
use outlast_e2e::{Api, Gateway};
use outlast_protocol::v1::{ClientMsg, Control};
use outlast_protocol::{Codec, EventKind, FailureCode, JobId, JobSnapshot, JobState};

const T: Duration = Duration::from_secs(20);

/// Polls the snapshot until `done` holds (bounded; long-polls between looks).
async fn wait_for(
    gw: &Gateway,
    job: &str,
    token: Option<&str>,
    done: impl Fn(&JobSnapshot) -> bool,
) -> anyhow::Result<JobSnapshot> {
    let api = match token {
        Some(t) => gw.api().with_token(t),
        None => gw.api(),
    };
    api.wait_for_snapshot(job, T, done).await
}

#[tokio::test]
async fn cancel_queued_and_running_jobs() -> anyhow::Result<()> {
    let gw = Gateway::start(&["--demo-concurrency", "1"]).await?;
    let api = gw.api();
    let running = gw
        .submit(serde_json::json!({"backend": "demo", "workflow": {"steps": 100, "step_ms": 100}}))
        .await?;
    let queued = gw
        .submit(serde_json::json!({"backend": "demo", "workflow": {"steps": 1, "step_ms": 1}}))
        .await?;
    wait_for(&gw, &running, None, |s| s.state == JobState::Running).await?;
    let s = wait_for(&gw, &queued, None, |s| s.position.is_some()).await?;
    assert_eq!(s.position, Some(0));
    for job in [&queued, &running] {
        assert_eq!(api.cancel(job).await?, JobState::Canceled);
    }
    // Canceling again is not an error and changes nothing.
    assert_eq!(api.cancel(&running).await?, JobState::Canceled);
    for job in [&queued, &running] {
        let log = api.events(job).await?;
        let terminal: Vec<&str> = log
            .iter()
            .filter(|e| e.kind.is_terminal())
            .map(|e| e.kind.name())
            .collect();
        assert_eq!(terminal, ["canceled"], "{job}");
    }
    // The canceled running job frees its slot: a new job runs to completion.
    let next = gw
        .submit(serde_json::json!({"backend": "demo", "workflow": {"steps": 1, "step_ms": 1}}))
        .await?;
    wait_for(&gw, &next, None, |s| s.state == JobState::Completed).await?;
    Ok(())
}

#[tokio::test]
async fn exec_backend_runs_a_command_with_inputs_progress_outputs_and_failures()
-> anyhow::Result<()> {
    let script = r#"
        read -r job
        case "$job" in *'"mode":"fail"'*) echo "something broke" >&2; exit 3;; esac
        case "$job" in *'"mode":"hang"'*) sleep 60;; esac
        echo '{"progress":1,"max":2,"label":"half"}'
        echo "not json, ignored"
        echo '{"progress":2,"max":2}'
        printf '%s' "$job" > "$OUTLAST_OUTPUT_DIR/job.json"
        printf 'hello' > "$OUTLAST_OUTPUT_DIR/hello.txt"
    "#;
    let gw = Gateway::start(&[
        "--exec-command",
        script,
        "--exec-timeout",
        "2s",
        "--exec-concurrency",
        "2",
    ])
    .await?;
    let ok = gw
        .submit(serde_json::json!({"backend": "exec", "workflow": {"mode": "ok"}}))
        .await?;
    let s = wait_for(&gw, &ok, None, |s| s.state.is_terminal()).await?;
    assert_eq!(s.state, JobState::Completed, "{s:?}");
    let names: Vec<&str> = s.outputs.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(names, ["hello.txt", "job.json"]);
    let log = gw.api().events(&ok).await?;
    let progress: Vec<(u64, u64)> = log
        .iter()
        .filter_map(|e| match e.kind {
            EventKind::Progress { value, max, .. } => Some((value, max)),
            _ => None,
        })
        .collect();
    assert_eq!(progress, [(1, 2), (2, 2)]);
    let body: serde_json::Value =
        reqwest::get(format!("{}/v1/jobs/{ok}/outputs/job.json", gw.http()))
            .await?
            .json()
            .await?;
    assert_eq!(body["job_id"], ok.as_str());
    assert_eq!(body["workflow"]["mode"], "ok");
    let hello = reqwest::get(format!("{}/v1/jobs/{ok}/outputs/hello.txt", gw.http())).await?;
    assert_eq!(hello.headers()["content-type"], "text/plain; charset=utf-8");
    assert_eq!(hello.text().await?, "hello");

    let fail = gw
        .submit(serde_json::json!({"backend": "exec", "workflow": {"mode": "fail"}}))
        .await?;
    let s = wait_for(&gw, &fail, None, |s| s.state.is_terminal()).await?;
    let err = s.error.expect("failure");
    assert_eq!(err.code, FailureCode::CommandFailed);
    assert_eq!(
        err.detail.as_ref().map(|d| d["exit_status"].clone()),
        Some(serde_json::json!(3))
    );
    assert!(err.detail.as_ref().is_some_and(|d| {
        d["stderr_tail"]
            .as_str()
            .unwrap_or("")
            .contains("something broke")
    }));

    let hang = gw
        .submit(serde_json::json!({"backend": "exec", "workflow": {"mode": "hang"}}))
        .await?;
    let s = wait_for(&gw, &hang, None, |s| s.state.is_terminal()).await?;
    assert_eq!(s.error.map(|e| e.code), Some(FailureCode::Timeout));
    Ok(())
}

#[tokio::test]
async fn canceling_an_exec_job_kills_its_process_group() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let marker = tmp.path().join("still-alive");
    // The job's command starts a grandchild that would touch the marker after 1 s; the probe
    // job waits 1.5 s, so after it the marker exists only if the group survived the cancel.
    let script = format!(
        "read -r job; case \"$job\" in *probe*) sleep 1.5; exit 0;; esac; (sleep 1; touch {}) & wait",
        marker.display()
    );
    let gw = Gateway::start(&["--exec-command", &script]).await?;
    let job = gw
        .submit(serde_json::json!({"backend": "exec", "workflow": {"mode": "victim"}}))
        .await?;
    wait_for(&gw, &job, None, |s| s.state == JobState::Running).await?;
    assert_eq!(gw.api().cancel(&job).await?, JobState::Canceled);
    let probe = gw
        .submit(serde_json::json!({"backend": "exec", "workflow": {"mode": "probe"}}))
        .await?;
    let s = wait_for(&gw, &probe, None, |s| s.state.is_terminal()).await?;
    assert_eq!(s.state, JobState::Completed);
    assert!(
        !marker.exists(),
        "the canceled command's process group was killed"
    );
    Ok(())
}

#[tokio::test]
async fn the_queue_is_fair_across_owners() -> anyhow::Result<()> {
    const A: &str = "alice-secret-0123456789";
    const B: &str = "bob-secret-0123456789";
    let gw = Gateway::start_with_tokens(&[("alice", A), ("bob", B)], &["--demo-concurrency", "1"])
        .await?;
    let submit = |token: &'static str, steps: u32| {
        let api = gw.api().with_token(token);
        async move {
            let body = serde_json::json!({"backend": "demo", "workflow": {"steps": steps, "step_ms": 100}});
            Ok::<String, anyhow::Error>(api.submit(&body).await?.job_id.to_string())
        }
    };
    let first = submit(A, 3).await?;
    wait_for(&gw, &first, Some(A), |s| s.state == JobState::Running).await?;
    let a2 = submit(A, 1).await?;
    let a3 = submit(A, 1).await?;
    let b1 = submit(B, 1).await?;
    // Bob's single job waits behind one of Alice's, not behind all of them.
    let s = wait_for(&gw, &b1, Some(B), |s| s.position == Some(1)).await?;
    assert_eq!(s.position, Some(1));
    assert_eq!(
        wait_for(&gw, &a3, Some(A), |s| s.position == Some(2))
            .await?
            .position,
        Some(2)
    );
    let mut finished = Vec::new();
    for (job, token) in [(&a2, A), (&a3, A), (&b1, B)] {
        let s = wait_for(&gw, job, Some(token), |s| s.state == JobState::Completed).await?;
        finished.push((s.updated_at_ms, job.clone()));
    }
    finished.sort();
    let order: Vec<&String> = finished.iter().map(|(_, j)| j).collect();
    assert_eq!(order, [&a2, &b1, &a3]);
    Ok(())
}

#[tokio::test]
async fn sigterm_tells_clients_to_reconnect_and_a_running_demo_job_resumes_after_restart()
-> anyhow::Result<()> {
    let mut gw = Gateway::start(&["--shutdown-grace", "300ms"]).await?;
    let mut client = Client::connect(&gw.ws_url(), Codec::MsgPack).await?;
    let job = gw
        .submit(serde_json::json!({"backend": "demo", "workflow": {"steps": 20, "step_ms": 100}}))
        .await?;
    let job_id: JobId = job.parse()?;
    wait_for(&gw, &job, None, |s| s.state == JobState::Running).await?;
    client
        .send(&ClientMsg::Subscribe {
            req: None,
            job_id,
            after: None,
        })
        .await?;
    let started = std::time::Instant::now();
    let status = {
        let term = gw.terminate();
        let mut goaway = false;
        let mut close_code = None;
        let read = async {
            loop {
                match client.recv(T).await {
                    Ok(Incoming::Msg(outlast_protocol::v1::ServerMsg::Control(
                        Control::Goaway { .. },
                    ))) => goaway = true,
                    Ok(Incoming::Closed(frame)) => {
                        close_code = frame.map(|f| u16::from(f.code));
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        };
        let (status, ()) = tokio::join!(term, read);
        assert!(goaway, "a goaway message precedes the close");
        assert_eq!(close_code, Some(1012), "close code 1012: service restart");
        status?
    };
    assert!(status.success(), "clean exit: {status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "drained within the grace period"
    );
    gw.restart().await?;
    let s = wait_for(&gw, &job, None, |s| s.state.is_terminal()).await?;
    assert_eq!(s.state, JobState::Completed);
    assert_eq!(s.attempt, 2);
    let log = gw.api().events(&job).await?;
    assert_eq!(outlast_e2e::api::count(&log, "completed"), 1);
    Ok(())
}

#[tokio::test]
async fn starts_with_embedded_defaults_and_no_setup() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut launch = Launch::new(
        "gateway",
        outlast_e2e::binary(),
        dir.path().join("gateway.log"),
    );
    launch.listen_flag = None;
    launch.env_remove = ["OUTLAST_LISTEN", "OUTLAST_DATA_DIR", "OUTLAST_CONFIG"]
        .map(Into::into)
        .to_vec();
    launch.current_dir = Some(dir.path().to_path_buf());
    launch.start_within = T;
    let mut child = Process::start(launch).await?;
    let line = child.first_line();
    assert_eq!(
        line, "outlast: listening on http://127.0.0.1:8080/ (demo page)",
        "port 8080 must be free for this test"
    );
    assert!(
        dir.path()
            .join("outlast-data")
            .join("outlast.redb")
            .exists()
    );
    let page = reqwest::get("http://127.0.0.1:8080/").await?.text().await?;
    assert!(page.contains("Outlast"));
    let v = Api::new("http://127.0.0.1:8080")
        .submit(&serde_json::json!({"backend": "demo", "workflow": {"steps": 1, "step_ms": 1}}))
        .await?;
    assert_eq!(v.state, JobState::Queued);
    let ready = reqwest::get("http://127.0.0.1:8080/readyz").await?;
    assert_eq!(ready.status(), 200);
    let metrics = reqwest::get("http://127.0.0.1:8080/metrics")
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("outlast_jobs_submitted_total"),
        "{metrics}"
    );
    child.kill9().await?;
    // Refuses a public address without auth, naming the key.
    let out = tokio::process::Command::new(outlast_e2e::binary())
        .args(["--listen", "0.0.0.0:0"])
        .current_dir(dir.path())
        .output()
        .await?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`listen`"));
    Ok(())
}

#[tokio::test]
async fn websocket_submission_cancel_and_snapshot() -> anyhow::Result<()> {
    let gw = Gateway::start(&[]).await?;
    let mut c = Client::connect(&gw.ws_url(), Codec::MsgPack).await?;
    c.send(&ClientMsg::Submit {
        req: Some(1),
        job: serde_json::from_value(
            serde_json::json!({"backend": "demo", "workflow": {"steps": 50, "step_ms": 100}}),
        )?,
    })
    .await?;
    let Some(Control::Submitted {
        job_id,
        created: true,
        ..
    }) = c.next_control(T).await?
    else {
        panic!("submitted")
    };
    c.send(&ClientMsg::Subscribe {
        req: Some(2),
        job_id,
        after: None,
    })
    .await?;
    loop {
        if let Some(e) = c.next_event(T).await?
            && matches!(e.kind, EventKind::Progress { .. })
        {
            break;
        }
    }
    c.send(&ClientMsg::Cancel {
        req: Some(3),
        job_id,
    })
    .await?;
    let mut got_result = false;
    let mut got_canceled = false;
    while !(got_result && got_canceled) {
        match c.recv(T).await? {
            Incoming::Msg(outlast_protocol::v1::ServerMsg::Control(Control::CancelResult {
                req: Some(3),
                state,
                ..
            })) => {
                assert_eq!(state, JobState::Canceled);
                got_result = true;
            }
            Incoming::Msg(outlast_protocol::v1::ServerMsg::Event(e)) if e.kind.is_terminal() => {
                assert!(matches!(e.kind, EventKind::Canceled { .. }));
                got_canceled = true;
            }
            Incoming::Closed(_) => panic!("closed"),
            _ => {}
        }
    }
    c.send(&ClientMsg::Get {
        req: Some(4),
        job_id,
    })
    .await?;
    let Some(Control::Snapshot { snapshot, .. }) = c.next_control(T).await? else {
        panic!("snapshot")
    };
    assert_eq!(snapshot.state, JobState::Canceled);
    assert_eq!(
        snapshot.cancel_reason.as_deref(),
        Some("canceled by its owner")
    );
    Ok(())
}

#[tokio::test]
async fn outputs_support_range_etag_and_content_type() -> anyhow::Result<()> {
    let gw = Gateway::start(&[]).await?;
    let job = gw
        .submit(serde_json::json!({"backend": "demo", "workflow": {"steps": 1, "step_ms": 1}}))
        .await?;
    let s = wait_for(&gw, &job, None, |s| s.state == JobState::Completed).await?;
    let info = s.outputs.first().expect("one output").clone();
    let url = format!("{}/v1/jobs/{job}/outputs/{}", gw.http(), info.name);
    let http = reqwest::Client::new();
    let full = http.get(&url).send().await?;
    assert_eq!(full.status(), 200);
    assert_eq!(full.headers()["content-type"], "image/png");
    let etag = full.headers()["etag"].to_str()?.to_owned();
    assert_eq!(etag, format!("\"{}\"", info.sha256));
    let body = full.bytes().await?;
    assert_eq!(body.len() as u64, info.size);
    assert!(body.starts_with(b"\x89PNG\r\n\x1a\n"), "a real PNG");
    let part = http.get(&url).header("Range", "bytes=8-15").send().await?;
    assert_eq!(part.status(), 206);
    assert_eq!(
        part.headers()["content-range"],
        format!("bytes 8-15/{}", info.size).as_str()
    );
    assert_eq!(part.bytes().await?.as_ref(), &body[8..16]);
    let resumed = http
        .get(&url)
        .header("Range", format!("bytes={}-", info.size - 10))
        .send()
        .await?;
    assert_eq!(resumed.bytes().await?.as_ref(), &body[body.len() - 10..]);
    let cached = http.get(&url).header("If-None-Match", &etag).send().await?;
    assert_eq!(cached.status(), 304);
    let missing = http
        .get(format!("{}/v1/jobs/{job}/outputs/nope.png", gw.http()))
        .send()
        .await?;
    assert_eq!(missing.status(), 404);
    let traversal = http
        .get(format!(
            "{}/v1/jobs/{job}/outputs/..%2Foutlast.redb",
            gw.http()
        ))
        .send()
        .await?;
    assert_eq!(traversal.status(), 404);
    Ok(())
}

#[tokio::test]
async fn a_peer_that_never_answers_pings_is_closed_with_4000() -> anyhow::Result<()> {
    let gw = Gateway::start(&["--ping-interval", "200ms", "--pong-timeout", "300ms"]).await?;
    // This client reads nothing (so tungstenite never answers the pings) until the gateway has
    // given up on it, which its metrics report.
    let mut silent = Client::connect(&gw.ws_url(), Codec::Json).await?;
    gw.wait_for_counter("outlast_ws_ping_timeouts_total", T)
        .await?;
    loop {
        match silent.recv(T).await? {
            Incoming::Closed(Some(frame)) => {
                assert_eq!(u16::from(frame.code), 4000);
                break;
            }
            Incoming::Closed(None) => panic!("closed without a close frame"),
            Incoming::Msg(_) => {}
        }
    }
    // A peer that answers pings (by reading) stays connected across many intervals.
    let mut lively = Client::connect(&gw.ws_url(), Codec::Json).await?;
    while lively.pings < 5 {
        match lively.recv(T).await? {
            Incoming::Closed(frame) => panic!("an answering peer was closed: {frame:?}"),
            Incoming::Msg(_) => {}
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_batch_submits_each_job_once_with_its_own_answer() -> anyhow::Result<()> {
    let gw = Gateway::start(&[]).await?;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/jobs/batch", gw.http());
    let body = serde_json::json!({"jobs": [
        {"backend": "demo", "workflow": {"steps": 1, "step_ms": 10}, "idempotency_key": "b-1"},
        {"backend": "nope", "idempotency_key": "b-2"},
        {"backend": "demo", "workflow": {"steps": 2, "step_ms": 10}, "idempotency_key": "b-3"},
        {"backend": "demo", "surprise": true},
    ]});
    let first: serde_json::Value = {
        let r = http.post(&url).json(&body).send().await?;
        assert_eq!(r.status(), 202);
        r.json().await?
    };
    let jobs = first["jobs"].as_array().expect("jobs array");
    assert_eq!(jobs.len(), 4, "one answer per job, in order: {first}");
    assert_eq!(jobs[0]["created"], true);
    assert_eq!(jobs[1]["error"]["code"], "unknown_backend");
    assert_eq!(jobs[2]["created"], true);
    assert_eq!(jobs[3]["error"]["code"], "invalid_request");
    // The same batch again: the same jobs, none created twice.
    let again: serde_json::Value = http.post(&url).json(&body).send().await?.json().await?;
    for i in [0, 2] {
        assert_eq!(again["jobs"][i]["job_id"], jobs[i]["job_id"]);
        assert_eq!(again["jobs"][i]["created"], false);
    }
    let api = gw.api();
    for i in [0, 2] {
        let id: JobId = jobs[i]["job_id"].as_str().expect("id").parse()?;
        let events = api.follow_to_end(id, Duration::from_secs(20)).await?;
        let completed = events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Completed { .. }))
            .count();
        assert_eq!(completed, 1);
    }
    // Empty and oversized batches are refused whole.
    for n in [0usize, 101] {
        let spec = serde_json::json!({"backend": "demo"});
        let r = http
            .post(&url)
            .json(&serde_json::json!({"jobs": vec![spec; n]}))
            .send()
            .await?;
        assert_eq!(r.status(), 400, "{n} jobs");
        let e: serde_json::Value = r.json().await?;
        assert_eq!(e["code"], "invalid_request");
    }
    Ok(())
}

/// `submit_batch` over a real WebSocket, in both codecs: the HTTP batch's semantics (the same
/// gateway code path): one answer per job in order, a resend creates nothing, a bad spec in
/// the middle is refused alone with its own code, an empty or too long batch is refused whole
/// with a typed `error` carrying the `req`, and the connection stays usable.
#[tokio::test]
async fn a_websocket_batch_submits_each_job_once_with_its_own_answer() -> anyhow::Result<()> {
    use outlast_protocol::v1::{BatchAnswer, MAX_BATCH};
    use outlast_protocol::{ErrorBody, ErrorCode};
    let gw = Gateway::start(&[]).await?;
    let api = gw.api();
    for (n, codec) in [Codec::Json, Codec::MsgPack].into_iter().enumerate() {
        let mut c = Client::connect(&gw.ws_url(), codec).await?;
        let spec = |i: usize| {
            serde_json::json!({
                "backend": "demo",
                "workflow": {"steps": 1 + i, "step_ms": 5},
                "idempotency_key": format!("ws-batch-{n}-{i}"),
            })
        };
        let good = [0usize, 1, 3, 4];
        let jobs = vec![
            spec(0),
            spec(1),
            serde_json::json!({"backend": "demo", "surprise": true, "idempotency_key": "x"}),
            spec(3),
            spec(4),
        ];
        let mut first: Vec<BatchAnswer> = Vec::new();
        for (round, req) in [(0, 21u64), (1, 22)] {
            c.send(&ClientMsg::SubmitBatch {
                req: Some(req),
                jobs: jobs.clone(),
            })
            .await?;
            let answers = match c.next_control(T).await? {
                Some(Control::SubmittedBatch { req: r, jobs }) => {
                    assert_eq!(r, Some(req));
                    jobs
                }
                other => panic!("{codec:?}: expected submitted_batch, got {other:?}"),
            };
            assert_eq!(answers.len(), jobs.len(), "{codec:?}: one answer per job");
            for (i, answer) in answers.iter().enumerate() {
                match answer {
                    BatchAnswer::Submitted {
                        job_id, created, ..
                    } => {
                        assert!(
                            good.contains(&i),
                            "{codec:?}: jobs[{i}] accepted: {answer:?}"
                        );
                        // The first round creates every good job, the resend none.
                        assert_eq!(*created, round == 0, "{codec:?} round {round} jobs[{i}]");
                        if let Some(BatchAnswer::Submitted { job_id: was, .. }) = first.get(i) {
                            assert_eq!(job_id, was, "{codec:?}: the same key names the same job");
                        }
                    }
                    BatchAnswer::Refused {
                        error: ErrorBody { code, message },
                    } => {
                        assert_eq!(i, 2, "{codec:?}: only the bad spec is refused: {answer:?}");
                        assert_eq!(*code, ErrorCode::InvalidRequest);
                        assert!(message.contains("jobs[2]"), "{message}");
                    }
                }
            }
            if round == 0 {
                first = answers;
            }
        }
        for answer in &first {
            if let BatchAnswer::Submitted { job_id, .. } = answer {
                let events = api.follow_to_end(*job_id, Duration::from_secs(20)).await?;
                let completed = events
                    .iter()
                    .filter(|e| matches!(e.kind, EventKind::Completed { .. }))
                    .count();
                assert_eq!(completed, 1, "{codec:?}: {job_id} ran once");
            }
        }
        // Empty and too long batches are refused whole, with the request's `req`.
        for (count, req) in [(0usize, 31u64), (MAX_BATCH + 1, 32)] {
            c.send(&ClientMsg::SubmitBatch {
                req: Some(req),
                jobs: vec![spec(9); count],
            })
            .await?;
            match c.next_control(T).await? {
                Some(Control::Error { req: r, code, .. }) => {
                    assert_eq!(
                        (r, code),
                        (Some(req), ErrorCode::InvalidRequest),
                        "{count} jobs"
                    );
                }
                other => panic!("{codec:?}: {count} jobs: expected error, got {other:?}"),
            }
        }
        c.send(&ClientMsg::Ping { nonce: 77 }).await?;
        assert_eq!(c.next_control(T).await?, Some(Control::Pong { nonce: 77 }));
    }
    // Nothing was submitted twice, and the refused batches submitted nothing: 4 jobs per codec.
    let metrics = api.metrics().await?;
    let submitted: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("outlast_jobs_submitted_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(submitted, 8.0, "{metrics}");
    Ok(())
}

/// The progress values of a log, in order.
fn progress_values(log: &[outlast_protocol::JobEvent]) -> Vec<u64> {
    log.iter()
        .filter_map(|e| match e.kind {
            EventKind::Progress { value, .. } => Some(value),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn fast_progress_shares_commits_and_is_all_stored_before_the_terminal_event()
-> anyhow::Result<()> {
    // `step_ms: 0` reports as fast as the job's event queue takes it: far faster than one
    // commit per event. The job ending right after its last progress (a failure at the last
    // step) must not overtake or drop what is still queued.
    const STEPS: u64 = 3000;
    let gw = Gateway::start(&[]).await?;
    let api = gw.api();
    let events_before = api.counter("outlast_events_stored_total").await?;
    let commits_before = api.counter("outlast_store_event_commits_total").await?;
    let failing = gw
        .submit(serde_json::json!({"backend": "demo",
            "workflow": {"steps": STEPS, "step_ms": 0, "fail_at_step": STEPS}}))
        .await?;
    let completing = gw
        .submit(serde_json::json!({"backend": "demo",
            "workflow": {"steps": STEPS, "step_ms": 0}}))
        .await?;
    for (job, last_progress, terminal) in [
        (&failing, STEPS - 1, "failed"),
        (&completing, STEPS, "completed"),
    ] {
        api.follow_to_end(job, T).await?;
        let log = api.events(job).await?;
        let seqs: Vec<u64> = log.iter().map(|e| e.seq.0).collect();
        let want: Vec<u64> = (1..=log.len() as u64).collect();
        assert_eq!(seqs, want, "{job}: one gapless sequence");
        let values = progress_values(&log);
        let want: Vec<u64> = (1..=last_progress).collect();
        assert!(
            values == want,
            "{job}: {} progress events, want 1..={last_progress} in order",
            values.len()
        );
        let ends: Vec<&str> = log
            .iter()
            .filter(|e| e.kind.is_terminal())
            .map(|e| e.kind.name())
            .collect();
        assert_eq!(ends, [terminal], "{job}");
        assert!(
            log.last().is_some_and(|e| e.kind.is_terminal()),
            "{job}: the terminal event is last"
        );
    }
    // The completed job's output and preview came after the progress queued before them.
    let log = api.events(&completing).await?;
    let at = |name: &str| log.iter().position(|e| e.kind.name() == name);
    let (preview, output) = (at("preview"), at("output"));
    assert!(
        preview.is_some() && output.is_some(),
        "a preview and an output"
    );
    let progress_at = |v: u64| {
        log.iter()
            .position(|e| matches!(e.kind, EventKind::Progress { value, .. } if value == v))
    };
    assert!(progress_at(STEPS / 2) < preview && preview < progress_at(STEPS / 2 + 1));
    assert!(progress_at(STEPS) < output);
    // Events queued while a commit was in flight went into the next one together.
    let events = api.counter("outlast_events_stored_total").await? - events_before;
    let commits = api.counter("outlast_store_event_commits_total").await? - commits_before;
    assert!(events >= 2 * STEPS, "{events} events stored");
    assert!(
        commits * 4 <= events,
        "{events} events took {commits} commits: at most one in four expected"
    );
    Ok(())
}
