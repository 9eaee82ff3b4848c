//! tus 1.0.0 request rules without I/O: header parsing and validation (version, lengths,
//! offsets, `Upload-Metadata`, `Upload-Checksum`, `Upload-Concat`, `Repr-Digest`).
//!
//! The gateway's HTTP handlers call these functions and map a [`TusError`] to its status code;
//! nothing here knows about sockets, files or clocks.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::ids::UploadId;

pub mod exchange;

/// The only protocol version spoken.
pub const VERSION: &str = "1.0.0";
/// `Tus-Extension` as advertised by OPTIONS.
pub const EXTENSIONS: &str = "creation,creation-with-upload,creation-defer-length,expiration,checksum,termination,concatenation";
/// `Tus-Checksum-Algorithm` as advertised by OPTIONS.
pub const CHECKSUM_ALGORITHMS: &str = "sha1,sha256,md5";
/// The content type every PATCH (and creation-with-upload POST) body must have.
pub const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";
/// Metadata key a client may use to declare the sha256 (hex) of the whole file.
pub const SHA256_METADATA_KEY: &str = "sha256";

/// A request that breaks a tus rule. [`TusError::status`] is the HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TusError {
    /// `Tus-Resumable` is missing or names another version: 412.
    #[error("unsupported tus version {0:?}; this server speaks {VERSION}")]
    Version(String),
    /// A header is malformed or a combination is not allowed: 400.
    #[error("invalid {header}: {reason}")]
    BadHeader {
        /// The header name.
        header: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// `Upload-Checksum` names an algorithm this server does not support: 400.
    #[error("unsupported checksum algorithm {0:?}; supported: {CHECKSUM_ALGORITHMS}")]
    UnknownAlgorithm(String),
    /// The body's content type is not `application/offset+octet-stream`: 415.
    #[error("content type must be {OFFSET_OCTET_STREAM}")]
    ContentType,
    /// `Upload-Offset` differs from the server's offset: 409.
    #[error("Upload-Offset {client} does not match the upload's offset {server}")]
    OffsetMismatch {
        /// What the client sent.
        client: u64,
        /// What the server has.
        server: u64,
    },
}

impl TusError {
    /// The HTTP status of the answer.
    pub fn status(&self) -> u16 {
        match self {
            TusError::Version(_) => 412,
            TusError::BadHeader { .. } | TusError::UnknownAlgorithm(_) => 400,
            TusError::ContentType => 415,
            TusError::OffsetMismatch { .. } => 409,
        }
    }
}

fn bad(header: &'static str, reason: impl Into<String>) -> TusError {
    TusError::BadHeader {
        header,
        reason: reason.into(),
    }
}

/// Checks `Tus-Resumable` (every request except OPTIONS must carry `1.0.0`).
pub fn check_version(header: Option<&str>) -> Result<(), TusError> {
    match header {
        Some(v) if v.trim() == VERSION => Ok(()),
        Some(v) => Err(TusError::Version(v.chars().take(32).collect())),
        None => Err(TusError::Version(String::new())),
    }
}

/// A non-negative decimal integer header (`Upload-Length`, `Upload-Offset`): digits only.
pub fn parse_u64(header: &'static str, value: &str) -> Result<u64, TusError> {
    let v = value.trim();
    if v.is_empty() || v.len() > 20 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(header, "expected a non-negative decimal integer"));
    }
    v.parse()
        .map_err(|_| bad(header, "expected a non-negative decimal integer"))
}

/// The declared size of a new upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Length {
    /// `Upload-Length: n`.
    Known(u64),
    /// `Upload-Defer-Length: 1`: the length comes with a later PATCH.
    Deferred,
}

/// `Upload-Length` / `Upload-Defer-Length` of a creation request: exactly one of them.
pub fn parse_creation_length(
    length: Option<&str>,
    defer: Option<&str>,
) -> Result<Length, TusError> {
    match (length, defer) {
        (Some(_), Some(_)) => Err(bad(
            "Upload-Length",
            "send either Upload-Length or Upload-Defer-Length, not both",
        )),
        (Some(l), None) => parse_u64("Upload-Length", l).map(Length::Known),
        (None, Some(d)) if d.trim() == "1" => Ok(Length::Deferred),
        (None, Some(_)) => Err(bad("Upload-Defer-Length", "the only allowed value is 1")),
        (None, None) => Err(bad("Upload-Length", "required (or Upload-Defer-Length: 1)")),
    }
}

