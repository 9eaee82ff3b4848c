//! Webhooks end to end: the real gateway POSTs signed webhooks to a receiver in this process
//! (an axum server on 127.0.0.1). Signatures are checked three ways: HMAC here, the examples
//! in `examples/webhook-verify/` (Python and Node) and the independent `standardwebhooks`
//! package (PyPI, pinned in tests/clients/requirements.txt; `scripts/test.sh` installs it).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, ensure};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use outlast_e2e::Gateway;
use outlast_protocol::{EventKind, JobState};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::Notify;

const OLD: &str = "whsec_b2xkLXNlY3JldC1vbGQtc2VjcmV0LW9sZC1zZWNyZXQ=";
const NEW: &str = "whsec_bmV3LXNlY3JldC1uZXctc2VjcmV0LW5ldy1zZWNyZXQ=";
const BOB: &str = "whsec_Ym9iLXNlY3JldC1ib2Itc2VjcmV0LWJvYi1zZWNyZXQh";
const WAIT: Duration = Duration::from_secs(30);

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
    answered: u16,
}

#[derive(Default)]
struct ReceiverState {
    /// Statuses to answer next, in order; then `fallback`.
    script: Vec<u16>,
    fallback: u16,
    got: Vec<Received>,
}

/// A webhook receiver on 127.0.0.1 with scripted answers.
struct Receiver {
    url: String,
    state: Arc<(Mutex<ReceiverState>, Notify)>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn record(
    State(state): State<Arc<(Mutex<ReceiverState>, Notify)>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let answered = {
        let mut s = state.0.lock().expect("receiver lock");
        let answered = if s.script.is_empty() {
            s.fallback
        } else {
            s.script.remove(0)
        };
        s.got.push(Received {
            headers,
            body,
            answered,
        });
        answered
    };
    state.1.notify_waiters();
    StatusCode::from_u16(answered).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl Receiver {
    async fn start(script: &[u16], fallback: u16) -> anyhow::Result<Receiver> {
        let state = Arc::new((
            Mutex::new(ReceiverState {
                script: script.to_vec(),
                fallback,
                got: Vec::new(),
            }),
            Notify::new(),
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(record))
            .with_state(Arc::clone(&state));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Receiver {
            url: format!("http://{addr}/hook"),
            state,
            server,
        })
    }

    fn got(&self) -> Vec<Received> {
        self.state.0.lock().expect("receiver lock").got.clone()
    }

    fn set_fallback(&self, status: u16) {
        self.state.0.lock().expect("receiver lock").fallback = status;
    }

    /// Waits (bounded) until `done` holds for what was received.
    async fn wait(
        &self,
        what: &str,
        done: impl Fn(&[Received]) -> bool,
    ) -> anyhow::Result<Vec<Received>> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = self.state.1.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let got = self.got();
            if done(&got) {
                return Ok(got);
            }
            ensure!(
                tokio::time::timeout_at(deadline, notified).await.is_ok(),
                "receiver: timed out waiting for {what}; got {} requests",
                got.len()
            );
        }
    }
}

/// A config file with `[webhooks]` (short schedule, loopback allowed unless `strict`).
fn config(dir: &tempfile::TempDir, extra: &str) -> anyhow::Result<PathBuf> {
    let path = dir.path().join("outlast.toml");
    std::fs::write(&path, extra)?;
    Ok(path)
}

fn webhooks_toml(secrets: &[&str], allow_private: bool) -> String {
    let list: Vec<String> = secrets.iter().map(|s| format!("{s:?}")).collect();
    format!(
        "[webhooks]\nsecrets = [{}]\nschedule = [\"0s\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\"]\ntimeout = \"3s\"\nallow_private = {allow_private}\n",
        list.join(", ")
    )
}

async fn start(
    toml: &str,
    tokens: &[(&str, &str)],
) -> anyhow::Result<(Gateway, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let path = config(&dir, toml)?;
    let path = path.to_string_lossy().into_owned();
    let gw = Gateway::start_with_tokens(tokens, &["--config", &path]).await?;
    Ok((gw, dir))
}

fn demo(url: &str) -> Value {
    json!({"backend": "demo", "workflow": {"steps": 2, "step_ms": 20}, "webhook": {"url": url}})
}

