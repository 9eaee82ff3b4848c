//! `POST /v1/tickets`: trades the `Authorization` header's credential for a single-use ticket
//! (valid `tickets.ttl`, 30 s by default) that a browser presents where it cannot set a header:
//! in the WebSocket subprotocol list as `outlast.ticket.<ticket>`, or as `?ticket=` on SSE,
//! long-poll, outputs and tus. The ticket carries the credential's owner, scopes, backends and
//! expiry. Tickets live in this process's memory (`auth::tickets`).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use outlast_protocol::ErrorCode;
use serde::Serialize;

use super::owner::{Authed, TICKET_PROTOCOL_PREFIX};
use super::state::AppState;
use crate::error::AppError;

/// The answer.
#[derive(Debug, Serialize)]
struct TicketAnswer {
    /// The ticket (base64url, 43 characters).
    ticket: String,
    /// The WebSocket subprotocol that carries it: `outlast.ticket.<ticket>`.
    protocol: String,
    /// How long it is valid from now, in milliseconds.
    expires_in_ms: u64,
}

/// The handler.
pub async fn create(
    State(state): State<AppState>,
    Authed(principal): Authed,
) -> Result<Response, AppError> {
    let tickets = state.auth.tickets();
    let ticket = tickets.issue(principal).ok_or_else(|| {
        AppError::new(
            ErrorCode::LimitExceeded,
            "too many outstanding tickets; retry shortly",
        )
    })?;
    let answer = TicketAnswer {
        protocol: format!("{TICKET_PROTOCOL_PREFIX}{ticket}"),
        ticket,
        expires_in_ms: tickets.ttl().as_millis() as u64,
    };
    let mut response = (StatusCode::CREATED, Json(answer)).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
