//! The `Owner` and `Authed` extractors: the authenticated owner (or whole [`Principal`]) of a
//! request, with the endpoint's scope checked. They need only the [`Auth`] out of the state
//! (`Arc<Auth>: FromRef<S>`), never the whole application state.
//!
//! Credentials, first found wins: `Authorization: Bearer <token>` (scheme in any case); a
//! ticket in the WebSocket subprotocol list (`outlast.ticket.<ticket>`); `?ticket=`;
//! `?access_token=` only when `http.allow_query_token` is on (else refused). Cookies are never
//! read. `POST /v1/tickets` takes only the header. The principal is resolved once per request
//! (kept in the request's extensions), so a ticket is spent once.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{Method, header};
use outlast_protocol::{ErrorCode, OwnerId};

use crate::auth::{Auth, Credential, Principal, Scope};
use crate::error::AppError;

/// The WebSocket subprotocol prefix that carries a ticket.
pub const TICKET_PROTOCOL_PREFIX: &str = "outlast.ticket.";

/// The authenticated owner of a request.
#[derive(Debug, Clone)]
pub struct Owner(pub OwnerId);

/// The authenticated principal of a request (owner, scopes, backends, expiry).
#[derive(Debug, Clone)]
pub struct Authed(pub Principal);

impl<S> FromRequestParts<S> for Owner
where
    Arc<Auth>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Authed::from_request_parts(parts, state)
            .await
            .map(|Authed(p)| Owner(p.owner))
    }
}

impl<S> FromRequestParts<S> for Authed
where
    Arc<Auth>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let principal = principal_of(parts, &Arc::<Auth>::from_ref(state))?;
        if let Some(scope) = route_scope(&parts.method, parts.uri.path()) {
            principal.require(scope)?;
        }
        Ok(Authed(principal))
    }
}

/// The request's principal, resolved at most once per request.
pub fn principal_of(parts: &mut Parts, auth: &Auth) -> Result<Principal, AppError> {
    if let Some(p) = parts.extensions.get::<Principal>() {
        return Ok(p.clone());
    }
    let header_only = parts.uri.path() == "/v1/tickets";
    let principal = auth.resolve(credential_of(parts, auth, header_only)?)?;
    parts.extensions.insert(principal.clone());
    Ok(principal)
}

/// The scope an endpoint needs (the WebSocket checks per message; `/v1/tickets` needs only a
/// valid credential): uploads `upload`; job submission and cancel `submit`; reading jobs,
/// events and outputs `read`; `/metrics` on the main address `admin`.
pub fn route_scope(method: &Method, path: &str) -> Option<Scope> {
    if path == "/metrics" {
        Some(Scope::Admin)
    } else if path.starts_with("/v1/uploads") {
        Some(Scope::Upload)
    } else if path.starts_with("/v1/jobs") {
        if *method == Method::POST || *method == Method::DELETE {
            Some(Scope::Submit)
        } else {
            Some(Scope::Read)
        }
    } else {
        None
    }
}

/// The presented credential, if any.
fn credential_of<'a>(
    parts: &'a Parts,
    auth: &Auth,
    header_only: bool,
) -> Result<Option<Credential<'a>>, AppError> {
    if let Some(value) = parts.headers.get(header::AUTHORIZATION) {
        let bearer = value
            .to_str()
            .ok()
            .and_then(|v| v.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|t| !t.is_empty());
        return match bearer {
            Some(token) => Ok(Some(Credential::Bearer(token))),
            None => Err(AppError::new(
                ErrorCode::Unauthorized,
                "the Authorization header must be `Bearer <token>`",
            )),
        };
    }
    if header_only {
        return Ok(None);
    }
    let offered = parts
        .headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix(TICKET_PROTOCOL_PREFIX));
    if let Some(ticket) = offered {
        return Ok(Some(Credential::Ticket(ticket)));
    }
    let query = parts.uri.query().unwrap_or("");
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
            .filter(|v| !v.is_empty())
    };
    if let Some(ticket) = param("ticket") {
        return Ok(Some(Credential::Ticket(ticket)));
    }
    if let Some(token) = param("access_token") {
        if !auth.allow_query_token() {
            return Err(AppError::new(
                ErrorCode::Unauthorized,
                "tokens in URLs are refused: send `Authorization: Bearer`, or a ticket from POST /v1/tickets",
            ));
        }
        return Ok(Some(Credential::Bearer(token)));
    }
    Ok(None)
}
