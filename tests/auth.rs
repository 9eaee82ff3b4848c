//! Who may do what, against the real binary: Host and Origin checks and CORS by default, JSON-only
//! submissions, signed tokens (valid, expired, wrong key, unknown kid, scopes, backends),
//! tickets (single use, expiry, the WebSocket subprotocol), in-band refresh past a token's
//! expiry, other owners' resources answered exactly like missing ones for every credential
//! kind, and no secret in any log line.

use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use outlast_e2e::Gateway;
use outlast_e2e::ws::{Client, Incoming};
use outlast_protocol::v1::{ClientMsg, Control, Secret, ServerMsg};
use outlast_protocol::{Codec, ErrorCode, JobId, UploadId};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const T: Duration = Duration::from_secs(10);
const ALICE: &str = "alice-static-secret-0123456789";
const BOB: &str = "bob-static-secret-0123456789";
const KEY1: &str = "k1-signing-key-k1-signing-key-k1-signing-key";
const KEY2: &str = "k2-signing-key-k2-signing-key-k2-signing-key";

fn demo_job(steps: u32, step_ms: u64) -> Value {
    json!({"backend": "demo", "workflow": {"steps": steps, "step_ms": step_ms}})
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// HMAC-SHA256 (RFC 2104), for signing test tokens independently of the gateway's crate.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let inner = Sha256::new()
        .chain_update(k.map(|b| b ^ 0x36))
        .chain_update(msg)
        .finalize();
    Sha256::new()
        .chain_update(k.map(|b| b ^ 0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// An HS256 JWT with these claims, signed with `key` under `kid`.
fn jwt(claims: &Value, kid: Option<&str>, key: &str) -> String {
    let mut header = json!({"alg": "HS256", "typ": "JWT"});
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = hmac_sha256(key.as_bytes(), signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig))
}

/// A token for `sub` valid `secs` more seconds (negative: expired), signed with `k1`.
fn token_for(sub: &str, secs: i64, extra: Value) -> String {
    let mut claims = json!({"sub": sub, "exp": (now_s() as i64 + secs).max(1)});
    if let Value::Object(m) = extra {
        for (k, v) in m {
            claims[k] = v;
        }
    }
    jwt(&claims, Some("k1"), KEY1)
}

/// `outlast <global> token <args>`: the minting subcommand of the real binary.
fn mint_cli(global: &[&str], args: &[&str]) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    let out = std::process::Command::new(outlast_e2e::binary())
        .args(global)
        .arg("token")
        .args(args)
        .env_remove("OUTLAST_CONFIG")
        .env_remove("OUTLAST_JWT_KEYS")
        .current_dir(dir.path())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "outlast token failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

/// The typed error body of a response.
async fn code_of(r: reqwest::Response) -> anyhow::Result<(u16, String, String)> {
    let status = r.status().as_u16();
    let v: Value = r.json().await.context("a JSON error body")?;
    Ok((
        status,
        v["code"].as_str().unwrap_or("").to_owned(),
        v["message"].as_str().unwrap_or("").to_owned(),
    ))
}

/// A WebSocket handshake with extra headers: the client after its `welcome`, or the refusal.
async fn ws_connect(
    gw: &Gateway,
    headers: &[(&str, &str)],
) -> Result<(Client, Option<String>), tungstenite::Error> {
    let mut request = gw.ws_url().into_client_request()?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "outlast.v1.json".parse().expect("header"),
    );
    for (k, v) in headers {
        request.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            v.parse().expect("value"),
        );
    }
    let (ws, response) = tokio_tungstenite::connect_async(request).await?;
    let protocol = response
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut client = Client {
        ws,
        codec: Codec::Json,
        pings: 0,
    };
    match client.recv(T).await {
        Ok(Incoming::Msg(ServerMsg::Control(Control::Welcome { .. }))) => Ok((client, protocol)),
        other => panic!("expected welcome, got {other:?}"),
    }
}

/// The HTTP status and typed code of a refused handshake.
fn refusal(e: tungstenite::Error) -> (u16, String) {
    match e {
        tungstenite::Error::Http(r) => {
            let body: Value = r
                .body()
                .as_deref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            (
                r.status().as_u16(),
                body["code"].as_str().unwrap_or("").to_owned(),
            )
        }
        other => panic!("expected an HTTP refusal, got {other:?}"),
    }
}

