//! tus 1.0.0 at `/v1/uploads`: thin HTTP drivers over [`super::Uploads`]. Header rules live in
//! `outlast_protocol::tus`; this file maps requests to store calls and errors to tus statuses.
//!
//! PATCH bodies are received by a tracked task, not by the handler: if the client vanishes,
//! hyper drops the handler, but the task still makes what arrived durable.

use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use outlast_protocol::tus::{self as rules, ChecksumAlgorithm, Concat, Length, TusError};
use outlast_protocol::upload::UploadState;
use outlast_protocol::{ErrorBody, ErrorCode, OwnerId, UploadId};

use super::owner::Owner;
use super::state::AppState;
use crate::error::AppError;
use crate::metrics as m;
use crate::upload::store::UploadRecord;
use crate::upload::writer::Writer;
use crate::upload::{CHECKPOINT_BYTES, NewUpload, Uploads};

/// Bytes collected from the body before one write is handed to the disk thread.
const WRITE_BATCH: usize = 1 << 20;

/// The path of an upload; `Location` is relative so it works behind any host name.
pub fn upload_path(id: UploadId) -> String {
    format!("/v1/uploads/{id}")
}

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

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Option<(String, &'static str)>,
}

impl Reply {
    fn new(status: StatusCode) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert("tus-resumable", HeaderValue::from_static(rules::VERSION));
        Self {
            status,
            headers,
            body: None,
        }
    }

    fn header(mut self, name: &'static str, value: impl ToString) -> Self {
        if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
            self.headers.insert(HeaderName::from_static(name), v);
        }
        self
    }

    fn error(status: u16, code: ErrorCode, message: impl Into<String>) -> Self {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_string(&ErrorBody {
            code,
            message: message.into(),
        })
        .unwrap_or_default();
        let mut r = Reply::new(status);
        r.body = Some((body, "application/json"));
        r
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut response = match self.body {
            Some((text, content_type)) => {
                let mut r = Response::new(Body::from(text));
                r.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
                r
            }
            None => Response::new(Body::empty()),
        };
        *response.status_mut() = self.status;
        response.headers_mut().extend(self.headers);
        response
    }
}

impl From<AppError> for Reply {
    fn from(e: AppError) -> Self {
        Reply::error(e.code.http_status(), e.code, e.message)
    }
}

impl From<TusError> for Reply {
    fn from(e: TusError) -> Self {
        let code = match e {
            TusError::OffsetMismatch { .. } => ErrorCode::OffsetMismatch,
            _ => ErrorCode::InvalidRequest,
        };
        let r = Reply::error(e.status(), code, e.to_string());
        if matches!(e, TusError::Version(_)) {
            r.header("tus-version", rules::VERSION)
        } else {
            r
        }
    }
}

fn text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// RFC 9110 IMF-fixdate, e.g. `Wed, 25 Jun 2014 16:00:00 GMT`.
fn http_date(ms: u64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_millis(ms))
}

fn with_expiry(r: Reply, uploads: &Uploads, record: &UploadRecord) -> Reply {
    r.header("upload-expires", http_date(uploads.expires_ms(record)))
}

/// `/v1/uploads`: OPTIONS and POST (creation).
pub async fn collection(
    State(state): State<AppState>,
    owner: Result<Owner, AppError>,
    req: Request,
) -> Response {
    let method = effective_method(&req);
    match method.as_str() {
        "OPTIONS" => options(&state).into_response(),
        "POST" => {
            close_if_refused(guarded(version(&req), owner, |owner| create(state, owner, req)).await)
        }
        _ => not_allowed("OPTIONS, POST"),
    }
}

