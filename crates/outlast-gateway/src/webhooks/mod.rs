//! Signed job webhooks (Standard Webhooks) with a durable outbox.
//!
//! The store writes a [`Delivery`](crate::store::Delivery) in the same transaction as the event
//! it announces (`completed`, `failed`, `canceled` always; `progress` coalesced when asked), so
//! a delivery survives `kill -9`. [`deliver::Outbox`] sends due deliveries on the gateway's
//! tracker: [`sign`] signs them, [`egress`] decides which addresses may be reached, [`body`]
//! renders them; failures retry on `webhooks.schedule` with full jitter. At submit,
//! [`WebhookPolicy::prepare`] fills in the owner's default webhook and refuses what can be
//! refused without resolving names.

pub mod body;
pub mod deliver;
pub mod egress;
pub mod sign;

use outlast_protocol::{ErrorCode, JobSpec, OwnerId};

use crate::config::WebhookConfig;
use crate::error::AppError;
use egress::Egress;

/// Longest webhook URL accepted.
const MAX_URL_LEN: usize = 2048;

/// The submit-time half of the webhook rules.
#[derive(Debug, Clone)]
pub struct WebhookPolicy {
    config: WebhookConfig,
    egress: Egress,
}

impl Default for WebhookPolicy {
    fn default() -> Self {
        Self::new(&WebhookConfig::default())
    }
}

impl WebhookPolicy {
    /// From `[webhooks]`.
    pub fn new(config: &WebhookConfig) -> Self {
        Self {
            config: config.clone(),
            egress: Egress::new(config),
        }
    }

    /// Gives `spec` its owner's default webhook when it names none, then checks the webhook:
    /// a signing secret must be configured for the owner, and the URL must be `http(s)` with a
    /// host the egress policy does not refuse outright (names are resolved at delivery).
    pub fn prepare(&self, owner: &OwnerId, spec: &mut JobSpec) -> Result<(), AppError> {
        if spec.webhook.is_none() {
            spec.webhook = self
                .config
                .owners
                .get(owner.as_str())
                .and_then(|o| o.default.clone());
        }
        let Some(hook) = &spec.webhook else {
            return Ok(());
        };
        if hook.url.len() > MAX_URL_LEN {
            return Err(AppError::invalid(format!(
                "webhook.url is longer than {MAX_URL_LEN} bytes"
            )));
        }
        if hook.progress_interval_s == Some(0) {
            return Err(AppError::invalid(
                "webhook.progress_interval_s must be at least 1",
            ));
        }
        if self.config.secrets_of(owner.as_str()).is_empty() {
            return Err(AppError::new(
                ErrorCode::WebhookRefused,
                "no webhook signing secret is configured for this owner",
            ));
        }
        self.egress
            .check_url(&hook.url)
            .map_err(|m| AppError::new(ErrorCode::WebhookRefused, format!("webhook.url: {m}")))?;
        Ok(())
    }
}