/// The next control message that is not a heartbeat.
async fn control(c: &mut Client) -> anyhow::Result<Control> {
    loop {
        match c.next_control(T).await? {
            Some(Control::Heartbeat { .. }) => continue,
            Some(other) => return Ok(other),
            None => anyhow::bail!("connection closed"),
        }
    }
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

#[tokio::test]
async fn foreign_host_and_origin_are_refused_by_default() -> anyhow::Result<()> {
    let gw = Gateway::start(&[]).await?;
    let http = reqwest::Client::new();
    let port = gw.addr.port();
    let missing = format!("{}/v1/jobs/{}", gw.http(), JobId::random());
    // DNS rebinding: a foreign name resolving to the loopback gateway is refused, typed.
    for host in ["evil.example".to_owned(), format!("evil.example:{port}")] {
        let r = http.get(&missing).header("host", &host).send().await?;
        let (status, code, _) = code_of(r).await?;
        assert_eq!((status, code.as_str()), (403, "forbidden"), "{host}");
    }
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "app.localhost".to_owned(),
    ] {
        let r = http.get(&missing).header("host", &host).send().await?;
        assert_eq!(r.status(), 404, "{host} is loopback and served");
    }
    let r = http
        .get(format!("{}/healthz", gw.http()))
        .header("host", "10.1.2.3")
        .send()
        .await?;
    assert_eq!(r.status(), 200, "health checks answer any Host");

    // State-changing requests: a foreign Origin is refused; the gateway's own or none is fine.
    let post = |origin: Option<String>| {
        let mut r = http
            .post(format!("{}/v1/jobs", gw.http()))
            .json(&demo_job(1, 1));
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        r.send()
    };
    for origin in [
        "http://evil.example",
        "null",
        &format!("http://localhost:{port}"),
    ] {
        let (status, code, _) = code_of(post(Some(origin.to_owned())).await?).await?;
        assert_eq!((status, code.as_str()), (403, "forbidden"), "{origin}");
    }
    assert_eq!(
        post(Some(format!("http://127.0.0.1:{port}")))
            .await?
            .status(),
        202
    );
    assert_eq!(post(None).await?.status(), 202);
    let del = http
        .delete(&missing)
        .header("origin", "http://evil.example")
        .send()
        .await?;
    assert_eq!(del.status(), 403, "DELETE from a foreign Origin");

    // WebSocket upgrades: a foreign Origin is refused before the upgrade.
    let e = ws_connect(&gw, &[("origin", "http://evil.example")])
        .await
        .err()
        .context("a foreign-origin upgrade must fail")?;
    assert_eq!(refusal(e), (403, "forbidden".to_owned()));
    ws_connect(&gw, &[("origin", &format!("http://127.0.0.1:{port}"))]).await?;
    ws_connect(&gw, &[]).await?;
    Ok(())
}

#[tokio::test]
async fn listed_hosts_and_origins_are_served() -> anyhow::Result<()> {
    let gw = Gateway::start(&[
        "--allowed-host",
        "gw.example",
        "--ws-origin",
        "https://app.example",
    ])
    .await?;
    let http = reqwest::Client::new();
    let missing = format!("{}/v1/jobs/{}", gw.http(), JobId::random());
    let r = http
        .get(&missing)
        .header("host", "GW.example")
        .send()
        .await?;
    assert_eq!(r.status(), 404, "a listed Host is served");
    let r = http
        .get(&missing)
        .header("host", "other.example")
        .send()
        .await?;
    assert_eq!(r.status(), 403);
    ws_connect(&gw, &[("origin", "https://app.example")]).await?;
    let e = ws_connect(&gw, &[("origin", "https://app.example:8443")])
        .await
        .err()
        .context("another port is another origin")?;
    assert_eq!(refusal(e).0, 403);
    // ws.allowed_origins is for upgrades only: its POSTs need cors.allowed_origins.
    let r = http
        .post(format!("{}/v1/jobs", gw.http()))
        .header("origin", "https://app.example")
        .json(&demo_job(1, 1))
        .send()
        .await?;
    assert_eq!(r.status(), 403);
    Ok(())
}