/// Parsed `Upload-Metadata`: keys in order, values decoded (a key may have no value).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata(pub BTreeMap<String, Option<Vec<u8>>>);

impl Metadata {
    /// A value as UTF-8 text, when present and valid.
    pub fn text(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .and_then(|v| v.as_deref())
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The header form: `key base64,key2 base64` (keys sorted).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        for (k, v) in &self.0 {
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(k);
            if let Some(v) = v {
                out.push(' ');
                out.push_str(&STANDARD.encode(v));
            }
        }
        out
    }

    /// From plain-text pairs (the WebSocket path sends text values).
    pub fn from_text(pairs: &BTreeMap<String, String>) -> Result<Metadata, TusError> {
        let mut map = BTreeMap::new();
        for (k, v) in pairs {
            check_metadata_key(k)?;
            map.insert(k.clone(), Some(v.as_bytes().to_vec()));
        }
        Ok(Metadata(map))
    }
}

fn check_metadata_key(key: &str) -> Result<(), TusError> {
    if key.is_empty()
        || key.len() > 128
        || key
            .bytes()
            .any(|b| b == b',' || b.is_ascii_whitespace() || !b.is_ascii_graphic())
    {
        return Err(bad(
            "Upload-Metadata",
            "keys must be 1-128 printable ASCII characters without spaces or commas",
        ));
    }
    Ok(())
}

/// Parses `Upload-Metadata`; duplicate keys, bad keys and bad base64 are errors.
pub fn parse_metadata(value: &str) -> Result<Metadata, TusError> {
    let mut map = BTreeMap::new();
    if value.len() > 16 * 1024 {
        return Err(bad("Upload-Metadata", "longer than 16 KiB"));
    }
    if value.trim().is_empty() {
        return Ok(Metadata(map));
    }
    for pair in value.split(',') {
        let pair = pair.trim();
        let mut parts = pair.split(' ').filter(|p| !p.is_empty());
        let key = parts.next().unwrap_or_default();
        check_metadata_key(key)?;
        let decoded =
            match parts.next() {
                Some(v) => Some(STANDARD.decode(v).map_err(|_| {
                    bad("Upload-Metadata", format!("value of {key:?} is not base64"))
                })?),
                None => None,
            };
        if parts.next().is_some() {
            return Err(bad(
                "Upload-Metadata",
                format!("{key:?} has more than one value"),
            ));
        }
        if map.insert(key.to_owned(), decoded).is_some() {
            return Err(bad("Upload-Metadata", format!("duplicate key {key:?}")));
        }
    }
    Ok(Metadata(map))
}

/// A checksum algorithm of the checksum extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumAlgorithm {
    /// SHA-1 (mandatory in tus).
    Sha1,
    /// SHA-256.
    Sha256,
    /// MD5.
    Md5,
}

impl ChecksumAlgorithm {
    /// Digest length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            ChecksumAlgorithm::Sha1 => 20,
            ChecksumAlgorithm::Sha256 => 32,
            ChecksumAlgorithm::Md5 => 16,
        }
    }
}

/// `Upload-Checksum: <algorithm> <base64 digest>`.
pub fn parse_checksum(value: &str) -> Result<(ChecksumAlgorithm, Vec<u8>), TusError> {
    let (name, digest) = value
        .trim()
        .split_once(' ')
        .ok_or_else(|| bad("Upload-Checksum", "expected \"<algorithm> <base64>\""))?;
    let algorithm = match name.to_ascii_lowercase().as_str() {
        "sha1" => ChecksumAlgorithm::Sha1,
        "sha256" => ChecksumAlgorithm::Sha256,
        "md5" => ChecksumAlgorithm::Md5,
        _ => return Err(TusError::UnknownAlgorithm(name.chars().take(32).collect())),
    };
    let digest = STANDARD
        .decode(digest.trim())
        .map_err(|_| bad("Upload-Checksum", "the digest is not base64"))?;
    if digest.len() != algorithm.digest_len() {
        return Err(bad(
            "Upload-Checksum",
            format!("a {name} digest has {} bytes", algorithm.digest_len()),
        ));
    }
    Ok((algorithm, digest))
}

