//! Upload suites against the real binary: the tus protocol table, durability across `kill -9`,
//! WebSocket uploads through a cutting proxy, dedup, cross-transport resume, progress pushes
//! and uploads as job inputs.

#[path = "uploads_common.rs"]
mod common;

use std::time::Duration;

use anyhow::Context;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::{Tus, content, header, id_of, sha256_hex, wait_for, ws_upload};
use outlast_e2e::Gateway;
use outlast_e2e::ws::Client;
use outlast_protocol::v1::{ClientMsg, Control};
use outlast_protocol::{Codec, EventKind, FailureCode, JobState, Offset};
use sha1::Digest as _;

const ALICE: &str = "alice-secret-0123456789";
const BOB: &str = "bob-secret-0123456789ab";

async fn status_of(r: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap) {
    let r = r.send().await.expect("request");
    (r.status().as_u16(), r.headers().clone())
}

/// One row per rule of the tus table (docs: reference/tus.md): status code and headers.
#[tokio::test]
async fn tus_protocol_table() -> anyhow::Result<()> {
    let gw = Gateway::start_behind_edge_with_tokens(
        &[("alice", ALICE), ("bob", BOB)],
        &[
            // CORS is off unless origins are listed (the preflight below needs one).
            "--cors-origin",
            "https://example.com",
            "--upload-max-size",
            "10000000",
            "--upload-max-chunk-bytes",
            "65536",
        ],
    )
    .await?;
    let tus = Tus::with_token(&gw.http(), ALICE);
    let bob = Tus::with_token(&gw.http(), BOB);
    let raw = reqwest::Client::new();

    // OPTIONS: 204, Tus-Version, Tus-Extension, Tus-Max-Size, Tus-Checksum-Algorithm.
    let (s, h) = status_of(raw.request(reqwest::Method::OPTIONS, tus.url("/v1/uploads"))).await;
    assert_eq!(s, 204);
    assert_eq!(header(&h, "tus-version").as_deref(), Some("1.0.0"));
    let ext = header(&h, "tus-extension").unwrap_or_default();
    for e in [
        "creation",
        "creation-with-upload",
        "creation-defer-length",
        "expiration",
        "checksum",
        "termination",
        "concatenation",
    ] {
        assert!(
            ext.split(',').any(|x| x == e),
            "Tus-Extension lacks {e}: {ext}"
        );
    }
    assert_eq!(header(&h, "tus-max-size").as_deref(), Some("10000000"));
    assert_eq!(
        header(&h, "tus-checksum-algorithm").as_deref(),
        Some("sha1,sha256,md5")
    );
    assert_eq!(
        header(&h, "outlast-max-chunk-size").as_deref(),
        Some("65536")
    );

    // Version: missing or wrong Tus-Resumable is 412 with Tus-Version, and nothing happens.
    for version in [None, Some("0.2.0")] {
        let mut b = raw
            .post(tus.url("/v1/uploads"))
            .bearer_auth(ALICE)
            .header("Upload-Length", "5");
        if let Some(v) = version {
            b = b.header("Tus-Resumable", v);
        }
        let (s, h) = status_of(b).await;
        assert_eq!(s, 412, "{version:?}");
        assert_eq!(header(&h, "tus-version").as_deref(), Some("1.0.0"));
        assert!(!h.contains_key("location"));
    }

    // Creation errors.
    let post = || tus.request("POST", "/v1/uploads");
    assert_eq!(status_of(post()).await.0, 400, "no length");
    assert_eq!(
        status_of(post().header("Upload-Defer-Length", "2")).await.0,
        400
    );
    assert_eq!(status_of(post().header("Upload-Length", "-1")).await.0, 400);
    let (s, h) = status_of(post().header("Upload-Length", "10000001")).await;
    assert_eq!(s, 413);
    assert_eq!(header(&h, "tus-max-size").as_deref(), Some("10000000"));
    assert_eq!(
        status_of(
            post()
                .header("Upload-Length", "5")
                .header("Upload-Metadata", "a !!!")
        )
        .await
        .0,
        400
    );

    // Creation: 201, Location, Upload-Expires; HEAD: offset, length, metadata, no-store.
    let meta = format!("filename {}", B64.encode("a.bin"));
    let (s, h) = status_of(
        post()
            .header("Upload-Length", "10")
            .header("Upload-Metadata", &meta),
    )
    .await;
    assert_eq!(s, 201);
    assert_eq!(header(&h, "tus-resumable").as_deref(), Some("1.0.0"));
    assert!(header(&h, "upload-expires").is_some_and(|d| d.ends_with(" GMT")));
    let path = header(&h, "location").expect("Location");
    let (s, h) = status_of(tus.request("HEAD", &path)).await;
    assert_eq!(s, 200);
    assert_eq!(header(&h, "upload-offset").as_deref(), Some("0"));
    assert_eq!(header(&h, "upload-length").as_deref(), Some("10"));
    assert_eq!(
        header(&h, "upload-metadata").as_deref(),
        Some(meta.as_str())
    );
    assert_eq!(header(&h, "cache-control").as_deref(), Some("no-store"));
    assert_eq!(header(&h, "tus-resumable").as_deref(), Some("1.0.0"));

    // Another owner's upload is 404, like an unknown one.
    let (s, h) = status_of(bob.request("HEAD", &path)).await;
    assert_eq!(s, 404);
    assert!(!h.contains_key("upload-offset"));
    assert_eq!(status_of(bob.request("DELETE", &path)).await.0, 404);
    assert_eq!(
        status_of(tus.request("HEAD", "/v1/uploads/upl_00000000000000000000000000000000"))
            .await
            .0,
        404
    );

    // PATCH: 415 without the content type, 409 on offset mismatch (upload unchanged).
    let (s, _) = status_of(
        tus.request("PATCH", &path)
            .header("Upload-Offset", "0")
            .header("Content-Type", "application/octet-stream")
            .body("hello"),
    )
    .await;
    assert_eq!(s, 415);
    let r = tus.patch(&path, 3, b"lo".to_vec()).await?;
    assert_eq!(r.status(), 409);
    assert_eq!(tus.offset(&path).await?, 0);

    // Checksum: unknown algorithm 400; mismatch 460 and the chunk is discarded.
    let checked = |algo: &str, digest: Vec<u8>, offset: u64, body: &'static [u8]| {
        tus.request("PATCH", &path)
            .header("Upload-Offset", offset.to_string())
            .header("Content-Type", "application/offset+octet-stream")
            .header("Upload-Checksum", format!("{algo} {}", B64.encode(digest)))
            .body(body)
    };
    assert_eq!(
        status_of(checked("crc32", vec![0; 4], 0, b"hello")).await.0,
        400
    );
    let wrong = sha1::Sha1::digest(b"HELLO").to_vec();
    assert_eq!(status_of(checked("sha1", wrong, 0, b"hello")).await.0, 460);
    assert_eq!(tus.offset(&path).await?, 0);
    let (s, h) = status_of(checked(
        "sha1",
        sha1::Sha1::digest(b"he").to_vec(),
        0,
        b"he",
    ))
    .await;
    assert_eq!(
        (s, header(&h, "upload-offset").as_deref()),
        (204, Some("2"))
    );
    assert!(header(&h, "upload-expires").is_some());
    let (s, _) = status_of(checked("md5", md5::Md5::digest(b"ll").to_vec(), 2, b"ll")).await;
    assert_eq!(s, 204);
    let (s, _) = status_of(checked(
        "sha256",
        sha2::Sha256::digest(b"o ").to_vec(),
        4,
        b"o ",
    ))
    .await;
    assert_eq!(s, 204);

    // X-HTTP-Method-Override: a POST standing for PATCH.
    let (s, h) = status_of(
        tus.request("POST", &path)
            .header("X-HTTP-Method-Override", "PATCH")
            .header("Upload-Offset", "6")
            .header("Content-Type", "application/offset+octet-stream")
            .body("worl"),
    )
    .await;
    assert_eq!(
        (s, header(&h, "upload-offset").as_deref()),
        (204, Some("10"))
    );
    let info = tus.info(&path).await?;
    assert_eq!(info["state"], "complete");
    assert_eq!(info["sha256"], sha256_hex(b"hello worl"));

    // A body beyond the advertised chunk size: 413.
    let big = tus.create(200_000, &[]).await?;
    assert_eq!(tus.patch(&big, 0, vec![7; 70_000]).await?.status(), 413);

    // creation-defer-length: length comes with a PATCH.
    let (s, h) = status_of(post().header("Upload-Defer-Length", "1")).await;
    assert_eq!(s, 201);
    let deferred = header(&h, "location").expect("Location");
    let (_, h) = status_of(tus.request("HEAD", &deferred)).await;
    assert_eq!(header(&h, "upload-defer-length").as_deref(), Some("1"));
    assert!(!h.contains_key("upload-length"));
    let (s, h) = status_of(
        tus.request("PATCH", &deferred)
            .header("Upload-Offset", "0")
            .header("Upload-Length", "3")
            .header("Content-Type", "application/offset+octet-stream")
            .body("abc"),
    )
    .await;
    assert_eq!(
        (s, header(&h, "upload-offset").as_deref()),
        (204, Some("3"))
    );
    assert_eq!(tus.info(&deferred).await?["state"], "complete");

    // creation-with-upload: bytes on the POST.
    let (s, h) = status_of(
        post()
            .header("Upload-Length", "6")
            .header("Content-Type", "application/offset+octet-stream")
            .body("abc"),
    )
    .await;
    assert_eq!(
        (s, header(&h, "upload-offset").as_deref()),
        (201, Some("3"))
    );

    // Concatenation: two partials, one final; PATCH to the final is 403.
    let p1 = tus.create(3, &[("Upload-Concat", "partial")]).await?;
    let p2 = tus.create(4, &[("Upload-Concat", "partial")]).await?;
    assert_eq!(tus.patch(&p1, 0, b"abc".to_vec()).await?.status(), 204);
    assert_eq!(tus.patch(&p2, 0, b"defg".to_vec()).await?.status(), 204);
    let (_, h) = status_of(tus.request("HEAD", &p1)).await;
    assert_eq!(header(&h, "upload-concat").as_deref(), Some("partial"));
    let (s, h) =
        status_of(post().header("Upload-Concat", format!("final;{p1} {}{p2}", gw.http()))).await;
    assert_eq!(s, 201);
    let fin = header(&h, "location").expect("Location");
    let (_, h) = status_of(tus.request("HEAD", &fin)).await;
    assert_eq!(
        header(&h, "upload-concat").as_deref(),
        Some(format!("final;{p1} {p2}").as_str())
    );
    assert_eq!(header(&h, "upload-offset").as_deref(), Some("7"));
    assert_eq!(tus.info(&fin).await?["sha256"], sha256_hex(b"abcdefg"));
    assert_eq!(tus.patch(&fin, 7, b"x".to_vec()).await?.status(), 403);

    // Termination: 204, then 404 (no Upload-Offset).
    assert_eq!(status_of(tus.request("DELETE", &big)).await.0, 204);
    let (s, h) = status_of(tus.request("HEAD", &big)).await;
    assert_eq!(s, 404);
    assert!(!h.contains_key("upload-offset"));

    // One writer: a second PATCH while one is streaming is refused with 423. The first
    // PATCH holds the upload once its first bytes show up as progress on the owner's socket.
    let mut watch = Client::connect_bearer(&gw.ws_url(), Codec::Json, ALICE).await?;
    let slow = tus.create(100_000, &[]).await?;
    let slow_id = id_of(&slow);
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Vec<u8>, std::io::Error>>();
    tx.unbounded_send(Ok(vec![1; 1000]))?;
    let first = tokio::spawn(
        tus.request("PATCH", &slow)
            .header("Upload-Offset", "0")
            .header("Content-Type", "application/offset+octet-stream")
            .body(reqwest::Body::wrap_stream(rx))
            .send(),
    );
    wait_for(&mut watch, Duration::from_secs(10), |c| match c {
        Control::UploadProgress { upload_id, .. } if *upload_id == slow_id => Some(()),
        _ => None,
    })
    .await?;
    let second = tus.patch(&slow, 0, vec![2; 10]).await?;
    assert_eq!(second.status(), 423, "the concurrent PATCH must be refused");
    drop(tx);
    let first = first.await??;
    assert_eq!(first.status(), 204);
    assert_eq!(
        header(first.headers(), "upload-offset").as_deref(),
        Some("1000")
    );

    // CORS (for the listed origin): a browser preflight is answered and tus headers are exposed.
    let (s, h) = status_of(
        raw.request(reqwest::Method::OPTIONS, tus.url("/v1/uploads"))
            .header("Origin", "https://example.com")
            .header("Access-Control-Request-Method", "PATCH")
            .header(
                "Access-Control-Request-Headers",
                "upload-offset,tus-resumable",
            ),
    )
    .await;
    assert!(s == 200 || s == 204, "preflight {s}");
    assert!(h.contains_key("access-control-allow-origin"));
    let (_, h) = status_of(
        tus.request("HEAD", &slow)
            .header("Origin", "https://example.com"),
    )
    .await;
    let exposed = header(&h, "access-control-expose-headers").unwrap_or_default();
    for name in [
        "upload-offset",
        "upload-length",
        "upload-metadata",
        "upload-expires",
        "location",
        "tus-resumable",
    ] {
        assert!(exposed.contains(name), "{name} not exposed: {exposed}");
    }
    Ok(())
}