#[tokio::test]
async fn submissions_must_be_json() -> anyhow::Result<()> {
    let gw = Gateway::start(&[]).await?;
    let http = reqwest::Client::new();
    let single = demo_job(1, 1).to_string();
    let batch = json!({"jobs": [demo_job(1, 1)]}).to_string();
    for (path, body) in [("/v1/jobs", &single), ("/v1/jobs/batch", &batch)] {
        for ct in [
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            None,
        ] {
            let mut r = http.post(format!("{}{path}", gw.http())).body(body.clone());
            if let Some(ct) = ct {
                r = r.header("content-type", ct);
            }
            let (status, code, _) = code_of(r.send().await?).await?;
            assert_eq!(
                (status, code.as_str()),
                (415, "unsupported_media_type"),
                "{path} {ct:?}"
            );
        }
        let r = http
            .post(format!("{}{path}", gw.http()))
            .header("content-type", "Application/JSON; charset=utf-8")
            .body(body.clone())
            .send()
            .await?;
        assert_eq!(r.status(), 202, "{path} as JSON");
    }
    Ok(())
}

#[tokio::test]
async fn cors_is_off_by_default_and_on_for_listed_origins() -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let preflight = |base: String, origin: &'static str| {
        http.request(reqwest::Method::OPTIONS, format!("{base}/v1/jobs"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type, authorization",
            )
            .send()
    };
    let off = Gateway::start(&[]).await?;
    let r = preflight(off.http(), "https://app.example").await?;
    assert!(
        !r.headers().contains_key("access-control-allow-origin"),
        "CORS off: {:?}",
        r.headers()
    );
    let r = http
        .get(format!("{}/v1/jobs/{}", off.http(), JobId::random()))
        .header("origin", "https://app.example")
        .send()
        .await?;
    assert!(!r.headers().contains_key("access-control-allow-origin"));

    let on = Gateway::start(&["--cors-origin", "https://app.example"]).await?;
    let r = preflight(on.http(), "https://app.example").await?;
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let r = http
        .post(format!("{}/v1/jobs", on.http()))
        .header("origin", "https://app.example")
        .json(&demo_job(1, 1))
        .send()
        .await?;
    assert_eq!(r.status(), 202);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let r = preflight(on.http(), "https://other.example").await?;
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    let r = http
        .post(format!("{}/v1/jobs", on.http()))
        .header("origin", "https://other.example")
        .json(&demo_job(1, 1))
        .send()
        .await?;
    assert_eq!(r.status(), 403, "an unlisted origin stays refused");
    Ok(())
}

