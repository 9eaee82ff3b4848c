//! Job submission in batches of up to 100 jobs, one round trip each, one answer per job in
//! request order: the WebSocket's `submit_batch` with `--transport ws`, `POST /v1/jobs/batch`
//! with `--transport tus` (and whenever the WebSocket batch is not available), falling back to
//! one `POST /v1/jobs` per job against gateways that have neither (404/405). Every job carries
//! its idempotency key, so a resubmission after a crash or a cut names the same job.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use outlast_protocol::v1::{BatchAnswer, ClientMsg, Control, ServerMsg};
use outlast_protocol::{ErrorCode, JobId, JobSpec};
use serde::Deserialize;

use crate::cli::Transport;
use crate::net::{Ctx, Retry, Stop};

/// Largest batch the gateway accepts.
pub const MAX_BATCH: usize = outlast_protocol::v1::MAX_BATCH;
/// Room left in a `submit_batch` message for everything but the specs.
const ENVELOPE_BYTES: usize = 256;
/// Longest wait for the answer to one `submit_batch`.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// The gateway's answer for one job.
#[derive(Debug, Clone)]
pub enum Answer {
    /// Accepted (or recognised by its key).
    Accepted {
        /// The job.
        job_id: JobId,
        /// False when the key named an existing job.
        created: bool,
    },
    /// Refused for good.
    Refused {
        /// Stable code.
        code: String,
        /// For people.
        message: String,
    },
}

#[derive(Deserialize)]
struct AcceptedBody {
    job_id: JobId,
    #[serde(default)]
    created: bool,
}

#[derive(Deserialize)]
struct ErrorBody {
    code: String,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum BatchItem {
    Ok(AcceptedBody),
    Err { error: ErrorBody },
}

#[derive(Deserialize)]
struct BatchBody {
    jobs: Vec<BatchItem>,
}

/// Submits jobs, remembering whether the gateway has the batch endpoint.
#[derive(Debug, Default)]
pub struct Submitter {
    no_batch: AtomicBool,
    /// The gateway does not know `submit_batch`: use HTTP for the rest of the run.
    no_ws_batch: AtomicBool,
}

/// How one `submit_batch` exchange ended.
enum WsOutcome {
    Answered(Vec<Answer>),
    /// Refused as a whole, or (`unsupported`) unknown to this gateway: submit over HTTP.
    UseHttp {
        unsupported: bool,
    },
    Transient(anyhow::Error),
}

fn permanent(status: u16) -> bool {
    (400..500).contains(&status) && !matches!(status, 408 | 429)
}

impl Submitter {
    /// Submits `specs`, answering in the same order.
    pub async fn submit(&self, ctx: &Ctx, specs: &[JobSpec]) -> Result<Vec<Answer>, Stop> {
        if ctx.args.transport == Transport::Ws && !self.no_ws_batch.load(Ordering::Relaxed) {
            return self.submit_ws(ctx, specs).await;
        }
        self.submit_http(ctx, specs).await
    }