fn header<'a>(r: &'a Received, name: &str) -> &'a str {
    r.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Our own check: one of the space-separated `v1,` signatures is the HMAC under `secret`.
fn signed_by(r: &Received, secret: &str) -> bool {
    use hmac_sha256_check::verify;
    verify(
        secret,
        header(r, "webhook-id"),
        header(r, "webhook-timestamp"),
        &r.body,
        header(r, "webhook-signature"),
    )
}

mod hmac_sha256_check {
    //! HMAC-SHA256 from sha2, for an independent check in Rust.
    use super::*;
    use sha2::Digest;

    pub fn verify(secret: &str, id: &str, ts: &str, body: &[u8], header: &str) -> bool {
        let Some(b64) = secret.strip_prefix("whsec_") else {
            return false;
        };
        let Ok(key) = base64::engine::general_purpose::STANDARD.decode(b64) else {
            return false;
        };
        let mut block = [0u8; 64];
        block[..key.len()].copy_from_slice(&key);
        let mut inner = Sha256::new();
        inner.update(block.map(|b| b ^ 0x36));
        inner.update(format!("{id}.{ts}.").as_bytes());
        inner.update(body);
        let mut outer = Sha256::new();
        outer.update(block.map(|b| b ^ 0x5c));
        outer.update(inner.finalize());
        let want = base64::engine::general_purpose::STANDARD.encode(outer.finalize());
        header
            .split(' ')
            .any(|p| p.strip_prefix("v1,") == Some(want.as_str()))
    }
}

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples/webhook-verify")
}

/// Verifies `r` under each secret alone with the Python example, the `standardwebhooks`
/// package and the Node example.
async fn verify_externally(r: &Received, secrets: &[&str]) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let body = dir.path().join("body");
    std::fs::write(&body, &r.body)?;
    let headers = json!({
        "webhook-id": header(r, "webhook-id"),
        "webhook-timestamp": header(r, "webhook-timestamp"),
        "webhook-signature": header(r, "webhook-signature"),
    })
    .to_string();
    let secrets = serde_json::to_string(secrets)?;
    let script = r#"
import json, sys
sys.path.insert(0, sys.argv[4])
from verify import verify
try:
    import standardwebhooks
except ImportError:
    sys.exit("standardwebhooks is not installed: pip install -r tests/clients/requirements.txt")
body = open(sys.argv[1], "rb").read()
headers = json.loads(sys.argv[2])
for secret in json.loads(sys.argv[3]):
    verify([secret], headers, body)
    standardwebhooks.Webhook(secret).verify(body, headers)
    try:
        standardwebhooks.Webhook("whsec_" + "QUJD" * 8).verify(body, headers)
        sys.exit("a wrong secret verified")
    except standardwebhooks.WebhookVerificationError:
        pass
print("verified")
"#;
    let out = tokio::process::Command::new("python3")
        .args(["-B", "-c", script])
        .arg(&body)
        .arg(&headers)
        .arg(&secrets)
        .arg(examples_dir())
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "python verification failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let node = r#"
const [body, headers, secrets, dir] = process.argv.slice(1);
const { verify } = await import(dir + "/verify.mjs");
const fs = await import("node:fs");
const bytes = fs.readFileSync(body);
for (const s of JSON.parse(secrets)) verify([s], JSON.parse(headers), bytes);
console.log("verified");
"#;
    let out = tokio::process::Command::new("node")
        .args(["--input-type=module", "-e", node])
        .arg(&body)
        .arg(&headers)
        .arg(&secrets)
        .arg(examples_dir())
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "node verification failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// `GET /v1/jobs/{id}/webhooks` as (status, body).
async fn deliveries(gw: &Gateway, token: Option<&str>, job: &str) -> anyhow::Result<(u16, Value)> {
    let mut req = reqwest::Client::new().get(format!("{}/v1/jobs/{job}/webhooks", gw.http()));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await?;
    Ok((r.status().as_u16(), r.json().await?))
}