#[tokio::test]
async fn signed_tokens_are_verified_and_scoped() -> anyhow::Result<()> {
    let k1 = format!("k1={KEY1}");
    let k2 = format!("k2={KEY2}");
    let gw = Gateway::start(&[
        "--token",
        &format!("alice={ALICE}"),
        "--jwt-key",
        &k1,
        "--jwt-key",
        &k2,
    ])
    .await?;
    let http = reqwest::Client::new();
    let submit = |auth: String| {
        http.post(format!("{}/v1/jobs", gw.http()))
            .header("authorization", auth)
            .json(&demo_job(1, 1))
            .send()
    };
    // Minted by the binary, with either key of the rotation; `Bearer` in any case.
    let minted = mint_cli(&["--jwt-key", &k1], &["--owner", "carol", "--ttl", "1h"])?;
    let minted2 = mint_cli(
        &["--jwt-key", &k1, "--jwt-key", &k2],
        &["--owner", "carol", "--ttl", "1h", "--kid", "k2"],
    )?;
    for auth in [
        format!("Bearer {minted}"),
        format!("bearer {minted2}"),
        format!("BEARER {ALICE}"),
    ] {
        assert_eq!(submit(auth.clone()).await?.status(), 202, "{auth:.12}");
    }
    let job: Value = submit(format!("Bearer {minted}")).await?.json().await?;
    let job = job["job_id"].as_str().context("job_id")?.to_owned();

    // Refusals: each a typed 401.
    let claims = json!({"sub": "carol", "exp": now_s() + 3600});
    let no_kid = jwt(&claims, None, KEY1);
    for (what, token, message) in [
        (
            "expired",
            token_for("carol", -10, json!({})),
            "token expired",
        ),
        (
            "wrong key",
            jwt(&claims, Some("k1"), KEY2),
            "token signature does not verify",
        ),
        (
            "unknown kid",
            jwt(&claims, Some("k9"), KEY1),
            "token signed with an unknown key (kid)",
        ),
        (
            "no kid, two keys",
            no_kid,
            "token without kid; several keys are configured",
        ),
        (
            "not a token",
            "garbage-garbage-garbage".to_owned(),
            "invalid access token",
        ),
    ] {
        let (status, code, msg) = code_of(submit(format!("Bearer {token}")).await?).await?;
        assert_eq!(
            (status, code.as_str(), msg.as_str()),
            (401, "unauthorized", message),
            "{what}"
        );
    }

    // Scopes: a read-only token reads but neither submits, cancels nor uploads.
    let read = token_for("carol", 3600, json!({"scope": "read"}));
    let (status, code, _) = code_of(submit(format!("Bearer {read}")).await?).await?;
    assert_eq!((status, code.as_str()), (403, "forbidden"));
    let r = http
        .get(format!("{}/v1/jobs/{job}", gw.http()))
        .bearer_auth(&read)
        .send()
        .await?;
    assert_eq!(r.status(), 200, "read scope reads");
    let r = http
        .delete(format!("{}/v1/jobs/{job}", gw.http()))
        .bearer_auth(&read)
        .send()
        .await?;
    assert_eq!(r.status(), 403);
    let r = http
        .post(format!("{}/v1/uploads", gw.http()))
        .bearer_auth(&read)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "10")
        .send()
        .await?;
    assert_eq!(r.status(), 403, "upload needs the upload scope");
    let upload_only = token_for("carol", 3600, json!({"scope": "upload"}));
    let r = http
        .get(format!("{}/v1/jobs/{job}", gw.http()))
        .bearer_auth(&upload_only)
        .send()
        .await?;
    assert_eq!(r.status(), 403, "reading needs the read scope");
    // Over the WebSocket, per message.
    let (mut c, _) = ws_connect(&gw, &[("authorization", &format!("Bearer {read}"))]).await?;
    c.send(&ClientMsg::Submit {
        req: Some(1),
        job: serde_json::from_value(demo_job(1, 1))?,
    })
    .await?;
    assert!(matches!(
        control(&mut c).await?,
        Control::Error {
            req: Some(1),
            code: ErrorCode::Forbidden,
            ..
        }
    ));
    c.send(&ClientMsg::Get {
        req: Some(2),
        job_id: job.parse()?,
    })
    .await?;
    assert!(matches!(
        control(&mut c).await?,
        Control::Snapshot { req: Some(2), .. }
    ));

    // Allowed backends: only those.
    let exec_only = token_for("carol", 3600, json!({"backends": ["exec"]}));
    let (status, code, _) = code_of(submit(format!("Bearer {exec_only}")).await?).await?;
    assert_eq!((status, code.as_str()), (403, "forbidden"));
    let r = http
        .post(format!("{}/v1/jobs/batch", gw.http()))
        .bearer_auth(&exec_only)
        .json(&json!({"jobs": [demo_job(1, 1)]}))
        .send()
        .await?;
    assert_eq!(r.status(), 403, "a batch with a forbidden backend");
    let demo_only = token_for("carol", 3600, json!({"backends": ["demo"]}));
    assert_eq!(submit(format!("Bearer {demo_only}")).await?.status(), 202);

    // Long-lived tokens in URLs are refused (by default); cookies are no credential.
    let r = http
        .get(format!("{}/v1/jobs/{job}?access_token={minted}", gw.http()))
        .send()
        .await?;
    let (status, code, msg) = code_of(r).await?;
    assert_eq!((status, code.as_str()), (401, "unauthorized"));
    assert!(msg.contains("URLs"), "{msg}");
    let r = http
        .get(format!("{}/v1/jobs/{job}", gw.http()))
        .header("cookie", format!("access_token={ALICE}; token={minted}"))
        .send()
        .await?;
    assert_eq!(r.status(), 401, "cookies are never a credential");
    Ok(())
}

#[tokio::test]
async fn query_tokens_only_when_enabled() -> anyhow::Result<()> {
    let gw = Gateway::start(&["--token", &format!("alice={ALICE}"), "--allow-query-token"]).await?;
    let r = reqwest::get(format!(
        "{}/v1/jobs/{}?access_token={ALICE}",
        gw.http(),
        JobId::random()
    ))
    .await?;
    assert_eq!(r.status(), 404, "accepted, then not found");
    Ok(())
}

