//! The one error type of the gateway's request paths: a stable code, a client-safe message,
//! and (for internal errors) a cause that is logged but never sent.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use outlast_protocol::{ErrorBody, ErrorCode};

/// An error answered to a client over HTTP or the WebSocket.
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct AppError {
    /// Stable code.
    pub code: ErrorCode,
    /// Client-safe message.
    pub message: String,
    /// Seconds after which a retry may succeed (HTTP `Retry-After`), for limits.
    pub retry_after_s: Option<u32>,
}

impl AppError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_s: None,
        }
    }

    /// The same error, telling the client when to try again.
    pub fn retry_after(mut self, seconds: u32) -> Self {
        self.retry_after_s = Some(seconds);
        self
    }

    /// The answer for ids that do not exist *or belong to someone else*: the two are
    /// indistinguishable, so ids leak nothing.
    pub fn not_found(what: &str) -> Self {
        Self::new(ErrorCode::NotFound, format!("no such {what}"))
    }

    /// A bad request.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }

    /// An internal failure: the cause goes to the log, the client gets a generic message.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(%cause, "internal error");
        Self::new(ErrorCode::Internal, "internal error; see the gateway log")
    }

    /// The wire body.
    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            code: self.code,
            message: self.message.clone(),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut response = (status, Json(self.body())).into_response();
        if let Some(s) = self.retry_after_s {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, s.into());
        }
        response
    }
}

/// The code of an error answer that axum (or the router) wrote itself, by its status.
fn code_for_status(status: StatusCode) -> Option<ErrorCode> {
    Some(match status.as_u16() {
        400 | 411 | 422 | 426 => ErrorCode::InvalidRequest,
        401 => ErrorCode::Unauthorized,
        404 => ErrorCode::NotFound,
        405 => ErrorCode::MethodNotAllowed,
        408 => ErrorCode::RequestTimeout,
        413 => ErrorCode::MessageTooLarge,
        415 => ErrorCode::UnsupportedMediaType,
        _ => return None,
    })
}

/// Longest rejection text kept as the message.
const MAX_REJECTION_TEXT: usize = 1024;

/// Middleware (`axum::middleware::map_response`): an error answer that is not already JSON
/// (axum's own rejections are `text/plain`; unknown routes and methods answer with no body)
/// becomes the documented [`ErrorBody`] with the code of its status. The status and every
/// other header (`Allow`, CORS) stay.
pub async fn type_rejections(response: Response) -> Response {
    let status = response.status();
    let Some(code) = code_for_status(status) else {
        return response;
    };
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, MAX_REJECTION_TEXT)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let message = match (text.is_empty(), code) {
        (false, _) => text,
        (true, ErrorCode::NotFound) => "no such route".to_owned(),
        (true, ErrorCode::MethodNotAllowed) => "method not allowed here; see Allow".to_owned(),
        (true, _) => status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_owned(),
    };
    let body = serde_json::to_vec(&ErrorBody { code, message }).unwrap_or_default();
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    parts.headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, axum::body::Body::from(body))
}
