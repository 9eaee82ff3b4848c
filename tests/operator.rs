//! The operator's side of the real binary: who may read `/metrics` (the `admin` scope, or a
//! separate address without a token), the operator metrics a job, a stream, an upload and HTTP
//! requests leave behind, and JSON logs in which no secret ever appears.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use outlast_e2e::Gateway;
use outlast_e2e::ws::{Client, Incoming};
use outlast_protocol::v1::{ClientMsg, Control, Secret, ServerMsg};
use outlast_protocol::{Codec, JobId, Seq};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const T: Duration = Duration::from_secs(20);
const ALICE: &str = "alice-static-secret-0123456789";
const KEY1: &str = "k1-signing-key-0123456789-abcdefghijkl";

fn demo_job(steps: u32, step_ms: u64) -> Value {
    json!({"backend": "demo", "workflow": {"steps": steps, "step_ms": step_ms}})
}

/// `outlast --jwt-key k1=KEY1 token ...`: a signed token minted by the real binary.
fn mint(owner: &str, ttl: &str, scopes: &[&str]) -> anyhow::Result<String> {
    let mut cmd = std::process::Command::new(outlast_e2e::binary());
    cmd.args([
        "--jwt-key",
        &format!("k1={KEY1}"),
        "token",
        "--owner",
        owner,
    ])
    .args(["--ttl", ttl])
    .env_remove("OUTLAST_CONFIG")
    .env_remove("OUTLAST_JWT_KEYS");
    for s in scopes {
        cmd.args(["--scope", s]);
    }
    let dir = tempfile::tempdir()?;
    let out = cmd.current_dir(dir.path()).output()?;
    anyhow::ensure!(
        out.status.success(),
        "outlast token: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// The value of the series `name{labels...}` (every given `key="value"` present), summed over
/// the other labels; `None` when no such series is exported.
fn series(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((head, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, rest) = head.split_once('{').unwrap_or((head, ""));
        if metric != name
            || !labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        {
            continue;
        }
        if let Ok(v) = value.parse::<f64>() {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

async fn status_of(r: reqwest::RequestBuilder) -> anyhow::Result<u16> {
    Ok(r.send().await?.status().as_u16())
}

#[tokio::test]
async fn metrics_on_the_main_address_need_the_admin_scope() -> anyhow::Result<()> {
    let gw = Gateway::start(&[
        "--token",
        &format!("alice={ALICE}"),
        "--jwt-key",
        &format!("k1={KEY1}"),
    ])
    .await?;
    let http = reqwest::Client::new();
    let url = format!("{}/metrics", gw.http());
    assert_eq!(status_of(http.get(&url)).await?, 401, "no credential");
    let reader = mint("alice", "1h", &["read", "submit", "upload"])?;
    assert_eq!(
        status_of(http.get(&url).bearer_auth(&reader)).await?,
        403,
        "a token without admin"
    );
    let admin = mint("ops", "1h", &["admin"])?;
    let text = gw.api().with_token(&admin).metrics().await?;
    // The refusals above were counted by route template and status.
    assert_eq!(
        series(
            &text,
            "outlast_http_requests_total",
            &[("route", "/metrics"), ("status", "401")]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        series(
            &text,
            "outlast_http_requests_total",
            &[("route", "/metrics"), ("status", "403")]
        ),
        Some(1.0),
        "{text}"
    );
    // Static tokens carry every scope, admin included.
    gw.api().with_token(ALICE).metrics().await?;
    // A ticket is a browser's credential for one connection, never for metrics scraping.
    Ok(())
}

/// The URL the gateway logged for its separate metrics address.
fn metrics_url(log: &str) -> Option<String> {
    let line = log.lines().find(|l| l.contains("metrics listening"))?;
    let at = line.find("http://")?;
    let url: String = line[at..]
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"')
        .collect();
    Some(url)
}

#[tokio::test]
async fn a_separate_metrics_address_serves_metrics_without_a_token() -> anyhow::Result<()> {
    let gw = Gateway::start(&[
        "--token",
        &format!("alice={ALICE}"),
        "--metrics-listen",
        "127.0.0.1:0",
    ])
    .await?;
    let url = metrics_url(&gw.log_text()).context("no `metrics listening` line in the log")?;
    assert_ne!(url, format!("{}/metrics", gw.http()));
    let http = reqwest::Client::new();
    assert_eq!(
        status_of(http.get(format!("{}/healthz", gw.http()))).await?,
        200
    );
    let r = http.get(&url).send().await?;
    assert_eq!(r.status(), 200, "no token on the metrics address");
    let text = r.text().await?;
    assert_eq!(
        series(
            &text,
            "outlast_http_requests_total",
            &[("route", "/healthz"), ("status", "200")]
        ),
        Some(1.0),
        "{text}"
    );
    // The main address no longer serves it, whatever the credential.
    let main = format!("{}/metrics", gw.http());
    assert_eq!(status_of(http.get(&main).bearer_auth(ALICE)).await?, 404);
    Ok(())
}

/// An exec command that fails at once (`command_failed`), or outlives the 1 s time limit
/// (`timeout`) when the workflow says `slow`.
const EXEC: &str = r#"read -r line; case "$line" in *slow*) sleep 10;; *) exit 3;; esac"#;

/// Creates a tus upload of `data` and sends it in one PATCH; returns the upload's URL.
pub async fn tus_upload(base: &str, data: Vec<u8>, token: Option<&str>) -> anyhow::Result<String> {
    let http = reqwest::Client::new();
    let auth = |r: reqwest::RequestBuilder| match token {
        Some(t) => r.bearer_auth(t),
        None => r,
    };
    let r = auth(http.post(format!("{base}/v1/uploads")))
        .header("tus-resumable", "1.0.0")
        .header("upload-length", data.len().to_string())
        .send()
        .await?;
    anyhow::ensure!(r.status() == 201, "creation answered {}", r.status());
    let location = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .context("location")?
        .to_owned();
    let url = if location.starts_with("http") {
        location
    } else {
        format!("{base}{location}")
    };
    let len = data.len();
    let r = auth(http.patch(&url))
        .header("tus-resumable", "1.0.0")
        .header("upload-offset", "0")
        .header("content-type", "application/offset+octet-stream")
        .body(data)
        .send()
        .await?;
    anyhow::ensure!(r.status() == 204, "PATCH answered {}", r.status());
    let offset = r
        .headers()
        .get("upload-offset")
        .and_then(|v| v.to_str().ok());
    anyhow::ensure!(offset == Some(&len.to_string()), "offset {offset:?}");
    Ok(url)
}

#[tokio::test]
async fn operator_metrics_follow_jobs_streams_uploads_and_requests() -> anyhow::Result<()> {
    let gw = Gateway::start(&["--exec-command", EXEC, "--exec-timeout", "1s"]).await?;
    let api = gw.api();
    let http = reqwest::Client::new();

    // A demo job followed over the WebSocket from the start.
    let demo = api.submit(&demo_job(3, 20)).await?.job_id;
    let mut ws = Client::connect(&gw.ws_url(), Codec::Json).await?;
    ws.send(&ClientMsg::Subscribe {
        req: Some(1),
        job_id: demo,
        after: None,
    })
    .await?;
    let mut over_ws = Vec::new();
    while let Some(e) = ws.next_event(T).await? {
        let end = e.kind.is_terminal();
        over_ws.push(e);
        if end {
            break;
        }
    }
    let demo_log = api.events(demo).await?;
    assert_eq!(
        over_ws, demo_log,
        "the WebSocket delivered the whole stream"
    );
    ws.ws.close(None).await?;
    drop(ws);
    // The same stream over SSE and long-poll.
    let sse = http
        .get(format!("{}/v1/jobs/{demo}/events", gw.http()))
        .send()
        .await?;
    assert_eq!(sse.status(), 200);
    let body = tokio::time::timeout(T, sse.text()).await??;
    assert!(body.contains("event: completed"), "{body}");
    api.poll(demo, Seq(0), Duration::ZERO).await?;

    // Two exec jobs: one fails, one runs into the time limit.
    let failing = api
        .submit(&json!({"backend": "exec", "workflow": {"mode": "fail"}}))
        .await?
        .job_id;
    let slow = api
        .submit(&json!({"backend": "exec", "workflow": {"mode": "slow"}}))
        .await?
        .job_id;
    let failing_log = api.follow_to_end(failing, T).await?;
    let slow_log = api.follow_to_end(slow, T).await?;
    // An upload over tus, and a request no route matches.
    tus_upload(&gw.http(), vec![7u8; 100_000], None).await?;
    assert_eq!(
        status_of(http.get(format!("{}/no/such/{}", gw.http(), JobId::random()))).await?,
        404
    );

    // Gauges settle once the session is gone; poll for that instead of sleeping.
    api.wait_for_metric(T, |l| l == "outlast_ws_connections 0")
        .await?;
    let text = api.metrics().await?;
    let m = |name: &str, labels: &[(&str, &str)]| series(&text, name, labels);
    let inf = ("le", "+Inf");
    let demo_b = ("backend", "demo");
    assert_eq!(
        m("outlast_job_queue_wait_seconds_count", &[demo_b]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        m("outlast_job_queue_wait_seconds_bucket", &[demo_b, inf]),
        Some(1.0)
    );
    assert_eq!(
        m("outlast_job_duration_seconds_bucket", &[demo_b, inf]),
        Some(1.0)
    );
    assert_eq!(
        m(
            "outlast_job_queue_wait_seconds_count",
            &[("backend", "exec")]
        ),
        Some(2.0)
    );
    assert_eq!(
        m("outlast_jobs_failed_total", &[("code", "timeout")]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        m("outlast_jobs_failed_total", &[("code", "command_failed")]),
        Some(1.0)
    );
    // Every stored event counted once: the three histories exactly.
    let stored = demo_log.len() + failing_log.len() + slow_log.len();
    assert_eq!(
        m("outlast_events_stored_total", &[]),
        Some(stored as f64),
        "{text}"
    );
    assert_eq!(
        m("outlast_events_sent_total", &[("transport", "ws")]),
        Some(demo_log.len() as f64),
        "{text}"
    );
    assert_eq!(
        m("outlast_events_sent_total", &[("transport", "sse")]),
        Some(demo_log.len() as f64)
    );
    assert!(
        m("outlast_events_sent_total", &[("transport", "poll")]) >= Some(demo_log.len() as f64)
    );
    assert_eq!(m("outlast_ws_connections_total", &[]), Some(1.0));
    assert_eq!(
        m("outlast_upload_bytes_total", &[("transport", "tus")]),
        Some(100_000.0)
    );
    // HTTP by route template and status, with latency.
    let post_jobs = [("route", "/v1/jobs"), ("method", "POST")];
    assert_eq!(
        m(
            "outlast_http_requests_total",
            &[post_jobs[0], post_jobs[1], ("status", "202")]
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        m(
            "outlast_http_request_duration_seconds_bucket",
            &[post_jobs[0], post_jobs[1], inf]
        ),
        Some(3.0)
    );
    assert!(
        m(
            "outlast_http_requests_total",
            &[("route", "/v1/jobs/{id}/poll")]
        ) >= Some(2.0)
    );
    assert_eq!(
        m(
            "outlast_http_requests_total",
            &[
                ("route", "/v1/uploads/{id}"),
                ("method", "PATCH"),
                ("status", "204")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        m(
            "outlast_http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ),
        Some(1.0)
    );
    // Never a raw path (ids would make a series per job).
    for id in [demo, failing, slow] {
        assert!(
            !text.contains(&id.to_string()),
            "a job id in a label:\n{text}"
        );
    }
    assert!(
        !text.contains("upl_") && !text.contains("/no/such"),
        "a raw path in a label:\n{text}"
    );
    Ok(())
}

/// A webhook receiver on 127.0.0.1 that answers 200 and counts what it got.
async fn receiver() -> anyhow::Result<(String, Arc<AtomicUsize>)> {
    let got = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&got);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let count = Arc::clone(&count);
            async move {
                count.fetch_add(1, Ordering::SeqCst);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok((url, got))
}

async fn ticket(gw: &Gateway, token: &str) -> anyhow::Result<String> {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/tickets", gw.http()))
        .bearer_auth(token)
        .send()
        .await?;
    anyhow::ensure!(r.status() == 201, "ticket answered {}", r.status());
    let v: Value = r.json().await?;
    Ok(v["ticket"].as_str().context("ticket")?.to_owned())
}

fn write(dir: &Path, name: &str, text: &str) -> anyhow::Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, text)?;
    Ok(path.display().to_string())
}

#[tokio::test]
async fn json_logs_at_debug_level_carry_no_secret() -> anyhow::Result<()> {
    // 32 bytes of key material after `whsec_`.
    let webhook_secret = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    let dir = tempfile::tempdir()?;
    let config = write(
        dir.path(),
        "outlast.toml",
        &format!(
            "[webhooks]\nallow_private = true\nschedule = [\"0s\", \"200ms\"]\n\
             [webhooks.owners.alice]\nsecrets = [\"{webhook_secret}\"]\n"
        ),
    )?;
    let gw = Gateway::start_env(
        &[
            "--config",
            &config,
            "--log-format",
            "json",
            "--token",
            &format!("alice={ALICE}"),
            "--jwt-key",
            &format!("k1={KEY1}"),
        ],
        &[("OUTLAST_LOG", "debug")],
    )
    .await?;
    let http = reqwest::Client::new();
    let jwt = mint("alice", "1h", &[])?;
    let mut secrets = vec![
        ALICE.to_owned(),
        KEY1.to_owned(),
        jwt.clone(),
        webhook_secret.to_owned(),
        webhook_secret["whsec_".len()..].to_owned(),
    ];

    // A signed webhook delivered for a job submitted with the static token.
    let (hook, got) = receiver().await?;
    let mut spec = demo_job(2, 10);
    spec["webhook"] = json!({"url": hook});
    let job = gw.api().with_token(ALICE).submit(&spec).await?.job_id;
    gw.api().with_token(&jwt).follow_to_end(job, T).await?;
    let deadline = tokio::time::Instant::now() + T;
    while got.load(Ordering::SeqCst) == 0 {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no webhook arrived");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Tickets in `?ticket=` on SSE and long-poll.
    for path in ["events", "poll?timeout_ms=0"] {
        let t = ticket(&gw, &jwt).await?;
        secrets.push(t.clone());
        let sep = if path.contains('?') { '&' } else { '?' };
        let r = http
            .get(format!("{}/v1/jobs/{job}/{path}{sep}ticket={t}", gw.http()))
            .send()
            .await?;
        assert_eq!(r.status(), 200, "{path}");
        r.bytes().await?;
    }
    // A long-lived token in `?access_token=` is refused (and not logged).
    let r = http
        .get(format!("{}/v1/jobs/{job}?access_token={jwt}", gw.http()))
        .send()
        .await?;
    assert_eq!(r.status(), 401);
    // A ticket in the WebSocket's subprotocol list, then an in-band refresh.
    let t = ticket(&gw, ALICE).await?;
    secrets.push(t.clone());
    let mut request = gw.ws_url().into_client_request()?;
    request.headers_mut().insert(
        "sec-websocket-protocol",
        format!("outlast.v1.json, outlast.ticket.{t}").parse()?,
    );
    let (socket, _) = tokio_tungstenite::connect_async(request).await?;
    let mut c = Client {
        ws: socket,
        codec: Codec::Json,
        pings: 0,
    };
    let fresh = mint("alice", "2h", &[])?;
    secrets.push(fresh.clone());
    c.send(&ClientMsg::Refresh {
        req: Some(1),
        token: Secret(fresh),
    })
    .await?;
    let deadline = tokio::time::Instant::now() + T;
    loop {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no refreshed");
        match c.recv(T).await? {
            Incoming::Msg(ServerMsg::Control(Control::Refreshed { .. })) => break,
            Incoming::Msg(_) => {}
            Incoming::Closed(f) => anyhow::bail!("closed: {f:?}"),
        }
    }
    // A wrong bearer on the WebSocket.
    let mut bad = gw.ws_url().into_client_request()?;
    bad.headers_mut().insert(
        "authorization",
        "Bearer not-a-real-secret-but-secret".parse()?,
    );
    assert!(tokio_tungstenite::connect_async(bad).await.is_err());
    secrets.push("not-a-real-secret-but-secret".to_owned());
    c.ws.close(None).await?;
    while c.ws.next().await.is_some() {}

    // Shut down so everything is written, then read every line.
    let mut gw = gw;
    gw.terminate().await?;
    let log = gw.log_text();
    let mut debug_lines = 0;
    for line in log.lines() {
        let v: Value = serde_json::from_str(line)
            .with_context(|| format!("a log line is not JSON: {line:?}"))?;
        anyhow::ensure!(
            v.get("timestamp").is_some() && v.get("level").is_some() && v.get("fields").is_some(),
            "a log line without timestamp, level and fields: {line}"
        );
        debug_lines += usize::from(v["level"] == "DEBUG");
    }
    assert!(debug_lines > 5, "debug logging was on:\n{log}");
    for secret in &secrets {
        // A JWT cut at a dot must not appear either: check its signature part alone too.
        for piece in std::iter::once(secret.as_str()).chain(secret.rsplit('.').next()) {
            let hits: Vec<&str> = log.lines().filter(|l| l.contains(piece)).collect();
            assert!(
                hits.is_empty(),
                "a secret ({:.8}...) is in the log:\n{}",
                piece,
                hits.join("\n")
            );
        }
    }
    Ok(())
}