/// Limits: 507 before the disk fills, open uploads per owner, expiry (410/404) with GC.
#[tokio::test]
async fn tus_limits_and_expiry() -> anyhow::Result<()> {
    let full =
        Gateway::start_behind_edge(&["--upload-min-free-bytes", "1000000000000000000"]).await?;
    let tus = Tus::new(&full.http());
    let (s, _) = status_of(
        tus.request("POST", "/v1/uploads")
            .header("Upload-Length", "10"),
    )
    .await;
    assert_eq!(s, 507);

    let gw =
        Gateway::start_behind_edge(&["--upload-max-open-per-owner", "2", "--upload-expiry", "1s"])
            .await?;
    let tus = Tus::new(&gw.http());
    let a = tus.create(10, &[]).await?;
    let _b = tus.create(10, &[]).await?;
    let (s, _) = status_of(
        tus.request("POST", "/v1/uploads")
            .header("Upload-Length", "10"),
    )
    .await;
    assert_eq!(s, 429, "third open upload");
    // Abandoned uploads expire: 410 until collected, then 404. Wait for it with a deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let s = tus.head(&a).await?.status().as_u16();
        if s == 404 || s == 410 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "upload never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Collected uploads no longer count against the limit.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (s, _) = status_of(
            tus.request("POST", "/v1/uploads")
                .header("Upload-Length", "10"),
        )
        .await;
        if s == 201 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "GC never freed the slots ({s})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// `kill -9` in the middle of a PATCH: after the restart HEAD reports no more than was
