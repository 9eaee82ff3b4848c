//! The edge (`cf-proxy`) behaves as Cloudflare does: idle connections are cut after the idle
//! time, an origin that stalls a plain response gives 524, a body above the limit gives 413 and
//! never reaches the origin (tus PATCHes below the limit pass), a `1001` cut arrives as a close
//! frame with code 1001 between two whole frames, and a job stream through random edge
//! restarts (1001 and resets) stays exact.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use outlast_e2e::ws::{Client, Incoming};
use outlast_e2e::{EdgeConfig, Gateway, Proxy};
use outlast_protocol::v1::{ClientMsg, ServerMsg};
use outlast_protocol::{Codec, JobEvent, JobId, Seq};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

const T: Duration = Duration::from_secs(20);

/// An edge with only what a test sets (no idle cut, no origin timeout, 100 MiB bodies).
fn bare() -> EdgeConfig {
    EdgeConfig {
        idle_timeout: None,
        origin_timeout: None,
        ..EdgeConfig::cloudflare()
    }
}

/// What a [`FakeOrigin`] does with the n-th request on a connection.
#[derive(Debug, Clone, Copy)]
enum Answer {
    /// `200` with this body, chunked.
    Chunked(&'static str),
    /// `200` with this body and a `Content-Length`, after a pause.
    Length(&'static str, Duration),
    /// Reads the request and never answers (the connection stays open).
    Never,
}

/// A tiny HTTP origin on a raw TCP listener that answers by script and counts what it saw.
#[derive(Debug)]
struct FakeOrigin {
    addr: SocketAddr,
    /// Connections accepted.
    connections: Arc<AtomicU64>,
    /// Requests read whole (head and body).
    requests: Arc<AtomicU64>,
    /// Bytes received in all.
    bytes: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeOrigin {
    async fn start(script: Vec<Answer>) -> anyhow::Result<FakeOrigin> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let connections = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let counters = (
            Arc::clone(&connections),
            Arc::clone(&requests),
            Arc::clone(&bytes),
        );
        let task = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((sock, _)) = listener.accept().await {
                counters.0.fetch_add(1, Ordering::SeqCst);
                let (requests, bytes, script) = (
                    Arc::clone(&counters.1),
                    Arc::clone(&counters.2),
                    script.clone(),
                );
                held.push(tokio::spawn(async move {
                    let _ = serve_script(sock, &script, &requests, &bytes).await;
                }));
            }
        });
        Ok(FakeOrigin {
            addr,
            connections,
            requests,
            bytes,
            task,
        })
    }
}