/// Waits (bounded, polling the listing) until every delivery of `job` has left `pending`.
async fn wait_settled(
    gw: &Gateway,
    token: Option<&str>,
    job: &str,
    count: usize,
) -> anyhow::Result<Vec<Value>> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, v) = deliveries(gw, token, job).await?;
        ensure!(status == 200, "listing answered {status}: {v}");
        let list = v["deliveries"].as_array().cloned().unwrap_or_default();
        if list.len() >= count && list.iter().all(|d| d["status"] != "pending") {
            return Ok(list);
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "deliveries still pending: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_no_secrets(gw: &Gateway, secrets: &[&str]) {
    let log = gw.log_text();
    assert!(!log.is_empty(), "the gateway log is empty");
    for s in secrets {
        let b64 = s.trim_start_matches("whsec_");
        assert!(
            !log.contains(b64),
            "a webhook secret appears in the gateway log"
        );
    }
}

#[tokio::test]
async fn a_completed_job_gets_one_signed_webhook_that_verifies() -> anyhow::Result<()> {
    let receiver = Receiver::start(&[], 200).await?;
    // Two secrets: a rotation in progress; each signs.
    let (gw, _dir) = start(&webhooks_toml(&[OLD, NEW], true), &[]).await?;
    let job = gw.submit(demo(&receiver.url)).await?;
    let log = gw.api().follow_to_end(&job, WAIT).await?;
    let done = log.last().context("events")?;
    assert!(matches!(done.kind, EventKind::Completed { .. }), "{done:?}");
    let list = wait_settled(&gw, None, &job, 1).await?;
    let got = receiver.got();
    assert_eq!(got.len(), 1, "exactly one delivery: {got:?}");
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0]["status"], "delivered");
    assert_eq!(list[0]["attempts"][0]["status"], 200);
    let r = &got[0];
    assert_eq!(
        header(r, "webhook-id"),
        list[0]["id"].as_str().unwrap_or("?")
    );
    assert_eq!(header(r, "content-type"), "application/json");
    assert_eq!(header(r, "webhook-signature").split(' ').count(), 2);
    assert!(
        signed_by(r, OLD) && signed_by(r, NEW),
        "signatures do not verify"
    );
    assert!(!signed_by(r, BOB), "a foreign secret verified");
    verify_externally(r, &[OLD, NEW]).await?;

    let body: Value = serde_json::from_slice(&r.body)?;
    assert_eq!(body["type"], "job.completed");
    assert_eq!(body["data"]["job_id"], job.as_str());
    assert_eq!(body["data"]["seq"], done.seq.0);
    assert_eq!(body["data"]["state"], "completed");
    let outputs = outlast_e2e::api::outputs(&log);
    assert!(!outputs.is_empty(), "the demo job has outputs");
    let sent = body["data"]["outputs"].as_array().context("outputs")?;
    assert_eq!(sent.len(), outputs.len());
    for (o, s) in outputs.iter().zip(sent) {
        assert_eq!(s["sha256"], o.sha256.as_str());
        assert_eq!(s["size"], o.size);
        assert_eq!(s["url"], format!("/v1/jobs/{job}/outputs/{}", o.name));
        let bytes = gw.api().download(&job, &o.name).await?;
        assert_eq!(bytes.len() as u64, o.size);
    }
    assert!(
        r.body.len() < 4096,
        "no output bytes in the body ({} bytes)",
        r.body.len()
    );
    assert_no_secrets(&gw, &[OLD, NEW]);
    Ok(())
}

