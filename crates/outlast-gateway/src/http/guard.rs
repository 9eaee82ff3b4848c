//! Request guards that hold with or without auth: the `Host` allow-list (DNS rebinding), the
//! `Origin` check of WebSocket upgrades and state-changing requests (cross-site request
//! forgery, cross-site WebSocket hijacking), the CORS layer (off unless origins are listed) and
//! the JSON-only rule of job submissions (with a credential's backend restriction).

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use outlast_protocol::ErrorCode;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use super::owner::principal_of;
use super::state::AppState;
use crate::config::{Config, origin_parts, split_host_port};
use crate::error::AppError;

/// Paths served whatever the `Host` (health checks of orchestrators use the pod's address).
const ANY_HOST_PATHS: &[&str] = &["/healthz", "/readyz"];

/// The `Host` and `Origin` checks, in front of everything.
pub async fn host_and_origin(State(state): State<AppState>, req: Request, next: Next) -> Response {
    match check(&state.config, req.method(), req.uri(), req.headers()) {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}

fn check(
    config: &Config,
    method: &Method,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
) -> Result<(), AppError> {
    if ANY_HOST_PATHS.contains(&uri.path()) {
        return Ok(());
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .and_then(split_host_port);
    // No Host at all (HTTP/1.0, in-process calls) cannot come from a browser, which always
    // sends one: nothing to rebind. A Host that does not parse is refused.
    let (host, port) = match host {
        Some(hp) => hp,
        None if !headers.contains_key(header::HOST) => (String::new(), None),
        None => return Err(forbidden("the Host header does not parse")),
    };
    if !host.is_empty() && !host_allowed(config, &host) {
        return Err(forbidden(
            "this Host is not served; the operator can list it in http.allowed_hosts",
        ));
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("null");
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let state_changing = matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    if !upgrade && !state_changing {
        return Ok(());
    }
    let parts = origin_parts(origin);
    let same_host = parts.as_ref().is_some_and(|(_, h, p)| {
        !host.is_empty() && *h == host && port.is_none_or(|port| port == *p)
    });
    if same_host {
        return Ok(());
    }
    let list = if upgrade {
        &config.ws.allowed_origins
    } else {
        &config.cors.allowed_origins
    };
    if origin_listed(list, parts.as_ref()) {
        return Ok(());
    }
    Err(forbidden(if upgrade {
        "WebSocket upgrades from this Origin are refused; the operator can list it in ws.allowed_origins"
    } else {
        "requests from this Origin are refused; the operator can list it in cors.allowed_origins"
    }))
}

fn forbidden(message: &str) -> AppError {
    AppError::new(ErrorCode::Forbidden, message)
}

/// Loopback names always; then `http.allowed_hosts` (case-insensitive; `"*"` any).
fn host_allowed(config: &Config, host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = bare == "localhost"
        || bare.ends_with(".localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    loopback
        || config
            .http
            .allowed_hosts
            .iter()
            .any(|h| h == "*" || h.eq_ignore_ascii_case(host) || h.eq_ignore_ascii_case(bare))
}

fn origin_listed(list: &[String], origin: Option<&(String, String, u16)>) -> bool {
    list.iter()
        .any(|entry| entry == "*" || (origin.is_some() && origin_parts(entry).as_ref() == origin))
}

/// The CORS layer: `None` (no CORS headers at all) unless `cors.allowed_origins` lists origins.
pub fn cors_layer(config: &Config, exposed: Vec<header::HeaderName>) -> Option<CorsLayer> {
    let list = &config.cors.allowed_origins;
    if list.is_empty() {
        return None;
    }
    let origins = if list.iter().any(|o| o == "*") {
        AllowOrigin::from(Any)
    } else {
        AllowOrigin::list(
            list.iter()
                .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok()),
        )
    };
    Some(
        CorsLayer::new()
            .allow_origin(origins)
            .allow_methods([
                Method::GET,
                Method::HEAD,
                Method::POST,
                Method::PATCH,
                Method::DELETE,
                Method::OPTIONS,
            ])
            .allow_headers(tower_http::cors::AllowHeaders::mirror_request())
            .expose_headers(exposed),
    )
}

/// Job submissions (`POST /v1/jobs`, `POST /v1/jobs/batch`): `Content-Type: application/json`
/// or 415 (a `text/plain` POST needs no CORS preflight, so it must not start work); and a
/// credential restricted to some backends may submit only to those (403, the whole batch).
pub async fn json_submissions(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return AppError::new(
            ErrorCode::UnsupportedMediaType,
            "job submissions take Content-Type: application/json",
        )
        .into_response();
    }
    let (mut parts, body) = req.into_parts();
    let restricted = match principal_of(&mut parts, &state.auth) {
        Ok(p) if p.backends.is_some() => p,
        // Unrestricted, or refused: the handler answers (the principal is kept for it).
        _ => return next.run(Request::from_parts(parts, body)).await,
    };
    let bytes = match axum::body::to_bytes(body, state.config.max_message_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return AppError::new(
                ErrorCode::MessageTooLarge,
                "the body exceeds max_message_bytes",
            )
            .into_response();
        }
    };
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes) {
        let single = value.get("backend").into_iter();
        let batch = value
            .get("jobs")
            .and_then(|j| j.as_array())
            .into_iter()
            .flatten()
            .filter_map(|j| j.get("backend"));
        for backend in single.chain(batch).filter_map(|b| b.as_str()) {
            if let Err(e) = restricted.may_submit(backend) {
                return e.into_response();
            }
        }
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}