    /// Over one WebSocket: `submit_batch` messages of at most [`MAX_BATCH`] specs and at most
    /// the welcome's `max_message_bytes`; whatever cannot go that way goes over HTTP.
    async fn submit_ws(&self, ctx: &Ctx, specs: &[JobSpec]) -> Result<Vec<Answer>, Stop> {
        let mut retry = Retry::new("submit", ctx.args.retry_for);
        let values: Vec<serde_json::Value> = specs
            .iter()
            .map(|s| serde_json::to_value(s).unwrap_or(serde_json::Value::Null))
            .collect();
        let mut answers = Vec::with_capacity(specs.len());
        let mut ws = None;
        let mut req = 0u64;
        while answers.len() < specs.len() {
            if self.no_ws_batch.load(Ordering::Relaxed) {
                answers.extend(self.submit_http(ctx, &specs[answers.len()..]).await?);
                break;
            }
            let (socket, limit) = match ws.take() {
                Some(open) => open,
                None => match ctx.connect_ws_limited().await {
                    Ok(open) => open,
                    Err(e) => {
                        retry.failed(ctx, &e).await?;
                        continue;
                    }
                },
            };
            let from = answers.len();
            let to = from + batch_len(&values[from..], limit as usize);
            if to == from {
                // One spec larger than a message: it can only go over HTTP.
                answers.extend(self.submit_http(ctx, &specs[from..=from]).await?);
                ws = Some((socket, limit));
                continue;
            }
            req += 1;
            let mut socket = socket;
            match exchange(&mut socket, req, &values[from..to]).await {
                WsOutcome::Answered(batch) => {
                    retry.ok();
                    answers.extend(batch);
                    ws = Some((socket, limit));
                }
                WsOutcome::UseHttp { unsupported } => {
                    if unsupported {
                        self.no_ws_batch.store(true, Ordering::Relaxed);
                    }
                    answers.extend(self.submit_http(ctx, &specs[from..to]).await?);
                    ws = Some((socket, limit));
                }
                // The connection is dropped; the resend names the same jobs (same keys).
                WsOutcome::Transient(e) => retry.failed(ctx, &e).await?,
            }
        }
        if let Some((mut socket, _)) = ws {
            let _ = futures::SinkExt::close(&mut socket).await;
        }
        Ok(answers)
    }

    /// Over HTTP: `POST /v1/jobs/batch`, or one `POST /v1/jobs` per job.
    async fn submit_http(&self, ctx: &Ctx, specs: &[JobSpec]) -> Result<Vec<Answer>, Stop> {
        let mut answers = Vec::with_capacity(specs.len());
        for chunk in specs.chunks(MAX_BATCH) {
            if chunk.len() > 1
                && !self.no_batch.load(Ordering::Relaxed)
                && let Some(batch) = self.batch(ctx, chunk).await?
            {
                answers.extend(batch);
                continue;
            }
            for spec in chunk {
                answers.push(self.one(ctx, spec).await?);
            }
        }
        Ok(answers)
    }

    /// `None`: the batch endpoint is missing or refused the batch as a whole; send singly.
    async fn batch(&self, ctx: &Ctx, specs: &[JobSpec]) -> Result<Option<Vec<Answer>>, Stop> {
        let mut retry = Retry::new("submit", ctx.args.retry_for);
        let body = serde_json::json!({ "jobs": specs });
        loop {
            let sent = ctx
                .auth(ctx.http.post(ctx.url("/v1/jobs/batch")))
                .json(&body)
                .send()
                .await;
            let err = match sent {
                Ok(r) if r.status() == 404 || r.status() == 405 => {
                    self.no_batch.store(true, Ordering::Relaxed);
                    return Ok(None);
                }
                Ok(r) if r.status().is_success() => match r.json::<BatchBody>().await {
                    Ok(b) if b.jobs.len() == specs.len() => {
                        return Ok(Some(
                            b.jobs
                                .into_iter()
                                .map(|item| match item {
                                    BatchItem::Ok(a) => Answer::Accepted {
                                        job_id: a.job_id,
                                        created: a.created,
                                    },
                                    BatchItem::Err { error } => Answer::Refused {
                                        code: error.code,
                                        message: error.message,
                                    },
                                })
                                .collect(),
                        ));
                    }
                    Ok(b) => anyhow::anyhow!(
                        "batch answer has {} jobs for {} submitted",
                        b.jobs.len(),
                        specs.len()
                    ),
                    Err(e) => anyhow::Error::from(e),
                },
                Ok(r) if permanent(r.status().as_u16()) => return Ok(None),
                Ok(r) => anyhow::anyhow!("batch submit answered {}", r.status()),
                Err(e) => anyhow::Error::from(e),
            };
            retry.failed(ctx, &err).await?;
        }
    }

