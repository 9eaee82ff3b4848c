//! The HTTP surface: ComfyUI's routes (also under `/api`), `/ws`, and the test-only
//! `/_standin/*` control endpoints.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::multipart::MultipartRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::engine::{App, Reply};
use crate::files::{self, Upload, View};
use crate::nodes;

type Shared = State<Arc<App>>;

const MAX_UPLOAD: usize = 100 * 1024 * 1024;

/// The router: ComfyUI routes at `/` and `/api`, plus `/_standin/*`.
pub fn app(state: Arc<App>) -> Router {
    Router::new()
        .merge(comfy())
        .nest("/api", comfy())
        .route("/api/jobs/{id}", get(job))
        .route("/_standin/drop_ws", post(drop_ws))
        .route("/_standin/stall", post(stall))
        .route("/_standin/slow_view", post(slow_view))
        .route("/_standin/fail", post(fail))
        .route("/_standin/forget", post(forget))
        .route("/_standin/stats", get(stats))
        .layer(axum::middleware::from_fn(origin_only))
        .with_state(state)
}

/// ComfyUI's `origin_only_middleware` (server.py 107-141, no `--enable-cors-header`): a
/// loopback `Host` with an `Origin` naming another host is refused with 403, so a gateway
/// that forwards a browser's `Origin` fails here as it would against ComfyUI.
async fn origin_only(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let headers = req.headers();
    if let (Some(host), Some(origin)) = (
        headers.get(header::HOST).and_then(|h| h.to_str().ok()),
        headers.get(header::ORIGIN).and_then(|h| h.to_str().ok()),
    ) {
        let host = host.to_lowercase();
        let origin_netloc = origin
            .to_lowercase()
            .split_once("://")
            .map(|(_, rest)| rest.split('/').next().unwrap_or("").to_owned())
            .unwrap_or_default();
        let hostname = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or("").to_owned(),
            None => host
                .rsplit_once(':')
                .map_or(host.clone(), |(h, _)| h.to_owned()),
        };
        let loopback = hostname == "localhost"
            || hostname
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if loopback && host != origin_netloc && !req.uri().path().starts_with("/_standin/") {
            return StatusCode::FORBIDDEN.into_response();
        }
    }
    next.run(req).await
}

fn comfy() -> Router<Arc<App>> {
    Router::new()
        .route("/ws", get(ws))
        .route("/prompt", get(prompt_info).post(submit))
        .route("/queue", get(queue).post(edit_queue))
        .route("/interrupt", post(interrupt))
        .route("/history", get(history).post(edit_history))
        .route("/history/{id}", get(history_of))
        .route("/view", get(view))
        .route(
            "/upload/image",
            post(upload).layer(DefaultBodyLimit::max(MAX_UPLOAD + 64 * 1024)),
        )
        .route("/object_info", get(object_info))
        .route("/object_info/{class}", get(object_info_of))
        .route("/system_stats", get(system_stats))
        .route("/features", get(features))
}

fn reply((code, body): Reply) -> Response {
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match body {
        Some(v) => (code, axum::Json(v)).into_response(),
        None => code.into_response(),
    }
}

/// aiohttp's answer to an unhandled exception (e.g. `await request.json()` on bad JSON).
fn server_error() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        "500 Internal Server Error\n\nServer got itself in trouble",
    )
        .into_response()
}

/// A JSON body, or `{}` when it is empty (for endpoints that tolerate that).
fn body_or_empty(b: &Bytes) -> Option<Value> {
    if b.iter().all(u8::is_ascii_whitespace) {
        return Some(json!({}));
    }
    serde_json::from_slice(b).ok()
}

async fn ws(
    State(app): Shared,
    Query(q): Query<HashMap<String, String>>,
    up: WebSocketUpgrade,
) -> Response {
    let sid = q
        .get("clientId")
        .filter(|s| !s.is_empty())
        .cloned()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    up.on_upgrade(move |socket| crate::sockets::serve(app, socket, sid))
}

async fn prompt_info(State(app): Shared) -> Response {
    axum::Json(json!({"exec_info": {"queue_remaining": app.queue_remaining()}})).into_response()
}

