//! tus request classification and answer header sets: which method and headers make which
//! request, which status refuses it, and which headers each answer carries. Pure functions
//! over a [`HeaderView`]; the gateway driver parses with [`route`] + [`parse_creation`] /
//! [`parse_patch`] (or [`classify`]), does the storage work, and answers with [`TusAnswer`]
//! or [`TusReject`].

use super::{
    ChecksumAlgorithm, Concat, Length, Metadata, OFFSET_OCTET_STREAM, TusError, VERSION,
    check_patch_offset, check_version, declared_sha256, effective_method, parse_checksum,
    parse_concat, parse_creation_length, parse_metadata, parse_u64,
};
use crate::error::{ErrorBody, ErrorCode};
use crate::ids::UploadId;
use crate::upload::UploadState;

/// Read access to request headers. Names are passed in lowercase; lookups must ignore case.
/// A header whose value is not text counts as absent.
pub trait HeaderView {
    /// The value of `name`, when present and text.
    fn header(&self, name: &str) -> Option<&str>;
}

impl HeaderView for [(&str, &str)] {
    fn header(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| *v)
    }
}

/// The path of an upload; `Location` is relative so it works behind any host name.
pub fn upload_path(id: UploadId) -> String {
    format!("/v1/uploads/{id}")
}

/// Which tus URL a request hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/v1/uploads`: OPTIONS and POST.
    Collection,
    /// `/v1/uploads/{id}`: OPTIONS, HEAD, PATCH, DELETE, GET.
    Item,
}

/// The server's upload limits, as advertised and enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `Tus-Max-Size`: the largest upload.
    pub max_size: u64,
    /// `Outlast-Max-Chunk-Size`: the largest PATCH body.
    pub max_chunk_bytes: u64,
    /// `Outlast-Target-Chunk-Ms`: how long one chunk should take.
    pub target_chunk_ms: u64,
}

/// What a request is, before its headers are parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// OPTIONS: capabilities (no version check, no authentication).
    Options,
    /// POST on the collection: creation.
    Create,
    /// HEAD: the upload's offset and description.
    Head,
    /// PATCH: append bytes.
    Patch,
    /// DELETE: termination.
    Delete,
    /// GET: the JSON description (not tus: no version check).
    Get,
}

/// The method (honouring `X-HTTP-Method-Override`) and the `Tus-Resumable` check.
///
/// The gateway authenticates after this and before [`parse_creation`] / [`parse_patch`], so a
/// bad version answers 412 before 401, and bad credentials 401 before a bad header's 400.
pub fn route(
    endpoint: Endpoint,
    method: &str,
    headers: &(impl HeaderView + ?Sized),
) -> Result<Route, TusReject> {
    let method =
        effective_method(method, headers.header("x-http-method-override")).to_ascii_uppercase();
    let route = match (endpoint, method.as_str()) {
        (_, "OPTIONS") => return Ok(Route::Options),
        (Endpoint::Collection, "POST") => Route::Create,
        (Endpoint::Collection, _) => return Err(TusReject::not_allowed("OPTIONS, POST")),
        (Endpoint::Item, "GET") => return Ok(Route::Get),
        (Endpoint::Item, "HEAD") => Route::Head,
        (Endpoint::Item, "PATCH") => Route::Patch,
        (Endpoint::Item, "DELETE") => Route::Delete,
        (Endpoint::Item, _) => {
            return Err(TusReject::not_allowed("OPTIONS, HEAD, PATCH, DELETE, GET"));
        }
    };
    check_version(headers.header("tus-resumable"))?;
    Ok(route)
}

/// What a creation request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreationKind {
    /// `Upload-Concat: final;...`: the concatenation of these parts (no length, no body).
    Final(Vec<UploadId>),
    /// A single upload, or a `partial` one.
    Single {
        /// `None`: `Upload-Defer-Length: 1`.
        length: Option<u64>,
        /// `Upload-Concat: partial`.
        partial: bool,
    },
}

/// A parsed creation request (POST).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Creation {
    /// Single or final.
    pub kind: CreationKind,
    /// `Upload-Metadata`.
    pub metadata: Metadata,
    /// The declared sha256 of the whole file (`Repr-Digest` or metadata `sha256`).
    pub declared_sha256: Option<[u8; 32]>,
    /// True when the request carries a body (creation-with-upload).
    pub with_body: bool,
    /// `Upload-Checksum` of that body.
    pub checksum: Option<(ChecksumAlgorithm, Vec<u8>)>,
    /// `Content-Length`, when it is a number.
    pub content_length: Option<u64>,
}

