//! The default store: one redb database file, every commit fsynced before it is acknowledged.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use outlast_protocol::replay::coalesce;
use outlast_protocol::{EventKind, JobEvent, JobId, JobSnapshot, JobSpec, OwnerId, Seq};
use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition};
use tokio::sync::Notify;

use super::outbox::{self, Delivery, DeliveryStatus};
use super::{
    CacheEntry, CacheKey, Created, JobRecord, JobStore, Rejected, StoreError, StreamStart,
};
use crate::clock::now_ms;
use crate::hub::Hub;

/// job id (16 bytes) -> JobRecord (MessagePack).
const JOBS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("jobs");
/// job id (16 bytes) + seq (8 bytes, big-endian) -> JobEvent (MessagePack).
const EVENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("events");
/// owner + 0x00 + idempotency key -> job id (16 bytes).
const IDEMPOTENCY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("idempotency");
/// job id (16 bytes) -> backend state (JSON) of a running job.
const BACKEND_STATE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("backend_state");
/// result cache key (32 bytes) -> job id (16 bytes) + completed_at_ms (8 bytes, big-endian).
const RESULT_CACHE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("result_cache");
/// job id + seq (24 bytes) -> webhook Delivery (MessagePack): the outbox.
const OUTBOX: TableDefinition<&[u8], &[u8]> = TableDefinition::new("webhook_outbox");
/// job id + seq (24 bytes) -> next attempt (ms): the pending part of the outbox.
const OUTBOX_PENDING: TableDefinition<&[u8], u64> = TableDefinition::new("webhook_pending");
/// job id (16 bytes) -> event time (ms) of its last progress delivery, for coalescing.
const OUTBOX_PROGRESS: TableDefinition<&[u8], u64> = TableDefinition::new("webhook_progress");
/// counters.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

fn event_key(job: JobId, seq: Seq) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..16].copy_from_slice(job.as_bytes());
    key[16..].copy_from_slice(&seq.0.to_be_bytes());
    key
}

