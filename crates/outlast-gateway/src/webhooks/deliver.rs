//! The outbox's delivery loop: finds due deliveries in the store, sends each (signed, to a
//! checked address, no redirects, `webhooks.timeout`), and stores the outcome: delivered (2xx),
//! disabled (410: no more deliveries of that job to that URL), refused (egress policy), or the
//! next attempt on `webhooks.schedule` with full jitter (`Retry-After` seconds honoured), and
//! failed after the last. Every send runs on the gateway's tracker; a send cut by shutdown is
//! not recorded and happens again after the restart (receivers deduplicate by `webhook-id`).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use outlast_protocol::{ErrorCode, JobId};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::egress::{Egress, Resolve, Target};
use super::sign::{SigningKey, signature_header};
use crate::clock::now_ms;
use crate::config::WebhookConfig;
use crate::error::AppError;
use crate::metrics as m;
use crate::store::outbox::parse_delivery_id;
use crate::store::{Attempt, Delivery, DeliveryStatus, JobStore};

/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);
/// Attempts kept per delivery (the oldest go first).
const MAX_ATTEMPTS_KEPT: usize = 64;
/// Reads and saves of one delivery before a change gives up on saves that keep coming first.
const SAVE_TRIES: usize = 8;
/// Rescan at least this often (a lost wake-up costs at most this).
const RESCAN: Duration = Duration::from_secs(30);

/// What one attempt came to.
#[derive(Debug)]
enum Outcome {
    Delivered(u16),
    Gone,
    Refused(String),
    Retry {
        status: Option<u16>,
        error: Option<String>,
        retry_after: Option<Duration>,
    },
}

/// The delivery side of the outbox.
#[derive(Debug)]
pub struct Outbox {
    store: Arc<dyn JobStore>,
    config: WebhookConfig,
    egress: Egress,
    tracker: TaskTracker,
    in_flight: Mutex<HashSet<String>>,
    permits: Arc<Semaphore>,
}