/// A parsed PATCH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatchRequest {
    /// `Upload-Offset`: where the body starts.
    pub offset: u64,
    /// `Upload-Checksum` of the body.
    pub checksum: Option<(ChecksumAlgorithm, Vec<u8>)>,
    /// `Upload-Length` declaring a deferred length.
    pub new_length: Option<u64>,
    /// `Content-Length`, when it is a number.
    pub content_length: Option<u64>,
}

impl PatchRequest {
    /// True when the body is declared empty (`Content-Length: 0`).
    pub fn is_empty(&self) -> bool {
        self.content_length == Some(0)
    }
}

/// A fully parsed tus request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TusRequest {
    /// OPTIONS.
    Options,
    /// POST.
    Create(Creation),
    /// HEAD.
    Head,
    /// PATCH.
    Patch(PatchRequest),
    /// DELETE.
    Delete,
    /// GET (JSON description).
    Get,
}

/// [`route`], then the header rules of that request: the whole classification in one call
/// (for drivers that authenticate before, and for tests).
pub fn classify(
    endpoint: Endpoint,
    method: &str,
    headers: &(impl HeaderView + ?Sized),
    limits: &Limits,
) -> Result<TusRequest, TusReject> {
    Ok(match route(endpoint, method, headers)? {
        Route::Options => TusRequest::Options,
        Route::Create => TusRequest::Create(parse_creation(headers, limits)?),
        Route::Head => TusRequest::Head,
        Route::Patch => TusRequest::Patch(parse_patch(headers, limits)?),
        Route::Delete => TusRequest::Delete,
        Route::Get => TusRequest::Get,
    })
}

fn content_length(headers: &(impl HeaderView + ?Sized)) -> Option<u64> {
    headers
        .header("content-length")
        .and_then(|v| v.trim().parse::<u64>().ok())
}

/// Whether a body is `application/offset+octet-stream`: no content type means no body; any
/// other type is 415 unless the body is declared empty.
pub fn has_offset_body(headers: &(impl HeaderView + ?Sized)) -> Result<bool, TusError> {
    match headers.header("content-type") {
        None => Ok(false),
        Some(ct) if ct.trim().eq_ignore_ascii_case(OFFSET_OCTET_STREAM) => Ok(true),
        Some(_)
            if headers
                .header("content-length")
                .is_some_and(|l| l.trim() == "0") =>
        {
            Ok(false)
        }
        Some(_) => Err(TusError::ContentType),
    }
}

fn checksum(
    headers: &(impl HeaderView + ?Sized),
) -> Result<Option<(ChecksumAlgorithm, Vec<u8>)>, TusError> {
    headers
        .header("upload-checksum")
        .map(parse_checksum)
        .transpose()
}

/// The header rules of a creation request, in the order their errors win.
pub fn parse_creation(
    headers: &(impl HeaderView + ?Sized),
    limits: &Limits,
) -> Result<Creation, TusReject> {
    let metadata = headers
        .header("upload-metadata")
        .map(parse_metadata)
        .transpose()?
        .unwrap_or_default();
    let concat = headers
        .header("upload-concat")
        .map(parse_concat)
        .transpose()?;
    if let Some(Concat::Final(parts)) = concat {
        if headers.header("upload-length").is_some()
            || headers.header("upload-defer-length").is_some()
        {
            return Err(TusReject::final_with_length());
        }
        return Ok(Creation {
            kind: CreationKind::Final(parts),
            metadata,
            declared_sha256: None,
            with_body: false,
            checksum: None,
            content_length: content_length(headers),
        });
    }
    let length = match parse_creation_length(
        headers.header("upload-length"),
        headers.header("upload-defer-length"),
    )? {
        Length::Known(n) => Some(n),
        Length::Deferred => None,
    };
    if length.is_some_and(|n| n > limits.max_size) {
        return Err(TusReject::upload_too_large(limits.max_size));
    }
    let declared_sha256 = declared_sha256(headers.header("repr-digest"), &metadata)?;
    let with_body = has_offset_body(headers)?;
    let checksum = checksum(headers)?;
    Ok(Creation {
        kind: CreationKind::Single {
            length,
            partial: concat == Some(Concat::Partial),
        },
        metadata,
        declared_sha256,
        with_body,
        checksum,
        content_length: content_length(headers),
    })
}