/// `Upload-Concat` of a creation request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Concat {
    /// `partial`: a piece of a later final upload.
    Partial,
    /// `final;<url> <url> ...`: the concatenation of these partial uploads, in order.
    Final(Vec<UploadId>),
}

/// Parses `Upload-Concat`. Each URL may be absolute or a path; its last segment is the id.
pub fn parse_concat(value: &str) -> Result<Concat, TusError> {
    let value = value.trim();
    if value == "partial" {
        return Ok(Concat::Partial);
    }
    let Some(list) = value.strip_prefix("final;") else {
        return Err(bad(
            "Upload-Concat",
            "expected \"partial\" or \"final;<url> <url>...\"",
        ));
    };
    let mut ids = Vec::new();
    for url in list.split(' ').filter(|u| !u.is_empty()) {
        let path = url.split(['?', '#']).next().unwrap_or_default();
        let last = path
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default();
        let id = last
            .parse::<UploadId>()
            .map_err(|_| bad("Upload-Concat", format!("{url:?} is not an upload URL")))?;
        ids.push(id);
    }
    if ids.is_empty() {
        return Err(bad(
            "Upload-Concat",
            "a final upload needs at least one part",
        ));
    }
    if ids.len() > 1000 {
        return Err(bad("Upload-Concat", "at most 1000 parts"));
    }
    Ok(Concat::Final(ids))
}

/// The `Upload-Concat` header of an existing upload.
pub fn format_concat(concat: &Concat, url_of: impl Fn(UploadId) -> String) -> String {
    match concat {
        Concat::Partial => "partial".to_owned(),
        Concat::Final(ids) => {
            let urls: Vec<String> = ids.iter().map(|id| url_of(*id)).collect();
            format!("final;{}", urls.join(" "))
        }
    }
}

/// The sha256 a client declares for the whole file: `Repr-Digest: sha-256=:<base64>:`
/// (RFC 9530) or the metadata key `sha256` (64 hex digits). `None` when neither is sent.
pub fn declared_sha256(
    repr_digest: Option<&str>,
    metadata: &Metadata,
) -> Result<Option<[u8; 32]>, TusError> {
    if let Some(header) = repr_digest {
        for member in header.split(',') {
            let Some((name, value)) = member.trim().split_once('=') else {
                continue;
            };
            if name.trim() != "sha-256" {
                continue;
            }
            let inner = value
                .trim()
                .strip_prefix(':')
                .and_then(|v| v.strip_suffix(':'))
                .ok_or_else(|| bad("Repr-Digest", "expected sha-256=:<base64>:"))?;
            let bytes = STANDARD
                .decode(inner)
                .map_err(|_| bad("Repr-Digest", "the digest is not base64"))?;
            return <[u8; 32]>::try_from(bytes.as_slice())
                .map(Some)
                .map_err(|_| bad("Repr-Digest", "a sha-256 digest has 32 bytes"));
        }
    }
    match metadata.0.get(SHA256_METADATA_KEY) {
        None => Ok(None),
        Some(value) => {
            let text = value
                .as_deref()
                .and_then(|v| std::str::from_utf8(v).ok())
                .unwrap_or_default();
            parse_sha256_hex(text)
                .map(Some)
                .ok_or_else(|| bad("Upload-Metadata", "sha256 must be 64 hex digits"))
        }
    }
}