impl Outbox {
    /// The outbox over `store`; spawn [`Outbox::run`] on `tracker`.
    pub fn new(
        config: &WebhookConfig,
        store: Arc<dyn JobStore>,
        tracker: TaskTracker,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            config: config.clone(),
            egress: Egress::new(config),
            tracker,
            in_flight: Mutex::new(HashSet::new()),
            permits: Arc::new(Semaphore::new(config.concurrency)),
        })
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends due deliveries until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let wake = self.store.outbox_wake();
        loop {
            // Registered before the scan, so a commit during it still wakes us.
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = now_ms();
            let wait = match self
                .store
                .due_deliveries(now, self.config.concurrency * 4)
                .await
            {
                Ok((due, later)) => {
                    for delivery in due {
                        if self.in_flight().insert(delivery.id.clone()) {
                            let this = Arc::clone(&self);
                            let stop = shutdown.clone();
                            self.tracker.spawn(async move {
                                this.attempt(delivery, &stop).await;
                            });
                        }
                    }
                    later
                        .filter(|at| *at > now)
                        .map_or(RESCAN, |at| Duration::from_millis(at - now).min(RESCAN))
                }
                Err(e) => {
                    tracing::error!(error = %e, "webhook outbox scan failed");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    async fn attempt(&self, delivery: Delivery, shutdown: &CancellationToken) {
        let id = delivery.id.clone();
        let permit = tokio::select! {
            p = Arc::clone(&self.permits).acquire_owned() => p.ok(),
            () = shutdown.cancelled() => None,
        };
        if permit.is_some() {
            tokio::select! {
                r = self.attempt_inner(delivery) => {
                    if let Err(e) = r {
                        tracing::error!(delivery = %id, error = %e, "could not store a webhook attempt");
                    }
                }
                // Not recorded: the attempt happens again after the restart.
                () = shutdown.cancelled() => {}
            }
        }
        self.in_flight().remove(&id);
        self.store.outbox_wake().notify_one();
    }

    async fn attempt_inner(&self, scanned: Delivery) -> Result<(), AppError> {
        // The scan's copy can be older than the store's: an attempt of the same delivery may
        // have stored its outcome and left `in_flight` between the scan's read and this claim.
        // Sending from that copy would send again early and overwrite the attempt just stored,
        // so the attempt works from the stored state, and only while it is still due.
        let siblings = self.store.deliveries(scanned.job).await?;
        let at_ms = now_ms();
        let Some(mut d) = siblings.iter().find(|s| s.id == scanned.id).cloned() else {
            return Ok(());
        };
        if !is_due(&d, at_ms) {
            return Ok(());
        }
        let started = Instant::now();
        let disabled = !d.resent
            && siblings
                .iter()
                .any(|s| s.id != d.id && s.url == d.url && s.status == DeliveryStatus::Disabled);
        let outcome = if disabled {
            Outcome::Gone
        } else {
            self.send(&d).await
        };
        let duration_ms = started.elapsed().as_millis() as u64;
        let (status, error) = match &outcome {
            Outcome::Delivered(s) => (Some(*s), None),
            Outcome::Gone if disabled => (None, Some("endpoint disabled by an earlier 410".into())),
            Outcome::Gone => (Some(410), None),
            Outcome::Refused(m) => (None, Some(m.clone())),
            Outcome::Retry { status, error, .. } => (*status, error.clone()),
        };
        let attempt = Attempt {
            at_ms,
            status,
            error,
            duration_ms,
        };
        push_attempt(&mut d, attempt.clone());
        d.next_attempt_at_ms = None;
        let label = match outcome {
            Outcome::Delivered(_) => {
                d.status = DeliveryStatus::Delivered;
                "delivered"
            }
            Outcome::Gone => {
                d.status = DeliveryStatus::Disabled;
                "disabled"
            }
            Outcome::Refused(_) => {
                d.status = DeliveryStatus::Refused;
                "refused"
            }
            Outcome::Retry { retry_after, .. } => {
                d.round_attempts += 1;
                match self.config.schedule.get(d.round_attempts as usize) {
                    None => {
                        d.status = DeliveryStatus::Failed;
                        "failed"
                    }
                    Some(max) => {
                        // Full jitter: anywhere up to the scheduled delay.
                        let mut delay = max.mul_f64(rand::random::<f64>());
                        if let Some(ra) = retry_after {
                            delay = delay.max(ra.min(MAX_RETRY_AFTER));
                        }
                        d.status = DeliveryStatus::Pending;
                        d.next_attempt_at_ms = Some(now_ms() + delay.as_millis() as u64);
                        "retry"
                    }
                }
            }
        };
        metrics::counter!(m::WEBHOOK_ATTEMPTS, "outcome" => label).increment(1);
        metrics::histogram!(m::WEBHOOK_ATTEMPT_DURATION).record(duration_ms as f64 / 1000.0);
        tracing::info!(
            delivery = %d.id,
            job = %d.job,
            event = d.event.type_name(),
            status = ?status,
            outcome = label,
            "webhook attempt"
        );
        let gone = d.status == DeliveryStatus::Disabled;
        let (job, url, id) = (d.job, d.url.clone(), d.id.clone());
        if !self.store.save_delivery(d).await? {
            // Saved meanwhile (a resend while this attempt was in flight): that state stands,
            // and this attempt joins its history.
            return self.record_only(job, &id, attempt).await;
        }
        if gone {
            // 410: the endpoint wants nothing more about this job. A delivery saved meanwhile
            // (resent) keeps the state it was saved with.
            for mut s in self.store.deliveries(job).await? {
                if s.url == url && s.status == DeliveryStatus::Pending {
                    s.status = DeliveryStatus::Disabled;
                    s.next_attempt_at_ms = None;
                    self.store.save_delivery(s).await?;
                }
            }
        }
        Ok(())
    }

    /// Adds `attempt` to the stored delivery's history without changing its state.
    async fn record_only(&self, job: JobId, id: &str, attempt: Attempt) -> Result<(), AppError> {
        for _ in 0..SAVE_TRIES {
            let stored = self.store.deliveries(job).await?;
            let Some(mut current) = stored.into_iter().find(|s| s.id == id) else {
                return Ok(());
            };
            push_attempt(&mut current, attempt.clone());
            if self.store.save_delivery(current).await? {
                return Ok(());
            }
        }
        tracing::warn!(delivery = %id, "an attempt was not recorded: the delivery kept changing");
        Ok(())
    }

    async fn send(&self, d: &Delivery) -> Outcome {
        let keys: Vec<SigningKey> = self
            .config
            .secrets_of(d.owner.as_str())
            .iter()
            .filter_map(|s| SigningKey::from_secret(s))
            .collect();
        if keys.is_empty() {
            return Outcome::Refused("no signing secret is configured for the owner".into());
        }
        let target = match self.egress.check_url(&d.url) {
            Ok(t) => t,
            Err(m) => return Outcome::Refused(m),
        };
        let resolved =
            tokio::time::timeout(self.config.timeout, self.egress.resolve(&target)).await;
        let addrs = match resolved {
            Err(_) => return retry_error("name resolution timed out"),
            Ok(Err(Resolve::Refused(m))) => return Outcome::Refused(m),
            Ok(Err(Resolve::Failed(m))) => return retry_error(&m),
            Ok(Ok(a)) => a,
        };
        self.post(d, &target, &addrs, &keys).await
    }

    async fn post(
        &self,
        d: &Delivery,
        target: &Target,
        addrs: &[SocketAddr],
        keys: &[SigningKey],
    ) -> Outcome {
        let timeout = self.config.timeout;
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("Outlast-Webhooks/", env!("CARGO_PKG_VERSION")));
        if let Some(domain) = &target.domain {
            // Connect only to the addresses just checked (no second lookup: DNS rebinding).
            builder = builder.resolve_to_addrs(domain, addrs);
        }
        let client = match builder.build() {
            Ok(c) => c,
            Err(e) => return retry_error(&e.without_url().to_string()),
        };
        let body = super::body::body(d, self.config.public_url.as_deref());
        let timestamp = now_ms() / 1000;
        let signature = signature_header(keys, &d.id, timestamp, &body);
        let answer = client
            .post(target.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &d.id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body)
            .send()
            .await;
        match answer {
            Ok(r) => {
                let status = r.status().as_u16();
                let retry_after = r
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                match status {
                    200..=299 => Outcome::Delivered(status),
                    410 => Outcome::Gone,
                    _ => Outcome::Retry {
                        status: Some(status),
                        error: None,
                        retry_after,
                    },
                }
            }
            Err(e) if e.is_timeout() => retry_error(&format!("no answer within {timeout:?}")),
            Err(e) if e.is_connect() => retry_error("connection failed"),
            Err(e) => retry_error(&e.without_url().to_string()),
        }
    }
}

/// Appends to the history, dropping the oldest past [`MAX_ATTEMPTS_KEPT`].
fn push_attempt(d: &mut Delivery, attempt: Attempt) {
    if d.attempts.len() >= MAX_ATTEMPTS_KEPT {
        d.attempts.remove(0);
    }
    d.attempts.push(attempt);
}

/// Pending with its next attempt at or before `now_ms`.
fn is_due(d: &Delivery, now_ms: u64) -> bool {
    d.status == DeliveryStatus::Pending && d.next_attempt_at_ms.is_some_and(|at| at <= now_ms)
}

fn retry_error(message: &str) -> Outcome {
    Outcome::Retry {
        status: None,
        error: Some(message.to_owned()),
        retry_after: None,
    }
}

/// Arms delivery `id` of `job` again (a new round of the schedule), also after it was
/// delivered, failed, refused or disabled; same id and body. `not_found` for unknown ids.
pub async fn resend(store: &dyn JobStore, job: JobId, id: &str) -> Result<Delivery, AppError> {
    let unknown = || AppError::not_found("webhook delivery");
    let seq = parse_delivery_id(job, id).ok_or_else(unknown)?;
    for _ in 0..SAVE_TRIES {
        let mut d = store
            .deliveries(job)
            .await?
            .into_iter()
            .find(|d| d.source.seq == seq)
            .ok_or_else(unknown)?;
        d.status = DeliveryStatus::Pending;
        d.round_attempts = 0;
        d.resent = true;
        d.next_attempt_at_ms = Some(now_ms());
        if store.save_delivery(d.clone()).await? {
            d.version += 1;
            return Ok(d);
        }
    }
    Err(AppError::new(
        ErrorCode::Overloaded,
        "the delivery is changing under attempts; try again",
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use outlast_protocol::{EventKind, JobEvent, JobSpec, OwnerId, Seq, WebhookEvent};

    use super::*;
    use crate::hub::Hub;
    use crate::store::embedded::EmbeddedStore;
    use crate::store::{Created, JobStore};

    /// A receiver that answers every request 503 with `Retry-After: 3600`; returns its URL and
    /// its request count.
    async fn refusing_receiver() -> (String, Arc<AtomicUsize>) {
        let hits = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&hits);
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move || {
                let counted = Arc::clone(&counted);
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        [(axum::http::header::RETRY_AFTER, "3600")],
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/hook"), hits)
    }

    /// A receiver that holds each request until `release` is notified, then answers 200;
    /// returns its URL, its request count and the release.
    async fn holding_receiver() -> (String, Arc<AtomicUsize>, Arc<tokio::sync::Notify>) {
        let hits = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(tokio::sync::Notify::new());
        let (counted, held) = (Arc::clone(&hits), Arc::clone(&release));
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move || {
                let (counted, held) = (Arc::clone(&counted), Arc::clone(&held));
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    held.notified().await;
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/hook"), hits, release)
    }

    /// A store with one job and one due delivery to `url` stored, and an outbox on it.
    async fn fixture(url: String) -> (tempfile::TempDir, Arc<dyn JobStore>, Arc<Outbox>, Delivery) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn JobStore> = Arc::new(
            EmbeddedStore::open(&dir.path().join("t.redb"), Arc::new(Hub::new()), 1 << 20)
                .expect("open"),
        );
        let owner: OwnerId = "local".parse().expect("owner");
        let spec = JobSpec::new("demo", serde_json::json!({}));
        let Created::New(record) = store
            .create(owner.clone(), spec, [0; 32], 0)
            .await
            .expect("create")
        else {
            panic!("a new job");
        };
        let job = record.snapshot.job_id;
        let delivery = Delivery {
            id: crate::store::outbox::delivery_id(job, Seq(1)),
            job,
            owner,
            url,
            event: WebhookEvent::Canceled,
            source: JobEvent {
                job_id: job,
                seq: Seq(1),
                at_ms: now_ms(),
                kind: EventKind::Canceled {
                    reason: "test".into(),
                },
            },
            state: record.snapshot.state,
            outputs: Vec::new(),
            status: DeliveryStatus::Pending,
            next_attempt_at_ms: Some(now_ms()),
            round_attempts: 0,
            attempts: Vec::new(),
            resent: false,
            version: 0,
        };
        assert!(store.save_delivery(delivery.clone()).await.expect("save"));
        let config = WebhookConfig {
            secrets: vec!["whsec_b2xkLXNlY3JldC1vbGQtc2VjcmV0LW9sZC1zZWNyZXQ=".into()],
            allow_private: true,
            ..WebhookConfig::default()
        };
        let outbox = Outbox::new(&config, Arc::clone(&store), TaskTracker::new());
        (dir, store, outbox, delivery)
    }

    #[tokio::test]
    async fn a_save_from_a_copy_read_before_another_save_stores_nothing() {
        let (_dir, store, _outbox, fixed) = fixture("http://127.0.0.1:9/hook".into()).await;
        let job = fixed.job;
        // Two copies read at the same version (1: the fixture saved it once).
        let first = store.deliveries(job).await.expect("deliveries").remove(0);
        assert_eq!(first.version, 1);
        let stale = first.clone();
        let mut newer = first;
        newer.status = DeliveryStatus::Delivered;
        assert!(store.save_delivery(newer).await.expect("save"));
        let mut late = stale;
        late.status = DeliveryStatus::Failed;
        assert!(!store.save_delivery(late).await.expect("save"), "refused");
        let stored = store.deliveries(job).await.expect("deliveries");
        assert_eq!(stored[0].status, DeliveryStatus::Delivered);
        assert_eq!(stored[0].version, 2);
    }

    #[tokio::test]
    async fn a_resend_while_an_attempt_is_in_flight_stands_and_the_attempt_joins_its_history() {
        let (url, hits, release) = holding_receiver().await;
        let (_dir, store, outbox, delivery) = fixture(url).await;
        let (job, id) = (delivery.job, delivery.id.clone());
        let attempt = tokio::spawn(async move { outbox.attempt_inner(delivery).await });
        let waited = tokio::time::Instant::now();
        while hits.load(Ordering::SeqCst) == 0 {
            assert!(
                waited.elapsed() < Duration::from_secs(10),
                "the attempt never arrived"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let before = now_ms();
        let resent = resend(&*store, job, &id).await.expect("resend");
        assert_eq!(resent.status, DeliveryStatus::Pending);
        release.notify_one();
        attempt.await.expect("join").expect("attempt");
        let stored = store.deliveries(job).await.expect("deliveries");
        let d = &stored[0];
        assert_eq!(
            d.status,
            DeliveryStatus::Pending,
            "the resend stands: {d:?}"
        );
        assert!(d.resent);
        assert_eq!(d.round_attempts, 0);
        assert!(
            d.next_attempt_at_ms
                .is_some_and(|at| at >= before && at <= now_ms()),
            "due now: {d:?}"
        );
        assert_eq!(d.attempts.len(), 1, "the attempt is in the history: {d:?}");
        assert_eq!(d.attempts[0].status, Some(204));
    }

    #[tokio::test]
    async fn an_attempt_from_a_stale_scan_neither_sends_again_nor_overwrites_the_stored_attempt() {
        let (url, hits) = refusing_receiver().await;
        let (_dir, store, outbox, scanned) = fixture(url).await;
        let job = scanned.job;

        outbox.attempt_inner(scanned.clone()).await.expect("first");
        assert_eq!(hits.load(Ordering::SeqCst), 1, "the due delivery was sent");
        // The same scan's copy again, as when the first attempt finished between the scan's
        // read and the second claim: the stored delivery is not due for an hour.
        outbox.attempt_inner(scanned).await.expect("second");
        assert_eq!(
            hits.load(Ordering::SeqCst),
            1,
            "not sent again before it is due"
        );
        let stored = store.deliveries(job).await.expect("deliveries");
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].attempts.len(), 1, "{:?}", stored[0].attempts);
        assert_eq!(stored[0].attempts[0].status, Some(503));
        assert_eq!(stored[0].status, DeliveryStatus::Pending);
        assert!(stored[0].next_attempt_at_ms.expect("next") >= now_ms() + 3_500_000);
    }
}