/// How bob presents himself in the indistinguishability test.
#[derive(Debug, Clone, Copy)]
enum Cred {
    Static,
    Jwt,
    Ticket,
}

#[tokio::test]
async fn other_owners_resources_look_like_missing_ones() -> anyhow::Result<()> {
    let gw = Gateway::start(&[
        "--token",
        &format!("alice={ALICE}"),
        "--token",
        &format!("bob={BOB}"),
        "--jwt-key",
        &format!("k1={KEY1}"),
    ])
    .await?;
    let http = reqwest::Client::new();
    let alice = gw.api().with_token(ALICE);
    let job = alice.submit(&demo_job(1, 10)).await?.job_id;
    let log = alice.follow_to_end(job, T).await?;
    let output = outlast_e2e::api::outputs(&log)
        .first()
        .map(|o| o.name.clone())
        .context("the demo job has an output")?;
    let r = http
        .post(format!("{}/v1/uploads", gw.http()))
        .bearer_auth(ALICE)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "10")
        .send()
        .await?;
    assert_eq!(r.status(), 201);
    let location = r.headers()["location"].to_str()?.to_owned();
    let upload = location.rsplit('/').next().context("upload id")?.to_owned();
    let bob_jwt = token_for("bob", 3600, json!({}));
    let unknown_job = JobId::random().to_string();
    let unknown_upload = UploadId::random().to_string();

    // (method, path with {job}/{upload}); tus requests carry their headers.
    let endpoints: &[(&str, String)] = &[
        ("GET", "/v1/jobs/{job}".into()),
        ("GET", "/v1/jobs/{job}/events".into()),
        ("GET", "/v1/jobs/{job}/poll?timeout_ms=0".into()),
        ("GET", format!("/v1/jobs/{{job}}/outputs/{output}")),
        ("DELETE", "/v1/jobs/{job}".into()),
        ("HEAD", "/v1/uploads/{upload}".into()),
        ("GET", "/v1/uploads/{upload}".into()),
        ("PATCH", "/v1/uploads/{upload}".into()),
        ("DELETE", "/v1/uploads/{upload}".into()),
    ];
    for cred in [Cred::Static, Cred::Jwt, Cred::Ticket] {
        let send = async |method: &str, path: &str| -> anyhow::Result<(u16, String, HeaderMap)> {
            let mut url = format!("{}{path}", gw.http());
            let mut r;
            match cred {
                Cred::Ticket => {
                    let t = ticket(&gw, BOB).await?;
                    url.push(if url.contains('?') { '&' } else { '?' });
                    url.push_str(&format!("ticket={t}"));
                    r = http.request(method.parse()?, url);
                }
                Cred::Static => r = http.request(method.parse()?, url).bearer_auth(BOB),
                Cred::Jwt => r = http.request(method.parse()?, url).bearer_auth(&bob_jwt),
            }
            if path.starts_with("/v1/uploads") {
                r = r.header("tus-resumable", "1.0.0");
            }
            if method == "PATCH" {
                r = r
                    .header("content-type", "application/offset+octet-stream")
                    .header("upload-offset", "0")
                    .body(vec![7u8; 10]);
            }
            let r = r.send().await?;
            let status = r.status().as_u16();
            let mut headers = r.headers().clone();
            headers.remove("date");
            Ok((status, r.text().await?, headers))
        };
        for (method, template) in endpoints {
            let foreign = template
                .replace("{job}", &job.to_string())
                .replace("{upload}", &upload);
            let missing = template
                .replace("{job}", &unknown_job)
                .replace("{upload}", &unknown_upload);
            let a = send(method, &foreign).await?;
            let b = send(method, &missing).await?;
            assert_eq!(a.0, 404, "{cred:?} {method} {foreign}: {}", a.1);
            assert_eq!(
                a, b,
                "{cred:?} {method} {template}: foreign and missing alike"
            );
        }
        // The same over the WebSocket.
        let (mut c, _) = match cred {
            Cred::Static => ws_connect(&gw, &[("authorization", &format!("Bearer {BOB}"))]).await?,
            Cred::Jwt => {
                ws_connect(&gw, &[("authorization", &format!("Bearer {bob_jwt}"))]).await?
            }
            Cred::Ticket => {
                let t = ticket(&gw, BOB).await?;
                ws_connect(
                    &gw,
                    &[(
                        "sec-websocket-protocol",
                        &format!("outlast.v1.json, outlast.ticket.{t}"),
                    )],
                )
                .await?
            }
        };
        let mut answers = Vec::new();
        for (job_id, upload_id) in [
            (job, upload.parse::<UploadId>()?),
            (unknown_job.parse()?, unknown_upload.parse()?),
        ] {
            let mut these = Vec::new();
            for msg in [
                ClientMsg::Subscribe {
                    req: Some(1),
                    job_id,
                    after: None,
                },
                ClientMsg::Get {
                    req: Some(2),
                    job_id,
                },
                ClientMsg::Cancel {
                    req: Some(3),
                    job_id,
                },
                ClientMsg::UploadResume {
                    req: Some(4),
                    upload_id,
                },
            ] {
                c.send(&msg).await?;
                these.push(control(&mut c).await?);
            }
            answers.push(these);
        }
        assert!(
            answers[0].iter().all(|a| matches!(
                a,
                Control::Error {
                    code: ErrorCode::NotFound,
                    ..
                }
            )),
            "{cred:?}: {:?}",
            answers[0]
        );
        assert_eq!(answers[0], answers[1], "{cred:?}: WebSocket answers alike");
    }
    // The owner does see them (so the comparison above is not between two refusals of all).
    let r = http
        .get(format!("{}/v1/jobs/{job}/outputs/{output}", gw.http()))
        .bearer_auth(ALICE)
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    let r = http
        .head(format!("{}/v1/uploads/{upload}", gw.http()))
        .bearer_auth(ALICE)
        .header("tus-resumable", "1.0.0")
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    Ok(())
}

