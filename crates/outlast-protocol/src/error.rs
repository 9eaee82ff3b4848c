//! Error codes shared by every transport: WebSocket `error` messages and HTTP error bodies.

use serde::{Deserialize, Serialize};

/// A stable, machine-readable error code. HTTP answers use [`ErrorCode::http_status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The bytes are not a valid message in the connection's codec.
    MalformedMessage,
    /// The message's `type` is not one this protocol version knows.
    UnknownMessageType,
    /// The message is well-formed but a field is missing or invalid.
    InvalidMessage,
    /// A message or body exceeds the configured limit.
    MessageTooLarge,
    /// No such job, upload or output for this owner (also for other owners' ids).
    NotFound,
    /// The request is understood but invalid (bad workflow, bad parameter).
    InvalidRequest,
    /// The named backend is not configured.
    UnknownBackend,
    /// A job input names an upload that is not complete.
    InputNotReady,
    /// The idempotency key was used before with a different job.
    IdempotencyConflict,
    /// Too many subscriptions on one connection, or similar per-client limits.
    LimitExceeded,
    /// Missing or wrong credentials.
    Unauthorized,
    /// The request is refused whoever asks: a foreign `Origin` or `Host`, or a credential
    /// without the scope (or backend) the endpoint needs.
    Forbidden,
    /// The body's `Content-Type` is not one the endpoint takes (job submissions: JSON).
    UnsupportedMediaType,
    /// No WebSocket subprotocol this server speaks was offered.
    UnsupportedSubprotocol,
    /// The gateway is shutting down; reconnect shortly.
    ShuttingDown,
    /// Something failed inside the gateway; details are in its log.
    Internal,
    /// An upload chunk starts at another offset than the upload's durable offset.
    OffsetMismatch,
    /// Another request or connection is writing this upload right now; retry shortly.
    UploadLocked,
    /// A chunk checksum or the declared sha256 of the whole file does not match.
    ChecksumMismatch,
    /// The server's disk is too full to accept the upload.
    InsufficientStorage,
    /// The upload expired and is being removed.
    UploadExpired,
    /// A job's webhook URL is not allowed (bad URL, a private or loopback address the egress
    /// policy refuses, or no signing secret configured for the owner).
    WebhookRefused,
    /// The path exists but not with this method (HTTP 405, with `Allow`).
    MethodNotAllowed,
    /// The request body did not arrive in time (HTTP 408; the connection is closed).
    RequestTimeout,
    /// The gateway is at its connection limit; retry shortly (HTTP 503).
    Overloaded,
    /// A code this client version does not know yet.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The snake_case code string.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedMessage => "malformed_message",
            ErrorCode::UnknownMessageType => "unknown_message_type",
            ErrorCode::InvalidMessage => "invalid_message",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::NotFound => "not_found",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::UnknownBackend => "unknown_backend",
            ErrorCode::InputNotReady => "input_not_ready",
            ErrorCode::IdempotencyConflict => "idempotency_conflict",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::UnsupportedSubprotocol => "unsupported_subprotocol",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal",
            ErrorCode::OffsetMismatch => "offset_mismatch",
            ErrorCode::UploadLocked => "upload_locked",
            ErrorCode::ChecksumMismatch => "checksum_mismatch",
            ErrorCode::InsufficientStorage => "insufficient_storage",
            ErrorCode::UploadExpired => "upload_expired",
            ErrorCode::WebhookRefused => "webhook_refused",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::RequestTimeout => "request_timeout",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Unknown => "unknown",
        }
    }

    /// The HTTP status an HTTP endpoint answers with for this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::MalformedMessage
            | ErrorCode::UnknownMessageType
            | ErrorCode::InvalidMessage
            | ErrorCode::InvalidRequest
            | ErrorCode::UnsupportedSubprotocol => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::NotFound => 404,
            ErrorCode::IdempotencyConflict | ErrorCode::InputNotReady => 409,
            ErrorCode::MessageTooLarge => 413,
            ErrorCode::UnknownBackend | ErrorCode::WebhookRefused => 422,
            ErrorCode::LimitExceeded => 429,
            ErrorCode::ShuttingDown => 503,
            ErrorCode::OffsetMismatch => 409,
            ErrorCode::UploadLocked => 423,
            ErrorCode::ChecksumMismatch => 460,
            ErrorCode::InsufficientStorage => 507,
            ErrorCode::UploadExpired => 410,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::RequestTimeout => 408,
            ErrorCode::Overloaded => 503,
            ErrorCode::Internal | ErrorCode::Unknown => 500,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error body of every HTTP endpoint and the payload of the WebSocket `error` message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable code.
    pub code: ErrorCode,
    /// Message for people; never contains internals.
    pub message: String,
}
