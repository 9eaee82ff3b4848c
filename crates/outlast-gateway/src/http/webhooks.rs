//! A job's webhook deliveries: `GET /v1/jobs/{id}/webhooks` lists them with every attempt,
//! `POST /v1/jobs/{id}/webhooks/{delivery}/resend` sends one again (same id and body). Another
//! owner's job answers exactly like a nonexistent one.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::api::parse_job;
use super::owner::Owner;
use super::state::AppState;
use crate::error::AppError;
use crate::store::{Attempt, Delivery, DeliveryStatus};
use crate::webhooks::deliver;

#[derive(Serialize)]
struct DeliveryView<'a> {
    id: &'a str,
    event: &'static str,
    seq: u64,
    url: &'a str,
    status: DeliveryStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_attempt_at_ms: Option<u64>,
    attempts: &'a [Attempt],
}

impl<'a> From<&'a Delivery> for DeliveryView<'a> {
    fn from(d: &'a Delivery) -> Self {
        Self {
            id: &d.id,
            event: d.event.type_name(),
            seq: d.source.seq.0,
            url: &d.url,
            status: d.status,
            next_attempt_at_ms: d.next_attempt_at_ms,
            attempts: &d.attempts,
        }
    }
}

#[derive(Serialize)]
struct List<'a> {
    deliveries: Vec<DeliveryView<'a>>,
}

/// `GET /v1/jobs/{id}/webhooks`.
pub async fn list(
    State(state): State<AppState>,
    Owner(owner): Owner,
    Path(id): Path<String>,
) -> Result<Response, AppError> {
    let job = parse_job(&id)?;
    state.jobs.owned(&owner, job).await?;
    let deliveries = state.jobs.store().deliveries(job).await?;
    let list = List {
        deliveries: deliveries.iter().map(DeliveryView::from).collect(),
    };
    Ok(Json(list).into_response())
}

/// `POST /v1/jobs/{id}/webhooks/{delivery}/resend`: 202 with the re-armed delivery.
pub async fn resend(
    State(state): State<AppState>,
    Owner(owner): Owner,
    Path((id, delivery)): Path<(String, String)>,
) -> Result<Response, AppError> {
    let job = parse_job(&id)?;
    state.jobs.owned(&owner, job).await?;
    let d = deliver::resend(&**state.jobs.store(), job, &delivery).await?;
    Ok((StatusCode::ACCEPTED, Json(DeliveryView::from(&d))).into_response())
}
