//! Uploads one prepared file, over the WebSocket (chunk frames, a window of unacknowledged
//! bytes, the protocol crate's adaptive `ChunkSizer`) or over tus. The sha256 goes first, so
//! the gateway answers a file it already has without a byte being sent; a known upload id
//! resumes from the server's durable offset.

use std::collections::BTreeMap;
use std::io::SeekFrom;
use std::time::{Duration, Instant};

use base64::Engine;
use futures::{SinkExt, StreamExt};
use outlast_protocol::upload::{
    ChunkSizer, UploadInfo, UploadLimits, UploadState, encode_data_header,
};
use outlast_protocol::v1::{ClientMsg, Control, ServerMsg};
use outlast_protocol::{ErrorCode, Offset, UploadId};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_tungstenite::tungstenite::Message;

use crate::cli::Transport;
use crate::net::{Ctx, Retry, Stop};
use crate::prepare::Prepared;
use crate::report::Event;

/// Smallest chunk: on a 2 Mbit/s line this is ~65 ms, so progress shows at once.
const MIN_CHUNK: u64 = 16 << 10;
/// Largest chunk this client sends in one frame or PATCH.
const MAX_CHUNK: u64 = 8 << 20;

/// A finished upload.
#[derive(Debug, Clone)]
pub struct Done {
    /// The complete upload.
    pub upload_id: UploadId,
    /// The server already had the content.
    pub deduplicated: bool,
    /// Bytes this process sent for it.
    pub sent: u64,
}

/// Why a file was not uploaded.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The run stops (Ctrl-C or give-up).
    #[error(transparent)]
    Stop(#[from] Stop),
    /// The gateway refuses this file for good (too large, checksum mismatch, ...).
    #[error("{code}: {message}")]
    Refused {
        /// Stable code.
        code: String,
        /// For people.
        message: String,
    },
}

/// One attempt's failure.
enum Attempt {
    Transient(anyhow::Error),
    Refused(String, String),
    Stop(Stop),
}

impl From<anyhow::Error> for Attempt {
    fn from(e: anyhow::Error) -> Self {
        Attempt::Transient(e)
    }
}

/// Uploads `prepared` (already created as `existing` when known); `created` is called with
/// a new upload id before any byte is sent, so the caller can record it durably.
pub async fn upload(
    ctx: &Ctx,
    rel: &str,
    prepared: &Prepared,
    mut existing: Option<UploadId>,
    created: impl AsyncFn(UploadId) -> anyhow::Result<()>,
) -> Result<Done, UploadError> {
    let mut retry = Retry::new("upload", ctx.args.retry_for);
    let mut sizer = ChunkSizer::new(MIN_CHUNK, MAX_CHUNK, Duration::from_secs(1));
    let mut sent = 0u64;
    loop {
        if ctx.cancel.is_cancelled() {
            return Err(Stop::Interrupted.into());
        }
        let result = match ctx.args.transport {
            Transport::Ws => {
                ws_attempt(
                    ctx,
                    rel,
                    prepared,
                    &mut existing,
                    &created,
                    &mut sizer,
                    &mut sent,
                    &mut retry,
                )
                .await
            }
            Transport::Tus => {
                tus_attempt(
                    ctx,
                    rel,
                    prepared,
                    &mut existing,
                    &created,
                    &mut sizer,
                    &mut sent,
                    &mut retry,
                )
                .await
            }
        };
        match result {
            Ok(mut done) => {
                done.sent = sent;
                return Ok(done);
            }
            Err(Attempt::Refused(code, message)) => {
                return Err(UploadError::Refused { code, message });
            }
            Err(Attempt::Stop(s)) => return Err(s.into()),
            Err(Attempt::Transient(e)) => retry.failed(ctx, &e).await?,
        }
    }
}

async fn read_chunk(
    file: &mut tokio::fs::File,
    offset: u64,
    len: usize,
) -> anyhow::Result<Vec<u8>> {
    file.seek(SeekFrom::Start(offset)).await?;
    let mut buf = vec![0u8; len];
    file.read_exact(&mut buf).await?;
    Ok(buf)
}

fn progress(ctx: &Ctx, rel: &str, id: UploadId, offset: u64, length: u64, rate: u64) {
    ctx.report.emit(Event::UploadProgress {
        file: rel.to_string(),
        upload_id: id.to_string(),
        offset,
        length,
        bytes_per_sec: rate,
    });
}

