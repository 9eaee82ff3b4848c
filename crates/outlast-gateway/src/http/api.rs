//! The HTTP job API: submit, snapshot, cancel, long-poll and outputs. Nothing here waits for a
//! job to finish: submission answers 202 at once, and the long poll is bounded.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use outlast_protocol::{
    ErrorBody, ErrorCode, IdempotencyKey, JobEvent, JobId, JobSnapshot, JobSpec, JobState, OwnerId,
    Seq,
};
use serde::{Deserialize, Serialize};
use tower::ServiceExt;
use tower_http::services::ServeFile;

use super::owner::Owner;
use super::state::AppState;
use crate::error::AppError;
use crate::hub::Pushed;
use crate::jobs::Submitted;
use crate::jobs::pages::Pages;

/// Parses a job id from a path; malformed ids are simply unknown.
pub fn parse_job(id: &str) -> Result<JobId, AppError> {
    id.parse().map_err(|_| AppError::not_found("job"))
}

#[derive(Serialize)]
struct SubmitAnswer {
    job_id: JobId,
    created: bool,
    state: JobState,
    links: Links,
}

#[derive(Serialize)]
struct Links {
    #[serde(rename = "self")]
    this: String,
    events: String,
    poll: String,
}

/// `POST /v1/jobs`: 202 with the job id at once. An `Idempotency-Key` header works like the
/// body's `idempotency_key`.
pub async fn submit(
    State(state): State<AppState>,
    Owner(owner): Owner,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, AppError> {
    let mut spec: JobSpec = serde_json::from_slice(&body)
        .map_err(|e| AppError::invalid(format!("invalid job JSON: {e}")))?;
    if let Some(value) = headers.get("idempotency-key") {
        let key: IdempotencyKey = value
            .to_str()
            .ok()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                AppError::invalid("Idempotency-Key must be 1-200 printable ASCII characters")
            })?;
        if spec.idempotency_key.as_ref().is_some_and(|k| k != &key) {
            return Err(AppError::invalid(
                "the Idempotency-Key header and idempotency_key field differ",
            ));
        }
        spec.idempotency_key = Some(key);
    }
    let submitted = state.jobs.submit(&owner, spec).await?;
    let answer = SubmitAnswer::from(&submitted);
    let location = answer.links.this.clone();
    let mut response = (StatusCode::ACCEPTED, Json(answer)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

impl From<&Submitted> for SubmitAnswer {
    fn from(submitted: &Submitted) -> Self {
        let this = format!("/v1/jobs/{}", submitted.job_id);
        SubmitAnswer {
            job_id: submitted.job_id,
            created: submitted.created,
            state: submitted.snapshot.state,
            links: Links {
                events: format!("{this}/events"),
                poll: format!("{this}/poll"),
                this,
            },
        }
    }
}

/// Most jobs in one batch submission.
pub const MAX_BATCH: usize = outlast_protocol::v1::MAX_BATCH;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    jobs: Vec<serde_json::Value>,
}

/// One job's answer in a batch: its submission, or why it was refused.
#[derive(Serialize)]
#[serde(untagged)]
enum BatchItem {
    Submitted(SubmitAnswer),
    Refused { error: ErrorBody },
}

#[derive(Serialize)]
struct BatchAnswer {
    jobs: Vec<BatchItem>,
}

/// `POST /v1/jobs/batch`: `{"jobs": [spec, ...]}` (1 to [`MAX_BATCH`]), one round trip for a
/// folder of files. 202 with the answers of [`submit_each`] in request order.
pub async fn submit_batch(
    State(state): State<AppState>,
    Owner(owner): Owner,
    body: Bytes,
) -> Result<Response, AppError> {
    let batch: BatchRequest = serde_json::from_slice(&body)
        .map_err(|e| AppError::invalid(format!("invalid batch JSON: {e}")))?;
    let answers = submit_each(&state, &owner, batch.jobs)
        .await?
        .into_iter()
        .map(|outcome| match outcome {
            Ok(submitted) => BatchItem::Submitted(SubmitAnswer::from(&submitted)),
            Err(e) => BatchItem::Refused { error: e.body() },
        })
        .collect();
    Ok((StatusCode::ACCEPTED, Json(BatchAnswer { jobs: answers })).into_response())
}