/// The header rules of a PATCH, in the order their errors win.
pub fn parse_patch(
    headers: &(impl HeaderView + ?Sized),
    limits: &Limits,
) -> Result<PatchRequest, TusReject> {
    if !matches!(has_offset_body(headers), Ok(true)) {
        return Err(TusError::ContentType.into());
    }
    let offset = match headers.header("upload-offset") {
        Some(v) => parse_u64("Upload-Offset", v)?,
        None => {
            return Err(TusReject::new(
                400,
                ErrorCode::InvalidRequest,
                "Upload-Offset is required",
            ));
        }
    };
    let checksum = checksum(headers)?;
    let new_length = headers
        .header("upload-length")
        .map(|v| parse_u64("Upload-Length", v))
        .transpose()?;
    let content_length = content_length(headers);
    if content_length.is_some_and(|l| l > limits.max_chunk_bytes) {
        let max = limits.max_chunk_bytes;
        return Err(TusReject::new(
            413,
            ErrorCode::MessageTooLarge,
            format!("PATCH bodies are limited to {max} bytes; send smaller chunks"),
        )
        .with("outlast-max-chunk-size", max));
    }
    Ok(PatchRequest {
        offset,
        checksum,
        new_length,
        content_length,
    })
}

/// The offset rule of PATCH against the stored upload; a refusal carries the server's
/// `Upload-Offset` so the client can resume.
pub fn check_offset(server: u64, length: Option<u64>, client: u64) -> Result<(), TusReject> {
    check_patch_offset(server, length, client)
        .map_err(|e| TusReject::from(e).with("upload-offset", server))
}

/// A refused tus request: status, stable code, message (the JSON body) and extra headers.
/// Every refusal also carries `Tus-Resumable` (see [`TusReject::headers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TusReject {
    /// The HTTP status.
    pub status: u16,
    /// The stable error code of the body.
    pub code: ErrorCode,
    /// The message of the body.
    pub message: String,
    /// Headers beyond `Tus-Resumable`.
    pub extra: Vec<(&'static str, String)>,
}

impl TusReject {
    /// A refusal without extra headers.
    pub fn new(status: u16, code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            extra: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn with(mut self, name: &'static str, value: impl ToString) -> Self {
        self.extra.retain(|(n, _)| *n != name);
        self.extra.push((name, value.to_string()));
        self
    }

    /// Every header of the answer: `Tus-Resumable`, then the extra ones.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![("tus-resumable", VERSION.to_owned())];
        out.extend(self.extra.iter().cloned());
        out
    }

    /// The JSON body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code,
            message: self.message.clone(),
        }
    }

    /// 405 with `Allow`.
    pub fn not_allowed(allow: &'static str) -> Self {
        Self::new(405, ErrorCode::InvalidRequest, "method not allowed").with("allow", allow)
    }

    /// 400: a final upload declared a length.
    pub fn final_with_length() -> Self {
        Self::new(
            400,
            ErrorCode::InvalidRequest,
            "a final upload takes its length from its parts; omit Upload-Length",
        )
    }

    /// 413: `Upload-Length` over `Tus-Max-Size`.
    pub fn upload_too_large(max_size: u64) -> Self {
        Self::new(
            413,
            ErrorCode::MessageTooLarge,
            format!("uploads are limited to {max_size} bytes"),
        )
        .with("tus-max-size", max_size)
    }

    /// 413: a streamed body grew past the chunk limit.
    pub fn body_too_large(max_chunk: u64) -> Self {
        Self::new(
            413,
            ErrorCode::MessageTooLarge,
            format!("PATCH bodies are limited to {max_chunk} bytes"),
        )
        .with("outlast-max-chunk-size", max_chunk)
    }

    /// 413: a body goes past the upload's length.
    pub fn beyond_length() -> Self {
        Self::new(
            413,
            ErrorCode::MessageTooLarge,
            "the body goes beyond the upload's length",
        )
    }

    /// 460: `Upload-Checksum` does not match; the chunk was discarded.
    pub fn checksum_mismatch() -> Self {
        Self::new(
            460,
            ErrorCode::ChecksumMismatch,
            "Upload-Checksum does not match the body; the chunk was discarded",
        )
    }

    /// 400: a checksummed body was cut off, so it could not be verified.
    pub fn cut_off() -> Self {
        Self::new(400, ErrorCode::InvalidRequest, "the body was cut off")
    }

    /// 403: PATCH on a final upload.
    pub fn final_not_patchable() -> Self {
        Self::new(
            403,
            ErrorCode::InvalidRequest,
            "a final (concatenated) upload cannot be patched",
        )
    }

    /// 400: a non-empty PATCH on a complete upload.
    pub fn already_complete() -> Self {
        Self::new(
            400,
            ErrorCode::InvalidRequest,
            "the upload is already complete",
        )
    }
}