#[tokio::test]
async fn a_receiver_down_for_the_first_attempts_gets_each_event_once() -> anyhow::Result<()> {
    // 500, 500, 503 with Retry-After-less answers, then the receiver is back.
    let receiver = Receiver::start(&[500, 500, 503, 500], 200).await?;
    let (gw, _dir) = start(&webhooks_toml(&[OLD], true), &[]).await?;
    let done = gw.submit(demo(&receiver.url)).await?;
    let canceled = gw
        .submit(
            json!({"backend": "demo", "workflow": {"steps": 200, "step_ms": 100},
                       "webhook": {"url": receiver.url}}),
        )
        .await?;
    gw.api().cancel(&canceled).await?;
    gw.api().follow_to_end(&done, WAIT).await?;
    let a = wait_settled(&gw, None, &done, 1).await?;
    let b = wait_settled(&gw, None, &canceled, 1).await?;
    let got = receiver.got();
    for (list, kind) in [(&a, "job.completed"), (&b, "job.canceled")] {
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!(list[0]["status"], "delivered", "{list:?}");
        let id = list[0]["id"].as_str().context("id")?;
        let ok: Vec<&Received> = got
            .iter()
            .filter(|r| header(r, "webhook-id") == id && r.answered == 200)
            .collect();
        assert_eq!(ok.len(), 1, "{id} accepted once");
        let body: Value = serde_json::from_slice(&ok[0].body)?;
        assert_eq!(body["type"], kind);
        // Every attempt sent the same body (the receiver may deduplicate by id).
        for r in got.iter().filter(|r| header(r, "webhook-id") == id) {
            assert_eq!(r.body, ok[0].body);
            assert!(signed_by(r, OLD));
        }
    }
    let failed = got.iter().filter(|r| r.answered != 200).count();
    assert_eq!(failed, 4, "the four refusals were retried");
    let attempts: usize = [&a, &b]
        .iter()
        .map(|l| l[0]["attempts"].as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(
        attempts, 6,
        "4 refused + 2 accepted attempts recorded: {a:?} {b:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_delivery_survives_kill_9_between_the_event_and_its_delivery() -> anyhow::Result<()> {
    let receiver = Receiver::start(&[], 500).await?;
    let toml = "[webhooks]\nsecrets = [\"whsec_b2xkLXNlY3JldC1vbGQtc2VjcmV0LW9sZC1zZWNyZXQ=\"]\n\
                schedule = [\"0s\", \"2s\", \"2s\", \"2s\", \"2s\", \"2s\", \"2s\", \"2s\"]\n\
                allow_private = true\n";
    let (mut gw, _dir) = start(toml, &[]).await?;
    let job = gw.submit(demo(&receiver.url)).await?;
    gw.api().follow_to_end(&job, WAIT).await?;
    // The first attempt failed: nothing was delivered before the crash.
    receiver.wait("a first attempt", |g| !g.is_empty()).await?;
    gw.kill9().await?;
    receiver.set_fallback(200);
    gw.restart().await?;
    let list = wait_settled(&gw, None, &job, 1).await?;
    assert_eq!(list[0]["status"], "delivered", "{list:?}");
    let got = receiver.got();
    let ok: Vec<&Received> = got.iter().filter(|r| r.answered == 200).collect();
    assert_eq!(ok.len(), 1, "delivered once after the restart: {got:?}");
    assert!(signed_by(ok[0], OLD));
    let body: Value = serde_json::from_slice(&ok[0].body)?;
    assert_eq!(body["type"], "job.completed");
    assert_eq!(body["data"]["job_id"], job.as_str());
    Ok(())
}

#[tokio::test]
async fn gone_stops_retries_and_resend_sends_the_same_message() -> anyhow::Result<()> {
    let receiver = Receiver::start(&[410], 200).await?;
    let (gw, _dir) = start(&webhooks_toml(&[OLD], true), &[]).await?;
    let job = gw.submit(demo(&receiver.url)).await?;
    gw.api().follow_to_end(&job, WAIT).await?;
    let list = wait_settled(&gw, None, &job, 1).await?;
    assert_eq!(list[0]["status"], "disabled", "{list:?}");
    assert!(list[0].get("next_attempt_at_ms").is_none(), "{list:?}");
    assert_eq!(list[0]["attempts"].as_array().map(Vec::len), Some(1));
    assert_eq!(receiver.got().len(), 1);

    // A resend re-arms it: same id, same body, now accepted.
    let id = list[0]["id"].as_str().context("id")?;
    let r = reqwest::Client::new()
        .post(format!("{}/v1/jobs/{job}/webhooks/{id}/resend", gw.http()))
        .send()
        .await?;
    assert_eq!(r.status(), 202);
    let got = receiver.wait("the resend", |g| g.len() >= 2).await?;
    assert_eq!(header(&got[1], "webhook-id"), id);
    assert_eq!(got[1].body, got[0].body);
    let list = wait_settled(&gw, None, &job, 1).await?;
    assert_eq!(list[0]["status"], "delivered", "{list:?}");
    assert_eq!(list[0]["attempts"].as_array().map(Vec::len), Some(2));
    Ok(())
}

#[tokio::test]
async fn ssrf_targets_are_refused() -> anyhow::Result<()> {
    let receiver = Receiver::start(&[], 200).await?;
    let (gw, _dir) = start(&webhooks_toml(&[OLD], false), &[]).await?;
    let port = receiver.url.rsplit(':').next().unwrap_or("80").to_owned();
    // Addresses are refused at submit with a typed error.
    for url in [
        receiver.url.clone(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.0.0.1/hook".to_owned(),
        "http://[::1]:9/hook".to_owned(),
        "http://2130706433/hook".to_owned(),
        "file:///etc/passwd".to_owned(),
    ] {
        let (status, body) = gw.api().try_submit(&demo(&url)).await?;
        assert_eq!(status, 422, "{url}: {body}");
        assert_eq!(body["code"], "webhook_refused", "{url}: {body}");
    }
    // A name is resolved at delivery; one that resolves to loopback is a refused delivery.
    let job = gw.submit(demo(&format!("http://localhost:{port}"))).await?;
    let log = gw.api().follow_to_end(&job, WAIT).await?;
    assert_eq!(log.last().map(|e| e.kind.is_terminal()), Some(true));
    let list = wait_settled(&gw, None, &job, 1).await?;
    assert_eq!(list[0]["status"], "refused", "{list:?}");
    let error = list[0]["attempts"][0]["error"].as_str().unwrap_or("");
    assert!(error.contains("localhost resolves to"), "{error}");
    assert!(receiver.got().is_empty(), "the receiver was reached");
    assert_no_secrets(&gw, &[OLD]);
    Ok(())
}

#[tokio::test]
async fn webhooks_are_owner_scoped() -> anyhow::Result<()> {
    let receiver = Receiver::start(&[], 200).await?;
    let toml = format!(
        "{}\n[webhooks.owners.bob]\nsecrets = [{BOB:?}]\n\n[webhooks.owners.carol]\nsecrets = [{BOB:?}]\ndefault = {{ url = {:?} }}\n",
        webhooks_toml(&[OLD], true),
        receiver.url
    );
    let tokens = [
        ("alice", "alice-token-0123456789"),
        ("bob", "bob-token-0123456789ab"),
        ("carol", "carol-token-0123456789"),
    ];
    let (gw, _dir) = start(&toml, &tokens).await?;
    let alice = gw.api().with_token(tokens[0].1);
    let job = alice.submit(&demo(&receiver.url)).await?.job_id.to_string();
    alice.follow_to_end(&job, WAIT).await?;
    let list = wait_settled(&gw, Some(tokens[0].1), &job, 1).await?;
    let id = list[0]["id"].as_str().context("id")?.to_owned();

    // Bob sees Alice's job exactly as a job that does not exist.
    let foreign = deliveries(&gw, Some(tokens[1].1), &job).await?;
    let random = deliveries(
        &gw,
        Some(tokens[1].1),
        "job_0123456789abcdef0123456789abcdef",
    )
    .await?;
    assert_eq!(foreign.0, 404);
    assert_eq!(foreign, random);
    let resend = |token: &'static str, job: String| {
        let url = format!("{}/v1/jobs/{job}/webhooks/{id}/resend", gw.http());
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .bearer_auth(token)
                .send()
                .await?;
            anyhow::Ok((r.status().as_u16(), r.json::<Value>().await?))
        }
    };
    let foreign = resend(tokens[1].1, job.clone()).await?;
    let random = resend(tokens[1].1, "job_0123456789abcdef0123456789abcdef".into()).await?;
    assert_eq!(foreign.0, 404);
    assert_eq!(foreign, random);
    assert_eq!(receiver.got().len(), 1, "nothing was re-sent");

    // Each owner's secrets sign its own jobs; Carol's jobs get her default webhook.
    assert!(signed_by(&receiver.got()[0], OLD));
    let carol = gw.api().with_token(tokens[2].1);
    let job = carol
        .submit(&json!({"backend": "demo", "workflow": {"steps": 1, "step_ms": 1}}))
        .await?
        .job_id
        .to_string();
    let snapshot = carol
        .wait_for_snapshot(&job, WAIT, |s| s.state == JobState::Completed)
        .await?;
    assert_eq!(snapshot.state, JobState::Completed);
    let got = receiver
        .wait("carol's default webhook", |g| g.len() >= 2)
        .await?;
    assert!(signed_by(&got[1], BOB) && !signed_by(&got[1], OLD));
    assert_no_secrets(&gw, &[OLD, BOB]);
    Ok(())
}