/// A batch submission, for `POST /v1/jobs/batch` and the WebSocket's `submit_batch` alike:
/// each job is read and submitted on its own, in order, with its own idempotency key and its
/// own outcome; one refused job does not refuse the others. Err (`invalid_request`) refuses
/// the batch as a whole: an empty list, or more than [`MAX_BATCH`] jobs.
pub(super) async fn submit_each(
    state: &AppState,
    owner: &OwnerId,
    jobs: Vec<serde_json::Value>,
) -> Result<Vec<Result<Submitted, AppError>>, AppError> {
    if jobs.is_empty() || jobs.len() > MAX_BATCH {
        return Err(AppError::new(
            ErrorCode::InvalidRequest,
            format!("a batch holds 1 to {MAX_BATCH} jobs, not {}", jobs.len()),
        ));
    }
    let mut outcomes = Vec::with_capacity(jobs.len());
    for (i, value) in jobs.into_iter().enumerate() {
        outcomes.push(match serde_json::from_value::<JobSpec>(value) {
            Ok(spec) => state.jobs.submit(owner, spec).await,
            Err(e) => Err(AppError::invalid(format!(
                "invalid job JSON at jobs[{i}]: {e}"
            ))),
        });
    }
    Ok(outcomes)
}

/// Most jobs one listing answers.
pub const MAX_LIST: usize = 1000;

/// Query of the listing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// How many (newest first); default 100, at most [`MAX_LIST`].
    #[serde(default)]
    limit: Option<usize>,
}

#[derive(Serialize)]
struct ListAnswer {
    jobs: Vec<JobSnapshot>,
}

/// `GET /v1/jobs?limit=N`: the owner's newest jobs (snapshots), newest first.
pub async fn list(
    State(state): State<AppState>,
    Owner(owner): Owner,
    Query(q): Query<ListQuery>,
) -> Result<Response, AppError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_LIST).contains(&limit) {
        return Err(AppError::invalid(format!("limit must be 1 to {MAX_LIST}")));
    }
    let jobs = state.jobs.list(&owner, limit).await?;
    Ok(Json(ListAnswer { jobs }).into_response())
}

/// `GET /v1/jobs/{id}`: the job's snapshot.
pub async fn get_job(
    State(state): State<AppState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
) -> Result<Json<JobSnapshot>, AppError> {
    let snapshot = state.jobs.snapshot(&owner, parse_job(&id)?).await?;
    Ok(Json(snapshot))
}

#[derive(Serialize)]
struct CancelAnswer {
    job_id: JobId,
    state: JobState,
}

/// `DELETE /v1/jobs/{id}`: cancels; answers the state afterwards.
pub async fn cancel(
    State(state): State<AppState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let job_id = parse_job(&id)?;
    let job_state = state.jobs.cancel(&owner, job_id).await?;
    Ok(Json(CancelAnswer {
        job_id,
        state: job_state,
    })
    .into_response())
}

/// Query of the long-poll endpoint.
#[derive(Debug, Deserialize)]
pub struct PollQuery {
    /// The last sequence number seen (0 or absent: from the beginning).
    #[serde(default)]
    after: Option<u64>,
    /// How long to wait for news, at most the configured `long_poll_timeout`.
    #[serde(default)]
    timeout_ms: Option<u64>,
}

/// Answer of the long-poll endpoint.
#[derive(Debug, Serialize)]
pub struct PollAnswer {
    job_id: JobId,
    /// False when history after `after` is gone; `snapshot` is then set.
    recovered: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot: Option<JobSnapshot>,
    /// Events after `after`, in order.
    events: Vec<JobEvent>,
    /// Pass this as `after` next time.
    next_after: Seq,
    /// The job's state.
    state: JobState,
    /// The queued job's live place (absent when not queued, or not announced yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<u32>,
    /// Why the queued job waits, if something holds it besides the jobs ahead.
    #[serde(skip_serializing_if = "Option::is_none")]
    queue_reason: Option<String>,
    /// True when nothing more will ever come.
    done: bool,
    /// True when this answer is one page of a longer stored history: poll again at once.
    more: bool,
}

