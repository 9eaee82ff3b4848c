//! Connection hygiene, against the real binary with shortened `[http]` limits: idle and
//! trickling connections are closed within the configured times while `/healthz` keeps
//! answering; at the connection limit new connections are refused (probes still answer on the
//! reserve) and open ones keep being served; a silent tus PATCH releases its upload.

#[path = "uploads_common.rs"]
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use common::{id_of, wait_for};
use outlast_e2e::Gateway;
use outlast_e2e::ws::Client;
use outlast_protocol::Codec;
use outlast_protocol::v1::Control;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// Reads one HTTP response (head and a `content-length` body) from `tcp`.
async fn read_response(tcp: &mut TcpStream) -> anyhow::Result<(u16, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let status: u16 = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .context("status line")?;
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                let n = tcp.read(&mut chunk).await?;
                anyhow::ensure!(n > 0, "closed inside the body");
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).to_string();
            return Ok((status, body));
        }
        let n = tcp.read(&mut chunk).await?;
        anyhow::ensure!(n > 0, "closed before a response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One request on a fresh connection; its answer.
async fn once(addr: SocketAddr, request: &str) -> anyhow::Result<(u16, String)> {
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.write_all(request.as_bytes()).await?;
    tokio::time::timeout(Duration::from_secs(10), read_response(&mut tcp)).await?
}

/// Asks `/metrics` on `tcp` (a keep-alive connection) until the gateway counts `want` open
/// HTTP connections.
async fn open_connections_reach(tcp: &mut TcpStream, want: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await?;
        let (status, body) = read_response(tcp).await?;
        anyhow::ensure!(status == 200, "metrics answered {status}");
        let open = body.lines().find_map(|l| {
            l.strip_prefix("outlast_http_connections ")
                .and_then(|v| v.trim().parse::<f64>().ok())
        });
        if open == Some(want as f64) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "open connections stayed at {open:?}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const HEALTHZ: &str = "GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// Waits until the peer closes `tcp` (EOF or reset), sending `trickle` one byte every
/// `every` meanwhile; how long it took, or an error after `within`.
async fn closed_within(
    mut tcp: TcpStream,
    trickle: &[u8],
    every: Duration,
    within: Duration,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut sent = 0;
    let mut buf = [0u8; 1024];
    loop {
        tokio::select! {
            r = tcp.read(&mut buf) => match r {
                Ok(0) | Err(_) => return Ok(start.elapsed()),
                Ok(_) => {} // an answer (408) before the close
            },
            () = tokio::time::sleep(every), if sent < trickle.len() => {
                if tcp.write_all(&trickle[sent..sent + 1]).await.is_err() {
                    return Ok(start.elapsed());
                }
                sent += 1;
            }
            () = tokio::time::sleep_until(start + within) => {
                anyhow::bail!("still open after {within:?}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_trickling_connections_are_closed_while_healthz_answers() -> anyhow::Result<()> {
    let gw = Gateway::start(&[
        "--ping-interval",
        "1s",
        "--long-poll-timeout",
        "1s",
        "--http-header-read-timeout",
        "1s",
        "--http-idle-timeout",
        "3s",
        "--http-body-read-timeout",
        "2s",
        "--http-body-idle-timeout",
        "1s",
    ])
    .await?;
    let addr = gw.addr;
    let mut watchers = tokio::task::JoinSet::new();
    // 300 connections that never send a byte: the head timeout (1 s) ends them.
    for _ in 0..300 {
        let tcp = TcpStream::connect(addr).await?;
        watchers.spawn(async move {
            (
                "idle",
                closed_within(tcp, b"", Duration::from_secs(60), Duration::from_secs(6)).await,
            )
        });
    }
    // Heads trickled a byte every 100 ms: never complete within 1 s.
    for _ in 0..10 {
        let tcp = TcpStream::connect(addr).await?;
        let head = b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        watchers.spawn(async move {
            (
                "header",
                closed_within(
                    tcp,
                    head,
                    Duration::from_millis(100),
                    Duration::from_secs(6),
                )
                .await,
            )
        });
    }
    // Job bodies trickled a byte every 200 ms (bytes keep coming, so only the whole-body limit
    // of 2 s ends them).
    for _ in 0..10 {
        let mut tcp = TcpStream::connect(addr).await?;
        tcp.write_all(
            b"POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
        )
        .await?;
        let body = vec![b' '; 200];
        watchers.spawn(async move {
            (
                "body",
                closed_within(
                    tcp,
                    &body,
                    Duration::from_millis(200),
                    Duration::from_secs(8),
                )
                .await,
            )
        });
    }
    // Meanwhile /healthz answers on fresh connections.
    let mut answered = 0;
    while !watchers.is_empty() {
        tokio::select! {
            done = watchers.join_next() => {
                let (what, took) = done.context("a watcher")??;
                let took = took.with_context(|| format!("a {what} connection"))?;
                anyhow::ensure!(took >= Duration::from_millis(500), "{what} closed too early ({took:?})");
            }
            health = once(addr, HEALTHZ) => {
                let (status, body) = health?;
                anyhow::ensure!(status == 200 && body == "ok", "healthz answered {status} {body}");
                answered += 1;
            }
        }
    }
    anyhow::ensure!(answered > 0, "healthz was never asked");
    let (status, _) = once(addr, HEALTHZ).await?;
    anyhow::ensure!(status == 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_connection_limit_new_connections_are_refused_and_others_served()
-> anyhow::Result<()> {
    let gw = Gateway::start(&[
        "--http-max-connections",
        "20",
        "--http-reserved-connections",
        "2",
    ])
    .await?;
    let addr = gw.addr;
    // A keep-alive connection opened first keeps being served at the limit.
    let mut kept = TcpStream::connect(addr).await?;
    kept.write_all(HEALTHZ.as_bytes()).await?;
    anyhow::ensure!(read_response(&mut kept).await?.0 == 200);
    let mut idle = Vec::new();
    for _ in 0..19 {
        idle.push(TcpStream::connect(addr).await?);
    }
    // Now at the limit: a new connection lands on the reserve, where only probes answer.
    let mut probe = TcpStream::connect(addr).await?;
    probe.write_all(HEALTHZ.as_bytes()).await?;
    let (status, _) = read_response(&mut probe).await?;
    anyhow::ensure!(status == 200, "healthz on the reserve answered {status}");
    let (status, body) = once(addr, "GET /v1/jobs HTTP/1.1\r\nHost: localhost\r\n\r\n").await?;
    anyhow::ensure!(
        status == 503 && body.contains("\"overloaded\""),
        "a job request on the reserve answered {status} {body}"
    );
    // That connection's place comes back once the client has closed its side (the gateway
    // lingers until then): 20 on the normal places and the probe's.
    open_connections_reach(&mut probe, 21).await?;
    // Reserve full too (the probe connection and one more): refused outright.
    let _second = TcpStream::connect(addr).await?;
    let (status, body) = once(addr, HEALTHZ).await?;
    anyhow::ensure!(
        status == 503 && body.contains("\"overloaded\""),
        "beyond the reserve answered {status} {body}"
    );
    // The process keeps serving the connections it holds.
    kept.write_all(b"POST /v1/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 19\r\n\r\n{\"backend\":\"demo\"}\n").await?;
    let (status, body) = read_response(&mut kept).await?;
    anyhow::ensure!(
        status == 202,
        "submit on a held connection answered {status} {body}"
    );
    // Places come back when connections close.
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = once(addr, "GET /v1/jobs HTTP/1.1\r\nHost: localhost\r\n\r\n").await?;
        if status == 200 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "still refused after closing: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_patch_commits_what_arrived_and_releases_its_upload() -> anyhow::Result<()> {
    let gw = Gateway::start(&[
        "--http-body-idle-timeout",
        "1s",
        "--upload-min-free-bytes",
        "0",
    ])
    .await?;
    let http = reqwest::Client::new();
    let created = http
        .post(format!("{}/v1/uploads", gw.http()))
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", "1000")
        .send()
        .await?;
    anyhow::ensure!(
        created.status() == 201,
        "create answered {}",
        created.status()
    );
    let location = created
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .context("Location")?
        .to_owned();
    let path = location
        .strip_prefix(&gw.http())
        .unwrap_or(&location)
        .to_owned();
    let mut watch = Client::connect(&gw.ws_url(), Codec::Json).await?;
    // 100 of 1000 bytes, then silence with the connection held open.
    let mut silent = TcpStream::connect(gw.addr).await?;
    silent
        .write_all(
            format!(
                "PATCH {path} HTTP/1.1\r\nHost: localhost\r\nTus-Resumable: 1.0.0\r\n\
                 Content-Type: application/offset+octet-stream\r\nUpload-Offset: 0\r\n\
                 Content-Length: 1000\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    silent.write_all(&[7u8; 100]).await?;
    // The silent PATCH holds the upload once its bytes show up as progress; a PATCH sent
    // before that could take the lock first and the silent one would be refused (423).
    let id = id_of(&path);
    wait_for(&mut watch, Duration::from_secs(10), |c| match c {
        Control::UploadProgress {
            upload_id, offset, ..
        } if *upload_id == id && offset.0 == 100 => Some(()),
        _ => None,
    })
    .await?;
    let start = Instant::now();
    // The rest at the committed offset succeeds once the silent PATCH let go (423 before).
    let deadline = start + Duration::from_secs(10);
    let mut locked = 0;
    loop {
        let r = http
            .patch(format!("{}{path}", gw.http()))
            .header("Tus-Resumable", "1.0.0")
            .header("Content-Type", "application/offset+octet-stream")
            .header("Upload-Offset", "100")
            .body(vec![8u8; 900])
            .send()
            .await?;
        match r.status().as_u16() {
            204 => {
                let offset = r
                    .headers()
                    .get("upload-offset")
                    .and_then(|v| v.to_str().ok());
                anyhow::ensure!(offset == Some("1000"), "offset after the rest: {offset:?}");
                break;
            }
            423 => locked += 1,
            other => anyhow::bail!("second PATCH answered {other}"),
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the upload stayed locked ({locked} tries)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::ensure!(
        start.elapsed() >= Duration::from_millis(800),
        "released before the body timeout: {:?}",
        start.elapsed()
    );
    // The silent client got its answer (the committed offset) and the connection closed.
    let (status, _) =
        tokio::time::timeout(Duration::from_secs(5), read_response(&mut silent)).await??;
    anyhow::ensure!(
        status == 204 || status == 408,
        "silent PATCH answered {status}"
    );
    Ok(())
}

/// An answer given before the request body was read (404 for an unknown upload here; 423,
/// 401 and 413 go the same way) reaches a client that is still sending its body: the
/// gateway closes with a lingering read instead of resetting the connection under it. Direct
/// and behind the edge, where the reset used to tear down the edge's connection too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_reaches_a_client_still_sending_its_body() -> anyhow::Result<()> {
    for behind_edge in [false, true] {
        let gw = if behind_edge {
            Gateway::start_behind_edge(&[]).await?
        } else {
            Gateway::start(&[]).await?
        };
        let http = reqwest::Client::new();
        let url = format!(
            "{}/v1/uploads/upl_00000000000000000000000000000000",
            gw.http()
        );
        let body = vec![5u8; 4 << 20];
        for round in 0..20 {
            let r = http
                .patch(&url)
                .header("Tus-Resumable", "1.0.0")
                .header("Content-Type", "application/offset+octet-stream")
                .header("Upload-Offset", "0")
                .body(body.clone())
                .send()
                .await
                .with_context(|| format!("round {round}, behind the edge: {behind_edge}"))?;
            anyhow::ensure!(
                r.status() == 404,
                "round {round}, behind the edge: {behind_edge}: answered {}",
                r.status()
            );
        }
    }
    Ok(())
}