#[tokio::test]
async fn tickets_are_single_use_and_expire() -> anyhow::Result<()> {
    let gw = Gateway::start(&["--token", &format!("alice={ALICE}"), "--ticket-ttl", "1s"]).await?;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/v1/tickets", gw.http()))
        .send()
        .await?;
    assert_eq!(code_of(r).await?.0, 401, "a ticket needs a credential");
    let r = http
        .post(format!("{}/v1/tickets", gw.http()))
        .bearer_auth(ALICE)
        .send()
        .await?;
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await?;
    let t = v["ticket"].as_str().context("ticket")?.to_owned();
    assert_eq!(v["protocol"], format!("outlast.ticket.{t}"));
    assert_eq!(v["expires_in_ms"], 1000);
    // A ticket cannot buy a ticket (the endpoint reads only the header); it stays unspent.
    let r = http
        .post(format!("{}/v1/tickets?ticket={t}", gw.http()))
        .send()
        .await?;
    assert_eq!(r.status(), 401);

    let job = gw
        .api()
        .with_token(ALICE)
        .submit(&demo_job(1, 1))
        .await?
        .job_id;
    let poll = |t: String| {
        http.get(format!(
            "{}/v1/jobs/{job}/poll?timeout_ms=0&ticket={t}",
            gw.http()
        ))
        .send()
    };
    assert_eq!(poll(t.clone()).await?.status(), 200, "first use");
    let (status, code, _) = code_of(poll(t.clone()).await?).await?;
    assert_eq!((status, code.as_str()), (401, "unauthorized"), "replay");

    // On the WebSocket: in the subprotocol list; only the non-secret protocol is echoed.
    let t = ticket(&gw, ALICE).await?;
    let offer = format!("outlast.v1.json, outlast.ticket.{t}");
    let (mut c, protocol) = ws_connect(&gw, &[("sec-websocket-protocol", &offer)]).await?;
    assert_eq!(protocol.as_deref(), Some("outlast.v1.json"));
    c.send(&ClientMsg::Get {
        req: Some(1),
        job_id: job,
    })
    .await?;
    assert!(
        matches!(control(&mut c).await?, Control::Snapshot { .. }),
        "alice's session"
    );
    let e = ws_connect(&gw, &[("sec-websocket-protocol", &offer)])
        .await
        .err()
        .context("a replayed ticket must be refused")?;
    assert_eq!(refusal(e), (401, "unauthorized".to_owned()));

    // tus with a ticket (HEAD of alice's own upload).
    let r = http
        .post(format!("{}/v1/uploads", gw.http()))
        .bearer_auth(ALICE)
        .header("tus-resumable", "1.0.0")
        .header("upload-length", "10")
        .send()
        .await?;
    let location = r.headers()["location"].to_str()?.to_owned();
    let url = if location.starts_with("http") {
        location
    } else {
        format!("{}{location}", gw.http())
    };
    let t = ticket(&gw, ALICE).await?;
    let r = http
        .head(format!("{url}?ticket={t}"))
        .header("tus-resumable", "1.0.0")
        .send()
        .await?;
    assert_eq!(r.status(), 200);

    // Expiry: unused past its 1 s, refused.
    let t = ticket(&gw, ALICE).await?;
    let issued = tokio::time::Instant::now();
    tokio::time::sleep_until(issued + Duration::from_millis(1300)).await;
    assert_eq!(poll(t).await?.status(), 401, "an expired ticket");
    Ok(())
}

