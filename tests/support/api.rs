//! A typed client for the gateway's HTTP job API (`/v1/jobs`): submit, cancel, snapshot, the
//! long-poll event stream, following a job to its end, downloads and metrics.

use std::fmt::Display;
use std::time::Duration;

use anyhow::Context;
use outlast_protocol::{EventKind, JobEvent, JobId, JobSnapshot, JobState, Seq};
use serde::Deserialize;

/// The 202 answer of `POST /v1/jobs`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Submitted {
    /// The job.
    pub job_id: JobId,
    /// False when an idempotency key named an existing job.
    pub created: bool,
    /// Its state at once (`completed` for a cache hit).
    pub state: JobState,
}

/// The answer of `GET /v1/jobs/{id}/poll`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Polled {
    /// The job.
    pub job_id: JobId,
    /// False when history after `after` is gone; `snapshot` is then set.
    pub recovered: bool,
    /// The job's state when history was gone.
    #[serde(default)]
    pub snapshot: Option<JobSnapshot>,
    /// Events after `after`, in order.
    pub events: Vec<JobEvent>,
    /// Pass this as `after` next time.
    pub next_after: Seq,
    /// The job's state.
    pub state: JobState,
    /// True when nothing more will ever come.
    pub done: bool,
    /// True when the answer is one page of a longer stored history.
    #[serde(default)]
    pub more: bool,
}

#[derive(Debug, Deserialize)]
struct CancelAnswer {
    state: JobState,
}

/// The HTTP job API of one gateway, as one owner (a bearer token, or none).
#[derive(Debug, Clone)]
pub struct Api {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Api {
    /// The API at `base` (`http://ADDR`) without a token.
    pub fn new(base: impl Into<String>) -> Self {
        Self {
            base: base.into(),
            token: None,
            http: reqwest::Client::new(),
        }
    }

    /// The same API as the owner of `token`.
    pub fn with_token(&self, token: &str) -> Self {
        Self {
            token: Some(token.to_owned()),
            ..self.clone()
        }
    }

