//! `GET /v1/jobs/{id}/events`: the job stream as Server-Sent Events, resumable with
//! `Last-Event-ID` (or `?after=N`), for clients that cannot use the WebSocket.
//!
//! `id:` is the sequence number, `event:` the event type, `data:` the event as JSON. When
//! history is gone the stream starts with `event: snapshot`. A comment line goes out every
//! ping interval. After the terminal event the stream ends; a reconnect after it gets 204, which
//! tells browsers' EventSource to stop.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use outlast_protocol::replay::{Cursor, Live};
use outlast_protocol::{JobEvent, JobId, JobSnapshot, OwnerId, Seq};
use serde::Deserialize;

use super::api::parse_job;
use super::owner::Owner;
use super::state::AppState;
use crate::error::AppError;
use crate::hub::JobSubscription;

/// Query of the SSE endpoint.
#[derive(Debug, Deserialize)]
pub struct SseQuery {
    /// Resume after this sequence number when no `Last-Event-ID` header is sent.
    #[serde(default)]
    after: Option<u64>,
}

enum Item {
    Snapshot(JobSnapshot),
    Event(JobEvent),
}

fn to_sse(item: &Item) -> Event {
    match item {
        Item::Snapshot(s) => Event::default()
            .id(s.seq.to_string())
            .event("snapshot")
            .json_data(s)
            .unwrap_or_else(|_| Event::default().comment("snapshot encoding failed")),
        Item::Event(e) => Event::default()
            .id(e.seq.to_string())
            .event(e.kind.name())
            .json_data(e)
            .unwrap_or_else(|_| Event::default().comment("event encoding failed")),
    }
}

struct Feed {
    state: AppState,
    owner: OwnerId,
    job: JobId,
    pending: VecDeque<Item>,
    live: Option<JobSubscription>,
    cursor: Cursor,
    done: bool,
}

impl Feed {
    fn push(&mut self, item: Item) {
        match &item {
            Item::Snapshot(s) => {
                self.cursor.on_snapshot(s.seq);
                self.done |= s.state.is_terminal();
            }
            Item::Event(e) => {
                self.cursor.on_replayed(e.seq);
                self.done |= e.kind.is_terminal();
            }
        }
        self.pending.push_back(item);
    }

    async fn next_item(&mut self) -> Option<Item> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            if self.done {
                return None;
            }
            let live = self.live.as_mut()?;
            let next = tokio::select! {
                n = live.next() => n,
                () = self.state.shutdown.cancelled() => return None,
            };
            let after = match next {
                None => return None,
                Some(Ok(event)) => match self.cursor.on_live(event.seq) {
                    Live::Duplicate => continue,
                    Live::Deliver => {
                        self.push(Item::Event(event.event.clone()));
                        continue;
                    }
                    Live::Gap { after } => after,
                },
                Some(Err(_)) => self.cursor.position(),
            };
            // Lagged or a gap: re-read from the store.
            let open = self
                .state
                .jobs
                .open_stream(&self.owner, self.job, Some(after))
                .await
                .ok()?;
            if let Some(s) = open.snapshot {
                self.push(Item::Snapshot(s));
            }
            for e in open.events {
                self.push(Item::Event(e));
            }
        }
    }
}

/// The SSE handler.
pub async fn events(
    State(state): State<AppState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
    Query(q): Query<SseQuery>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let job = parse_job(&id)?;
    let after = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| AppError::invalid("Last-Event-ID must be a sequence number"))?,
        ),
        None => q.after,
    }
    .map(Seq);
    // Subscribe before reading history; the subscription releases itself when the feed ends.
    let live = state.hub.subscribe(job);
    let open = state.jobs.open_stream(&owner, job, after).await?;
    let mut feed = Feed {
        state: state.clone(),
        owner,
        job,
        pending: VecDeque::new(),
        live: Some(live),
        cursor: Cursor::new(after),
        done: false,
    };
    if let Some(s) = open.snapshot {
        feed.push(Item::Snapshot(s));
    }
    for e in open.events {
        feed.push(Item::Event(e));
    }
    if feed.pending.is_empty() && open.state.is_terminal() {
        // Nothing more will ever come: 204 makes EventSource stop reconnecting.
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let mut first = true;
    let stream = futures::stream::unfold(feed, move |mut feed| async move {
        let item = feed.next_item().await?;
        Some((item, feed))
    })
    .map(move |item| {
        metrics::counter!(crate::metrics::EVENTS_SENT, "transport" => "sse")
            .increment(u64::from(matches!(item, Item::Event(_))));
        let mut event = to_sse(&item);
        if std::mem::take(&mut first) {
            event = event.retry(Duration::from_secs(2));
        }
        Ok::<_, Infallible>(event)
    });
    let sse = Sse::new(stream_boxed(stream)).keep_alive(
        KeepAlive::new()
            .interval(state.config.ping_interval)
            .text("ping"),
    );
    let mut response = sse.into_response();
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

fn stream_boxed(
    s: impl Stream<Item = Result<Event, Infallible>> + Send + 'static,
) -> std::pin::Pin<Box<dyn Stream<Item = Result<Event, Infallible>> + Send>> {
    Box::pin(s)
}