/// 64 hex digits (either case) to 32 bytes.
pub fn parse_sha256_hex(text: &str) -> Option<[u8; 32]> {
    let text = text.trim().as_bytes();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in text.chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// The method a request stands for: `X-HTTP-Method-Override` wins when present.
pub fn effective_method<'a>(method: &'a str, method_override: Option<&'a str>) -> &'a str {
    match method_override.map(str::trim) {
        Some(m) if !m.is_empty() => m,
        _ => method,
    }
}

/// The offset rule of PATCH: the client's offset must be the server's, and the upload must
/// still have room.
pub fn check_patch_offset(server: u64, length: Option<u64>, client: u64) -> Result<(), TusError> {
    if client != server {
        return Err(TusError::OffsetMismatch { client, server });
    }
    if length.is_some_and(|l| server > l) {
        return Err(bad("Upload-Offset", "beyond the upload's length"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_rules() {
        assert!(check_version(Some("1.0.0")).is_ok());
        assert_eq!(
            check_version(Some("0.2.0")).map_err(|e| e.status()),
            Err(412)
        );
        assert_eq!(check_version(None).map_err(|e| e.status()), Err(412));
    }

    #[test]
    fn lengths() {
        assert_eq!(
            parse_creation_length(Some("10"), None),
            Ok(Length::Known(10))
        );
        assert_eq!(parse_creation_length(None, Some("1")), Ok(Length::Deferred));
        for (l, d) in [
            (None, None),
            (Some("1"), Some("1")),
            (None, Some("2")),
            (Some("-1"), None),
            (Some("+1"), None),
            (Some("1e3"), None),
            (Some("99999999999999999999999"), None),
        ] {
            assert_eq!(
                parse_creation_length(l, d).map_err(|e| e.status()),
                Err(400),
                "{l:?} {d:?}"
            );
        }
    }

    #[test]
    fn metadata_round_trip_and_errors() {
        let m = parse_metadata("filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential")
            .expect("valid");
        assert_eq!(m.text("filename"), Some("world_domination_plan.pdf"));
        assert_eq!(m.0.get("is_confidential"), Some(&None));
        assert_eq!(parse_metadata(&m.encode()), Ok(m));
        for bad in ["a !!!,b", "a YQ==,a YQ==", "a YQ==,,b", "a YQ== YQ=="] {
            assert!(parse_metadata(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_metadata(""), Ok(Metadata::default()));
    }

    #[test]
    fn checksums() {
        let (a, d) = parse_checksum("sha1 Kq5sNclPz7QV2+lfQIuc6R7oRu0=").expect("valid");
        assert_eq!((a, d.len()), (ChecksumAlgorithm::Sha1, 20));
        assert!(matches!(
            parse_checksum("crc32 AAAA"),
            Err(TusError::UnknownAlgorithm(_))
        ));
        assert!(parse_checksum("sha1 AAAA").is_err());
        assert!(parse_checksum("sha1").is_err());
    }

    #[test]
    fn concat() {
        let a = UploadId::random();
        let b = UploadId::random();
        assert_eq!(parse_concat("partial"), Ok(Concat::Partial));
        assert_eq!(
            parse_concat(&format!("final;/v1/uploads/{a} http://h:1/v1/uploads/{b}")),
            Ok(Concat::Final(vec![a, b]))
        );
        assert!(parse_concat("final;").is_err());
        assert!(parse_concat("final;/v1/uploads/nope").is_err());
        assert!(parse_concat("whole").is_err());
    }

    #[test]
    fn declared_digest() {
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let bytes = parse_sha256_hex(hex).expect("hex");
        let header = format!("sha-256=:{}:", STANDARD.encode(bytes));
        assert_eq!(
            declared_sha256(Some(&header), &Metadata::default()),
            Ok(Some(bytes))
        );
        let mut m = Metadata::default();
        m.0.insert("sha256".into(), Some(hex.as_bytes().to_vec()));
        assert_eq!(declared_sha256(None, &m), Ok(Some(bytes)));
        m.0.insert("sha256".into(), Some(b"xyz".to_vec()));
        assert!(declared_sha256(None, &m).is_err());
        assert_eq!(declared_sha256(None, &Metadata::default()), Ok(None));
    }

    #[test]
    fn offsets() {
        assert!(check_patch_offset(5, Some(10), 5).is_ok());
        assert_eq!(
            check_patch_offset(5, Some(10), 4).map_err(|e| e.status()),
            Err(409)
        );
        assert_eq!(effective_method("POST", Some("PATCH")), "PATCH");
        assert_eq!(effective_method("POST", None), "POST");
    }
}