#[tokio::test]
async fn bad_credentials_on_connect_get_a_typed_refusal() -> anyhow::Result<()> {
    let gw = Gateway::start(&["--jwt-key", &format!("k1={KEY1}")]).await?;
    let expired = token_for("alice", -5, json!({}));
    for headers in [
        vec![("authorization", format!("Bearer {expired}"))],
        vec![("authorization", "Basic YWxpY2U6cHc=".to_owned())],
        vec![(
            "sec-websocket-protocol",
            "outlast.v1.json, outlast.ticket.AAAA".to_owned(),
        )],
        vec![],
    ] {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let e = ws_connect(&gw, &h).await.err().context("must be refused")?;
        assert_eq!(
            refusal(e),
            (401, "unauthorized".to_owned()),
            "{:?}",
            headers.first().map(|h| h.0)
        );
    }
    Ok(())
}

#[tokio::test]
async fn refresh_keeps_a_websocket_open_past_the_first_tokens_expiry() -> anyhow::Result<()> {
    let gw = Gateway::start(&["--jwt-key", &format!("k1={KEY1}"), "--ping-interval", "1s"]).await?;
    let short = token_for("alice", 3, json!({}));
    let first_exp_ms = (now_s() + 3) * 1000;
    let (mut c, _) = ws_connect(&gw, &[("authorization", &format!("Bearer {short}"))]).await?;
    // A job that runs past the first token's expiry.
    c.send(&ClientMsg::Submit {
        req: Some(1),
        job: serde_json::from_value(demo_job(10, 500))?,
    })
    .await?;
    let Control::Submitted { job_id, .. } = control(&mut c).await? else {
        anyhow::bail!("expected submitted");
    };
    c.send(&ClientMsg::Subscribe {
        req: Some(2),
        job_id,
        after: None,
    })
    .await?;
    // Refusals leave the old credential in force: another owner's token, a bad one.
    for (req, token) in [
        (3, token_for("bob", 3600, json!({}))),
        (4, "nonsense.not.jwt".to_owned()),
    ] {
        c.send(&ClientMsg::Refresh {
            req: Some(req),
            token: Secret(token),
        })
        .await?;
        loop {
            match control(&mut c).await? {
                Control::Error {
                    req: Some(r), code, ..
                } if r == req => {
                    assert_eq!(code, ErrorCode::Unauthorized);
                    break;
                }
                Control::Subscribed { .. } => continue,
                other => anyhow::bail!("expected the refusal, got {other:?}"),
            }
        }
    }
    let long = token_for("alice", 3600, json!({}));
    c.send(&ClientMsg::Refresh {
        req: Some(5),
        token: Secret(long),
    })
    .await?;
    let mut refreshed = false;
    let mut terminal_after_ms = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::time::Instant::now() < deadline {
        match c.recv(T).await? {
            Incoming::Msg(ServerMsg::Control(Control::Refreshed {
                req: Some(5),
                expires_at_ms,
            })) => {
                assert!(expires_at_ms.is_some_and(|e| e > first_exp_ms + 3_000_000));
                refreshed = true;
            }
            Incoming::Msg(ServerMsg::Event(e)) if e.kind.is_terminal() => {
                terminal_after_ms = e.at_ms;
                break;
            }
            Incoming::Msg(_) => {}
            Incoming::Closed(frame) => anyhow::bail!("closed despite the refresh: {frame:?}"),
        }
    }
    assert!(refreshed, "refreshed arrived");
    assert!(
        terminal_after_ms > first_exp_ms,
        "the job ended after the first token's expiry"
    );
    c.send(&ClientMsg::Ping { nonce: 9 }).await?;
    assert!(
        matches!(control(&mut c).await?, Control::Pong { nonce: 9 }),
        "still open"
    );

    // Without a refresh the connection closes at expiry with 4001 after a typed error.
    let soon = format!("Bearer {}", token_for("alice", 2, json!({})));
    let (mut c, _) = ws_connect(&gw, &[("authorization", &soon)]).await?;
    let mut saw_error = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no close at expiry");
        match c.recv(T).await? {
            Incoming::Msg(ServerMsg::Control(Control::Error { code, .. })) => {
                assert_eq!(code, ErrorCode::Unauthorized);
                saw_error = true;
            }
            Incoming::Msg(_) => {}
            Incoming::Closed(frame) => {
                assert_eq!(frame.map(|f| u16::from(f.code)), Some(4001));
                break;
            }
        }
    }
    assert!(saw_error);
    Ok(())
}

