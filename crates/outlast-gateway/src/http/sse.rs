//! `GET /v1/jobs/{id}/events`: the job stream as Server-Sent Events, resumable with
//! `Last-Event-ID` (or `?after=N`), for clients that cannot use the WebSocket.
//!
//! `id:` is the sequence number, `event:` the event type, `data:` the event as JSON. When
//! history is gone the stream starts with `event: snapshot`. A queued job's live place is
//! `event: position` without an `id:` (it is not an event; `Last-Event-ID` stays put). A
//! comment line goes out every ping interval. After the terminal event the stream ends; a
//! reconnect after it gets 204, which tells browsers' EventSource to stop.
//!
//! Careful with memory and with clients that stop reading: history is read a page at a time
//! ([`Pages`]), only when the one before was written, so a stream holds one page however long
//! the job's history is; the response arms the connection's [`WriteStall`] at
//! `streams.sse_write_timeout`, so a client that stops reading is cut (it resumes with
//! `Last-Event-ID`); and each stream holds one of its owner's `streams.max_per_owner` places.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::time::Duration;

use axum::Extension;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use outlast_protocol::replay::Live;
use outlast_protocol::v1::Control;
use outlast_protocol::{JobEvent, JobId, JobSnapshot, QueuePlace, Seq};
use serde::Deserialize;

use super::api::parse_job;
use super::owner::Owner;
use super::serve::{StallArmed, WriteStall};
use super::state::AppState;
use super::stream_limit::StreamPermit;
use crate::error::AppError;
use crate::hub::{JobSubscription, Pushed};
use crate::jobs::StreamOpen;
use crate::jobs::pages::Pages;

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
    /// The `position` message (no `id:`).
    Place(Control),
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
        Item::Place(p) => Event::default()
            .event("position")
            .json_data(p)
            .unwrap_or_else(|_| Event::default().comment("position encoding failed")),
    }
}

/// One SSE stream: at most one page of history waiting to be written, the live subscription,
/// and the places it holds (its owner's stream permit, the armed write-stall limit), all given
/// back when the response ends or its connection is dropped.
struct Feed {
    state: AppState,
    job: JobId,
    /// Items of the page being written; refilled only once empty.
    pending: VecDeque<Item>,
    /// Where the stream is, and whether stored history is still unread.
    pages: Pages,
    live: JobSubscription,
    /// The newest scheduler round whose place was sent (older places are stale).
    place_round: u64,
    done: bool,
    _permit: StreamPermit,
    _stall: Option<StallArmed>,
}

impl Feed {
    /// Queues a page read from the store (the cursor already moved past it); after the last
    /// page, the queued job's place as of that read.
    fn push_page(&mut self, page: StreamOpen) {
        if let Some(s) = page.snapshot {
            self.done |= s.state.is_terminal();
            self.pending.push_back(Item::Snapshot(s));
        }
        for e in page.events {
            self.done |= e.kind.is_terminal();
            self.pending.push_back(Item::Event(e));
        }
        if !page.more {
            self.push_place(page.place, page.round);
        }
    }

    /// The queued job's place as of scheduler round `round` (none: not queued or not placed).
    fn push_place(&mut self, place: Option<QueuePlace>, round: u64) {
        self.place_round = self.place_round.max(round);
        if self.done {
            return;
        }
        if let Some(QueuePlace { position, reason }) = place {
            self.pending.push_back(Item::Place(Control::Position {
                job_id: self.job,
                position,
                reason,
            }));
        }
    }

    async fn next_item(&mut self) -> Option<Item> {
        loop {
            if let Some(item) = self.pending.pop_front() {
                return Some(item);
            }
            if self.done || self.state.shutdown.is_cancelled() {
                return None;
            }
            if self.pages.unread() {
                // The next page of history, read only now that the last one was written.
                let page = self.pages.next(&self.state.jobs).await.ok()??;
                self.push_page(page);
                continue;
            }
            let next = tokio::select! {
                n = self.live.next() => n,
                () = self.state.shutdown.cancelled() => return None,
            };
            match next {
                None => return None,
                Some(Ok(Pushed::Place(p))) => {
                    if p.round > self.place_round {
                        self.push_place(Some(p.place.clone()), p.round);
                    }
                }
                Some(Ok(Pushed::Event(event))) => match self.pages.cursor().on_live(event.seq) {
                    Live::Duplicate => {}
                    Live::Deliver => {
                        self.done |= event.kind.is_terminal();
                        self.pending.push_back(Item::Event(event.event.clone()));
                    }
                    // Events are missing before this one: read them from the store.
                    Live::Gap { .. } => self.pages.reread(),
                },
                // This receiver lagged behind its channel: the store has what it missed.
                Some(Err(_)) => self.pages.reread(),
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
    stall: Option<Extension<WriteStall>>,
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
    let permit = state.streams.acquire(&owner)?;
    // Subscribe before reading history; the subscription releases itself when the feed ends.
    let live = state.hub.subscribe(job);
    let mut pages = Pages::new(owner, job, after);
    let Some(first) = pages.next(&state.jobs).await? else {
        return Err(AppError::internal("a stream's first page was not read"));
    };
    if first.events.is_empty() && first.snapshot.is_none() && first.state.is_terminal() {
        // Nothing more will ever come: 204 makes EventSource stop reconnecting.
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let mut feed = Feed {
        state: state.clone(),
        job,
        place_round: 0,
        pending: VecDeque::new(),
        pages,
        live,
        done: false,
        _permit: permit,
        _stall: stall.map(|Extension(s)| s.arm(state.config.streams.sse_write_timeout)),
    };
    feed.push_page(first);
    let mut first_event = true;
    let stream = futures::stream::unfold(feed, move |mut feed| async move {
        let item = feed.next_item().await?;
        Some((item, feed))
    })
    .map(move |item| {
        metrics::counter!(crate::metrics::EVENTS_SENT, "transport" => "sse")
            .increment(u64::from(matches!(item, Item::Event(_))));
        let mut event = to_sse(&item);
        if std::mem::take(&mut first_event) {
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
