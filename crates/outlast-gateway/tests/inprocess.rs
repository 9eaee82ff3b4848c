//! In-process tests of the gateway: each test builds a gateway over a temporary data directory
//! and calls its router with `oneshot` (no socket, no binary): HTTP error bodies, the tus
//! exchange, and the scheduler's queue under paused tokio time.

use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Request, StatusCode};
use outlast_gateway::config::Config;
use outlast_gateway::gateway::{self, Gateway};
use outlast_protocol::tus::{EXTENSIONS, VERSION};
use outlast_protocol::{ErrorBody, ErrorCode, JobId, JobSnapshot, JobState, OwnerId, UploadId};
use serde_json::{Value, json};
use tower::ServiceExt;

/// Largest response body a test reads.
const BODY_LIMIT: usize = 1 << 20;

/// A gateway over its own temporary data directory.
struct TestGateway {
    gateway: Gateway,
    router: Router,
    // Dropped after the gateway (fields drop in order).
    _dir: tempfile::TempDir,
}

/// What a call answered.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not the expected JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

impl TestGateway {
    async fn start(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config {
            data_dir: dir.path().to_path_buf(),
            ..Config::default()
        };
        // Tests must not depend on how full the machine's disk is.
        config.uploads.min_free_bytes = 0;
        adjust(&mut config);
        let gateway = gateway::build(config).await.expect("build gateway");
        let router = gateway.router();
        Self {
            gateway,
            router,
            _dir: dir,
        }
    }

    async fn call(&self, request: Request<Body>) -> Answer {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, BODY_LIMIT)
            .await
            .expect("read body");
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    async fn submit(&self, token: Option<&str>, job: Value) -> JobId {
        let a = self.call(post_json("/v1/jobs", token, &job)).await;
        assert_eq!(a.status, StatusCode::ACCEPTED, "submit {job}");
        let v: Value = a.json();
        v["job_id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("job_id in the answer")
    }

    async fn snapshot(&self, job: JobId) -> JobSnapshot {
        let a = self
            .call(
                get(&format!("/v1/jobs/{job}"), None)
                    .body(Body::empty())
                    .expect("request"),
            )
            .await;
        assert_eq!(a.status, StatusCode::OK, "GET job {job}");
        a.json()
    }

    /// Stops the background tasks and waits for them, so nothing outlives the test.
    async fn stop(self) {
        let state = self.gateway.state();
        state.shutdown.cancel();
        state.jobs.stop_runners_now();
        state.tracker.close();
        tokio::time::timeout(Duration::from_secs(5), state.tracker.wait())
            .await
            .expect("background tasks end after shutdown");
    }
}

fn get(uri: &str, token: Option<&str>) -> axum::http::request::Builder {
    request(Method::GET, uri, token)
}

fn request(method: Method, uri: &str, token: Option<&str>) -> axum::http::request::Builder {
    let b = Request::builder().method(method).uri(uri);
    match token {
        Some(t) => b.header("authorization", format!("Bearer {t}")),
        None => b,
    }
}

fn post_json(uri: &str, token: Option<&str>, body: &Value) -> Request<Body> {
    request(Method::POST, uri, token)
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request")
}

// ---------------------------------------------------------------------------------------------
// 1. HTTP error bodies
// ---------------------------------------------------------------------------------------------

const ALICE: &str = "alice-token";
const BOB: &str = "bob-token";

/// One bad request and the answer it must get. `{job}` in `uri` is a job of alice's, `{open}` an
/// incomplete upload of alice's; `{random}` and `{random_upload}` ids nobody has.
struct Case {
    name: &'static str,
    method: Method,
    uri: &'static str,
    token: Option<&'static str>,
    headers: Vec<(&'static str, String)>,
    body: &'static str,
    status: u16,
    code: ErrorCode,
}

impl Case {
    fn new(name: &'static str, method: Method, uri: &'static str) -> Self {
        Case {
            name,
            method,
            uri,
            token: Some(ALICE),
            headers: Vec::new(),
            body: "",
            status: 0,
            code: ErrorCode::Unknown,
        }
    }