/// `/v1/uploads/{id}`: OPTIONS, HEAD, PATCH, DELETE, and GET (a JSON description).
pub async fn item(
    State(state): State<AppState>,
    Path(id): Path<String>,
    owner: Result<Owner, AppError>,
    req: Request,
) -> Response {
    let method = effective_method(&req);
    if method == "OPTIONS" {
        return options(&state).into_response();
    }
    // An id that cannot exist answers like an unknown one.
    let Ok(id) = id.parse::<UploadId>() else {
        return Reply::from(AppError::not_found("upload"))
            .header("cache-control", "no-store")
            .into_response();
    };
    match method.as_str() {
        "HEAD" => guarded(version(&req), owner, |owner| head(state, owner, id)).await,
        "PATCH" => close_if_refused(
            guarded(version(&req), owner, |owner| patch(state, owner, id, req)).await,
        ),
        "DELETE" => guarded(version(&req), owner, |owner| delete(state, owner, id)).await,
        "GET" => match owner {
            Ok(Owner(owner)) => match state.uploads.owned(&owner, id).await {
                Ok(r) => {
                    let mut resp = axum::Json(state.uploads.info(&r)).into_response();
                    resp.headers_mut()
                        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                    resp
                }
                Err(e) => e.into_response(),
            },
            Err(e) => e.into_response(),
        },
        _ => not_allowed("OPTIONS, HEAD, PATCH, DELETE, GET"),
    }
}

fn version(req: &Request) -> Result<(), TusError> {
    rules::check_version(text(req.headers(), "tus-resumable"))
}

fn effective_method(req: &Request) -> String {
    let over = text(req.headers(), "x-http-method-override");
    rules::effective_method(req.method().as_str(), over).to_ascii_uppercase()
}

fn not_allowed(allow: &'static str) -> Response {
    Reply::error(405, ErrorCode::InvalidRequest, "method not allowed")
        .header("allow", allow)
        .into_response()
}

/// Version check and authentication, then the handler.
async fn guarded<F, Fut>(
    version: Result<(), TusError>,
    owner: Result<Owner, AppError>,
    f: F,
) -> Response
where
    F: FnOnce(OwnerId) -> Fut,
    Fut: Future<Output = Reply>,
{
    if let Err(e) = version {
        return Reply::from(e).into_response();
    }
    match owner {
        Ok(Owner(owner)) => f(owner).await.into_response(),
        Err(e) => Reply::from(e).into_response(),
    }
}

/// A refused request may leave its body unread: tell the client not to reuse the connection,
/// or its next request would meet the rest of this body.
fn close_if_refused(mut r: Response) -> Response {
    if r.status().is_client_error() || r.status().is_server_error() {
        r.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    r
}

fn options(state: &AppState) -> Reply {
    let cfg = state.uploads.config();
    Reply::new(StatusCode::NO_CONTENT)
        .header("tus-version", rules::VERSION)
        .header("tus-extension", rules::EXTENSIONS)
        .header("tus-max-size", cfg.max_size)
        .header("tus-checksum-algorithm", rules::CHECKSUM_ALGORITHMS)
        .header("outlast-max-chunk-size", cfg.max_chunk_bytes)
        .header("outlast-target-chunk-ms", cfg.target_chunk.as_millis())
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
        return options(&state).into_response();
    }
    next.run(req).await
}

fn has_offset_body(headers: &HeaderMap) -> Result<bool, TusError> {
    match text(headers, "content-type") {
        None => Ok(false),
        Some(ct) if ct.trim().eq_ignore_ascii_case(rules::OFFSET_OCTET_STREAM) => Ok(true),
        Some(_) => {
            let empty = text(headers, "content-length").is_some_and(|l| l.trim() == "0");
            if empty {
                Ok(false)
            } else {
                Err(TusError::ContentType)
            }
        }
    }
}

