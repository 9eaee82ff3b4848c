//! Job submission: `POST /v1/jobs/batch` (up to 100 jobs in one round trip, one answer per
//! job in request order), falling back to one `POST /v1/jobs` per job against gateways that
//! do not have the batch endpoint (404/405). Every job carries its idempotency key, so a
//! resubmission after a crash names the same job.

use std::sync::atomic::{AtomicBool, Ordering};

use outlast_protocol::{JobId, JobSpec};
use serde::Deserialize;

use crate::net::{Ctx, Retry, Stop};

/// Largest batch the gateway accepts.
pub const MAX_BATCH: usize = 100;

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
}

fn permanent(status: u16) -> bool {
    (400..500).contains(&status) && !matches!(status, 408 | 429)
}

impl Submitter {
    /// Submits `specs`, answering in the same order.
    pub async fn submit(&self, ctx: &Ctx, specs: &[JobSpec]) -> Result<Vec<Answer>, Stop> {
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