async fn submit(State(app): Shared, body: Bytes) -> Response {
    match serde_json::from_slice::<Value>(&body) {
        Ok(v) if v.is_object() => reply(app.submit(&v)),
        _ => server_error(),
    }
}

async fn queue(State(app): Shared) -> Response {
    axum::Json(app.queue()).into_response()
}

async fn edit_queue(State(app): Shared, body: Bytes) -> Response {
    match serde_json::from_slice::<Value>(&body) {
        Ok(v) => {
            app.edit_queue(&v);
            StatusCode::OK.into_response()
        }
        Err(_) => server_error(),
    }
}

async fn interrupt(State(app): Shared, body: Bytes) -> Response {
    let v = body_or_empty(&body).unwrap_or_else(|| json!({}));
    app.interrupt(&v);
    StatusCode::OK.into_response()
}

async fn history(State(app): Shared, Query(q): Query<HashMap<String, String>>) -> Response {
    let parse = |k: &str| q.get(k).map(|v| v.trim().parse::<i64>());
    let (max_items, offset) = match (parse("max_items"), parse("offset")) {
        (Some(Err(_)), _) | (_, Some(Err(_))) => return server_error(),
        (m, o) => (m.and_then(Result::ok), o.and_then(Result::ok)),
    };
    axum::Json(app.history(max_items, offset)).into_response()
}

async fn history_of(State(app): Shared, Path(id): Path<String>) -> Response {
    axum::Json(app.history_of(&id)).into_response()
}

async fn edit_history(State(app): Shared, body: Bytes) -> Response {
    match serde_json::from_slice::<Value>(&body) {
        Ok(v) => {
            app.edit_history(&v);
            StatusCode::OK.into_response()
        }
        Err(_) => server_error(),
    }
}