async fn create(state: AppState, owner: OwnerId, req: Request) -> Reply {
    let uploads = &state.uploads;
    let headers = req.headers().clone();
    let metadata = match text(&headers, "upload-metadata").map(rules::parse_metadata) {
        Some(Ok(m)) => m,
        Some(Err(e)) => return e.into(),
        None => Default::default(),
    };
    let concat = match text(&headers, "upload-concat").map(rules::parse_concat) {
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => return e.into(),
        None => None,
    };
    if let Some(Concat::Final(parts)) = concat {
        if headers.contains_key("upload-length") || headers.contains_key("upload-defer-length") {
            return Reply::error(
                400,
                ErrorCode::InvalidRequest,
                "a final upload takes its length from its parts; omit Upload-Length",
            );
        }
        return match uploads.create_final(&owner, parts, metadata).await {
            Ok(r) => with_expiry(
                Reply::new(StatusCode::CREATED)
                    .header("location", upload_path(r.id))
                    .header("upload-offset", r.offset),
                uploads,
                &r,
            ),
            Err(e) => e.into(),
        };
    }
    let length = match rules::parse_creation_length(
        text(&headers, "upload-length"),
        text(&headers, "upload-defer-length"),
    ) {
        Ok(Length::Known(n)) => Some(n),
        Ok(Length::Deferred) => None,
        Err(e) => return e.into(),
    };
    if let Some(n) = length
        && n > uploads.config().max_size
    {
        return Reply::error(
            413,
            ErrorCode::MessageTooLarge,
            format!("uploads are limited to {} bytes", uploads.config().max_size),
        )
        .header("tus-max-size", uploads.config().max_size);
    }
    let declared = match rules::declared_sha256(text(&headers, "repr-digest"), &metadata) {
        Ok(d) => d,
        Err(e) => return e.into(),
    };
    let with_body = match has_offset_body(&headers) {
        Ok(b) => b,
        Err(e) => return e.into(),
    };
    let checksum = match text(&headers, "upload-checksum").map(rules::parse_checksum) {
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => return e.into(),
        None => None,
    };
    let new = NewUpload {
        length,
        metadata,
        declared_sha256: declared,
        partial: concat == Some(Concat::Partial),
    };
    let (record, dedup) = match uploads.create(&owner, new).await {
        Ok(r) => r,
        Err(e) => return e.into(),
    };
    let created = |r: &UploadRecord| {
        let reply = Reply::new(StatusCode::CREATED)
            .header("location", upload_path(r.id))
            .header("outlast-max-chunk-size", uploads.config().max_chunk_bytes)
            .header(
                "outlast-target-chunk-ms",
                uploads.config().target_chunk.as_millis(),
            );
        with_expiry(reply, uploads, r)
    };
    if dedup {
        // The content is already here: the client sends nothing (any body is not read, so
        // the connection must not be reused).
        let reply = if with_body {
            created(&record).header("connection", "close")
        } else {
            created(&record)
        };
        return reply
            .header("upload-offset", record.offset)
            .header("outlast-deduplicated", "1")
            .header("outlast-sha256", record.sha256.clone().unwrap_or_default());
    }
    if !with_body || record.state != UploadState::Open {
        return created(&record).header("upload-offset", record.offset);
    }
    let writer = match uploads.lock(&owner, record.id, None).await {
        Ok(w) => w,
        Err(e) => return e.into(),
    };
    match receive(&state, writer, req.into_body(), &headers, checksum).await {
        Ok(r) => created(&r).header("upload-offset", r.offset),
        // The upload exists; the client resumes it with HEAD + PATCH.
        Err(reply) => reply.header("location", upload_path(record.id)),
    }
}

async fn head(state: AppState, owner: OwnerId, id: UploadId) -> Reply {
    let uploads = &state.uploads;
    let r = match uploads.owned(&owner, id).await {
        Ok(r) => r,
        Err(e) => return Reply::from(e).header("cache-control", "no-store"),
    };
    let mut reply = Reply::new(StatusCode::OK)
        .header("cache-control", "no-store")
        .header("upload-offset", r.offset)
        .header(
            "outlast-upload-state",
            match r.state {
                UploadState::Open => "open",
                UploadState::Complete => "complete",
                UploadState::Failed => "failed",
            },
        );
    reply = match r.length {
        Some(l) => reply.header("upload-length", l),
        None => reply.header("upload-defer-length", 1),
    };
    if !r.metadata.is_empty() {
        reply = reply.header("upload-metadata", &r.metadata);
    }
    if let Some(sha) = &r.sha256 {
        reply = reply.header("outlast-sha256", sha);
    }
    if r.partial {
        reply = reply.header("upload-concat", "partial");
    } else if let Some(parts) = &r.final_of {
        reply = reply.header(
            "upload-concat",
            rules::format_concat(&Concat::Final(parts.clone()), upload_path),
        );
    }
    with_expiry(reply, uploads, &r)
}