    /// `http://ADDR`
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The bearer token, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// A request to `path` (below the base) carrying the token.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    /// A GET of `path` carrying the token.
    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::GET, path)
    }

    /// `POST /v1/jobs` as sent, for tests of refusals: status and JSON body.
    pub async fn try_submit(
        &self,
        body: &serde_json::Value,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let r = self
            .request(reqwest::Method::POST, "/v1/jobs")
            .json(body)
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await?))
    }

    /// `POST /v1/jobs`; fails unless it answers 202.
    pub async fn submit(&self, body: &serde_json::Value) -> anyhow::Result<Submitted> {
        let (status, v) = self.try_submit(body).await?;
        anyhow::ensure!(status == 202, "submit answered {status}: {v}");
        Ok(serde_json::from_value(v)?)
    }

    /// `DELETE /v1/jobs/{id}`: the state afterwards; fails unless it answers 2xx.
    pub async fn cancel(&self, job: impl Display) -> anyhow::Result<JobState> {
        let r = self
            .request(reqwest::Method::DELETE, &format!("/v1/jobs/{job}"))
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "cancel answered {}", r.status());
        Ok(r.json::<CancelAnswer>().await?.state)
    }

    /// `GET /v1/jobs/{id}`.
    pub async fn snapshot(&self, job: impl Display) -> anyhow::Result<JobSnapshot> {
        let r = self.get(&format!("/v1/jobs/{job}")).send().await?;
        anyhow::ensure!(r.status() == 200, "snapshot answered {}", r.status());
        Ok(r.json().await?)
    }

    /// One long poll: events after `after`, waiting up to `wait` for the first.
    pub async fn poll(
        &self,
        job: impl Display,
        after: Seq,
        wait: Duration,
    ) -> anyhow::Result<Polled> {
        let r = self
            .get(&format!(
                "/v1/jobs/{job}/poll?after={after}&timeout_ms={}",
                wait.as_millis()
            ))
            .send()
            .await?;
        anyhow::ensure!(r.status() == 200, "poll answered {}", r.status());
        Ok(r.json().await?)
    }

    /// Every stored event of a job so far (polled page by page, without waiting).
    pub async fn events(&self, job: impl Display) -> anyhow::Result<Vec<JobEvent>> {
        let mut all = Vec::new();
        let mut after = Seq::ZERO;
        loop {
            let page = self.poll(&job, after, Duration::ZERO).await?;
            all.extend(page.events);
            if !page.more {
                return Ok(all);
            }
            after = page.next_after;
        }
    }

    /// Long-polls until the job's terminal event (bounded by `within`); every event, in order.
    pub async fn follow_to_end(
        &self,
        job: impl Display,
        within: Duration,
    ) -> anyhow::Result<Vec<JobEvent>> {
        let mut log = Vec::new();
        self.follow(&job, within, &mut log, |e| e.kind.is_terminal())
            .await?;
        Ok(log)
    }

    /// Long-polls (bounded by `within`) until an event that `pick` accepts; returns it.
    pub async fn wait_for_event(
        &self,
        job: impl Display,
        within: Duration,
        pick: impl Fn(&JobEvent) -> bool,
    ) -> anyhow::Result<JobEvent> {
        let mut log = Vec::new();
        self.follow(&job, within, &mut log, pick).await?;
        log.pop().context("an event")
    }

    /// Long-polls (bounded by `within`) until the snapshot satisfies `done`; returns it.
    pub async fn wait_for_snapshot(
        &self,
        job: impl Display,
        within: Duration,
        done: impl Fn(&JobSnapshot) -> bool,
    ) -> anyhow::Result<JobSnapshot> {
        let deadline = tokio::time::Instant::now() + within;
        let mut after = Seq::ZERO;
        loop {
            let s = self.snapshot(&job).await?;
            if done(&s) {
                return Ok(s);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "timed out; last snapshot {s:?}"
            );
            // Wait for the next event instead of sleeping.
            after = self
                .poll(&job, after, Duration::from_secs(1))
                .await?
                .next_after;
        }
    }

    /// Appends events to `log` until one that `stop` accepts (which ends the log).
    async fn follow(
        &self,
        job: &impl Display,
        within: Duration,
        log: &mut Vec<JobEvent>,
        stop: impl Fn(&JobEvent) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        let mut after = Seq::ZERO;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let p = self
                .poll(job, after, left.min(Duration::from_secs(5)))
                .await?;
            for e in p.events {
                let end = stop(&e);
                log.push(e);
                if end {
                    return Ok(());
                }
            }
            after = p.next_after;
            anyhow::ensure!(
                !left.is_zero(),
                "{job}: no such event within {within:?}; log: {log:?}"
            );
        }
    }

    /// An output's bytes and `ETag`; fails unless it answers 200.
    pub async fn download_with_etag(
        &self,
        job: impl Display,
        name: &str,
    ) -> anyhow::Result<(Vec<u8>, String)> {
        let r = self
            .get(&format!("/v1/jobs/{job}/outputs/{name}"))
            .send()
            .await?;
        anyhow::ensure!(r.status() == 200, "output answered {}", r.status());
        let etag = r.headers()["etag"].to_str()?.to_owned();
        Ok((r.bytes().await?.to_vec(), etag))
    }

    /// An output's bytes; fails unless it answers 200.
    pub async fn download(&self, job: impl Display, name: &str) -> anyhow::Result<Vec<u8>> {
        Ok(self.download_with_etag(job, name).await?.0)
    }

    /// `GET /metrics` as text (with auth on, the token needs the `admin` scope); fails
    /// unless it answers 200, so a refused scrape never reads as "no such metric".
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let r = self.get("/metrics").send().await?;
        let status = r.status();
        let text = r.text().await?;
        anyhow::ensure!(status == 200, "GET /metrics answered {status}: {text}");
        Ok(text)
    }

    /// The value of a series such as `outlast_cache_hits_total{backend="demo"}` (0 if absent).
    pub async fn counter(&self, series: &str) -> anyhow::Result<u64> {
        Ok(self
            .metrics()
            .await?
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0))
    }

    /// Waits (bounded, polling `/metrics`) until a line satisfies `pick`.
    pub async fn wait_for_metric(
        &self,
        within: Duration,
        pick: impl Fn(&str) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.metrics().await?.lines().any(&pick) {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "no such metric within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The `type` names of a log, in order.
pub fn types(log: &[JobEvent]) -> Vec<&'static str> {
    log.iter().map(|e| e.kind.name()).collect()
}

/// How many events of type `kind` a log holds.
pub fn count(log: &[JobEvent], kind: &str) -> usize {
    log.iter().filter(|e| e.kind.name() == kind).count()
}

/// The outputs announced in a log, in order.
pub fn outputs(log: &[JobEvent]) -> Vec<outlast_protocol::OutputInfo> {
    log.iter()
        .filter_map(|e| match &e.kind {
            EventKind::Output(o) => Some(o.clone()),
            _ => None,
        })
        .collect()
}