/// received, and `[0, offset)` equals the source (finishing from there gives its sha256).
#[tokio::test]
async fn kill9_during_patch_keeps_a_true_prefix() -> anyhow::Result<()> {
    let mut gw = Gateway::start_behind_edge(&[]).await?;
    let tus = Tus::new(&gw.http());
    let source = content(24 << 20, 9);
    let path = tus.create(source.len() as u64, &[]).await?;
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Vec<u8>, std::io::Error>>();
    let sent = 20 << 20;
    for piece in source[..sent].chunks(256 << 10) {
        tx.unbounded_send(Ok(piece.to_vec()))?;
    }
    let patch = tokio::spawn(
        tus.request("PATCH", &path)
            .header("Upload-Offset", "0")
            .header("Content-Type", "application/offset+octet-stream")
            .body(reqwest::Body::wrap_stream(rx))
            .send(),
    );
    // The server checkpoints long bodies; wait until HEAD shows one, mid-PATCH.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let before = loop {
        let o = tus.offset(&path).await?;
        if o > 0 {
            break o;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no checkpoint during the PATCH"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    gw.kill9().await?;
    let _ = patch.await;
    drop(tx);
    gw.restart().await?;
    let tus = Tus::new(&gw.http());
    let offset = tus.offset(&path).await?;
    assert!(
        offset >= before,
        "durable offset went back: {offset} < {before}"
    );
    assert!(
        offset <= sent as u64,
        "offset {offset} beyond the {sent} bytes received"
    );
    let r = tus
        .patch(&path, offset, source[offset as usize..].to_vec())
        .await?;
    assert_eq!(r.status(), 204);
    let info = tus.info(&path).await?;
    assert_eq!(
        info["sha256"],
        sha256_hex(&source),
        "bytes [0, offset) differ from the source"
    );
    Ok(())
}

/// A WebSocket upload through a proxy that cuts every few hundred KB: right sha256, and the
/// server wrote every byte exactly once.
#[tokio::test]
async fn ws_upload_survives_cuts_without_rewriting() -> anyhow::Result<()> {
    let gw = Gateway::start_behind_edge(&[]).await?;
    let proxy = gw.edge()?;
    let url = gw.ws_url();
    let source = content(6 << 20, 3);
    // Cut a few hundred KB after each acknowledged position: bytes are in flight (sent,
    // maybe written, not yet acknowledged) at every cut.
    let mut next_cut = 300_000u64;
    let result = ws_upload(&url, &source, 64 << 10, 256 << 10, true, |acked| {
        if acked >= next_cut {
            proxy.cut_all();
            next_cut = acked + 300_000 + (acked % 200_000);
        }
    })
    .await?;
    assert!(
        result.connections > 5,
        "only {} connections",
        result.connections
    );
    let tus = Tus::new(&gw.http());
    let info = tus.info(&format!("/v1/uploads/{}", result.id)).await?;
    assert_eq!(info["state"], "complete");
    assert_eq!(info["sha256"], sha256_hex(&source));
    assert_eq!(
        info["bytes_written"].as_u64(),
        Some(source.len() as u64),
        "some byte range was written twice"
    );
    Ok(())
}

/// A duplicate (same owner, same declared sha256) sends no data, over either transport.
#[tokio::test]
async fn duplicate_upload_sends_no_data() -> anyhow::Result<()> {
    let gw = Gateway::start_behind_edge(&[]).await?;
    let source = content(1 << 20, 5);
    let first = ws_upload(&gw.ws_url(), &source, 256 << 10, 16 << 20, true, |_| {}).await?;
    assert!(!first.deduplicated);
    let again = ws_upload(&gw.ws_url(), &source, 256 << 10, 16 << 20, true, |_| {}).await?;
    assert!(again.deduplicated);
    assert_eq!(again.bytes_sent, 0);
    assert_eq!(again.id, first.id);

    let tus = Tus::new(&gw.http());
    let meta = format!("sha256 {}", B64.encode(sha256_hex(&source)));
    let (s, h) = status_of(
        tus.request("POST", "/v1/uploads")
            .header("Upload-Length", source.len().to_string())
            .header("Upload-Metadata", meta),
    )
    .await;
    assert_eq!(s, 201);
    assert_eq!(header(&h, "upload-offset"), Some(source.len().to_string()));
    assert_eq!(header(&h, "outlast-deduplicated").as_deref(), Some("1"));
    let path = header(&h, "location").expect("Location");
    assert_eq!(id_of(&path), first.id);
    let info = tus.info(&path).await?;
    assert_eq!(info["bytes_written"].as_u64(), Some(source.len() as u64));

    // A wrong declared digest fails the upload with a clear error.
    let wrong = content(1000, 6);
    let meta = format!("sha256 {}", B64.encode(sha256_hex(b"something else")));
    let path = tus.create(1000, &[("Upload-Metadata", &meta)]).await?;
    let r = tus.patch(&path, 0, wrong).await?;
    assert_eq!(r.status(), 460);
    let body: serde_json::Value = r.json().await?;
    assert_eq!(body["code"], "checksum_mismatch");
    assert_eq!(tus.info(&path).await?["state"], "failed");
    Ok(())
}

/// Begun over the WebSocket, finished over tus (and the reverse); progress of tus bytes
/// reaches the owner's WebSocket.
#[tokio::test]
async fn transports_share_uploads_and_progress() -> anyhow::Result<()> {
    let gw = Gateway::start_behind_edge(&[]).await?;
    let tus = Tus::new(&gw.http());
    let source = content(3 << 20, 8);

    // tus first half, WebSocket second half.
    let path = tus.create(source.len() as u64, &[]).await?;
    let half = source.len() / 2;
    assert_eq!(
        tus.patch(&path, 0, source[..half].to_vec()).await?.status(),
        204
    );
    let mut ws = Client::connect(&gw.ws_url(), Codec::Json).await?;
    ws.send(&ClientMsg::UploadResume {
        req: Some(7),
        upload_id: id_of(&path),
    })
    .await?;
    let info = wait_for(&mut ws, Duration::from_secs(10), |c| match c {
        Control::UploadStatus {
            req: Some(7),
            upload,
            ..
        } => Some(upload.clone()),
        _ => None,
    })
    .await?;
    assert_eq!(info.offset, Offset(half as u64));
    drop(ws);
    // Finish the second half over the WebSocket with the resume helper's frames.
    let mut ws = Client::connect(&gw.ws_url(), Codec::MsgPack).await?;
    ws.send(&ClientMsg::UploadResume {
        req: Some(8),
        upload_id: id_of(&path),
    })
    .await?;
    wait_for(&mut ws, Duration::from_secs(10), |c| match c {
        Control::UploadStatus { req: Some(8), .. } => Some(()),
        _ => None,
    })
    .await?;
    // Chunk frames must fit in a WebSocket message (1 MiB by default).
    for start in (half..source.len()).step_by(512 << 10) {
        let end = (start + (512 << 10)).min(source.len());
        let mut frame =
            outlast_protocol::upload::encode_data_header(id_of(&path), Offset(start as u64))
                .to_vec();
        frame.extend_from_slice(&source[start..end]);
        futures::SinkExt::send(
            &mut ws.ws,
            tokio_tungstenite::tungstenite::Message::Binary(frame.into()),
        )
        .await?;
    }
    let complete = wait_for(&mut ws, Duration::from_secs(10), |c| match c {
        Control::UploadAck {
            complete: true,
            offset,
            ..
        } => Some((true, *offset)),
        _ => None,
    })
    .await?;
    assert_eq!(complete, (true, Offset(source.len() as u64)));
    assert_eq!(tus.info(&path).await?["sha256"], sha256_hex(&source));

    // WebSocket first, tus second; a watching connection sees progress of the tus bytes.
    let mut watcher = Client::connect(&gw.ws_url(), Codec::Json).await?;
    let mut writer = Client::connect(&gw.ws_url(), Codec::MsgPack).await?;
    writer
        .send(&ClientMsg::UploadCreate {
            req: Some(1),
            length: Some(source.len() as u64),
            metadata: Default::default(),
            sha256: None,
        })
        .await?;
    let info = wait_for(&mut writer, Duration::from_secs(10), |c| match c {
        Control::UploadStatus { upload, .. } => Some(upload.clone()),
        _ => None,
    })
    .await?;
    let mut frame =
        outlast_protocol::upload::encode_data_header(info.upload_id, Offset(0)).to_vec();
    frame.extend_from_slice(&source[..1000]);
    futures::SinkExt::send(
        &mut writer.ws,
        tokio_tungstenite::tungstenite::Message::Binary(frame.into()),
    )
    .await?;
    wait_for(&mut writer, Duration::from_secs(10), |c| match c {
        Control::UploadAck { offset, .. } if offset.0 == 1000 => Some(()),
        _ => None,
    })
    .await?;
    drop(writer);
    let path = format!("/v1/uploads/{}", info.upload_id);
    // The closed connection lets go of the upload; tus continues (retry while it is released).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = tus.patch(&path, 1000, source[1000..].to_vec()).await?;
        if r.status() == 204 {
            break;
        }
        assert_eq!(r.status(), 423);
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(tus.info(&path).await?["sha256"], sha256_hex(&source));
    let seen = wait_for(&mut watcher, Duration::from_secs(10), |c| match c {
        Control::UploadProgress {
            upload_id, offset, ..
        } if *upload_id == info.upload_id && offset.0 == source.len() as u64 => Some(()),
        _ => None,
    })
    .await;
    assert!(
        seen.is_ok(),
        "no upload_progress for the tus bytes: {seen:?}"
    );
    Ok(())
}

fn png(w: u32, h: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 128]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encode png");
    out.into_inner()
}