async fn delete(state: AppState, owner: OwnerId, id: UploadId) -> Reply {
    match state.uploads.delete(&owner, id).await {
        Ok(()) => Reply::new(StatusCode::NO_CONTENT),
        Err(e) => e.into(),
    }
}

async fn patch(state: AppState, owner: OwnerId, id: UploadId, req: Request) -> Reply {
    let headers = req.headers().clone();
    match has_offset_body(&headers) {
        Ok(true) => {}
        Ok(false) | Err(_) => return TusError::ContentType.into(),
    }
    let client_offset = match text(&headers, "upload-offset") {
        Some(v) => match rules::parse_u64("Upload-Offset", v) {
            Ok(o) => o,
            Err(e) => return e.into(),
        },
        None => {
            return Reply::error(400, ErrorCode::InvalidRequest, "Upload-Offset is required");
        }
    };
    let checksum = match text(&headers, "upload-checksum").map(rules::parse_checksum) {
        Some(Ok(c)) => Some(c),
        Some(Err(e)) => return e.into(),
        None => None,
    };
    let new_length =
        match text(&headers, "upload-length").map(|v| rules::parse_u64("Upload-Length", v)) {
            Some(Ok(l)) => Some(l),
            Some(Err(e)) => return e.into(),
            None => None,
        };
    let max_chunk = state.uploads.config().max_chunk_bytes;
    if let Some(len) = text(&headers, "content-length").and_then(|v| v.trim().parse::<u64>().ok())
        && len > max_chunk
    {
        return Reply::error(
            413,
            ErrorCode::MessageTooLarge,
            format!("PATCH bodies are limited to {max_chunk} bytes; send smaller chunks"),
        )
        .header("outlast-max-chunk-size", max_chunk);
    }
    let record = match state.uploads.owned(&owner, id).await {
        Ok(r) => r,
        Err(e) => return e.into(),
    };
    if record.final_of.is_some() {
        return Reply::error(
            403,
            ErrorCode::InvalidRequest,
            "a final (concatenated) upload cannot be patched",
        );
    }
    let mut writer = match state.uploads.lock(&owner, id, None).await {
        Ok(w) => w,
        Err(e) => return e.into(),
    };
    if let Err(e) =
        rules::check_patch_offset(writer.received(), writer.record().length, client_offset)
    {
        return Reply::from(e).header("upload-offset", writer.received());
    }
    if let Some(l) = new_length
        && let Err(e) = writer.set_length(l).await
    {
        return e.into();
    }
    if writer.record().state != UploadState::Open {
        let empty = text(&headers, "content-length").is_some_and(|l| l.trim() == "0");
        if empty {
            let r = writer.record().clone();
            return with_expiry(
                Reply::new(StatusCode::NO_CONTENT).header("upload-offset", r.offset),
                &state.uploads,
                &r,
            );
        }
        return Reply::error(
            400,
            ErrorCode::InvalidRequest,
            "the upload is already complete",
        );
    }
    let need = writer.remaining().unwrap_or(max_chunk).min(max_chunk);
    if let Err(e) = state.uploads.check_disk(need) {
        return e.into();
    }
    match receive(&state, writer, req.into_body(), &headers, checksum).await {
        Ok(r) => with_expiry(
            Reply::new(StatusCode::NO_CONTENT).header("upload-offset", r.offset),
            &state.uploads,
            &r,
        ),
        Err(reply) => reply,
    }
}