async fn serve_script(
    mut sock: TcpStream,
    script: &[Answer],
    requests: &AtomicU64,
    bytes: &AtomicU64,
) -> anyhow::Result<()> {
    let mut buf = Vec::new();
    for answer in script
        .iter()
        .copied()
        .chain(std::iter::repeat(Answer::Length("ok", Duration::ZERO)))
    {
        // One whole request: head, then a Content-Length or chunked body.
        let end = loop {
            if let Some(end) = request_end(&buf) {
                break end;
            }
            let mut tmp = [0u8; 16 * 1024];
            let n = sock.read(&mut tmp).await?;
            if n == 0 {
                return Ok(());
            }
            bytes.fetch_add(n as u64, Ordering::SeqCst);
            buf.extend_from_slice(&tmp[..n]);
        };
        buf.drain(..end);
        requests.fetch_add(1, Ordering::SeqCst);
        match answer {
            Answer::Chunked(body) => {
                let text = format!(
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                    body.len()
                );
                sock.write_all(text.as_bytes()).await?;
            }
            Answer::Length(body, pause) => {
                tokio::time::sleep(pause).await;
                let text = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                sock.write_all(text.as_bytes()).await?;
            }
            Answer::Never => {
                // Keep reading (and counting) so the socket stays open; never answer.
                let mut tmp = [0u8; 4096];
                while sock.read(&mut tmp).await? > 0 {}
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Where the first whole request in `buf` ends (bodies: Content-Length, or chunked up to the
/// last chunk; the tests' chunk data never contains `0\r\n\r\n`).
fn request_end(buf: &[u8]) -> Option<usize> {
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if head.contains("transfer-encoding: chunked") {
        let body = &buf[head_end..];
        return body
            .windows(5)
            .position(|w| w == b"0\r\n\r\n")
            .map(|p| head_end + p + 5);
    }
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    (buf.len() >= head_end + len).then_some(head_end + len)
}

/// Reads until EOF (or a reset); returns how long it took, failing after `within`.
async fn time_to_close(sock: &mut TcpStream, within: Duration) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let mut tmp = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(start + within, sock.read(&mut tmp)).await {
            Err(_) => anyhow::bail!("still open after {within:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn an_idle_connection_is_cut_after_the_idle_time() -> anyhow::Result<()> {
    let idle = Duration::from_millis(700);
    let edge = EdgeConfig {
        idle_timeout: Some(idle),
        ..bare()
    };
    // No pings within the test's time: the WebSocket below is silent.
    let gw = Gateway::start_behind(edge, &["--ping-interval", "60s"]).await?;
    let proxy = gw.edge()?;

    // A connection that never sends a request.
    let mut silent = TcpStream::connect(gw.client_addr()).await?;
    let took = time_to_close(&mut silent, idle * 10).await?;
    assert!(
        took >= idle - Duration::from_millis(50),
        "cut early: {took:?}"
    );
    assert_eq!(proxy.idle_cuts(), 1);

    // A kept-alive connection is cut once it has been idle after its response.
    let mut kept = TcpStream::connect(gw.client_addr()).await?;
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await?;
    let took = time_to_close(&mut kept, idle * 10).await?;
    assert!(
        took >= idle - Duration::from_millis(50),
        "cut early: {took:?}"
    );
    assert_eq!(proxy.idle_cuts(), 2);

    // A WebSocket on which nothing moves.
    let mut ws = Client::connect(&gw.ws_url(), Codec::Json).await?;
    let start = Instant::now();
    loop {
        match ws.recv(idle * 10).await? {
            Incoming::Closed(frame) => {
                assert!(frame.is_none(), "an idle cut sends no close frame");
                break;
            }
            Incoming::Msg(_) => {}
        }
    }
    assert!(start.elapsed() >= idle - Duration::from_millis(50));
    assert_eq!(proxy.idle_cuts(), 3);

    // Control: one kept-alive HTTP client busy every idle/4 for 4 idle times is never cut.
    let http = reqwest::Client::new();
    let before = proxy.stat("connections_total");
    let until = Instant::now() + idle * 4;
    while Instant::now() < until {
        let r = http.get(format!("{}/healthz", gw.http())).send().await?;
        assert_eq!(r.status(), 200);
        tokio::time::sleep(idle / 4).await;
    }
    assert_eq!(proxy.idle_cuts(), 3, "a busy connection was cut");
    assert_eq!(
        proxy.stat("connections_total"),
        before + 1,
        "every request used the one kept-alive connection"
    );
    Ok(())
}

#[tokio::test]
async fn an_origin_that_stalls_a_plain_response_gives_524() -> anyhow::Result<()> {
    // On one kept-alive connection: a chunked answer, a late (but in time) answer, then none.
    let origin = FakeOrigin::start(vec![
        Answer::Chunked("hello"),
        Answer::Length("world", Duration::from_millis(300)),
        Answer::Never,
    ])
    .await?;
    let timeout = Duration::from_secs(2);
    let edge = EdgeConfig {
        origin_timeout: Some(timeout),
        ..bare()
    };
    let proxy = Proxy::start_with(origin.addr, &edge).await?;
    let http = reqwest::Client::builder().timeout(T).build()?;
    let get = |path: &str| http.get(format!("{}{path}", proxy.http())).send();
    let r = get("/a").await?;
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await?, "hello");
    let r = get("/b").await?;
    assert_eq!(r.status(), 200, "an answer within the timeout passes");
    assert_eq!(r.text().await?, "world");
    let start = Instant::now();
    let r = get("/c").await?;
    let took = start.elapsed();
    assert_eq!(r.status(), 524);
    assert!(
        took >= timeout - Duration::from_millis(50),
        "524 after {took:?}"
    );
    assert_eq!(
        origin.connections.load(Ordering::SeqCst),
        1,
        "the three requests shared one connection (the edge found each response's end)"
    );
    assert_eq!(origin.requests.load(Ordering::SeqCst), 3);
    assert_eq!(proxy.stat("origin_timeouts"), 1);
    Ok(())
}

#[tokio::test]
async fn a_body_above_the_limit_gives_413_and_the_origin_never_sees_it() -> anyhow::Result<()> {
    let origin = FakeOrigin::start(Vec::new()).await?;
    let limit = 64 * 1024;
    let edge = EdgeConfig {
        max_body_bytes: limit,
        ..bare()
    };
    let proxy = Proxy::start_with(origin.addr, &edge).await?;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/uploads/x", proxy.http());

    // Content-Length above the limit: refused before anything is forwarded.
    let r = http.post(&url).body(vec![b'x'; 100 * 1024]).send().await?;
    assert_eq!(r.status(), 413);
    assert_eq!(origin.connections.load(Ordering::SeqCst), 0);
    assert_eq!(origin.bytes.load(Ordering::SeqCst), 0);

    // At the limit: forwarded whole.
    let r = http
        .post(&url)
        .body(vec![b'x'; limit as usize])
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    assert_eq!(origin.requests.load(Ordering::SeqCst), 1);

    // A chunked body is counted as it streams: above the limit the origin never gets its end.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..12).map(|_| Ok(vec![b'x'; 8 * 1024])).collect();
    let r = reqwest::Client::new()
        .post(&url)
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await?;
    assert_eq!(r.status(), 413);
    assert_eq!(
        origin.requests.load(Ordering::SeqCst),
        1,
        "the origin saw the chunked request complete"
    );
    assert_eq!(proxy.stat("too_large"), 2);
    Ok(())
}

#[tokio::test]
async fn a_tus_upload_with_patches_below_the_limit_passes() -> anyhow::Result<()> {
    use sha2::Digest;
    let limit = 256 * 1024;
    let edge = EdgeConfig {
        max_body_bytes: limit,
        ..EdgeConfig::scaled(outlast_e2e::proxy::SCALED_PING_INTERVAL)
    };
    let gw = Gateway::start_behind(edge, &[]).await?;
    let source: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let http = reqwest::Client::new();
    let tus = |method: reqwest::Method, path: &str| {
        http.request(method, format!("{}{path}", gw.http()))
            .header("Tus-Resumable", "1.0.0")
    };
    let r = tus(reqwest::Method::POST, "/v1/uploads")
        .header("Upload-Length", source.len().to_string())
        .send()
        .await?;
    assert_eq!(r.status(), 201);
    let location = r.headers()["location"].to_str()?.to_owned();
    let path = location
        .find("/v1/uploads/")
        .map(|i| location[i..].to_owned())
        .unwrap_or(location);
    let patch = |offset: usize, body: &[u8]| {
        tus(reqwest::Method::PATCH, &path)
            .header("Upload-Offset", offset.to_string())
            .header("Content-Type", "application/offset+octet-stream")
            .body(body.to_vec())
            .send()
    };
    // A PATCH above the limit is the edge's 413, and nothing of it is stored.
    let r = patch(0, &source[..300_000]).await?;
    assert_eq!(r.status(), 413);
    assert_eq!(
        r.headers()["server"],
        "cf-proxy",
        "the edge answered, not the gateway"
    );
    let head = tus(reqwest::Method::HEAD, &path).send().await?;
    assert_eq!(head.headers()["upload-offset"], "0");
    // PATCHes of 200 000 bytes pass, to the last byte.
    let mut offset = 0;
    for piece in source.chunks(200_000) {
        let r = patch(offset, piece).await?;
        assert_eq!(r.status(), 204, "PATCH at {offset}");
        offset += piece.len();
    }
    let info: serde_json::Value = http
        .get(format!("{}{path}", gw.http()))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(info["state"], "complete", "{info}");
    assert_eq!(info["sha256"], hex::encode(sha2::Sha256::digest(&source)));
    Ok(())
}

/// Submits a demo job over HTTP; returns its id.
async fn demo_job(gw: &Gateway, steps: u32, step_ms: u64) -> anyhow::Result<JobId> {
    let body =
        serde_json::json!({"backend": "demo", "workflow": {"steps": steps, "step_ms": step_ms}});
    Ok(gw.api().submit(&body).await?.job_id)
}

async fn subscribe(client: &mut Client, job: JobId, after: Option<Seq>) -> anyhow::Result<()> {
    client
        .send(&ClientMsg::Subscribe {
            req: None,
            job_id: job,
            after,
        })
        .await
}

#[tokio::test]
async fn a_1001_cut_arrives_as_a_close_frame_with_code_1001() -> anyhow::Result<()> {
    let gw = Gateway::start_behind_edge(&[]).await?;
    let proxy = gw.edge()?;
    // A busy stream (many events a second), so the cut lands while frames are in flight.
    let job = demo_job(&gw, 400, 5).await?;
    for codec in [Codec::MsgPack, Codec::Json] {
        let mut client = Client::connect(&gw.ws_url(), codec).await?;
        subscribe(&mut client, job, None).await?;
        let mut events = 0;
        while events < 5 {
            if let Incoming::Msg(ServerMsg::Event(_)) = client.recv(T).await? {
                events += 1;
            }
        }
        assert_eq!(proxy.cut_websockets(true)?, 1, "one WebSocket open");
        // Every frame before the close decodes (recv fails on a torn one), then code 1001.
        let frame = loop {
            match client.recv(T).await? {
                Incoming::Msg(_) => {}
                Incoming::Closed(frame) => break frame,
            }
        };
        let code = frame.map(|f| u16::from(f.code));
        assert_eq!(code, Some(1001), "{codec:?}");
    }
    // The abrupt kind: no close frame at all.
    let mut client = Client::connect(&gw.ws_url(), Codec::Json).await?;
    subscribe(&mut client, job, None).await?;
    assert!(matches!(client.recv(T).await?, Incoming::Msg(_)));
    assert_eq!(proxy.cut_websockets(false)?, 1);
    let frame = loop {
        match client.recv(T).await? {
            Incoming::Msg(_) => {}
            Incoming::Closed(frame) => break frame,
        }
    };
    assert!(frame.is_none(), "a reset carries no close frame: {frame:?}");
    assert_eq!(proxy.stat("cuts_1001"), 2);
    assert_eq!(proxy.stat("cuts_abrupt"), 1);
    Ok(())
}

#[tokio::test]
async fn a_job_stream_through_random_edge_restarts_stays_exact() -> anyhow::Result<()> {
    let edge = EdgeConfig {
        random_cut_mean: Some(Duration::from_millis(200)),
        ..EdgeConfig::scaled(outlast_e2e::proxy::SCALED_PING_INTERVAL)
    };
    let gw = Gateway::start_behind(edge, &[]).await?;
    let job = demo_job(&gw, 100, 30).await?;
    let mut log: Vec<JobEvent> = Vec::new();
    let (mut going_away, mut resets) = (0, 0);
    let deadline = Instant::now() + Duration::from_secs(120);
    'connections: loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "no terminal event; {} events",
            log.len()
        );
        // A cut may come before the welcome or the subscription: then connect again.
        let Ok(mut client) = Client::connect(&gw.ws_url(), Codec::Json).await else {
            continue;
        };
        if subscribe(&mut client, job, log.last().map(|e| e.seq))
            .await
            .is_err()
        {
            continue;
        }
        loop {
            match client.recv(T).await? {
                Incoming::Msg(ServerMsg::Event(e)) => {
                    let expected = log.last().map_or(Seq(1), |l| l.seq.next());
                    anyhow::ensure!(e.seq == expected, "expected {expected}, got {}", e.seq);
                    let terminal = e.kind.is_terminal();
                    log.push(e);
                    if terminal {
                        break 'connections;
                    }
                }
                Incoming::Msg(_) => {}
                Incoming::Closed(Some(f)) => {
                    anyhow::ensure!(u16::from(f.code) == 1001, "close {f:?}");
                    going_away += 1;
                    continue 'connections;
                }
                Incoming::Closed(None) => {
                    resets += 1;
                    continue 'connections;
                }
            }
        }
    }
    assert_eq!(
        log,
        gw.api().events(job).await?,
        "the client holds exactly the stored log"
    );
    assert_eq!(log.iter().filter(|e| e.kind.is_terminal()).count(), 1);
    assert!(
        going_away >= 1 && resets >= 1,
        "1001: {going_away}, resets: {resets}"
    );
    let proxy = gw.edge()?;
    assert!(proxy.stat("random_cuts") >= going_away + resets);
    Ok(())
}
