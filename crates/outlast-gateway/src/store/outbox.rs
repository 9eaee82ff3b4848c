//! The webhook outbox's records: one [`Delivery`] per (job, seq) that a webhook must carry,
//! written in the same transaction as its event, and its attempts.

use outlast_protocol::{
    EventKind, JobEvent, JobId, JobSnapshot, JobState, OutputInfo, OwnerId, Seq, WebhookEvent,
    WebhookSpec,
};
use serde::{Deserialize, Serialize};

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting for its next attempt.
    Pending,
    /// A 2xx answer was received.
    Delivered,
    /// Every attempt of the schedule failed.
    Failed,
    /// The endpoint answered 410 Gone: no more attempts for this job's webhook.
    Disabled,
    /// The egress policy refused the target address (or no signing secret was configured).
    Refused,
}

impl DeliveryStatus {
    /// The snake_case name (also the metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
            DeliveryStatus::Disabled => "disabled",
            DeliveryStatus::Refused => "refused",
        }
    }
}

/// One try to deliver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// When it started (ms since the epoch).
    pub at_ms: u64,
    /// The HTTP status answered, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Why it failed without (or besides) a status: timeout, connection refused, refused address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long it took.
    pub duration_ms: u64,
}

/// A webhook message to send, with its history. The payload is frozen when the event is
/// stored, so every attempt (and a resend) sends the same body under the same id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// The `webhook-id`: `msg_` + the job's 32 hex digits + `_` + seq. The receiver's
    /// idempotency key.
    pub id: String,
    /// The job.
    pub job: JobId,
    /// Its owner (whose secrets sign).
    pub owner: OwnerId,
    /// The endpoint.
    pub url: String,
    /// The event type.
    pub event: WebhookEvent,
    /// The stored event this message is about.
    pub source: JobEvent,
    /// The job's state after the event.
    pub state: JobState,
    /// The job's outputs after the event (terminal events only).
    pub outputs: Vec<OutputInfo>,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// When the next attempt is due (pending only).
    pub next_attempt_at_ms: Option<u64>,
    /// Attempts made in the current round of the schedule (a resend starts a new round).
    pub round_attempts: u32,
    /// Every attempt so far.
    pub attempts: Vec<Attempt>,
    /// Re-armed by a resend: sent even though an earlier 410 disabled the endpoint.
    #[serde(default)]
    pub resent: bool,
    /// Bumped by every save: a save from a copy read before another save stores nothing
    /// ([`crate::store::JobStore::save_delivery`]).
    #[serde(default)]
    pub version: u64,
}

/// The delivery id of `job`'s event `seq`.
pub fn delivery_id(job: JobId, seq: Seq) -> String {
    let text = job.to_string();
    format!("msg_{}_{}", text.trim_start_matches("job_"), seq.0)
}

/// The seq a delivery id of `job` names, if it names one of `job`'s.
pub fn parse_delivery_id(job: JobId, id: &str) -> Option<Seq> {
    let text = job.to_string();
    let rest = id.strip_prefix("msg_")?;
    let rest = rest.strip_prefix(text.trim_start_matches("job_"))?;
    let seq = rest.strip_prefix('_')?;
    if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    seq.parse().ok().map(Seq)
}

/// What the outbox should hold for `event`, just applied to the job's `snapshot`: a delivery
/// when the job has a webhook (`hook`) that wants this event. Progress is coalesced
/// (`last_progress_ms`: the event time of the job's last progress delivery).
pub fn delivery_for(
    hook: Option<&WebhookSpec>,
    owner: &OwnerId,
    snapshot: &JobSnapshot,
    event: &JobEvent,
    last_progress_ms: Option<u64>,
) -> Option<Delivery> {
    let hook = hook?;
    let kind = WebhookEvent::of(&event.kind)?;
    if kind == WebhookEvent::Progress {
        if !hook.wants_progress() {
            return None;
        }
        if last_progress_ms
            .is_some_and(|last| event.at_ms.saturating_sub(last) < hook.progress_interval_ms())
        {
            return None;
        }
    }
    let terminal = matches!(
        event.kind,
        EventKind::Completed { .. } | EventKind::Failed(_) | EventKind::Canceled { .. }
    );
    Some(Delivery {
        id: delivery_id(event.job_id, event.seq),
        job: event.job_id,
        owner: owner.clone(),
        url: hook.url.clone(),
        event: kind,
        source: event.clone(),
        state: snapshot.state,
        outputs: if terminal {
            snapshot.outputs.clone()
        } else {
            Vec::new()
        },
        status: DeliveryStatus::Pending,
        next_attempt_at_ms: Some(event.at_ms),
        round_attempts: 0,
        attempts: Vec::new(),
        resent: false,
        version: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_refuse_other_jobs() {
        let job = JobId::random();
        let id = delivery_id(job, Seq(12));
        assert_eq!(parse_delivery_id(job, &id), Some(Seq(12)));
        assert_eq!(parse_delivery_id(JobId::random(), &id), None);
        assert_eq!(parse_delivery_id(job, &format!("{id}x")), None);
        assert_eq!(parse_delivery_id(job, "msg_"), None);
    }
}
