//! The `Owner` extractor: the authenticated owner of a request. It needs only the [`Auth`] out of
//! the state (`Arc<Auth>: FromRef<S>`), never the whole application state.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use outlast_protocol::OwnerId;

use crate::auth::Auth;
use crate::error::AppError;

/// The authenticated owner of a request: from `Authorization: Bearer <token>`, or from the
/// `access_token` query parameter for browsers' WebSocket and EventSource, which cannot set headers.
#[derive(Debug, Clone)]
pub struct Owner(pub OwnerId);

impl<S> FromRequestParts<S> for Owner
where
    Arc<Auth>: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let auth = Arc::<Auth>::from_ref(state);
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim);
        let query = parts.uri.query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("access_token="))
                .filter(|t| !t.is_empty())
        });
        auth.owner_for(header.or(query)).map(Owner)
    }
}