/// Waits for the `upload_status` answering request `req`.
async fn status(
    ws: &mut crate::net::Ws,
    req: u64,
) -> Result<(UploadInfo, bool, UploadLimits), Attempt> {
    loop {
        match crate::net::recv(ws, Duration::from_secs(30)).await? {
            None => return Err(anyhow::anyhow!("no upload_status within 30 s").into()),
            Some(ServerMsg::Control(Control::UploadStatus {
                req: Some(r),
                upload,
                deduplicated,
                limits,
            })) if r == req => return Ok((upload, deduplicated, limits)),
            Some(ServerMsg::Control(Control::Error {
                req: Some(r),
                code,
                message,
            })) if r == req => {
                return Err(match code {
                    ErrorCode::NotFound => Attempt::Refused("not_found".into(), message),
                    ErrorCode::LimitExceeded
                    | ErrorCode::ShuttingDown
                    | ErrorCode::Internal
                    | ErrorCode::UploadLocked => anyhow::anyhow!("{message}").into(),
                    other => Attempt::Refused(other.as_str().into(), message),
                });
            }
            Some(_) => continue,
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn ws_attempt(
    ctx: &Ctx,
    rel: &str,
    prepared: &Prepared,
    existing: &mut Option<UploadId>,
    created: &impl AsyncFn(UploadId) -> anyhow::Result<()>,
    sizer: &mut ChunkSizer,
    sent: &mut u64,
    retry: &mut Retry,
) -> Result<Done, Attempt> {
    let mut ws = ctx.connect_ws().await?;
    retry.ok();
    let length = prepared.size;
    let (mut info, dedup, limits) = loop {
        let msg = match existing {
            Some(id) => ClientMsg::UploadResume {
                req: Some(1),
                upload_id: *id,
            },
            None => ClientMsg::UploadCreate {
                req: Some(1),
                length: Some(length),
                metadata: BTreeMap::from([("filename".to_string(), file_name(rel))]),
                sha256: Some(prepared.sha256.clone()),
            },
        };
        crate::net::send(&mut ws, &msg).await?;
        match status(&mut ws, 1).await {
            // The upload expired or was collected: start a new one.
            Err(Attempt::Refused(code, _)) if code == "not_found" && existing.is_some() => {
                *existing = None;
            }
            other => break other?,
        }
    };
    let id = info.upload_id;
    if existing.is_none() {
        created(id).await?;
        *existing = Some(id);
    }
    if dedup || info.state == UploadState::Complete {
        progress(ctx, rel, id, length, length, 0);
        return Ok(Done {
            upload_id: id,
            deduplicated: dedup,
            sent: 0,
        });
    }
    if info.state == UploadState::Failed {
        return Err(Attempt::Refused(
            "checksum_mismatch".into(),
            info.error.unwrap_or_else(|| "the upload failed".into()),
        ));
    }
    let max_chunk = limits.max_chunk_bytes.clamp(MIN_CHUNK, MAX_CHUNK);
    *sizer = resized(*sizer, limits.target_chunk_ms, max_chunk);
    let mut file = tokio::fs::File::open(&prepared.path)
        .await
        .map_err(anyhow::Error::from)?;
    let (mut sink, mut stream) = ws.split();
    let mut acked = info.offset.0;
    let mut next = acked;
    let mut last_ack = Instant::now();
    let mut rate = 0u64;
    progress(ctx, rel, id, acked, length, 0);
    loop {
        let window = limits.window_bytes.min((sizer.next() * 4).max(1 << 20));
        // Send while the window has room.
        while next < length && next - acked < window {
            if ctx.cancel.is_cancelled() {
                let _ = sink.send(Message::Close(None)).await;
                return Err(Attempt::Stop(Stop::Interrupted));
            }
            let n = sizer.next().min(max_chunk).min(length - next) as usize;
            if let Some(l) = &ctx.limiter {
                l.take(n).await;
            }
            let data = read_chunk(&mut file, next, n).await?;
            let mut frame = encode_data_header(id, Offset(next)).to_vec();
            frame.extend_from_slice(&data);
            tokio::select! {
                r = sink.send(Message::binary(frame)) => r.map_err(anyhow::Error::from)?,
                () = ctx.cancel.cancelled() => return Err(Attempt::Stop(Stop::Interrupted)),
            }
            next += n as u64;
            *sent += n as u64;
        }
        let msg = tokio::select! {
            m = stream.next() => m,
            () = ctx.cancel.cancelled() => {
                let _ = sink.send(Message::Close(None)).await;
                return Err(Attempt::Stop(Stop::Interrupted));
            }
            () = tokio::time::sleep(Duration::from_secs(60)) => {
                return Err(anyhow::anyhow!("no upload_ack within 60 s").into());
            }
        };
        let text = match msg {
            None => return Err(anyhow::anyhow!("connection closed").into()),
            Some(Err(e)) => return Err(anyhow::Error::from(e).into()),
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(c))) => {
                return Err(anyhow::anyhow!("closed by the server ({c:?})").into());
            }
            Some(Ok(_)) => continue,
        };
        let msg: ServerMsg = match outlast_protocol::Codec::Json.decode(text.as_bytes()) {
            Ok(m) => m,
            Err(_) => continue,
        };
        match msg {
            ServerMsg::Control(Control::UploadAck {
                upload_id,
                offset,
                complete,
            }) if upload_id == id => {
                let now = Instant::now();
                if offset.0 > acked {
                    let elapsed = now - last_ack;
                    sizer.record(offset.0 - acked, elapsed);
                    rate = ((offset.0 - acked) as f64 / elapsed.as_secs_f64().max(1e-3)) as u64;
                    acked = offset.0;
                    last_ack = now;
                }
                progress(ctx, rel, id, acked, length, rate);
                if complete {
                    let _ = sink.send(Message::Close(None)).await;
                    return Ok(Done {
                        upload_id: id,
                        deduplicated: false,
                        sent: 0,
                    });
                }
            }
            ServerMsg::Control(Control::Error { code, message, .. }) => {
                if code == ErrorCode::OffsetMismatch {
                    // Ask where the server stands and continue from there.
                    let mut ws = sink.reunite(stream).map_err(|e| anyhow::anyhow!("{e}"))?;
                    crate::net::send(
                        &mut ws,
                        &ClientMsg::UploadResume {
                            req: Some(2),
                            upload_id: id,
                        },
                    )
                    .await?;
                    let (fresh, _, _) = status(&mut ws, 2).await?;
                    info = fresh;
                    acked = info.offset.0;
                    next = acked;
                    (sink, stream) = ws.split();
                } else if code == ErrorCode::ChecksumMismatch {
                    return Err(Attempt::Refused(code.as_str().into(), message));
                } else {
                    return Err(anyhow::anyhow!("{}: {message}", code.as_str()).into());
                }
            }
            _ => {}
        }
    }
}

fn resized(old: ChunkSizer, target_ms: u64, max: u64) -> ChunkSizer {
    let target = Duration::from_millis(target_ms.clamp(200, 10_000));
    let mut s = ChunkSizer::new(MIN_CHUNK, max, target);
    // Keep what was learned on the previous connection.
    s.record(old.next(), target);
    s
}

fn file_name(rel: &str) -> String {
    rel.rsplit('/').next().unwrap_or(rel).to_string()
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

#[allow(clippy::too_many_arguments)]
async fn tus_attempt(
    ctx: &Ctx,
    rel: &str,
    prepared: &Prepared,
    existing: &mut Option<UploadId>,
    created: &impl AsyncFn(UploadId) -> anyhow::Result<()>,
    sizer: &mut ChunkSizer,
    sent: &mut u64,
    retry: &mut Retry,
) -> Result<Done, Attempt> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let length = prepared.size;
    let mut max_chunk = MAX_CHUNK;
    let (id, mut offset, dedup) = loop {
        match existing {
            None => {
                let r = ctx
                    .auth(ctx.http.post(ctx.url("/v1/uploads")))
                    .header("tus-resumable", "1.0.0")
                    .header("upload-length", length)
                    .header(
                        "upload-metadata",
                        format!(
                            "filename {},sha256 {}",
                            b64(&file_name(rel)),
                            b64(&prepared.sha256)
                        ),
                    )
                    .send()
                    .await
                    .map_err(anyhow::Error::from)?;
                retry.ok();
                if let Some(m) = header(&r, "outlast-max-chunk-size").and_then(|v| v.parse().ok()) {
                    max_chunk = MAX_CHUNK.min(m);
                }
                let status = r.status();
                if status != 201 {
                    return Err(refusal(status, r.text().await.unwrap_or_default()));
                }
                let id: UploadId = header(&r, "location")
                    .and_then(|l| l.rsplit('/').next())
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| anyhow::anyhow!("tus creation without a usable Location"))?;
                let dedup = header(&r, "outlast-deduplicated") == Some("1");
                let offset = header(&r, "upload-offset")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                created(id).await?;
                *existing = Some(id);
                break (id, offset, dedup);
            }
            Some(id) => {
                let r = ctx
                    .auth(ctx.http.head(ctx.url(&format!("/v1/uploads/{id}"))))
                    .header("tus-resumable", "1.0.0")
                    .send()
                    .await
                    .map_err(anyhow::Error::from)?;
                retry.ok();
                match r.status().as_u16() {
                    200 => {}
                    404 | 410 => {
                        *existing = None;
                        continue;
                    }
                    s => return Err(anyhow::anyhow!("HEAD answered {s}").into()),
                }
                if header(&r, "outlast-upload-state") == Some("failed") {
                    return Err(Attempt::Refused(
                        "checksum_mismatch".into(),
                        "the upload failed its checksum".into(),
                    ));
                }
                let offset = header(&r, "upload-offset")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                break (*id, offset, false);
            }
        }
    };
    progress(ctx, rel, id, offset, length, 0);
    if dedup || offset >= length {
        return Ok(Done {
            upload_id: id,
            deduplicated: dedup,
            sent: 0,
        });
    }
    let mut file = tokio::fs::File::open(&prepared.path)
        .await
        .map_err(anyhow::Error::from)?;
    while offset < length {
        if ctx.cancel.is_cancelled() {
            return Err(Attempt::Stop(Stop::Interrupted));
        }
        let n = sizer.next().min(max_chunk).min(length - offset) as usize;
        if let Some(l) = &ctx.limiter {
            l.take(n).await;
        }
        let data = read_chunk(&mut file, offset, n).await?;
        let started = Instant::now();
        let send = ctx
            .auth(ctx.http.patch(ctx.url(&format!("/v1/uploads/{id}"))))
            .header("tus-resumable", "1.0.0")
            .header("upload-offset", offset)
            .header("content-type", "application/offset+octet-stream")
            .body(data)
            .send();
        let r = tokio::select! {
            r = send => r.map_err(anyhow::Error::from)?,
            () = ctx.cancel.cancelled() => return Err(Attempt::Stop(Stop::Interrupted)),
        };
        *sent += n as u64;
        let status = r.status().as_u16();
        let server_offset: Option<u64> = header(&r, "upload-offset").and_then(|v| v.parse().ok());
        match status {
            204 => {
                let new = server_offset.unwrap_or(offset + n as u64);
                let elapsed = started.elapsed();
                sizer.record(new.saturating_sub(offset), elapsed);
                let rate =
                    (new.saturating_sub(offset) as f64 / elapsed.as_secs_f64().max(1e-3)) as u64;
                offset = new;
                progress(ctx, rel, id, offset, length, rate);
            }
            409 => match server_offset {
                Some(o) => offset = o,
                None => return Err(anyhow::anyhow!("409 without Upload-Offset").into()),
            },
            423 => return Err(anyhow::anyhow!("upload locked by another writer (423)").into()),
            460 => {
                return Err(Attempt::Refused(
                    "checksum_mismatch".into(),
                    r.text().await.unwrap_or_default(),
                ));
            }
            _ => return Err(refusal(r.status(), r.text().await.unwrap_or_default())),
        }
    }
    Ok(Done {
        upload_id: id,
        deduplicated: false,
        sent: 0,
    })
}

/// Permanent for 4xx other than 408/423/429; transient otherwise.
fn refusal(status: reqwest::StatusCode, body: String) -> Attempt {
    let s = status.as_u16();
    if (400..500).contains(&s) && !matches!(s, 408 | 423 | 429) {
        let code = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["code"].as_str().map(str::to_string))
            .unwrap_or_else(|| format!("http_{s}"));
        Attempt::Refused(code, body)
    } else {
        Attempt::Transient(anyhow::anyhow!("HTTP {status}: {body}"))
    }
}