/// Streams a body into the writer in a tracked task (so a vanished client still gets its
/// bytes committed) and answers with the committed record.
async fn receive(
    state: &AppState,
    writer: Writer,
    body: Body,
    headers: &HeaderMap,
    checksum: Option<(ChecksumAlgorithm, Vec<u8>)>,
) -> Result<UploadRecord, Reply> {
    let max_chunk = state.uploads.config().max_chunk_bytes;
    let expected_len = text(headers, "content-length").and_then(|v| v.trim().parse::<u64>().ok());
    let task = state.tracker.spawn(receive_body(
        writer,
        body,
        checksum,
        max_chunk,
        expected_len,
    ));
    match task.await {
        Ok(r) => r,
        Err(e) => Err(AppError::internal(e).into()),
    }
}

async fn receive_body(
    mut w: Writer,
    body: Body,
    checksum: Option<(ChecksumAlgorithm, Vec<u8>)>,
    max_chunk: u64,
    expected_len: Option<u64>,
) -> Result<UploadRecord, Reply> {
    if let Some((algorithm, _)) = &checksum {
        w.begin_chunk(*algorithm).await.map_err(Reply::from)?;
    }
    let mut stream = body.into_data_stream();
    let mut batch: Vec<Bytes> = Vec::new();
    let mut batched = 0usize;
    let mut total = 0u64;
    let mut cut = false;
    let mut refused: Option<Reply> = None;
    let mut failed: Option<AppError> = None;
    loop {
        // Batch while bytes are ready; when the link is slower than the disk, write what is
        // there before waiting (progress moves, and a cut loses less).
        let item = match stream.next().now_or_never() {
            Some(item) => item,
            None => {
                if !batch.is_empty() {
                    if let Err(e) = w.write_batch(std::mem::take(&mut batch)).await {
                        failed = Some(e);
                        break;
                    }
                    batched = 0;
                    if checksum.is_none() && w.received() - w.record().offset >= CHECKPOINT_BYTES {
                        w.commit().await.map_err(Reply::from)?;
                    }
                }
                stream.next().await
            }
        };
        let Some(item) = item else { break };
        let chunk = match item {
            Ok(c) => c,
            Err(_) => {
                cut = true;
                break;
            }
        };
        total += chunk.len() as u64;
        if total > max_chunk {
            refused = Some(
                Reply::error(
                    413,
                    ErrorCode::MessageTooLarge,
                    format!("PATCH bodies are limited to {max_chunk} bytes"),
                )
                .header("outlast-max-chunk-size", max_chunk),
            );
            break;
        }
        if w.remaining()
            .is_some_and(|r| batched as u64 + chunk.len() as u64 > r)
        {
            refused = Some(Reply::error(
                413,
                ErrorCode::MessageTooLarge,
                "the body goes beyond the upload's length",
            ));
            break;
        }
        batched += chunk.len();
        batch.push(chunk);
        if batched >= WRITE_BATCH {
            if let Err(e) = w.write_batch(std::mem::take(&mut batch)).await {
                failed = Some(e);
                break;
            }
            batched = 0;
            if checksum.is_none() && w.received() - w.record().offset >= CHECKPOINT_BYTES {
                w.commit().await.map_err(Reply::from)?;
            }
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
            w.discard().await.map_err(Reply::from)?;
            return Err(refused.unwrap_or_else(|| {
                Reply::error(400, ErrorCode::InvalidRequest, "the body was cut off")
            }));
        }
        let got = w.finish_chunk().await.map_err(Reply::from)?;
        if got.as_deref() != Some(expected.as_slice()) {
            w.discard().await.map_err(Reply::from)?;
            metrics::counter!(m::UPLOAD_CHECKSUM_MISMATCHES).increment(1);
            return Err(Reply::error(
                460,
                ErrorCode::ChecksumMismatch,
                "Upload-Checksum does not match the body; the chunk was discarded",
            ));
        }
    }
    metrics::counter!(m::UPLOAD_BYTES, "transport" => "tus")
        .increment(w.received() - w.record().offset);
    let record = w.commit().await.map_err(Reply::from)?;
    match refused {
        Some(reply) => Err(reply.header("upload-offset", record.offset)),
        None => Ok(record),
    }
}
