//! The bad-input table: malformed bytes in both codecs, unknown types, oversize frames, unknown
//! and foreign job ids. Each gets its documented error, and the connection stays usable
//! unless the violation is at the frame level.

use std::time::Duration;

use futures::SinkExt;
use outlast_e2e::Gateway;
use outlast_e2e::ws::{Client, Incoming, raw_connect};
use outlast_protocol::v1::{ClientMsg, Control, ServerMsg};
use outlast_protocol::{Codec, ErrorCode, JobId};
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(10);
const ALICE: &str = "alice-secret-0123456789";
const BOB: &str = "bob-secret-0123456789";

async fn expect_error(client: &mut Client) -> anyhow::Result<(Option<u64>, ErrorCode)> {
    match client.next_control(T).await? {
        Some(Control::Error { req, code, .. }) => Ok((req, code)),
        other => anyhow::bail!("expected an error, got {other:?}"),
    }
}

async fn still_usable(client: &mut Client) -> anyhow::Result<()> {
    client.send(&ClientMsg::Ping { nonce: 77 }).await?;
    match client.next_control(T).await? {
        Some(Control::Pong { nonce: 77 }) => Ok(()),
        other => anyhow::bail!("expected pong, got {other:?}"),
    }
}

fn frame(codec: Codec, json: &str) -> Message {
    match codec {
        Codec::Json => Message::Text(json.to_owned().into()),
        Codec::MsgPack => {
            let value: serde_json::Value = serde_json::from_str(json).expect("table json");
            Message::Binary(rmp_serde::to_vec_named(&value).expect("packs").into())
        }
    }
}