/// `GET /v1/jobs/{id}/poll?after=N&timeout_ms=T`: events after N (one page of history at
/// most, [`Pages`]), waiting up to T for the first one or for a new queue place (bounded well below proxies' 100 s
/// limit). A poll in progress is one of its owner's `streams.max_per_owner` streams.
pub async fn poll(
    State(state): State<AppState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
    Query(q): Query<PollQuery>,
) -> Result<Json<PollAnswer>, AppError> {
    let job = parse_job(&id)?;
    let after = q.after.map(Seq);
    let wait = q
        .timeout_ms
        .map_or(state.config.long_poll_timeout, Duration::from_millis)
        .min(state.config.long_poll_timeout);
    // Both released when this handler returns or is dropped mid-wait (a cut long-poll).
    let permit = state.streams.acquire(&owner)?;
    let mut live = state.hub.subscribe(job);
    // The same page and cursor rules as the WebSocket and SSE: a snapshot sets the position,
    // replayed events move it forward; the client continues after it.
    let mut pages = Pages::new(owner, job, after);
    let result = async {
        let mut open = pages.next(&state.jobs).await?;
        if open
            .as_ref()
            .is_some_and(|o| o.events.is_empty() && o.snapshot.is_none() && !o.state.is_terminal())
            && !wait.is_zero()
        {
            let shown = open.as_ref().map_or(0, |o| o.round);
            let timeout = tokio::time::sleep(wait);
            tokio::pin!(timeout);
            loop {
                tokio::select! {
                    item = live.recv() => match item {
                        // A place the answer would show anyway: keep waiting.
                        Some(Ok(Pushed::Place(p))) if p.round <= shown => continue,
                        _ => break,
                    },
                    () = &mut timeout => break,
                    () = state.shutdown.cancelled() => break,
                }
            }
            pages.reread();
            open = pages.next(&state.jobs).await?;
        }
        open.ok_or_else(|| AppError::internal("a poll read no page"))
    }
    .await;
    drop((live, permit));
    let open = result?;
    let next_after = pages.position();
    metrics::counter!(crate::metrics::EVENTS_SENT, "transport" => "poll")
        .increment(open.events.len() as u64);
    let done = open.state.is_terminal()
        && !open.more
        && open.events.last().is_none_or(|e| e.kind.is_terminal());
    Ok(Json(PollAnswer {
        job_id: job,
        recovered: open.recovered,
        snapshot: open.snapshot,
        events: open.events,
        next_after,
        state: open.state,
        position: open.place.as_ref().map(|p| p.position),
        queue_reason: open.place.and_then(|p| p.reason),
        done,
        more: open.more,
    }))
}

/// `GET /v1/jobs/{id}/outputs/{name}`: the stored file with `ETag`, `If-None-Match` and `Range`.
pub async fn output(
    State(state): State<AppState>,
    Owner(owner): Owner,
    Path((id, name)): Path<(String, String)>,
    request: Request,
) -> Result<Response, AppError> {
    let job = parse_job(&id)?;
    let record = state.jobs.owned(&owner, job).await?;
    let info = record
        .snapshot
        .outputs
        .iter()
        .find(|o| o.name == name)
        .ok_or_else(|| AppError::not_found("output"))?;
    let path = state
        .jobs
        .outputs()
        .path(job, &name)
        .ok_or_else(|| AppError::not_found("output"))?;
    let etag = format!("\"{}\"", info.sha256);
    let etag_value = HeaderValue::from_str(&etag).map_err(AppError::internal)?;
    let if_none_match = request
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok());
    if if_none_match.is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*")) {
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        r.headers_mut().insert(header::ETAG, etag_value);
        return Ok(r);
    }
    let mut response = ServeFile::new(&path)
        .oneshot(request)
        .await
        .map_err(AppError::internal)?
        .into_response();
    if response.status() == StatusCode::NOT_FOUND {
        return Err(AppError::internal(format!(
            "output file {} is missing",
            path.display()
        )));
    }
    let headers = response.headers_mut();
    headers.insert(header::ETAG, etag_value);
    if let Ok(mime) = HeaderValue::from_str(&info.mime) {
        headers.insert(header::CONTENT_TYPE, mime);
    }
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache"),
    );
    Ok(response)
}