/// A complete upload is a job input; a job naming an upload still in progress waits for it
/// (and fails with `input_unavailable` if the upload is deleted).
#[tokio::test]
async fn uploads_are_job_inputs() -> anyhow::Result<()> {
    let gw = Gateway::start_behind_edge(&[]).await?;
    let tus = Tus::new(&gw.http());
    let image = png(64, 48);
    let path = tus.upload(&image, 1000).await?;
    let id = id_of(&path).to_string();
    let job = gw
        .submit(serde_json::json!({
            "backend": "demo",
            "workflow": {"steps": 2, "step_ms": 50},
            "inputs": {"image": id},
        }))
        .await?;
    let events = gw
        .api()
        .follow_to_end(&job, Duration::from_secs(30))
        .await?;
    let last = events.last().context("job did not finish")?;
    assert_eq!(last.kind.name(), "completed", "{last:?}");
    assert!(
        events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Output(_))),
        "no output: {events:?}"
    );

    let partial = tus.create(image.len() as u64, &[]).await?;
    assert_eq!(
        tus.patch(&partial, 0, image[..100].to_vec())
            .await?
            .status(),
        204
    );
    // Submitted before its upload finished: accepted, waiting in the queue with a reason, and
    // run as soon as the upload completes.
    let partial_id = id_of(&partial).to_string();
    let early = gw
        .submit(serde_json::json!({
            "backend": "demo",
            "workflow": {"steps": 1, "step_ms": 10},
            "inputs": {"image": partial_id},
        }))
        .await?;
    let api = gw.api();
    let waiting = api
        .wait_for_event(&early, Duration::from_secs(10), |e| {
            matches!(&e.kind, EventKind::Queued { reason: Some(r), .. } if r.contains(&partial_id))
        })
        .await?;
    assert!(
        matches!(&waiting.kind, EventKind::Queued { reason: Some(r), .. } if r == &format!("waiting for input {partial_id}")),
        "{waiting:?}"
    );
    let snapshot = api.snapshot(&early).await?;
    assert_eq!(
        snapshot.state,
        JobState::Queued,
        "not started without its input"
    );
    assert_eq!(
        tus.patch(&partial, 100, image[100..].to_vec())
            .await?
            .status(),
        204
    );
    let events = api.follow_to_end(&early, Duration::from_secs(30)).await?;
    let last = events.last().context("job did not finish")?;
    assert_eq!(last.kind.name(), "completed", "{events:?}");

    // An upload deleted while its job waits fails the job with `input_unavailable`.
    let doomed = tus.create(image.len() as u64, &[]).await?;
    let orphan = gw
        .submit(serde_json::json!({
            "backend": "demo",
            "workflow": {"steps": 1, "step_ms": 10},
            "inputs": {"image": id_of(&doomed).to_string()},
        }))
        .await?;
    assert_eq!(tus.request("DELETE", &doomed).send().await?.status(), 204);
    let events = api.follow_to_end(&orphan, Duration::from_secs(30)).await?;
    match &events.last().context("no events")?.kind {
        EventKind::Failed(f) => assert_eq!(f.code, FailureCode::InputUnavailable, "{f:?}"),
        other => panic!("expected failed, got {other:?}"),
    }
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.kind, EventKind::Started { .. })),
        "never started"
    );
    Ok(())
}