impl From<TusError> for TusReject {
    fn from(e: TusError) -> Self {
        let code = match e {
            TusError::OffsetMismatch { .. } => ErrorCode::OffsetMismatch,
            _ => ErrorCode::InvalidRequest,
        };
        let r = TusReject::new(e.status(), code, e.to_string());
        if matches!(e, TusError::Version(_)) {
            r.with("tus-version", VERSION)
        } else {
            r
        }
    }
}

/// What HEAD describes: the stored upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadView<'a> {
    /// Durable offset.
    pub offset: u64,
    /// `None`: deferred.
    pub length: Option<u64>,
    /// Open, complete or failed.
    pub state: UploadState,
    /// `Upload-Metadata` as stored (header form; empty: none).
    pub metadata: &'a str,
    /// sha256 (hex) once known.
    pub sha256: Option<&'a str>,
    /// A `partial` upload.
    pub partial: bool,
    /// The parts of a final upload.
    pub final_of: Option<&'a [UploadId]>,
    /// When the upload expires (ms since the Unix epoch).
    pub expires_ms: u64,
}

/// A successful tus answer; [`TusAnswer::status`] and [`answer_headers`] give the response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TusAnswer<'a> {
    /// 204 to OPTIONS: the capabilities.
    Options(Limits),
    /// 201 to POST.
    Created {
        /// The new upload.
        id: UploadId,
        /// Its durable offset.
        offset: u64,
        /// When it expires (ms since the Unix epoch).
        expires_ms: u64,
        /// Chunk limits to advertise (`None` for a final upload).
        limits: Option<Limits>,
        /// The content was already stored: its sha256 (hex; empty when unknown).
        deduplicated: Option<&'a str>,
        /// Ask the client not to reuse the connection (a body was left unread).
        close: bool,
    },
    /// 200 to HEAD.
    Head(UploadView<'a>),
    /// 204 to PATCH.
    Patched {
        /// The new durable offset.
        offset: u64,
        /// When the upload expires (ms since the Unix epoch).
        expires_ms: u64,
    },
    /// 204 to DELETE.
    Deleted,
}

impl TusAnswer<'_> {
    /// The HTTP status.
    pub fn status(&self) -> u16 {
        match self {
            TusAnswer::Created { .. } => 201,
            TusAnswer::Head(_) => 200,
            TusAnswer::Options(_) | TusAnswer::Patched { .. } | TusAnswer::Deleted => 204,
        }
    }
}

