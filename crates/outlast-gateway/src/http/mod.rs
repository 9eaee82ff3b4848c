//! The HTTP surface: the router ([`app`]) over an [`AppState`], and one module per endpoint
//! family. Handlers are thin: they parse, ask the services (`jobs`, `upload`) and answer; the
//! protocol decisions come from `outlast-protocol`.

pub mod api;
pub mod client_assets;
pub mod guard;
pub mod owner;
mod read_ahead;
pub mod serve;
pub mod sse;
pub mod state;
pub mod stream_limit;
pub mod tickets;
pub mod tus;
pub mod upload_ws;
pub mod webhooks;
pub mod ws;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

pub use state::AppState;

use crate::metrics as m;

/// The demo page, embedded in the binary.
const DEMO_PAGE: &str = include_str!("../../../../web/index.html");

/// The router. Tests may call it directly with a state of their own.
pub fn app(state: AppState) -> Router {
    let exposed = [header::LOCATION, header::ETAG, header::CONTENT_RANGE]
        .into_iter()
        .chain(
            tus::EXPOSED_HEADERS
                .iter()
                .map(|h| header::HeaderName::from_static(h)),
        )
        .collect::<Vec<_>>();
    let submissions = Router::new()
        .route("/v1/jobs", axum::routing::post(api::submit).get(api::list))
        .route("/v1/jobs/batch", axum::routing::post(api::submit_batch))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::json_submissions,
        ));
    let mut router = Router::new();
    // With a separate metrics address, /metrics lives only there (see `metrics_app`).
    if state.config.metrics.listen.is_none() {
        router = router.route("/metrics", get(admin_metrics));
    }
    router
        .route("/", get(|| async { Html(DEMO_PAGE) }))
        .merge(client_assets::router())
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/v1/ws", get(ws::handler))
        .route("/v1/tickets", axum::routing::post(tickets::create))
        .merge(submissions)
        .route("/v1/jobs/{id}", get(api::get_job).delete(api::cancel))
        .route("/v1/jobs/{id}/events", get(sse::events))
        .route("/v1/jobs/{id}/poll", get(api::poll))
        .route("/v1/jobs/{id}/outputs/{name}", get(api::output))
        .route("/v1/jobs/{id}/webhooks", get(webhooks::list))
        .route(
            "/v1/jobs/{id}/webhooks/{delivery}/resend",
            axum::routing::post(webhooks::resend),
        )
        .route("/v1/uploads", axum::routing::any(tus::collection))
        .route("/v1/uploads/{id}", axum::routing::any(tus::item))
        .layer(DefaultBodyLimit::max(state.config.max_message_bytes))
        .layer(tower::util::option_layer(guard::cors_layer(
            &state.config,
            exposed,
        )))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            tus::plain_options,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::host_and_origin,
        ))
        // axum's own rejections, unknown routes and methods answer typed JSON.
        .layer(axum::middleware::map_response(
            crate::error::type_rejections,
        ))
        // Outermost: every answer is counted with the status the client really gets.
        .layer(axum::middleware::from_fn(request_metrics))
        .with_state(state)
}

/// The router of the separate metrics address (`metrics.listen`): `/metrics` without a token,
/// and `/healthz`. Only for an address the operator keeps private.
pub fn metrics_app(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(state)
}

/// Counts each answered request ([`m::HTTP_REQUESTS`]) and times it to its response head
/// ([`m::HTTP_REQUEST_DURATION`]). The route label is the matched template
/// (`/v1/jobs/{id}`), never the raw path, and unknown methods share one label, so a client
/// cannot create new series.
async fn request_metrics(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = method_label(req.method());
    let started = tokio::time::Instant::now();
    let response = next.run(req).await;
    let status = response.status().as_u16().to_string();
    metrics::histogram!(m::HTTP_REQUEST_DURATION, "route" => route.clone(), "method" => method)
        .record(started.elapsed().as_secs_f64());
    metrics::counter!(m::HTTP_REQUESTS, "route" => route, "method" => method, "status" => status)
        .increment(1);
    response
}

/// The label of a method: the standard ones by name, anything else as `other`.
fn method_label(method: &Method) -> &'static str {
    [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::PATCH,
        Method::DELETE,
        Method::OPTIONS,
    ]
    .into_iter()
    .zip(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
    .find_map(|(m, name)| (m == *method).then_some(name))
    .unwrap_or("other")
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    match state
        .jobs
        .store()
        .get(outlast_protocol::JobId::random())
        .await
    {
        Ok(_) => "ready".into_response(),
        Err(e) => {
            tracing::error!(error = %e, "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "store unavailable").into_response()
        }
    }
}

/// `/metrics` on the main address: the `admin` scope when auth is configured
/// (`owner::route_scope`).
async fn admin_metrics(_admin: owner::Authed, state: State<AppState>) -> Response {
    metrics(state).await
}

/// The Prometheus text of every recorded metric.
async fn metrics(State(state): State<AppState>) -> Response {
    metrics::gauge!(m::LIVE_JOB_CHANNELS).set(state.hub.channel_count() as f64);
    match &state.metrics {
        Some(handle) => {
            handle.run_upkeep();
            let mut r = handle.render().into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            r
        }
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics recorder not installed",
        )
            .into_response(),
    }
}