    async fn one(&self, ctx: &Ctx, spec: &JobSpec) -> Result<Answer, Stop> {
        let mut retry = Retry::new("submit", ctx.args.retry_for);
        loop {
            let mut req = ctx.auth(ctx.http.post(ctx.url("/v1/jobs"))).json(spec);
            if let Some(k) = &spec.idempotency_key {
                req = req.header("idempotency-key", k.as_str());
            }
            let err = match req.send().await {
                Ok(r) if r.status().is_success() => match r.json::<AcceptedBody>().await {
                    Ok(a) => {
                        return Ok(Answer::Accepted {
                            job_id: a.job_id,
                            created: a.created,
                        });
                    }
                    Err(e) => anyhow::Error::from(e),
                },
                Ok(r) if permanent(r.status().as_u16()) => {
                    let status = r.status();
                    let text = r.text().await.unwrap_or_default();
                    let (code, message) = match serde_json::from_str::<ErrorBody>(&text) {
                        Ok(b) => (b.code, b.message),
                        Err(_) => (format!("http_{}", status.as_u16()), text),
                    };
                    return Ok(Answer::Refused { code, message });
                }
                Ok(r) => anyhow::anyhow!("submit answered {}", r.status()),
                Err(e) => anyhow::Error::from(e),
            };
            retry.failed(ctx, &err).await?;
        }
    }
}

/// How many of `values` (at least one, unless the first alone is too large) fit in one
/// `submit_batch` of at most `limit` bytes and [`MAX_BATCH`] jobs.
fn batch_len(values: &[serde_json::Value], limit: usize) -> usize {
    let mut used = ENVELOPE_BYTES;
    let mut n = 0;
    for v in values.iter().take(MAX_BATCH) {
        used += v.to_string().len() + 1;
        if used > limit {
            break;
        }
        n += 1;
    }
    n
}

/// Sends one `submit_batch` and waits for its answer, skipping everything else the gateway
/// sends this owner's connections meanwhile (upload progress, heartbeats).
async fn exchange(ws: &mut crate::net::Ws, req: u64, jobs: &[serde_json::Value]) -> WsOutcome {
    let msg = ClientMsg::SubmitBatch {
        req: Some(req),
        jobs: jobs.to_vec(),
    };
    if let Err(e) = crate::net::send(ws, &msg).await {
        return WsOutcome::Transient(e);
    }
    let deadline = tokio::time::Instant::now() + ANSWER_WITHIN;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let msg = match crate::net::recv(ws, left).await {
            Ok(Some(msg)) => msg,
            Ok(None) => {
                return WsOutcome::Transient(anyhow::anyhow!(
                    "no submitted_batch within {ANSWER_WITHIN:?}"
                ));
            }
            Err(e) => return WsOutcome::Transient(e),
        };
        match msg {
            ServerMsg::Control(Control::SubmittedBatch {
                req: Some(r),
                jobs: answers,
            }) if r == req => {
                if answers.len() != jobs.len() {
                    return WsOutcome::Transient(anyhow::anyhow!(
                        "submitted_batch has {} answers for {} jobs",
                        answers.len(),
                        jobs.len()
                    ));
                }
                return WsOutcome::Answered(answers.into_iter().map(Answer::from).collect());
            }
            ServerMsg::Control(Control::Error {
                req: Some(r),
                code,
                message,
            }) if r == req => {
                return match code {
                    ErrorCode::ShuttingDown | ErrorCode::Internal | ErrorCode::LimitExceeded => {
                        WsOutcome::Transient(anyhow::anyhow!("{code}: {message}"))
                    }
                    // An older gateway, or the batch refused as a whole: HTTP decides, job
                    // by job if need be.
                    _ => WsOutcome::UseHttp {
                        unsupported: matches!(
                            code,
                            ErrorCode::UnknownMessageType | ErrorCode::InvalidMessage
                        ),
                    },
                };
            }
            _ => continue,
        }
    }
}

impl From<BatchAnswer> for Answer {
    fn from(a: BatchAnswer) -> Answer {
        match a {
            BatchAnswer::Submitted {
                job_id, created, ..
            } => Answer::Accepted { job_id, created },
            BatchAnswer::Refused { error } => Answer::Refused {
                code: error.code.as_str().to_owned(),
                message: error.message,
            },
        }
    }
}