/// The headers of an answer (lowercase names), `Tus-Resumable` first.
pub fn answer_headers(answer: &TusAnswer) -> Vec<(&'static str, String)> {
    let mut h: Vec<(&'static str, String)> = vec![("tus-resumable", VERSION.to_owned())];
    match *answer {
        TusAnswer::Options(l) => {
            h.push(("tus-version", VERSION.to_owned()));
            h.push(("tus-extension", super::EXTENSIONS.to_owned()));
            h.push(("tus-max-size", l.max_size.to_string()));
            h.push((
                "tus-checksum-algorithm",
                super::CHECKSUM_ALGORITHMS.to_owned(),
            ));
            h.push(("outlast-max-chunk-size", l.max_chunk_bytes.to_string()));
            h.push(("outlast-target-chunk-ms", l.target_chunk_ms.to_string()));
        }
        TusAnswer::Created {
            id,
            offset,
            expires_ms,
            limits,
            deduplicated,
            close,
        } => {
            h.push(("location", upload_path(id)));
            if let Some(l) = limits {
                h.push(("outlast-max-chunk-size", l.max_chunk_bytes.to_string()));
                h.push(("outlast-target-chunk-ms", l.target_chunk_ms.to_string()));
            }
            h.push(("upload-expires", http_date(expires_ms)));
            h.push(("upload-offset", offset.to_string()));
            if let Some(sha) = deduplicated {
                h.push(("outlast-deduplicated", "1".to_owned()));
                h.push(("outlast-sha256", sha.to_owned()));
            }
            if close {
                h.push(("connection", "close".to_owned()));
            }
        }
        TusAnswer::Head(u) => {
            h.push(("cache-control", "no-store".to_owned()));
            h.push(("upload-offset", u.offset.to_string()));
            let state = match u.state {
                UploadState::Open => "open",
                UploadState::Complete => "complete",
                UploadState::Failed => "failed",
            };
            h.push(("outlast-upload-state", state.to_owned()));
            match u.length {
                Some(l) => h.push(("upload-length", l.to_string())),
                None => h.push(("upload-defer-length", "1".to_owned())),
            }
            if !u.metadata.is_empty() {
                h.push(("upload-metadata", u.metadata.to_owned()));
            }
            if let Some(sha) = u.sha256 {
                h.push(("outlast-sha256", sha.to_owned()));
            }
            if u.partial {
                h.push(("upload-concat", "partial".to_owned()));
            } else if let Some(parts) = u.final_of {
                let urls: Vec<String> = parts.iter().map(|id| upload_path(*id)).collect();
                h.push(("upload-concat", format!("final;{}", urls.join(" "))));
            }
            h.push(("upload-expires", http_date(u.expires_ms)));
        }
        TusAnswer::Patched { offset, expires_ms } => {
            h.push(("upload-offset", offset.to_string()));
            h.push(("upload-expires", http_date(expires_ms)));
        }
        TusAnswer::Deleted => {}
    }
    h
}

/// RFC 9110 IMF-fixdate of a Unix time in ms (seconds truncated), e.g.
/// `Wed, 25 Jun 2014 16:00:00 GMT`.
pub fn http_date(ms: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year:04} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_size: 1000,
        max_chunk_bytes: 100,
        target_chunk_ms: 5000,
    };
    const V: (&str, &str) = ("Tus-Resumable", "1.0.0");
    const OCTET: (&str, &str) = ("Content-Type", "application/offset+octet-stream");
    const SHA1: &str = "sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=";
    const PART: &str = "final;/v1/uploads/upl_0123456789abcdef0123456789abcdef";

    /// What a row expects: the request kind, or a refusal's status, code and header names.
    #[derive(Debug)]
    enum Want {
        Ok(&'static str),
        Err(u16, ErrorCode, &'static [&'static str]),
    }

    /// One row of the request table: endpoint, method, request headers, expectation.
    type Row = (
        Endpoint,
        &'static str,
        &'static [(&'static str, &'static str)],
        Want,
    );

    fn kind(r: &TusRequest) -> &'static str {
        match r {
            TusRequest::Options => "options",
            TusRequest::Create(c) => match c.kind {
                CreationKind::Final(_) => "create-final",
                CreationKind::Single { partial: true, .. } => "create-partial",
                CreationKind::Single { length: None, .. } => "create-deferred",
                CreationKind::Single { .. } if c.with_body => "create-with-body",
                CreationKind::Single { .. } => "create",
            },
            TusRequest::Head => "head",
            TusRequest::Patch(_) => "patch",
            TusRequest::Delete => "delete",
            TusRequest::Get => "get",
        }
    }

    /// The tus status table: one row per rule.
    #[test]
    fn request_table() {
        use Endpoint::*;
        use ErrorCode::*;
        use Want::*;
        let tv: &[&str] = &["tus-resumable", "tus-version"];
        let t: &[&str] = &["tus-resumable"];
        let rows: &[Row] = &[
            // Methods.
            (Collection, "OPTIONS", &[], Ok("options")),
            (Item, "OPTIONS", &[], Ok("options")),
            (Item, "GET", &[], Ok("get")),
            (
                Collection,
                "GET",
                &[V],
                Err(405, InvalidRequest, &["tus-resumable", "allow"]),
            ),
            (
                Item,
                "PUT",
                &[V],
                Err(405, InvalidRequest, &["tus-resumable", "allow"]),
            ),
            (
                Item,
                "POST",
                &[V, ("X-HTTP-Method-Override", "DELETE")],
                Ok("delete"),
            ),
            (Item, "HEAD", &[V], Ok("head")),
            (Item, "DELETE", &[V], Ok("delete")),
            // Tus-Resumable: 412 with Tus-Version.
            (
                Collection,
                "POST",
                &[("Upload-Length", "5")],
                Err(412, InvalidRequest, tv),
            ),
            (
                Item,
                "HEAD",
                &[("Tus-Resumable", "0.2.2")],
                Err(412, InvalidRequest, tv),
            ),
            (Item, "PATCH", &[OCTET], Err(412, InvalidRequest, tv)),
            (Item, "DELETE", &[], Err(412, InvalidRequest, tv)),
            // Creation lengths.
            (
                Collection,
                "POST",
                &[V, ("Upload-Length", "5")],
                Ok("create"),
            ),
            (
                Collection,
                "POST",
                &[V, ("Upload-Defer-Length", "1")],
                Ok("create-deferred"),
            ),
            (Collection, "POST", &[V], Err(400, InvalidRequest, t)),
            (
                Collection,
                "POST",
                &[V, ("Upload-Length", "5"), ("Upload-Defer-Length", "1")],
                Err(400, InvalidRequest, t),
            ),
            (
                Collection,
                "POST",
                &[V, ("Upload-Defer-Length", "2")],
                Err(400, InvalidRequest, t),
            ),
            (
                Collection,
                "POST",
                &[V, ("Upload-Length", "-5")],
                Err(400, InvalidRequest, t),
            ),
            (
                Collection,
                "POST",
                &[V, ("Upload-Length", "1001")],
                Err(413, MessageTooLarge, &["tus-resumable", "tus-max-size"]),
            ),
            (
                Collection,
                "POST",
                &[V, ("Upload-Length", "1000")],
                Ok("create"),
            ),
            // Metadata, digest.
            (
                Collection,
                "POST",
                &[V, ("Upload-Length", "5"), ("Upload-Metadata", "a !!!")],
                Err(400, InvalidRequest, t),
            ),
            (
                Collection,
                "POST",
                &[V, ("Upload-Length", "5"), ("Repr-Digest", "sha-256=:AAAA:")],
                Err(400, InvalidRequest, t),
            ),
            // Concatenation.
            (
                Collection,
                "POST",
                &[V, ("Upload-Length", "5"), ("Upload-Concat", "partial")],
                Ok("create-partial"),
            ),
            (
                Collection,
                "POST",
                &[V, ("Upload-Concat", PART)],
                Ok("create-final"),
            ),
            (
                Collection,
                "POST",
                &[V, ("Upload-Concat", PART), ("Upload-Length", "5")],
                Err(400, InvalidRequest, t),
            ),
            (
                Collection,
                "POST",
                &[V, ("Upload-Concat", "whole"), ("Upload-Length", "5")],
                Err(400, InvalidRequest, t),
            ),
            // Creation with upload: content type and checksum.
            (
                Collection,
                "POST",
                &[V, ("Upload-Length", "5"), OCTET],
                Ok("create-with-body"),
            ),
            (
                Collection,
                "POST",
                &[V, ("Upload-Length", "5"), ("Content-Type", "text/plain")],
                Err(415, InvalidRequest, t),
            ),
            (
                Collection,
                "POST",
                &[
                    V,
                    ("Upload-Length", "5"),
                    ("Content-Type", "text/plain"),
                    ("Content-Length", "0"),
                ],
                Ok("create"),
            ),
            (
                Collection,
                "POST",
                &[
                    V,
                    ("Upload-Length", "5"),
                    OCTET,
                    ("Upload-Checksum", "crc32 AAAA"),
                ],
                Err(400, InvalidRequest, t),
            ),
            // PATCH.
            (
                Item,
                "PATCH",
                &[V, OCTET, ("Upload-Offset", "0")],
                Ok("patch"),
            ),
            (
                Item,
                "POST",
                &[
                    V,
                    OCTET,
                    ("Upload-Offset", "0"),
                    ("X-HTTP-Method-Override", "PATCH"),
                ],
                Ok("patch"),
            ),
            (
                Item,
                "PATCH",
                &[V, ("Upload-Offset", "0")],
                Err(415, InvalidRequest, t),
            ),
            (
                Item,
                "PATCH",
                &[
                    V,
                    ("Content-Type", "text/plain"),
                    ("Upload-Offset", "0"),
                    ("Content-Length", "0"),
                ],
                Err(415, InvalidRequest, t),
            ),
            (Item, "PATCH", &[V, OCTET], Err(400, InvalidRequest, t)),
            (
                Item,
                "PATCH",
                &[V, OCTET, ("Upload-Offset", "x")],
                Err(400, InvalidRequest, t),
            ),
            (
                Item,
                "PATCH",
                &[
                    V,
                    OCTET,
                    ("Upload-Offset", "0"),
                    ("Upload-Checksum", "md5 AAAA"),
                ],
                Err(400, InvalidRequest, t),
            ),
            (
                Item,
                "PATCH",
                &[V, OCTET, ("Upload-Offset", "0"), ("Upload-Checksum", SHA1)],
                Ok("patch"),
            ),
            (
                Item,
                "PATCH",
                &[V, OCTET, ("Upload-Offset", "0"), ("Upload-Length", "y")],
                Err(400, InvalidRequest, t),
            ),
            (
                Item,
                "PATCH",
                &[V, OCTET, ("Upload-Offset", "0"), ("Content-Length", "101")],
                Err(
                    413,
                    MessageTooLarge,
                    &["tus-resumable", "outlast-max-chunk-size"],
                ),
            ),
            (
                Item,
                "PATCH",
                &[V, OCTET, ("Upload-Offset", "0"), ("Content-Length", "100")],
                Ok("patch"),
            ),
        ];
        for (i, (endpoint, method, headers, want)) in rows.iter().enumerate() {
            let got = classify(*endpoint, method, *headers, &LIMITS);
            match (want, &got) {
                (Want::Ok(k), Result::Ok(r)) => assert_eq!(kind(r), *k, "row {i}"),
                (Want::Err(status, code, names), Result::Err(r)) => {
                    let got_names: Vec<&str> = r.headers().iter().map(|(n, _)| *n).collect();
                    assert_eq!(
                        (r.status, r.code, got_names.as_slice()),
                        (*status, *code, *names),
                        "row {i}: {}",
                        r.message
                    );
                }
                _ => panic!("row {i}: {method} {headers:?}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn parsed_fields() {
        let Result::Ok(TusRequest::Patch(p)) = classify(
            Endpoint::Item,
            "PATCH",
            &[
                V,
                OCTET,
                ("Upload-Offset", "7"),
                ("Upload-Length", "9"),
                ("Content-Length", "0"),
            ][..],
            &LIMITS,
        ) else {
            panic!("a patch");
        };
        assert_eq!((p.offset, p.new_length, p.is_empty()), (7, Some(9), true));
        let Result::Ok(TusRequest::Create(c)) = classify(
            Endpoint::Collection,
            "POST",
            &[
                V,
                ("Upload-Length", "5"),
                ("Upload-Concat", "partial"),
                ("Upload-Metadata", "name YQ=="),
            ][..],
            &LIMITS,
        ) else {
            panic!("a creation");
        };
        assert_eq!(
            c.kind,
            CreationKind::Single {
                length: Some(5),
                partial: true
            }
        );
        assert_eq!(c.metadata.text("name"), Some("a"));
    }

    /// Refusals that need the stored upload or the body: status, code, header names.
    #[test]
    fn storage_refusal_table() {
        use ErrorCode::*;
        let off = check_offset(5, Some(10), 4).expect_err("mismatch");
        let past = check_offset(11, Some(10), 11).expect_err("past the end");
        assert!(check_offset(5, Some(10), 5).is_ok());
        let rows: &[(TusReject, u16, ErrorCode, &[&str])] = &[
            (
                off,
                409,
                OffsetMismatch,
                &["tus-resumable", "upload-offset"],
            ),
            (
                past,
                400,
                InvalidRequest,
                &["tus-resumable", "upload-offset"],
            ),
            (
                TusReject::checksum_mismatch(),
                460,
                ChecksumMismatch,
                &["tus-resumable"],
            ),
            (
                TusReject::body_too_large(100),
                413,
                MessageTooLarge,
                &["tus-resumable", "outlast-max-chunk-size"],
            ),
            (
                TusReject::beyond_length(),
                413,
                MessageTooLarge,
                &["tus-resumable"],
            ),
            (
                TusReject::cut_off(),
                400,
                InvalidRequest,
                &["tus-resumable"],
            ),
            (
                TusReject::final_not_patchable(),
                403,
                InvalidRequest,
                &["tus-resumable"],
            ),
            (
                TusReject::already_complete(),
                400,
                InvalidRequest,
                &["tus-resumable"],
            ),
        ];
        for (i, (r, status, code, names)) in rows.iter().enumerate() {
            let got: Vec<&str> = r.headers().iter().map(|(n, _)| *n).collect();
            assert_eq!(
                (r.status, r.code, got.as_slice()),
                (*status, *code, *names),
                "row {i}"
            );
            assert_eq!(r.body().code, *code);
        }
    }

    /// Which headers each answer carries.
    #[test]
    fn answer_table() {
        let id: UploadId = "upl_0123456789abcdef0123456789abcdef".parse().expect("id");
        let parts = [id];
        let head = |length, partial, final_of, metadata, sha256| UploadView {
            offset: 3,
            length,
            state: UploadState::Open,
            metadata,
            sha256,
            partial,
            final_of,
            expires_ms: 1_403_712_000_000,
        };
        let created = |limits, deduplicated, close| TusAnswer::Created {
            id,
            offset: 0,
            expires_ms: 0,
            limits,
            deduplicated,
            close,
        };
        let rows: &[(TusAnswer, u16, &[&str])] = &[
            (
                TusAnswer::Options(LIMITS),
                204,
                &[
                    "tus-resumable",
                    "tus-version",
                    "tus-extension",
                    "tus-max-size",
                    "tus-checksum-algorithm",
                    "outlast-max-chunk-size",
                    "outlast-target-chunk-ms",
                ],
            ),
            (
                created(Some(LIMITS), None, false),
                201,
                &[
                    "tus-resumable",
                    "location",
                    "outlast-max-chunk-size",
                    "outlast-target-chunk-ms",
                    "upload-expires",
                    "upload-offset",
                ],
            ),
            (
                created(None, None, false),
                201,
                &[
                    "tus-resumable",
                    "location",
                    "upload-expires",
                    "upload-offset",
                ],
            ),
            (
                created(Some(LIMITS), Some("ab"), true),
                201,
                &[
                    "tus-resumable",
                    "location",
                    "outlast-max-chunk-size",
                    "outlast-target-chunk-ms",
                    "upload-expires",
                    "upload-offset",
                    "outlast-deduplicated",
                    "outlast-sha256",
                    "connection",
                ],
            ),
            (
                TusAnswer::Head(head(Some(9), false, None, "", None)),
                200,
                &[
                    "tus-resumable",
                    "cache-control",
                    "upload-offset",
                    "outlast-upload-state",
                    "upload-length",
                    "upload-expires",
                ],
            ),
            (
                TusAnswer::Head(head(None, true, None, "a YQ==", Some("ab"))),
                200,
                &[
                    "tus-resumable",
                    "cache-control",
                    "upload-offset",
                    "outlast-upload-state",
                    "upload-defer-length",
                    "upload-metadata",
                    "outlast-sha256",
                    "upload-concat",
                    "upload-expires",
                ],
            ),
            (
                TusAnswer::Head(head(Some(9), false, Some(&parts), "", None)),
                200,
                &[
                    "tus-resumable",
                    "cache-control",
                    "upload-offset",
                    "outlast-upload-state",
                    "upload-length",
                    "upload-concat",
                    "upload-expires",
                ],
            ),
            (
                TusAnswer::Patched {
                    offset: 5,
                    expires_ms: 0,
                },
                204,
                &["tus-resumable", "upload-offset", "upload-expires"],
            ),
            (TusAnswer::Deleted, 204, &["tus-resumable"]),
        ];
        for (i, (answer, status, names)) in rows.iter().enumerate() {
            let headers = answer_headers(answer);
            let got: Vec<&str> = headers.iter().map(|(n, _)| *n).collect();
            assert_eq!(
                (answer.status(), got.as_slice()),
                (*status, *names),
                "row {i}"
            );
        }
        let h = answer_headers(&TusAnswer::Head(head(
            Some(9),
            false,
            Some(&parts),
            "",
            None,
        )));
        let value = |name| h.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str());
        assert_eq!(
            value("upload-concat"),
            Some(format!("final;{}", upload_path(id)).as_str())
        );
        assert_eq!(
            value("upload-expires"),
            Some("Wed, 25 Jun 2014 16:00:00 GMT")
        );
        assert_eq!(value("cache-control"), Some("no-store"));
        assert_eq!(value("upload-offset"), Some("3"));
    }

    #[test]
    fn http_dates() {
        for (ms, want) in [
            (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
            (1_403_712_000_999, "Wed, 25 Jun 2014 16:00:00 GMT"),
            (951_782_400_000, "Tue, 29 Feb 2000 00:00:00 GMT"),
            (1_798_761_599_000, "Thu, 31 Dec 2026 23:59:59 GMT"),
        ] {
            assert_eq!(http_date(ms), want, "{ms}");
        }
    }
}