#[tokio::test]
async fn malformed_and_unknown_messages_get_typed_errors_in_both_codecs() -> anyhow::Result<()> {
    let gw = Gateway::start(&["--max-message-bytes", "4096"]).await?;
    for codec in [Codec::Json, Codec::MsgPack] {
        let mut c = Client::connect(&gw.ws_url(), codec).await?;
        let garbage = match codec {
            Codec::Json => Message::Text("{not json".into()),
            // 0xc1 is never valid MessagePack.
            Codec::MsgPack => Message::Binary(vec![0xc1, 0x00, 0xff].into()),
        };
        let table: Vec<(Message, Option<u64>, ErrorCode)> = vec![
            (garbage, None, ErrorCode::MalformedMessage),
            (
                frame(codec, r#"[1,2,3]"#),
                None,
                ErrorCode::MalformedMessage,
            ),
            (
                frame(codec, r#"{"type":"teleport","req":5}"#),
                Some(5),
                ErrorCode::UnknownMessageType,
            ),
            (
                frame(codec, r#"{"type":"subscribe","req":6,"job_id":42}"#),
                Some(6),
                ErrorCode::InvalidMessage,
            ),
            (
                frame(
                    codec,
                    r#"{"type":"submit","req":7,"job":{"backend":"demo","workflow":{"steps":0}}}"#,
                ),
                Some(7),
                ErrorCode::InvalidRequest,
            ),
            (
                frame(
                    codec,
                    r#"{"type":"submit","req":8,"job":{"backend":"nope"}}"#,
                ),
                Some(8),
                ErrorCode::UnknownBackend,
            ),
            (
                frame(
                    codec,
                    &format!(
                        r#"{{"type":"subscribe","req":9,"job_id":"{}"}}"#,
                        JobId::random()
                    ),
                ),
                Some(9),
                ErrorCode::NotFound,
            ),
            (
                frame(
                    codec,
                    &format!(
                        r#"{{"type":"cancel","req":10,"job_id":"{}"}}"#,
                        JobId::random()
                    ),
                ),
                Some(10),
                ErrorCode::NotFound,
            ),
            (
                frame(
                    codec,
                    r#"{"type":"submit","req":11,"job":{"backend":"demo","inputs":{"image":"upl_00000000000000000000000000000000"}}}"#,
                ),
                Some(11),
                ErrorCode::NotFound,
            ),
        ];
        for (msg, req, code) in table {
            let shown = format!("{msg:?}");
            c.ws.send(msg).await?;
            assert_eq!(
                expect_error(&mut c).await?,
                (req, code),
                "{codec:?}: {shown}"
            );
            still_usable(&mut c).await?;
        }
        // The wrong frame type for the subprotocol is an error reply, not a disconnect.
        let wrong = match codec {
            Codec::Json => Message::Binary(vec![1, 2, 3].into()),
            Codec::MsgPack => Message::Text("{}".into()),
        };
        c.ws.send(wrong).await?;
        assert_eq!(expect_error(&mut c).await?.1, ErrorCode::MalformedMessage);
        still_usable(&mut c).await?;
        // An oversize message is a frame-level violation: close 1009.
        c.ws.send(frame(
            codec,
            &format!(
                r#"{{"type":"ping","nonce":1,"pad":"{}"}}"#,
                "x".repeat(8000)
            ),
        ))
        .await?;
        loop {
            match c.recv(T).await? {
                Incoming::Closed(Some(close)) => {
                    assert_eq!(u16::from(close.code), 1009, "{codec:?}");
                    break;
                }
                Incoming::Closed(None) => panic!("{codec:?}: closed without a close frame"),
                Incoming::Msg(_) => {}
            }
        }
    }
    // Invalid UTF-8 in a text frame: close 1007.
    let mut c = Client::connect(&gw.ws_url(), Codec::Json).await?;
    let bad = tokio_tungstenite::tungstenite::protocol::frame::Frame::message(
        vec![0x7b, 0xff, 0xfe, 0x7d],
        tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode::Data(
            tokio_tungstenite::tungstenite::protocol::frame::coding::Data::Text,
        ),
        true,
    );
    c.ws.send(Message::Frame(bad)).await?;
    match c.recv(T).await? {
        Incoming::Closed(Some(close)) => assert_eq!(u16::from(close.code), 1007),
        other => panic!("expected close 1007, got {other:?}"),
    }
    // The gateway is still healthy after all of this.
    assert_eq!(
        reqwest::get(format!("{}/healthz", gw.http()))
            .await?
            .text()
            .await?,
        "ok"
    );
    Ok(())
}

#[tokio::test]
async fn a_websocket_without_a_known_subprotocol_is_refused() -> anyhow::Result<()> {
    let gw = Gateway::start(&[]).await?;
    for offer in [None, Some("outlast.v9.json"), Some("chat")] {
        let err = raw_connect(&gw.ws_url(), offer)
            .await
            .expect_err("must be refused");
        match err {
            tokio_tungstenite::tungstenite::Error::Http(resp) => {
                assert_eq!(resp.status(), 400, "{offer:?}");
                let body: serde_json::Value =
                    serde_json::from_slice(resp.body().as_deref().unwrap_or_default())?;
                assert_eq!(body["code"], "unsupported_subprotocol");
            }
            other => panic!("{offer:?}: unexpected {other}"),
        }
    }
    Ok(())
}

#[tokio::test]
async fn foreign_jobs_are_indistinguishable_from_unknown_ones() -> anyhow::Result<()> {
    let gw = Gateway::start_with_tokens(&[("alice", ALICE), ("bob", BOB)], &[]).await?;
    let http = reqwest::Client::new();
    // No or wrong token: 401 with a typed body.
    let r = http
        .get(format!("{}/v1/jobs/{}", gw.http(), JobId::random()))
        .send()
        .await?;
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<serde_json::Value>().await?["code"], "unauthorized");
    let r = http
        .get(format!("{}/v1/jobs/{}", gw.http(), JobId::random()))
        .bearer_auth("wrong-token-000000000")
        .send()
        .await?;
    assert_eq!(r.status(), 401);

    let job = gw
        .api()
        .with_token(ALICE)
        .submit(&serde_json::json!({"backend": "demo", "workflow": {"steps": 2, "step_ms": 20}}))
        .await?
        .job_id
        .to_string();
    let unknown = JobId::random().to_string();
    for path in ["", "/events", "/poll?timeout_ms=0", "/outputs/result.png"] {
        let foreign = http
            .get(format!("{}/v1/jobs/{job}{path}", gw.http()))
            .bearer_auth(BOB)
            .send()
            .await?;
        let missing = http
            .get(format!("{}/v1/jobs/{unknown}{path}", gw.http()))
            .bearer_auth(BOB)
            .send()
            .await?;
        assert_eq!(foreign.status(), 404, "{path}");
        assert_eq!(missing.status(), 404, "{path}");
        assert_eq!(
            foreign.text().await?,
            missing.text().await?,
            "{path}: same body for foreign and unknown"
        );
        let own = http
            .get(format!("{}/v1/jobs/{job}{path}", gw.http()))
            .bearer_auth(ALICE)
            .send()
            .await?;
        assert_ne!(
            own.status(),
            404,
            "{path}: the owner sees it (or 404 only for a not yet stored output)"
        );
        if path.is_empty() {
            break;
        }
    }
    let del = http
        .delete(format!("{}/v1/jobs/{job}", gw.http()))
        .bearer_auth(BOB)
        .send()
        .await?;
    assert_eq!(del.status(), 404);
    // Over the WebSocket.
    let mut bob = Client::connect_bearer(&gw.ws_url(), Codec::Json, BOB).await?;
    for msg in [
        ClientMsg::Subscribe {
            req: Some(1),
            job_id: job.parse()?,
            after: None,
        },
        ClientMsg::Get {
            req: Some(1),
            job_id: job.parse()?,
        },
        ClientMsg::Cancel {
            req: Some(1),
            job_id: job.parse()?,
        },
    ] {
        bob.send(&msg).await?;
        assert_eq!(
            expect_error(&mut bob).await?,
            (Some(1), ErrorCode::NotFound)
        );
    }
    let mut alice = Client::connect_bearer(&gw.ws_url(), Codec::Json, ALICE).await?;
    alice
        .send(&ClientMsg::Get {
            req: Some(2),
            job_id: job.parse()?,
        })
        .await?;
    assert!(matches!(
        alice.next_control(T).await?,
        Some(Control::Snapshot { req: Some(2), .. })
    ));
    // A WebSocket without a token is refused before the upgrade.
    let err = raw_connect(&gw.ws_url(), Some("outlast.v1.json"))
        .await
        .expect_err("refused");
    assert!(
        matches!(err, tokio_tungstenite::tungstenite::Error::Http(ref r) if r.status() == 401),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn http_bad_input_gets_typed_errors() -> anyhow::Result<()> {
    let gw = Gateway::start(&[]).await?;
    let http = reqwest::Client::new();
    let cases: &[(&str, u16, &str)] = &[
        ("not json", 400, "invalid_request"),
        (
            r#"{"backend":"demo","unknown_field":1}"#,
            400,
            "invalid_request",
        ),
        (r#"{"backend":"nope"}"#, 422, "unknown_backend"),
        (
            r#"{"backend":"demo","workflow":{"steps":"many"}}"#,
            400,
            "invalid_request",
        ),
        (
            r#"{"backend":"demo","idempotency_key":"has space"}"#,
            400,
            "invalid_request",
        ),
    ];
    for (body, status, code) in cases {
        let r = http
            .post(format!("{}/v1/jobs", gw.http()))
            .header("content-type", "application/json")
            .body(*body)
            .send()
            .await?;
        assert_eq!(r.status(), *status, "{body}");
        assert_eq!(
            r.json::<serde_json::Value>().await?["code"],
            *code,
            "{body}"
        );
    }
    let big = format!(
        r#"{{"backend":"demo","workflow":{{"pad":"{}"}}}}"#,
        "x".repeat(2 << 20)
    );
    let r = http
        .post(format!("{}/v1/jobs", gw.http()))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await?;
    assert_eq!(r.status(), 413);
    // The server closes a connection whose body it refused; don't reuse it.
    let http = reqwest::Client::new();
    for bad in [
        "job_nothex",
        "../etc/passwd",
        "upl_00000000000000000000000000000000",
    ] {
        let r = http
            .get(format!("{}/v1/jobs/{bad}", gw.http()))
            .send()
            .await?;
        assert_eq!(r.status(), 404, "{bad}");
    }
    let r = http
        .get(format!("{}/v1/jobs/{}/events", gw.http(), JobId::random()))
        .header("Last-Event-ID", "abc")
        .send()
        .await?;
    assert!(matches!(r.status().as_u16(), 400 | 404));
    Ok(())
}

#[tokio::test]
async fn heartbeat_carries_the_newest_sequence_number() -> anyhow::Result<()> {
    let gw = Gateway::start(&["--ping-interval", "150ms"]).await?;
    let mut c = Client::connect(&gw.ws_url(), Codec::Json).await?;
    c.send(&ClientMsg::Submit {
        req: Some(1),
        job: serde_json::from_value(
            serde_json::json!({"backend": "demo", "workflow": {"steps": 1, "step_ms": 1000}}),
        )?,
    })
    .await?;
    let Some(Control::Submitted { job_id, .. }) = c.next_control(T).await? else {
        panic!("submitted")
    };
    c.send(&ClientMsg::Subscribe {
        req: None,
        job_id,
        after: None,
    })
    .await?;
    let mut newest_seen = 0;
    loop {
        match c.recv(T).await? {
            Incoming::Msg(ServerMsg::Event(e)) => newest_seen = e.seq.0,
            Incoming::Msg(ServerMsg::Control(Control::Heartbeat { jobs })) if newest_seen >= 2 => {
                assert_eq!(jobs.get(&job_id).map(|s| s.0), Some(newest_seen));
                break;
            }
            Incoming::Closed(_) => panic!("closed"),
            _ => {}
        }
    }
    assert!(c.pings >= 1, "a WebSocket ping accompanies the heartbeat");
    Ok(())
}