    fn token(mut self, token: Option<&'static str>) -> Self {
        self.token = token;
        self
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn body(mut self, body: &'static str) -> Self {
        self.body = body;
        self
    }

    fn expect(mut self, status: u16, code: ErrorCode) -> Self {
        self.status = status;
        self.code = code;
        self
    }
}

fn error_cases() -> Vec<Case> {
    use ErrorCode as C;
    const DEMO: &str = r#"{"backend":"demo","workflow":{"steps":1,"step_ms":1}}"#;
    vec![
        // Authentication.
        Case::new("no token", Method::GET, "/v1/jobs/{job}")
            .token(None)
            .expect(401, C::Unauthorized),
        Case::new("wrong token", Method::GET, "/v1/jobs/{job}")
            .token(Some("nope"))
            .expect(401, C::Unauthorized),
        Case::new("lower-case bearer scheme", Method::GET, "/v1/jobs/{random}")
            .token(None)
            .header("authorization", format!("bearer {ALICE}"))
            .expect(404, C::NotFound),
        Case::new(
            "token in the query",
            Method::GET,
            "/v1/jobs/{job}?access_token={alice}",
        )
        .token(None)
        .expect(401, C::Unauthorized),
        // Hosts, origins, media types (trust defaults).
        Case::new("foreign Host", Method::GET, "/v1/jobs/{job}")
            .header("host", "rebound.example")
            .expect(403, C::Forbidden),
        Case::new("foreign Origin on a POST", Method::POST, "/v1/jobs")
            .header("origin", "https://evil.example")
            .body(DEMO)
            .expect(403, C::Forbidden),
        Case::new("text/plain submission", Method::POST, "/v1/jobs")
            .header("content-type", "text/plain")
            .body(DEMO)
            .expect(415, C::UnsupportedMediaType),
        // Job ids.
        Case::new("unknown job id", Method::GET, "/v1/jobs/{random}").expect(404, C::NotFound),
        Case::new("malformed job id", Method::GET, "/v1/jobs/not-a-uuid").expect(404, C::NotFound),
        Case::new("foreign job", Method::GET, "/v1/jobs/{job}")
            .token(Some(BOB))
            .expect(404, C::NotFound),
        Case::new("cancel unknown job", Method::DELETE, "/v1/jobs/{random}")
            .expect(404, C::NotFound),
        Case::new("cancel foreign job", Method::DELETE, "/v1/jobs/{job}")
            .token(Some(BOB))
            .expect(404, C::NotFound),
        // Submission.
        Case::new("malformed job JSON", Method::POST, "/v1/jobs")
            .body("{not json")
            .expect(400, C::InvalidRequest),
        Case::new("job JSON without backend", Method::POST, "/v1/jobs")
            .body(r#"{"workflow":{}}"#)
            .expect(400, C::InvalidRequest),
        Case::new("unknown backend", Method::POST, "/v1/jobs")
            .body(r#"{"backend":"nope","workflow":{}}"#)
            .expect(422, C::UnknownBackend),
        Case::new("invalid demo workflow", Method::POST, "/v1/jobs")
            .body(r#"{"backend":"demo","workflow":{"steps":0}}"#)
            .expect(400, C::InvalidRequest),
        Case::new("more than one demo input", Method::POST, "/v1/jobs")
            .body(r#"{"backend":"demo","inputs":{"a":"{open}","b":"{open}"}}"#)
            .expect(400, C::InvalidRequest),
        Case::new("input upload unknown", Method::POST, "/v1/jobs")
            .body(r#"{"backend":"demo","inputs":{"image":"{random_upload}"}}"#)
            .expect(404, C::NotFound),
        // An upload still in progress is accepted (the job waits for it): tests/uploads.rs.
        Case::new("input upload of another owner", Method::POST, "/v1/jobs")
            .token(Some(BOB))
            .body(r#"{"backend":"demo","inputs":{"image":"{open}"}}"#)
            .expect(404, C::NotFound),
        Case::new("idempotency conflict", Method::POST, "/v1/jobs")
            .header("idempotency-key", "taken")
            .body(r#"{"backend":"demo","workflow":{"steps":2,"step_ms":1}}"#)
            .expect(409, C::IdempotencyConflict),
        Case::new("Idempotency-Key too long", Method::POST, "/v1/jobs")
            .header("idempotency-key", "k".repeat(201))
            .body(DEMO)
            .expect(400, C::InvalidRequest),
        Case::new("Idempotency-Key with a space", Method::POST, "/v1/jobs")
            .header("idempotency-key", "a b")
            .body(DEMO)
            .expect(400, C::InvalidRequest),
        Case::new(
            "Idempotency-Key differs from the body",
            Method::POST,
            "/v1/jobs",
        )
        .header("idempotency-key", "one")
        .body(r#"{"backend":"demo","idempotency_key":"two"}"#)
        .expect(400, C::InvalidRequest),
        // Outputs.
        Case::new(
            "unknown output",
            Method::GET,
            "/v1/jobs/{job}/outputs/nope.png",
        )
        .expect(404, C::NotFound),
        Case::new(
            "output of unknown job",
            Method::GET,
            "/v1/jobs/{random}/outputs/a.png",
        )
        .expect(404, C::NotFound),
        // SSE.
        Case::new("bad Last-Event-ID", Method::GET, "/v1/jobs/{job}/events")
            .header("last-event-id", "abc")
            .expect(400, C::InvalidRequest),
        Case::new(
            "negative Last-Event-ID",
            Method::GET,
            "/v1/jobs/{job}/events",
        )
        .header("last-event-id", "-1")
        .expect(400, C::InvalidRequest),
        Case::new(
            "events of unknown job",
            Method::GET,
            "/v1/jobs/{random}/events",
        )
        .expect(404, C::NotFound),
        Case::new(
            "events of foreign job",
            Method::GET,
            "/v1/jobs/{job}/events",
        )
        .token(Some(BOB))
        .expect(404, C::NotFound),
        // Long poll.
        Case::new(
            "poll unknown job",
            Method::GET,
            "/v1/jobs/{random}/poll?timeout_ms=0",
        )
        .expect(404, C::NotFound),
        Case::new(
            "poll foreign job",
            Method::GET,
            "/v1/jobs/{job}/poll?timeout_ms=0",
        )
        .token(Some(BOB))
        .expect(404, C::NotFound),
        // Uploads (the JSON description; tus answers are covered below).
        Case::new("upload of another owner", Method::GET, "/v1/uploads/{open}")
            .token(Some(BOB))
            .expect(404, C::NotFound),
        Case::new("malformed upload id", Method::GET, "/v1/uploads/xyz").expect(404, C::NotFound),
    ]
}

#[tokio::test]
async fn http_errors_carry_the_stable_code_and_status() {
    let alice: OwnerId = "alice".parse().expect("owner");
    let bob: OwnerId = "bob".parse().expect("owner");
    let gw = TestGateway::start(|c| {
        c.tokens.insert(ALICE.into(), alice);
        c.tokens.insert(BOB.into(), bob);
    })
    .await;
    // Alice's job runs long enough to stay around; the test stops it at the end.
    let job = gw
        .submit(
            Some(ALICE),
            json!({"backend": "demo", "workflow": {"steps": 1, "step_ms": 600_000}}),
        )
        .await;
    let taken = json!({
        "backend": "demo",
        "workflow": {"steps": 1, "step_ms": 600_000},
        "idempotency_key": "taken",
    });
    gw.submit(Some(ALICE), taken).await;
    let created = gw
        .call(
            request(Method::POST, "/v1/uploads", Some(ALICE))
                .header("tus-resumable", VERSION)
                .header("upload-length", "10")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let open = created
        .header("location")
        .and_then(|l| l.strip_prefix("/v1/uploads/"))
        .expect("Location of the upload")
        .to_owned();
    let random = JobId::random().to_string();
    let random_upload = UploadId::random().to_string();
    let fill = |s: &str| {
        s.replace("{job}", &job.to_string())
            .replace("{open}", &open)
            .replace("{random_upload}", &random_upload)
            .replace("{random}", &random)
            .replace("{alice}", ALICE)
    };

    let cases = error_cases();
    let mut failures = Vec::new();
    for case in &cases {
        let mut b = request(case.method.clone(), &fill(case.uri), case.token);
        for (name, value) in &case.headers {
            b = b.header(*name, value.as_str());
        }
        if !case.body.is_empty() {
            b = b.header("content-type", "application/json");
        }
        let a = gw
            .call(b.body(Body::from(fill(case.body))).expect("request"))
            .await;
        let body = serde_json::from_slice::<ErrorBody>(&a.body);
        let ok = a.status.as_u16() == case.status
            && body
                .as_ref()
                .is_ok_and(|b| b.code == case.code && !b.message.is_empty())
            && a.header("content-type") == Some("application/json");
        // The code's own status must agree with the table (one mapping for every endpoint).
        assert_eq!(case.code.http_status(), case.status, "{}: table", case.name);
        if !ok {
            failures.push(format!(
                "{}: want {} {}, got {} {:?}",
                case.name,
                case.status,
                case.code,
                a.status,
                String::from_utf8_lossy(&a.body)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    gw.stop().await;
}

/// A body over `max_message_bytes` is refused by axum's body limit before the handler runs,
/// with the documented JSON error body (`message_too_large`), not axum's plain text.
#[tokio::test]
async fn an_oversized_job_body_is_refused_with_413() {
    let gw = TestGateway::start(|c| c.max_message_bytes = 1024).await;
    let big = json!({"backend": "demo", "workflow": {"pad": "x".repeat(4096)}});
    let a = gw.call(post_json("/v1/jobs", None, &big)).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(a.header("content-type"), Some("application/json"));
    let body: ErrorBody = a.json();
    assert_eq!(body.code, ErrorCode::MessageTooLarge, "{}", body.message);
    gw.stop().await;
}

/// axum's own rejections and the router's unknown routes and methods: each answers its status
/// with the JSON error body and a stable code.
#[tokio::test]
async fn axum_rejections_answer_typed_json() {
    let gw = TestGateway::start(|c| c.max_message_bytes = 1024).await;
    let job = gw
        .submit(
            None,
            json!({"backend": "demo", "workflow": {"steps": 1, "step_ms": 600_000}}),
        )
        .await;
    let big = "x".repeat(4096);
    let cases: Vec<(&str, Request<Body>, u16, ErrorCode)> = vec![
        (
            "body too large",
            request(Method::POST, "/v1/jobs/batch", None)
                .header("content-type", "application/json")
                .body(Body::from(big))
                .expect("request"),
            413,
            ErrorCode::MessageTooLarge,
        ),
        (
            "bad query string",
            get(&format!("/v1/jobs/{job}/poll?after=minus-one"), None)
                .body(Body::empty())
                .expect("request"),
            400,
            ErrorCode::InvalidRequest,
        ),
        (
            "unknown query field on the listing",
            get("/v1/jobs?colour=blue", None)
                .body(Body::empty())
                .expect("request"),
            400,
            ErrorCode::InvalidRequest,
        ),
        (
            "unknown route",
            get("/v1/nothing-here", None)
                .body(Body::empty())
                .expect("request"),
            404,
            ErrorCode::NotFound,
        ),
        (
            "wrong method",
            request(Method::PUT, "/v1/jobs", None)
                .body(Body::empty())
                .expect("request"),
            405,
            ErrorCode::MethodNotAllowed,
        ),
    ];
    for (name, req, status, code) in cases {
        let a = gw.call(req).await;
        assert_eq!(
            (a.status.as_u16(), a.header("content-type")),
            (status, Some("application/json")),
            "{name}: {:?}",
            String::from_utf8_lossy(&a.body)
        );
        let body: ErrorBody = a.json();
        assert_eq!(body.code, code, "{name}: {}", body.message);
        assert!(!body.message.is_empty(), "{name}");
        if status == 405 {
            assert!(a.header("allow").is_some(), "{name}: Allow stays");
        }
    }
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 2. tus through HTTP
// ---------------------------------------------------------------------------------------------

fn tus(method: Method, uri: &str) -> axum::http::request::Builder {
    request(method, uri, None).header("tus-resumable", VERSION)
}

fn patch(uri: &str, offset: u64, body: &'static [u8]) -> Request<Body> {
    tus(Method::PATCH, uri)
        .header("content-type", "application/offset+octet-stream")
        .header("upload-offset", offset.to_string())
        .header("content-length", body.len().to_string())
        .body(Body::from(body))
        .expect("request")
}

#[tokio::test]
async fn tus_exchange_follows_the_table() {
    let gw = TestGateway::start(|c| c.uploads.max_size = 1 << 20).await;

    // OPTIONS advertises the protocol, without Tus-Resumable.
    let a = gw
        .call(
            request(Method::OPTIONS, "/v1/uploads", None)
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert_eq!(a.header("tus-version"), Some(VERSION));
    assert_eq!(a.header("tus-extension"), Some(EXTENSIONS));
    assert_eq!(a.header("tus-max-size"), Some("1048576"));

    // Every other request needs Tus-Resumable: 412 names the version spoken.
    let a = gw
        .call(
            request(Method::POST, "/v1/uploads", None)
                .header("upload-length", "11")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(a.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(a.header("tus-version"), Some(VERSION));
    assert_eq!(a.json::<ErrorBody>().code, ErrorCode::InvalidRequest);

    // Creation.
    let a = gw
        .call(
            tus(Method::POST, "/v1/uploads")
                .header("upload-length", "11")
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(a.header("tus-resumable"), Some(VERSION));
    assert_eq!(a.header("upload-offset"), Some("0"));
    let location = a.header("location").expect("Location").to_owned();
    assert!(location.starts_with("/v1/uploads/"), "{location}");

    // HEAD: the offset, never cached.
    let a = gw
        .call(
            tus(Method::HEAD, &location)
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.header("upload-offset"), Some("0"));
    assert_eq!(a.header("upload-length"), Some("11"));
    assert_eq!(a.header("cache-control"), Some("no-store"));

    // PATCH needs the tus content type.
    let a = gw
        .call(
            tus(Method::PATCH, &location)
                .header("content-type", "text/plain")
                .header("upload-offset", "0")
                .header("content-length", "5")
                .body(Body::from("hello"))
                .expect("request"),
        )
        .await;
    assert_eq!(a.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // A chunk at the wrong offset: 409 with the server's offset.
    let a = gw.call(patch(&location, 5, b"hello")).await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    assert_eq!(a.json::<ErrorBody>().code, ErrorCode::OffsetMismatch);
    assert_eq!(a.header("upload-offset"), Some("0"));

    // Two chunks; the second completes the upload.
    let a = gw.call(patch(&location, 0, b"hello")).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert_eq!(a.header("upload-offset"), Some("5"));
    let a = gw.call(patch(&location, 5, b" world")).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert_eq!(a.header("upload-offset"), Some("11"));
    let a = gw
        .call(
            tus(Method::HEAD, &location)
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(a.header("upload-offset"), Some("11"));
    assert_eq!(a.header("outlast-upload-state"), Some("complete"));

    // Termination.
    let a = gw
        .call(
            tus(Method::DELETE, &location)
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    let a = gw
        .call(
            tus(Method::HEAD, &location)
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.header("cache-control"), Some("no-store"));
    gw.stop().await;
}

// ---------------------------------------------------------------------------------------------
// 3. The scheduler, under paused time
// ---------------------------------------------------------------------------------------------

/// Virtual time between two looks at the jobs.
const TICK: Duration = Duration::from_millis(10);

/// With one demo slot, jobs run one at a time in submission order; the waiting ones see their
/// place in line. Paused time works with the store's `spawn_blocking` calls: tokio does not
/// auto-advance the clock while a blocking task runs.
#[tokio::test(start_paused = true)]
async fn one_slot_runs_jobs_in_order_and_announces_places() {
    let gw = TestGateway::start(|c| {
        c.demo_concurrency = 1;
        c.cache_ttl = Duration::ZERO;
    })
    .await;
    let started = tokio::time::Instant::now();
    let mut jobs = Vec::new();
    for steps in [2, 3, 4] {
        let spec = json!({"backend": "demo", "workflow": {"steps": steps, "step_ms": 1000}});
        jobs.push(gw.submit(None, spec).await);
    }

    // Before the first job's first step ends: it runs, the others wait at places 0 and 1.
    let deadline = started + Duration::from_millis(900);
    loop {
        let s = [
            gw.snapshot(jobs[0]).await,
            gw.snapshot(jobs[1]).await,
            gw.snapshot(jobs[2]).await,
        ];
        let lined_up = s[0].state == JobState::Running
            && s[0].position.is_none()
            && s[1].state == JobState::Queued
            && s[1].position == Some(0)
            && s[2].state == JobState::Queued
            && s[2].position == Some(1);
        if lined_up {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not lined up in time: {:?}",
            s.map(|s| (s.state, s.position))
        );
        tokio::time::sleep(TICK).await;
    }

    // Let time run: never more than one job runs, and they complete in submission order.
    let deadline = started + Duration::from_secs(30);
    let mut completed: Vec<JobId> = Vec::new();
    while completed.len() < jobs.len() {
        let mut running = 0;
        for job in &jobs {
            let s = gw.snapshot(*job).await;
            match s.state {
                JobState::Running => running += 1,
                JobState::Completed if !completed.contains(job) => completed.push(*job),
                JobState::Completed | JobState::Queued => {}
                other => panic!("job {job} ended {other:?}: {:?}", s.error),
            }
        }
        assert!(running <= 1, "{running} jobs run in one slot");
        assert!(
            tokio::time::Instant::now() < deadline,
            "jobs did not finish: {completed:?}"
        );
        tokio::time::sleep(TICK).await;
    }
    assert_eq!(completed, jobs, "completion order");
    // 2 + 3 + 4 steps of a second each, one after the other. The margin above 9 s: the
    // store commits on its own thread, and while the runtime waits for it with no timer of
    // the test pending, paused time jumps to the next demo step (seen: 10.26 s on a loaded
    // machine). A job that waited a whole extra step per job would take 12 s or more.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_millis(11_500),
        "virtual time taken: {took:?}"
    );
    gw.stop().await;
}