fn idem_key(owner: &OwnerId, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(owner.as_str().len() + 1 + key.len());
    k.extend_from_slice(owner.as_str().as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

fn se(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    rmp_serde::to_vec_named(v).map_err(se)
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    rmp_serde::from_slice(bytes).map_err(se)
}

/// redb-backed [`JobStore`].
#[derive(Debug)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    hub: Arc<Hub>,
    /// Held across commit + publish so subscribers see events in commit order. A std Mutex:
    /// it is only taken inside `spawn_blocking`, never across an await.
    write_order: Arc<Mutex<()>>,
    history_max_events: u64,
    outbox_wake: Arc<Notify>,
}

impl EmbeddedStore {
    /// Opens (or creates) the database at `path`.
    pub fn open(path: &Path, hub: Arc<Hub>, history_max_events: u64) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(se)?;
        let txn = db.begin_write().map_err(se)?;
        {
            txn.open_table(JOBS).map_err(se)?;
            txn.open_table(EVENTS).map_err(se)?;
            txn.open_table(IDEMPOTENCY).map_err(se)?;
            txn.open_table(META).map_err(se)?;
            txn.open_table(BACKEND_STATE).map_err(se)?;
            txn.open_table(RESULT_CACHE).map_err(se)?;
            txn.open_table(OUTBOX).map_err(se)?;
            txn.open_table(OUTBOX_PENDING).map_err(se)?;
            txn.open_table(OUTBOX_PROGRESS).map_err(se)?;
        }
        txn.commit().map_err(se)?;
        Ok(Self {
            db: Arc::new(db),
            hub,
            write_order: Arc::new(Mutex::new(())),
            history_max_events,
            outbox_wake: Arc::new(Notify::new()),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(se)?
    }
}

fn load_record(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    job: JobId,
) -> Result<Option<JobRecord>, StoreError> {
    match table.get(job.as_bytes().as_slice()).map_err(se)? {
        Some(v) => decode(v.value()).map(Some),
        None => Ok(None),
    }
}

fn events_after(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    job: JobId,
    after: Seq,
) -> Result<Vec<JobEvent>, StoreError> {
    let from = event_key(job, after.next());
    let to = event_key(job, Seq(u64::MAX));
    let mut out = Vec::new();
    for item in table.range(from.as_slice()..=to.as_slice()).map_err(se)? {
        let (_, v) = item.map_err(se)?;
        out.push(decode(v.value())?);
    }
    Ok(out)
}

/// The outbox's tables inside one write transaction.
struct OutboxTables<'t> {
    outbox: Table<'t, &'static [u8], &'static [u8]>,
    pending: Table<'t, &'static [u8], u64>,
    progress: Table<'t, &'static [u8], u64>,
}

impl OutboxTables<'_> {
    /// Adds the delivery `event` calls for, if any; true when one was added.
    fn enqueue(&mut self, record: &JobRecord, event: &JobEvent) -> Result<bool, StoreError> {
        if record.spec.webhook.is_none() {
            return Ok(false);
        }
        let job = event.job_id.as_bytes().as_slice();
        let last_progress = self.progress.get(job).map_err(se)?.map(|v| v.value());
        let Some(delivery) = outbox::delivery_for(
            record.spec.webhook.as_ref(),
            &record.owner,
            &record.snapshot,
            event,
            last_progress,
        ) else {
            return Ok(false);
        };
        if delivery.event == outlast_protocol::WebhookEvent::Progress {
            self.progress.insert(job, event.at_ms).map_err(se)?;
        }
        if event.kind.is_terminal() {
            self.progress.remove(job).map_err(se)?;
        }
        self.put(&delivery)?;
        Ok(true)
    }

    fn put(&mut self, delivery: &Delivery) -> Result<(), StoreError> {
        let key = event_key(delivery.job, delivery.source.seq);
        self.outbox
            .insert(key.as_slice(), encode(delivery)?.as_slice())
            .map_err(se)?;
        match (delivery.status, delivery.next_attempt_at_ms) {
            (DeliveryStatus::Pending, Some(at)) => {
                self.pending.insert(key.as_slice(), at).map_err(se)?;
            }
            _ => {
                self.pending.remove(key.as_slice()).map_err(se)?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl JobStore for EmbeddedStore {
    async fn create(
        &self,
        owner: OwnerId,
        spec: JobSpec,
        spec_digest: [u8; 32],
        now: u64,
    ) -> Result<Created, StoreError> {
        let lock = Arc::clone(&self.write_order);
        self.blocking(move |db| {
            let _order = lock.lock().unwrap_or_else(PoisonError::into_inner);
            let txn = db.begin_write().map_err(se)?;
            let created = {
                let mut jobs = txn.open_table(JOBS).map_err(se)?;
                let mut idem = txn.open_table(IDEMPOTENCY).map_err(se)?;
                let mut meta = txn.open_table(META).map_err(se)?;
                let ikey = spec
                    .idempotency_key
                    .as_ref()
                    .map(|k| idem_key(&owner, k.as_str()));
                let existing = match &ikey {
                    Some(k) => idem
                        .get(k.as_slice())
                        .map_err(se)?
                        .map(|v| v.value().to_vec()),
                    None => None,
                };
                if let Some(id) = existing {
                    let id: [u8; 16] = id.as_slice().try_into().map_err(se)?;
                    let record = load_record(&jobs, JobId::from_bytes(id))?
                        .ok_or_else(|| StoreError("idempotency key names a missing job".into()))?;
                    return Ok(if record.spec_digest == spec_digest {
                        Created::Existing(record)
                    } else {
                        Created::Conflict
                    });
                }
                let ticket = meta
                    .get("next_ticket")
                    .map_err(se)?
                    .map(|v| v.value())
                    .unwrap_or(1);
                meta.insert("next_ticket", ticket + 1).map_err(se)?;
                let job_id = JobId::random();
                let record = JobRecord {
                    owner,
                    snapshot: JobSnapshot::new(job_id, spec.backend.clone(), now),
                    spec,
                    spec_digest,
                    ticket,
                    complete_after: Seq::ZERO,
                    stored_events: 0,
                };
                jobs.insert(job_id.as_bytes().as_slice(), encode(&record)?.as_slice())
                    .map_err(se)?;
                if let Some(k) = ikey {
                    idem.insert(k.as_slice(), job_id.as_bytes().as_slice())
                        .map_err(se)?;
                }
                Created::New(record)
            };
            txn.commit().map_err(se)?;
            Ok(created)
        })
        .await
    }

    async fn append(
        &self,
        batch: Vec<(JobId, EventKind)>,
    ) -> Result<Vec<Result<JobEvent, Rejected>>, StoreError> {
        let lock = Arc::clone(&self.write_order);
        let hub = Arc::clone(&self.hub);
        let max_events = self.history_max_events;
        let wake = Arc::clone(&self.outbox_wake);
        self.blocking(move |db| {
            let _order = lock.lock().unwrap_or_else(PoisonError::into_inner);
            let txn = db.begin_write().map_err(se)?;
            let mut results = Vec::with_capacity(batch.len());
            let mut queued_webhooks = false;
            {
                let mut jobs = txn.open_table(JOBS).map_err(se)?;
                let mut events = txn.open_table(EVENTS).map_err(se)?;
                let mut webhooks = OutboxTables {
                    outbox: txn.open_table(OUTBOX).map_err(se)?,
                    pending: txn.open_table(OUTBOX_PENDING).map_err(se)?,
                    progress: txn.open_table(OUTBOX_PROGRESS).map_err(se)?,
                };
                let at_ms = now_ms();
                for (job_id, kind) in batch {
                    let Some(mut record) = load_record(&jobs, job_id)? else {
                        results.push(Err(Rejected::UnknownJob));
                        continue;
                    };
                    if record.snapshot.state.is_terminal() {
                        results.push(Err(Rejected::AlreadyTerminal));
                        continue;
                    }
                    let event = JobEvent {
                        job_id,
                        seq: record.snapshot.seq.next(),
                        at_ms,
                        kind,
                    };
                    events
                        .insert(
                            event_key(job_id, event.seq).as_slice(),
                            encode(&event)?.as_slice(),
                        )
                        .map_err(se)?;
                    record.snapshot.apply(&event);
                    // The webhook delivery commits with its event: it survives a crash.
                    queued_webhooks |= webhooks.enqueue(&record, &event)?;
                    record.stored_events += 1;
                    if record.stored_events > max_events {
                        let stored = events_after(&events, job_id, Seq::ZERO)?;
                        let (drop, watermark) = coalesce(
                            stored.iter().map(|e| (e.seq, &e.kind)),
                            record.complete_after,
                        );
                        for seq in &drop {
                            events
                                .remove(event_key(job_id, *seq).as_slice())
                                .map_err(se)?;
                        }
                        record.stored_events -= drop.len() as u64;
                        record.complete_after = watermark;
                    }
                    jobs.insert(job_id.as_bytes().as_slice(), encode(&record)?.as_slice())
                        .map_err(se)?;
                    results.push(Ok(event));
                }
            }
            txn.commit().map_err(se)?;
            // Durable now: publish in commit order while still holding the order lock.
            for event in results.iter().flatten() {
                crate::metrics::record_stored(&event.kind);
                hub.publish(event.clone());
            }
            if queued_webhooks {
                wake.notify_one();
            }
            Ok(results)
        })
        .await
    }

    async fn job_for_key(&self, owner: OwnerId, key: String) -> Result<Option<JobId>, StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(se)?;
            let idem = txn.open_table(IDEMPOTENCY).map_err(se)?;
            let Some(v) = idem.get(idem_key(&owner, &key).as_slice()).map_err(se)? else {
                return Ok(None);
            };
            let id: [u8; 16] = v.value().try_into().map_err(se)?;
            Ok(Some(JobId::from_bytes(id)))
        })
        .await
    }

    async fn get(&self, job: JobId) -> Result<Option<JobRecord>, StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(se)?;
            let jobs = txn.open_table(JOBS).map_err(se)?;
            load_record(&jobs, job)
        })
        .await
    }

    async fn stream_start(
        &self,
        job: JobId,
        after: Seq,
    ) -> Result<Option<StreamStart>, StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(se)?;
            let jobs = txn.open_table(JOBS).map_err(se)?;
            let Some(record) = load_record(&jobs, job)? else {
                return Ok(None);
            };
            let events = txn.open_table(EVENTS).map_err(se)?;
            let events = events_after(&events, job, after)?;
            Ok(Some(StreamStart { record, events }))
        })
        .await
    }

    async fn unfinished(&self) -> Result<Vec<JobRecord>, StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(se)?;
            let jobs = txn.open_table(JOBS).map_err(se)?;
            let mut out = Vec::new();
            for item in jobs.iter().map_err(se)? {
                let (_, v) = item.map_err(se)?;
                let record: JobRecord = decode(v.value())?;
                if !record.snapshot.state.is_terminal() {
                    out.push(record);
                }
            }
            out.sort_by_key(|r| r.ticket);
            Ok(out)
        })
        .await
    }

    async fn set_backend_state(
        &self,
        job: JobId,
        state: Option<serde_json::Value>,
    ) -> Result<(), StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(se)?;
            {
                let mut table = txn.open_table(BACKEND_STATE).map_err(se)?;
                match state {
                    Some(v) => {
                        let bytes = serde_json::to_vec(&v).map_err(se)?;
                        table
                            .insert(job.as_bytes().as_slice(), bytes.as_slice())
                            .map_err(se)?;
                    }
                    None => {
                        table.remove(job.as_bytes().as_slice()).map_err(se)?;
                    }
                }
            }
            txn.commit().map_err(se)
        })
        .await
    }

    async fn backend_state(&self, job: JobId) -> Result<Option<serde_json::Value>, StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(se)?;
            let table = txn.open_table(BACKEND_STATE).map_err(se)?;
            match table.get(job.as_bytes().as_slice()).map_err(se)? {
                Some(v) => serde_json::from_slice(v.value()).map(Some).map_err(se),
                None => Ok(None),
            }
        })
        .await
    }

    async fn put_cache_entry(&self, key: CacheKey, entry: CacheEntry) -> Result<(), StoreError> {
        self.blocking(move |db| {
            let mut value = [0u8; 24];
            value[..16].copy_from_slice(entry.job.as_bytes());
            value[16..].copy_from_slice(&entry.completed_at_ms.to_be_bytes());
            let txn = db.begin_write().map_err(se)?;
            txn.open_table(RESULT_CACHE)
                .map_err(se)?
                .insert(key.0.as_slice(), value.as_slice())
                .map_err(se)?;
            txn.commit().map_err(se)
        })
        .await
    }

    async fn cache_entry(&self, key: CacheKey) -> Result<Option<CacheEntry>, StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(se)?;
            let table = txn.open_table(RESULT_CACHE).map_err(se)?;
            let Some(value) = table.get(key.0.as_slice()).map_err(se)? else {
                return Ok(None);
            };
            let value = value.value();
            let (Some(job), Some(at)) = (value.get(..16), value.get(16..24)) else {
                return Err(StoreError("malformed result cache entry".into()));
            };
            Ok(Some(CacheEntry {
                job: JobId::from_bytes(job.try_into().map_err(se)?),
                completed_at_ms: u64::from_be_bytes(at.try_into().map_err(se)?),
            }))
        })
        .await
    }

    fn outbox_wake(&self) -> Arc<Notify> {
        Arc::clone(&self.outbox_wake)
    }

    async fn due_deliveries(
        &self,
        now: u64,
        limit: usize,
    ) -> Result<(Vec<Delivery>, Option<u64>), StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(se)?;
            let pending = txn.open_table(OUTBOX_PENDING).map_err(se)?;
            let mut due: Vec<(u64, Vec<u8>)> = Vec::new();
            let mut later: Option<u64> = None;
            for item in pending.iter().map_err(se)? {
                let (k, v) = item.map_err(se)?;
                let at = v.value();
                if at <= now {
                    due.push((at, k.value().to_vec()));
                } else {
                    later = Some(later.map_or(at, |l| l.min(at)));
                }
            }
            due.sort();
            if due.len() > limit {
                for (at, _) in &due[limit..] {
                    later = Some(later.map_or(*at, |l| l.min(*at)));
                }
                due.truncate(limit);
            }
            let outbox = txn.open_table(OUTBOX).map_err(se)?;
            let mut out = Vec::with_capacity(due.len());
            for (_, key) in due {
                if let Some(v) = outbox.get(key.as_slice()).map_err(se)? {
                    out.push(decode(v.value())?);
                }
            }
            Ok((out, later))
        })
        .await
    }

    async fn save_delivery(&self, delivery: Delivery) -> Result<(), StoreError> {
        let wake = Arc::clone(&self.outbox_wake);
        let pending = delivery.status == DeliveryStatus::Pending;
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(se)?;
            {
                let mut tables = OutboxTables {
                    outbox: txn.open_table(OUTBOX).map_err(se)?,
                    pending: txn.open_table(OUTBOX_PENDING).map_err(se)?,
                    progress: txn.open_table(OUTBOX_PROGRESS).map_err(se)?,
                };
                tables.put(&delivery)?;
            }
            txn.commit().map_err(se)
        })
        .await?;
        if pending {
            wake.notify_one();
        }
        Ok(())
    }

    async fn deliveries(&self, job: JobId) -> Result<Vec<Delivery>, StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(se)?;
            let outbox = txn.open_table(OUTBOX).map_err(se)?;
            let from = event_key(job, Seq::ZERO);
            let to = event_key(job, Seq(u64::MAX));
            let mut out = Vec::new();
            for item in outbox.range(from.as_slice()..=to.as_slice()).map_err(se)? {
                let (_, v) = item.map_err(se)?;
                out.push(decode(v.value())?);
            }
            Ok(out)
        })
        .await
    }

    async fn owned_by(&self, owner: OwnerId, limit: usize) -> Result<Vec<JobRecord>, StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(se)?;
            let jobs = txn.open_table(JOBS).map_err(se)?;
            let mut out = Vec::new();
            for item in jobs.iter().map_err(se)? {
                let (_, v) = item.map_err(se)?;
                let record: JobRecord = decode(v.value())?;
                if record.owner == owner {
                    out.push(record);
                }
            }
            out.sort_by_key(|r| std::cmp::Reverse(r.ticket));
            out.truncate(limit);
            Ok(out)
        })
        .await
    }
}
