//! The upload limits hold on every path: a deferred-length upload cannot outgrow
//! `uploads.max_size`, a concatenation names each part once, and upload metadata has one size
//! limit for tus and the WebSocket alike, and one owner's uploads hold at most
//! `uploads.max_bytes_per_owner`.

#[path = "uploads_common.rs"]
mod common;

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::{Tus, header};
use outlast_e2e::Gateway;
use outlast_e2e::ws::{Client, Incoming};
use outlast_protocol::upload::MAX_METADATA_BYTES;
use outlast_protocol::v1::{ClientMsg, Control, ServerMsg};
use outlast_protocol::{Codec, ErrorCode};

async fn start() -> anyhow::Result<Gateway> {
    Gateway::start(&["--upload-max-size", "1000"]).await
}

fn post(tus: &Tus) -> reqwest::RequestBuilder {
    tus.request("POST", "/v1/uploads")
}

async fn code_of(r: reqwest::Response) -> anyhow::Result<(u16, String)> {
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await?;
    Ok((status, body["code"].as_str().unwrap_or_default().to_owned()))
}

#[tokio::test]
async fn a_deferred_length_upload_cannot_outgrow_max_size() -> anyhow::Result<()> {
    let gw = start().await?;
    let tus = Tus::new(&gw.http());
    let r = post(&tus).header("Upload-Defer-Length", "1").send().await?;
    assert_eq!(r.status(), 201);
    let path = header(r.headers(), "location").expect("Location");
    assert_eq!(tus.patch(&path, 0, vec![1; 600]).await?.status(), 204);
    // 600 + 600 > 1000, while the length is still unknown: refused, nothing of it kept.
    let (status, code) = code_of(tus.patch(&path, 600, vec![2; 600]).await?).await?;
    assert_eq!(
        (status, code.as_str()),
        (413, ErrorCode::MessageTooLarge.as_str())
    );
    assert_eq!(tus.offset(&path).await?, 600);
    // Up to the limit is fine.
    assert_eq!(tus.patch(&path, 600, vec![3; 400]).await?.status(), 204);
    assert_eq!(tus.offset(&path).await?, 1000);
    Ok(())
}

#[tokio::test]
async fn a_concatenation_names_each_part_once() -> anyhow::Result<()> {
    let gw = start().await?;
    let tus = Tus::new(&gw.http());
    let part = tus.create(10, &[("Upload-Concat", "partial")]).await?;
    assert_eq!(tus.patch(&part, 0, vec![9; 10]).await?.status(), 204);
    let twice = format!("final;{part} {part}");
    let (status, code) = code_of(post(&tus).header("Upload-Concat", twice).send().await?).await?;
    assert_eq!(
        (status, code.as_str()),
        (400, ErrorCode::InvalidRequest.as_str())
    );
    let once = post(&tus)
        .header("Upload-Concat", format!("final;{part}"))
        .send()
        .await?;
    assert_eq!(once.status(), 201);
    Ok(())
}

#[tokio::test]
async fn metadata_has_one_limit_for_tus_and_the_websocket() -> anyhow::Result<()> {
    let gw = start().await?;
    let tus = Tus::new(&gw.http());
    // Encoded: "name " + base64 of the value.
    let fits = "x".repeat((MAX_METADATA_BYTES - 8) / 4 * 3);
    let over = "x".repeat(MAX_METADATA_BYTES);
    let encoded = |v: &str| format!("name {}", B64.encode(v));
    assert!(encoded(&fits).len() <= MAX_METADATA_BYTES);

    let r = post(&tus)
        .header("Upload-Length", "5")
        .header("Upload-Metadata", encoded(&fits))
        .send()
        .await?;
    assert_eq!(r.status(), 201);
    let r = post(&tus)
        .header("Upload-Length", "5")
        .header("Upload-Metadata", encoded(&over))
        .send()
        .await?;
    let (status, code) = code_of(r).await?;
    assert_eq!(
        (status, code.as_str()),
        (413, ErrorCode::MessageTooLarge.as_str())
    );

    let mut ws = Client::connect(&gw.ws_url(), Codec::Json).await?;
    for (value, refused) in [(&fits, false), (&over, true)] {
        ws.send(&ClientMsg::UploadCreate {
            req: Some(7),
            length: Some(5),
            metadata: [("name".to_owned(), value.clone())].into(),
            sha256: None,
        })
        .await?;
        let answer = loop {
            match ws.recv(Duration::from_secs(10)).await? {
                Incoming::Msg(ServerMsg::Control(Control::Heartbeat { .. })) => continue,
                Incoming::Msg(ServerMsg::Control(c)) => break c,
                Incoming::Msg(_) => continue,
                Incoming::Closed(f) => anyhow::bail!("closed: {f:?}"),
            }
        };
        match (refused, answer) {
            (false, Control::UploadStatus { .. }) => {}
            (true, Control::Error { code, .. }) => assert_eq!(code, ErrorCode::MessageTooLarge),
            (_, other) => anyhow::bail!("metadata of {} bytes: {other:?}", value.len()),
        }
    }
    Ok(())
}

#[tokio::test]
async fn an_owner_s_uploads_hold_at_most_the_quota() -> anyhow::Result<()> {
    let gw = Gateway::start(&["--upload-max-bytes-per-owner", "1500"]).await?;
    let tus = Tus::new(&gw.http());
    let first = tus.create(1000, &[]).await?;
    assert_eq!(tus.patch(&first, 0, vec![1; 1000]).await?.status(), 204);
    let r = post(&tus).header("Upload-Length", "600").send().await?;
    let (status, code) = code_of(r).await?;
    assert_eq!(
        (status, code.as_str()),
        (429, ErrorCode::LimitExceeded.as_str())
    );
    // Within what is left, fine; after deleting, the room is back.
    assert!(tus.create(500, &[]).await.is_ok());
    assert_eq!(tus.request("DELETE", &first).send().await?.status(), 204);
    assert!(tus.create(600, &[]).await.is_ok());
    Ok(())
}
