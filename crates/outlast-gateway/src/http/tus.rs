//! tus 1.0.0 at `/v1/uploads`: the HTTP driver. `outlast_protocol::tus::exchange` says what a
//! request is and what to answer; this file authenticates, does the store work over
//! [`super::Uploads`], and turns the protocol's answers and refusals into responses.
//!
//! PATCH bodies are received by a tracked task, not by the handler: if the client vanishes,
//! hyper drops the handler, but the task still makes what arrived durable.

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use outlast_protocol::UploadId;
use outlast_protocol::tus::exchange::{
    CreationKind, Endpoint, HeaderView, Limits, Route, TusAnswer, TusReject, UploadView,
    answer_headers, check_offset, parse_creation, parse_patch, route, upload_path,
};
use outlast_protocol::tus::{ChecksumAlgorithm, effective_method};
use outlast_protocol::upload::UploadState;

use super::owner::Owner;
use super::state::AppState;
use crate::error::AppError;
use crate::metrics as m;
use crate::upload::store::UploadRecord;
use crate::upload::writer::Writer;
use crate::upload::{CHECKPOINT_BYTES, NewUpload, Uploads};

/// Bytes collected from the body before one write is handed to the disk thread.
const WRITE_BATCH: usize = 1 << 20;

/// Headers browsers may read on tus answers (for CORS `expose_headers`).
pub const EXPOSED_HEADERS: &[&str] = &[
    "upload-offset",
    "upload-length",
    "upload-metadata",
    "upload-expires",
    "upload-concat",
    "upload-defer-length",
    "tus-resumable",
    "tus-version",
    "tus-extension",
    "tus-max-size",
    "tus-checksum-algorithm",
    "outlast-max-chunk-size",
    "outlast-target-chunk-ms",
    "outlast-upload-state",
    "outlast-sha256",
    "outlast-deduplicated",
];

/// axum's headers as the protocol crate reads them.
struct Headers<'a>(&'a HeaderMap);

impl HeaderView for Headers<'_> {
    fn header(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(|v| v.to_str().ok())
    }
}

impl From<AppError> for TusReject {
    fn from(e: AppError) -> Self {
        TusReject::new(e.code.http_status(), e.code, e.message)
    }
}

/// A response with these headers (any name or value that is not valid is left out).
fn response(status: u16, headers: Vec<(&'static str, String)>, body: Body) -> Response {
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            r.headers_mut().insert(n, v);
        }
    }
    r
}

fn answer(a: TusAnswer) -> Response {
    response(a.status(), answer_headers(&a), Body::empty())
}