async fn view(State(app): Shared, Query(q): Query<HashMap<String, String>>) -> Response {
    let delay = app.slow_view_ms.load(std::sync::atomic::Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    let found = files::view(
        &app.dirs,
        q.get("filename").map(String::as_str),
        q.get("type").map(String::as_str),
        q.get("subfolder").map(String::as_str),
    );
    let (path, name) = match found {
        View::File { path, name } => (path, name),
        View::BadRequest => return StatusCode::BAD_REQUEST.into_response(),
        View::Forbidden => return StatusCode::FORBIDDEN.into_response(),
        View::NotFound => return StatusCode::NOT_FOUND.into_response(),
    };
    let Ok(bytes) = tokio::fs::read(&path).await else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let channel = q.get("channel").map(String::as_str).unwrap_or("");
    let (bytes, content_type) = if q.contains_key("preview") || matches!(channel, "rgb" | "a") {
        let preview = q.get("preview").cloned();
        let channel = channel.to_owned();
        let bytes = tokio::task::spawn_blocking(move || {
            files::convert(&bytes, preview.as_deref(), &channel)
        })
        .await
        .ok()
        .flatten();
        match bytes {
            Some(converted) => converted,
            None => return server_error(),
        }
    } else {
        (bytes, files::content_type(&name))
    };
    let mut res = Response::new(Body::from(bytes));
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(v) = HeaderValue::from_str(&format!("filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    res
}

async fn upload(State(app): Shared, form: Result<Multipart, MultipartRejection>) -> Response {
    let Ok(mut form) = form else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let mut image: Option<(String, Bytes)> = None;
    let mut fields: HashMap<String, String> = HashMap::new();
    loop {
        match form.next_field().await {
            Ok(Some(field)) => {
                let name = field.name().unwrap_or_default().to_owned();
                let file_name = field.file_name().map(str::to_owned);
                let Ok(data) = field.bytes().await else {
                    return StatusCode::BAD_REQUEST.into_response();
                };
                match (name.as_str(), file_name) {
                    ("image", Some(f)) => image = Some((f, data)),
                    (_, None) => {
                        fields.insert(name, String::from_utf8_lossy(&data).into_owned());
                    }
                    _ => {}
                }
            }
            Ok(None) => break,
            Err(e) => return (e.status(), e.body_text()).into_response(),
        }
    }
    let Some((filename, bytes)) = image else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let outcome = files::upload(
        &app.dirs,
        &filename,
        &bytes,
        fields.get("overwrite").map(String::as_str),
        fields.get("subfolder").map(String::as_str).unwrap_or(""),
        fields.get("type").map(String::as_str),
    );
    match outcome {
        Ok(Upload::Saved {
            name,
            subfolder,
            kind,
        }) => {
            app.count_upload();
            axum::Json(json!({"name": name, "subfolder": subfolder, "type": kind})).into_response()
        }
        Ok(Upload::BadRequest) => StatusCode::BAD_REQUEST.into_response(),
        Ok(Upload::ServerError) | Err(_) => server_error(),
    }
}

async fn object_info(State(app): Shared) -> Response {
    let files = app.dirs.input_files();
    let mut out = serde_json::Map::new();
    for d in nodes::all(&files) {
        out.insert(d.class.to_owned(), d.object_info());
    }
    axum::Json(Value::Object(out)).into_response()
}

async fn object_info_of(State(app): Shared, Path(class): Path<String>) -> Response {
    let files = app.dirs.input_files();
    let mut out = serde_json::Map::new();
    if let Some(d) = nodes::all(&files).into_iter().find(|d| d.class == class) {
        out.insert(class, d.object_info());
    }
    axum::Json(Value::Object(out)).into_response()
}

async fn system_stats() -> Response {
    let argv: Vec<String> = std::env::args().collect();
    axum::Json(json!({
        "system": {
            "os": std::env::consts::OS,
            "ram_total": 17_179_869_184u64,
            "ram_free": 8_589_934_592u64,
            "comfyui_version": "0.3.64",
            "required_frontend_version": "1.27.10",
            "python_version": "3.12.3 (comfy-standin)",
            "pytorch_version": "2.8.0+cpu",
            "embedded_python": false,
            "argv": argv,
        },
        "devices": [{
            "name": "cpu", "type": "cpu", "index": null,
            "vram_total": 17_179_869_184u64, "vram_free": 8_589_934_592u64,
            "torch_vram_total": 17_179_869_184u64, "torch_vram_free": 8_589_934_592u64,
        }],
    }))
    .into_response()
}

async fn features() -> Response {
    axum::Json(json!({"supports_preview_metadata": true, "max_upload_size": MAX_UPLOAD}))
        .into_response()
}

async fn job(State(app): Shared, Path(id): Path<String>) -> Response {
    reply(app.job(&id))
}

async fn drop_ws(State(app): Shared) -> Response {
    app.sockets.drop_all();
    StatusCode::OK.into_response()
}

async fn stall(State(app): Shared, body: Bytes) -> Response {
    let Some(ms) = body_or_empty(&body).and_then(|v| v["ms"].as_u64()) else {
        return (StatusCode::BAD_REQUEST, "body must be {\"ms\": N}").into_response();
    };
    app.stall(ms);
    StatusCode::OK.into_response()
}

async fn slow_view(State(app): Shared, body: Bytes) -> Response {
    let Some(ms) = body_or_empty(&body).and_then(|v| v["ms"].as_u64()) else {
        return (StatusCode::BAD_REQUEST, "body must be {\"ms\": N}").into_response();
    };
    app.slow_view_ms
        .store(ms, std::sync::atomic::Ordering::Relaxed);
    StatusCode::OK.into_response()
}

async fn fail(State(app): Shared, body: Bytes) -> Response {
    let v = body_or_empty(&body).unwrap_or_default();
    let Some(class) = v["class_type"].as_str() else {
        return (StatusCode::BAD_REQUEST, "body must name class_type").into_response();
    };
    app.fail_next(
        class,
        v["exception_message"]
            .as_str()
            .unwrap_or("comfy-standin: injected failure"),
        v["exception_type"].as_str().unwrap_or("RuntimeError"),
    );
    StatusCode::OK.into_response()
}

async fn forget(State(app): Shared) -> Response {
    app.forget();
    StatusCode::OK.into_response()
}

async fn stats(State(app): Shared) -> Response {
    axum::Json(app.stats()).into_response()
}