#[tokio::test]
async fn no_token_or_ticket_in_any_log_line() -> anyhow::Result<()> {
    let gw = Gateway::start_env(
        &[
            "--token",
            &format!("alice={ALICE}"),
            "--jwt-key",
            &format!("k1={KEY1}"),
        ],
        &[("OUTLAST_LOG", "debug")],
    )
    .await?;
    let http = reqwest::Client::new();
    let jwt_token = token_for("alice", 3600, json!({}));
    let mut secrets = vec![ALICE.to_owned(), jwt_token.clone(), KEY1.to_owned()];
    let job = gw
        .api()
        .with_token(ALICE)
        .submit(&demo_job(2, 10))
        .await?
        .job_id;
    gw.api()
        .with_token(&jwt_token)
        .follow_to_end(job, T)
        .await?;
    // Tickets on SSE, long-poll and the WebSocket; a refused query token; a refresh.
    for path in ["events", "poll?timeout_ms=0&x=1"] {
        let t = ticket(&gw, &jwt_token).await?;
        secrets.push(t.clone());
        let sep = if path.contains('?') { '&' } else { '?' };
        let r = http
            .get(format!("{}/v1/jobs/{job}/{path}{sep}ticket={t}", gw.http()))
            .send()
            .await?;
        assert_eq!(r.status(), 200, "{path}");
        r.bytes().await?;
    }
    let r = http
        .get(format!(
            "{}/v1/jobs/{job}?access_token={jwt_token}",
            gw.http()
        ))
        .send()
        .await?;
    assert_eq!(r.status(), 401);
    let t = ticket(&gw, ALICE).await?;
    secrets.push(t.clone());
    let (mut c, _) = ws_connect(
        &gw,
        &[(
            "sec-websocket-protocol",
            &format!("outlast.v1.json, outlast.ticket.{t}"),
        )],
    )
    .await?;
    let fresh = token_for("alice", 7200, json!({}));
    secrets.push(fresh.clone());
    c.send(&ClientMsg::Refresh {
        req: Some(1),
        token: Secret(fresh),
    })
    .await?;
    assert!(matches!(control(&mut c).await?, Control::Refreshed { .. }));
    c.send(&ClientMsg::Refresh {
        req: Some(2),
        token: Secret("wrong.wrong.wrong".into()),
    })
    .await?;
    assert!(matches!(control(&mut c).await?, Control::Error { .. }));
    let _ = ws_connect(&gw, &[("authorization", &format!("Bearer {BOB}"))]).await;
    secrets.push(BOB.to_owned());
    drop(c);
    // Shut down so everything is written, then read the whole log.
    let mut gw = gw;
    gw.terminate().await?;
    let log = gw.log_text();
    assert!(
        log.lines().count() >= 5 && log.contains("DEBUG"),
        "debug logging was on:\n{log}"
    );
    for secret in &secrets {
        // The signature part too: a token cut at a dot must not appear either.
        for piece in std::iter::once(secret.as_str()).chain(secret.rsplit('.').next()) {
            assert!(
                !log.contains(piece),
                "a secret ({:.6}...) is in the log:\n{}",
                piece,
                log.lines()
                    .filter(|l| l.contains(piece))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
    Ok(())
}