fn refuse(r: TusReject) -> Response {
    let body = serde_json::to_string(&r.body()).unwrap_or_default();
    let mut resp = response(r.status, r.headers(), Body::from(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A refused POST or PATCH may leave its body unread: tell the client not to reuse the
/// connection, or its next request would meet the rest of this body.
fn finish(result: Result<Response, TusReject>, sends_body: bool) -> Response {
    match result {
        Ok(r) => r,
        Err(r) if sends_body => refuse(r.with("connection", "close")),
        Err(r) => refuse(r),
    }
}

/// True for the requests that carry a body: POST on the collection, PATCH on an item.
fn sends_body(endpoint: Endpoint, req: &Request) -> bool {
    let headers = Headers(req.headers());
    let method = effective_method(
        req.method().as_str(),
        headers.header("x-http-method-override"),
    );
    match endpoint {
        Endpoint::Collection => method.eq_ignore_ascii_case("POST"),
        Endpoint::Item => method.eq_ignore_ascii_case("PATCH"),
    }
}

fn limits(uploads: &Uploads) -> Limits {
    let cfg = uploads.config();
    Limits {
        max_size: cfg.max_size,
        max_chunk_bytes: cfg.max_chunk_bytes,
        target_chunk_ms: u64::try_from(cfg.target_chunk.as_millis()).unwrap_or(u64::MAX),
    }
}

fn options(state: &AppState) -> Response {
    answer(TusAnswer::Options(limits(&state.uploads)))
}

/// `/v1/uploads`: OPTIONS and POST (creation).
pub async fn collection(
    State(state): State<AppState>,
    owner: Result<Owner, AppError>,
    req: Request,
) -> Response {
    let routed = route(
        Endpoint::Collection,
        req.method().as_str(),
        &Headers(req.headers()),
    );
    let sends_body = sends_body(Endpoint::Collection, &req);
    let result = match routed {
        Ok(Route::Options) => return options(&state),
        Ok(Route::Create) => create(&state, owner, req).await,
        Ok(_) => Err(TusReject::not_allowed("OPTIONS, POST")),
        Err(r) => Err(r),
    };
    finish(result, sends_body)
}

/// `/v1/uploads/{id}`: OPTIONS, HEAD, PATCH, DELETE, and GET (a JSON description).
pub async fn item(
    State(state): State<AppState>,
    Path(id): Path<String>,
    owner: Result<Owner, AppError>,
    req: Request,
) -> Response {
    let routed = route(
        Endpoint::Item,
        req.method().as_str(),
        &Headers(req.headers()),
    );
    if routed == Ok(Route::Options) {
        return options(&state);
    }
    // An id that cannot exist answers like an unknown one.
    let Ok(id) = id.parse::<UploadId>() else {
        return refuse(
            TusReject::from(AppError::not_found("upload")).with("cache-control", "no-store"),
        );
    };
    let sends_body = sends_body(Endpoint::Item, &req);
    let result = match routed {
        Ok(Route::Get) => return get(&state, owner, id).await,
        Ok(Route::Head) => head(&state, owner, id).await,
        Ok(Route::Patch) => patch(&state, owner, id, req).await,
        Ok(Route::Delete) => delete(&state, owner, id).await,
        Ok(Route::Options | Route::Create) => {
            Err(TusReject::not_allowed("OPTIONS, HEAD, PATCH, DELETE, GET"))
        }
        Err(r) => Err(r),
    };
    finish(result, sends_body)
}

/// Answers a plain (non-CORS) `OPTIONS` on the upload endpoints before the CORS layer, which
/// would otherwise take every `OPTIONS` for a browser preflight and hide the tus headers.
pub async fn plain_options(
    State(state): State<AppState>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let preflight = req.headers().contains_key("access-control-request-method");
    if req.method() == axum::http::Method::OPTIONS
        && !preflight
        && req.uri().path().starts_with("/v1/uploads")
    {
        return options(&state);
    }
    next.run(req).await
}

/// GET: the upload's JSON description (not tus: plain JSON errors).
async fn get(state: &AppState, owner: Result<Owner, AppError>, id: UploadId) -> Response {
    let found = match owner {
        Ok(Owner(owner)) => state.uploads.owned(&owner, id).await,
        Err(e) => Err(e),
    };
    match found {
        Ok(r) => {
            let mut resp = axum::Json(state.uploads.info(&r)).into_response();
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Err(e) => e.into_response(),
    }
}

fn created(
    uploads: &Uploads,
    r: &UploadRecord,
    limits: Option<Limits>,
    deduplicated: Option<&str>,
    close: bool,
) -> Response {
    answer(TusAnswer::Created {
        id: r.id,
        offset: r.offset,
        expires_ms: uploads.expires_ms(r),
        limits,
        deduplicated,
        close,
    })
}

fn patched(uploads: &Uploads, r: &UploadRecord) -> Response {
    answer(TusAnswer::Patched {
        offset: r.offset,
        expires_ms: uploads.expires_ms(r),
    })
}

async fn create(
    state: &AppState,
    owner: Result<Owner, AppError>,
    req: Request,
) -> Result<Response, TusReject> {
    let Owner(owner) = owner?;
    let uploads = &state.uploads;
    let limits = limits(uploads);
    let c = parse_creation(&Headers(req.headers()), &limits)?;
    let (length, partial) = match c.kind {
        CreationKind::Final(parts) => {
            let r = uploads.create_final(&owner, parts, c.metadata).await?;
            return Ok(created(uploads, &r, None, None, false));
        }
        CreationKind::Single { length, partial } => (length, partial),
    };
    let new = NewUpload {
        length,
        metadata: c.metadata,
        declared_sha256: c.declared_sha256,
        partial,
    };
    let (record, dedup) = uploads.create(&owner, new).await?;
    if dedup {
        // The content is already here: the client sends nothing (any body is not read, so
        // the connection must not be reused).
        let sha = record.sha256.as_deref().unwrap_or_default();
        return Ok(created(
            uploads,
            &record,
            Some(limits),
            Some(sha),
            c.with_body,
        ));
    }
    if !c.with_body || record.state != UploadState::Open {
        return Ok(created(uploads, &record, Some(limits), None, false));
    }
    let writer = uploads.lock(&owner, record.id, None).await?;
    match receive(state, writer, req.into_body(), c.content_length, c.checksum).await {
        Ok(r) => Ok(created(uploads, &r, Some(limits), None, false)),
        // The upload exists; the client resumes it with HEAD + PATCH.
        Err(reject) => Err(reject.with("location", upload_path(record.id))),
    }
}

async fn head(
    state: &AppState,
    owner: Result<Owner, AppError>,
    id: UploadId,
) -> Result<Response, TusReject> {
    let Owner(owner) = owner?;
    let r = state
        .uploads
        .owned(&owner, id)
        .await
        .map_err(|e| TusReject::from(e).with("cache-control", "no-store"))?;
    Ok(answer(TusAnswer::Head(UploadView {
        offset: r.offset,
        length: r.length,
        state: r.state,
        metadata: &r.metadata,
        sha256: r.sha256.as_deref(),
        partial: r.partial,
        final_of: r.final_of.as_deref(),
        expires_ms: state.uploads.expires_ms(&r),
    })))
}

async fn delete(
    state: &AppState,
    owner: Result<Owner, AppError>,
    id: UploadId,
) -> Result<Response, TusReject> {
    let Owner(owner) = owner?;
    state.uploads.delete(&owner, id).await?;
    Ok(answer(TusAnswer::Deleted))
}

async fn patch(
    state: &AppState,
    owner: Result<Owner, AppError>,
    id: UploadId,
    req: Request,
) -> Result<Response, TusReject> {
    let Owner(owner) = owner?;
    let uploads = &state.uploads;
    let p = parse_patch(&Headers(req.headers()), &limits(uploads))?;
    let record = uploads.owned(&owner, id).await?;
    if record.final_of.is_some() {
        return Err(TusReject::final_not_patchable());
    }
    let mut writer = uploads.lock(&owner, id, None).await?;
    check_offset(writer.received(), writer.record().length, p.offset)?;
    if let Some(l) = p.new_length {
        writer.set_length(l).await?;
    }
    if writer.record().state != UploadState::Open {
        return if p.is_empty() {
            Ok(patched(uploads, writer.record()))
        } else {
            Err(TusReject::already_complete())
        };
    }
    let max_chunk = uploads.config().max_chunk_bytes;
    uploads.check_disk(writer.remaining().unwrap_or(max_chunk).min(max_chunk))?;
    let r = receive(state, writer, req.into_body(), p.content_length, p.checksum).await?;
    Ok(patched(uploads, &r))
}

/// Streams a body into the writer in a tracked task (so a vanished client still gets its
/// bytes committed) and answers with the committed record.
async fn receive(
    state: &AppState,
    mut writer: Writer,
    body: Body,
    expected_len: Option<u64>,
    checksum: Option<(ChecksumAlgorithm, Vec<u8>)>,
) -> Result<UploadRecord, TusReject> {
    let max_chunk = state.uploads.config().max_chunk_bytes;
    let task = state.tracker.spawn(async move {
        receive_body(&mut writer, body, checksum, max_chunk, expected_len).await
    });
    match task.await {
        Ok(r) => r,
        Err(e) => Err(AppError::internal(e).into()),
    }
}

/// What the receive loop of a body waits for first.
enum Next {
    /// The body's next bytes (or its end, or a cut).
    Bytes(Option<Result<Bytes, axum::Error>>),
    /// The write in flight is done (or failed).
    Idle(Result<(), AppError>),
}

async fn receive_body(
    w: &mut Writer,
    body: Body,
    checksum: Option<(ChecksumAlgorithm, Vec<u8>)>,
    max_chunk: u64,
    expected_len: Option<u64>,
) -> Result<UploadRecord, TusReject> {
    if let Some((algorithm, _)) = &checksum {
        w.begin_chunk(*algorithm).await?;
    }
    w.flush_early();
    let mut stream = body.into_data_stream();
    let mut batch: Vec<Bytes> = Vec::new();
    let mut batched = 0usize;
    let mut total = 0u64;
    let mut cut = false;
    let mut refused: Option<TusReject> = None;
    let mut failed: Option<AppError> = None;
    loop {
        // Bytes gather in `batch` while the write before them is in flight, and go to the disk
        // as soon as the writer is idle (or the batch is full): a fast link hands over large
        // batches while the disk writes, a slow one still writes what is there before waiting.
        let next = match stream.next().now_or_never() {
            Some(item) => Next::Bytes(item),
            None if batch.is_empty() => Next::Bytes(stream.next().await),
            None => tokio::select! {
                biased;
                idle = w.wait_idle() => Next::Idle(idle),
                item = stream.next() => Next::Bytes(item),
            },
        };
        let write_now = match next {
            Next::Idle(Err(e)) => {
                failed = Some(e);
                break;
            }
            Next::Idle(Ok(())) => true,
            Next::Bytes(None) => break,
            Next::Bytes(Some(Err(_))) => {
                cut = true;
                break;
            }
            Next::Bytes(Some(Ok(chunk))) => {
                total += chunk.len() as u64;
                if total > max_chunk {
                    refused = Some(TusReject::body_too_large(max_chunk));
                    break;
                }
                if w.remaining()
                    .is_some_and(|r| batched as u64 + chunk.len() as u64 > r)
                {
                    refused = Some(TusReject::beyond_length());
                    break;
                }
                batched += chunk.len();
                batch.push(chunk);
                batched >= WRITE_BATCH
            }
        };
        if !write_now {
            continue;
        }
        batched = 0;
        if let Err(e) = w.write_batch(std::mem::take(&mut batch)).await {
            failed = Some(e);
            break;
        }
        // A long body without a checksum commits (fsync + offset) every CHECKPOINT_BYTES.
        if checksum.is_none() && w.received() - w.record().offset >= CHECKPOINT_BYTES {
            w.commit().await?;
        }
    }
    if failed.is_none()
        && !batch.is_empty()
        && let Err(e) = w.write_batch(batch).await
    {
        failed = Some(e);
    }
    if let Some(e) = failed {
        // Whatever did reach the disk before the failure is still worth keeping.
        let _ = w.commit().await;
        return Err(e.into());
    }
    if expected_len.is_some_and(|l| total < l) {
        cut = true;
    }
    if let Some((_, expected)) = checksum {
        if cut || refused.is_some() {
            // A checksum covers the whole body: a partial body cannot be verified.
            w.discard().await?;
            return Err(refused.unwrap_or_else(TusReject::cut_off));
        }
        let got = w.finish_chunk().await?;
        if got.as_deref() != Some(expected.as_slice()) {
            w.discard().await?;
            metrics::counter!(m::UPLOAD_CHECKSUM_MISMATCHES).increment(1);
            return Err(TusReject::checksum_mismatch());
        }
    }
    metrics::counter!(m::UPLOAD_BYTES, "transport" => "tus")
        .increment(w.received() - w.record().offset);
    let record = w.commit().await?;
    match refused {
        Some(reject) => Err(reject.with("upload-offset", record.offset)),
        None => Ok(record),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UploadConfig;
    use futures::SinkExt;
    use outlast_protocol::OwnerId;
    use outlast_protocol::tus::Metadata;

    /// While a write is in flight, the bytes that arrive meanwhile gather into one batch
    /// instead of one write each after it.
    #[tokio::test]
    async fn pieces_that_arrive_while_the_disk_writes_gather_into_one_batch() {
        const BIG: usize = 8 << 20;
        const PIECES: usize = 32;
        const PIECE: usize = 16 << 10;
        let dir = tempfile::tempdir().expect("temp dir");
        let uploads = Uploads::open(UploadConfig::default(), dir.path(), 1 << 20).expect("open");
        let owner = OwnerId::local();
        let length = (BIG + PIECES * PIECE) as u64;
        let new = NewUpload {
            length: Some(length),
            metadata: Metadata::default(),
            declared_sha256: None,
            partial: false,
        };
        let (r, _) = uploads.create(&owner, new).await.expect("create");
        let mut w = uploads.lock(&owner, r.id, None).await.expect("lock");
        let (mut tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let sender = tokio::spawn(async move {
            // The first piece keeps the disk thread busy (write and sha256 of 8 MiB) for far
            // longer than the small pieces after it take to arrive.
            tx.send(Ok(Bytes::from(vec![1u8; BIG])))
                .await
                .expect("send");
            for i in 0..PIECES {
                tokio::task::yield_now().await;
                tx.send(Ok(Bytes::from(vec![i as u8; PIECE])))
                    .await
                    .expect("send");
            }
        });
        let record = receive_body(&mut w, Body::from_stream(rx), None, 64 << 20, None)
            .await
            .expect("received");
        sender.await.expect("sender");
        assert_eq!(record.offset, length);
        assert_eq!(record.state, UploadState::Complete);
        // One batch for the big piece, then the small ones together (one more at most, if the
        // first write ended between two of them); one write each would be 1 + 32.
        assert!(
            w.write_batches <= 3,
            "{} batches for 1 + {PIECES} pieces",
            w.write_batches
        );
        let data = std::fs::read(uploads.path(r.id)).expect("data file");
        assert_eq!(data.len() as u64, length);
        assert!(data[..BIG].iter().all(|b| *b == 1));
        for (i, piece) in data[BIG..].chunks(PIECE).enumerate() {
            assert!(piece.iter().all(|b| *b == i as u8), "piece {i} in order");
        }
    }
}
