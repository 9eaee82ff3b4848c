//! The embedded store's tables and the row helpers both the store and its committing thread use.

use outlast_protocol::{JobEvent, JobId, OwnerId, Seq};
use redb::{ReadableTable, Table, TableDefinition};

use crate::store::outbox::{self, Delivery, DeliveryStatus};
use crate::store::{JobRecord, PageLimit, StoreError};

/// job id (16 bytes) -> JobRecord (MessagePack).
pub(super) const JOBS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("jobs");
/// job id (16 bytes) + seq (8 bytes, big-endian) -> JobEvent (MessagePack).
pub(super) const EVENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("events");
/// owner + 0x00 + idempotency key -> job id (16 bytes).
pub(super) const IDEMPOTENCY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("idempotency");
/// job id (16 bytes) -> backend state (JSON) of a running job.
pub(super) const BACKEND_STATE: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("backend_state");
/// result cache key (32 bytes) -> job id (16 bytes) + completed_at_ms (8 bytes, big-endian).
pub(super) const RESULT_CACHE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("result_cache");
/// job id + seq (24 bytes) -> webhook Delivery (MessagePack): the outbox.
pub(super) const OUTBOX: TableDefinition<&[u8], &[u8]> = TableDefinition::new("webhook_outbox");
/// job id + seq (24 bytes) -> next attempt (ms): the pending part of the outbox.
pub(super) const OUTBOX_PENDING: TableDefinition<&[u8], u64> =
    TableDefinition::new("webhook_pending");
/// job id (16 bytes) -> event time (ms) of its last progress delivery, for coalescing.
pub(super) const OUTBOX_PROGRESS: TableDefinition<&[u8], u64> =
    TableDefinition::new("webhook_progress");
/// counters.
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

pub(super) fn event_key(job: JobId, seq: Seq) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..16].copy_from_slice(job.as_bytes());
    key[16..].copy_from_slice(&seq.0.to_be_bytes());
    key
}

pub(super) fn idem_key(owner: &OwnerId, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(owner.as_str().len() + 1 + key.len());
    k.extend_from_slice(owner.as_str().as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

pub(super) fn se(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

pub(super) fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    rmp_serde::to_vec_named(v).map_err(se)
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, StoreError> {
    rmp_serde::from_slice(bytes).map_err(se)
}

pub(super) fn load_record(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    job: JobId,
) -> Result<Option<JobRecord>, StoreError> {
    match table.get(job.as_bytes().as_slice()).map_err(se)? {
        Some(v) => decode(v.value()).map(Some),
        None => Ok(None),
    }
}

pub(super) fn events_after(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    job: JobId,
    after: Seq,
) -> Result<Vec<JobEvent>, StoreError> {
    let unbounded = PageLimit {
        events: usize::MAX,
        bytes: usize::MAX,
    };
    Ok(events_page(table, job, after, unbounded)?.0)
}

/// The first events after `after` within `limit`, and whether more are stored. The key range
/// is walked lazily, so only the page (and one more key, to answer `more`) is read.
pub(super) fn events_page(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    job: JobId,
    after: Seq,
    limit: PageLimit,
) -> Result<(Vec<JobEvent>, bool), StoreError> {
    let from = event_key(job, after.next());
    let to = event_key(job, Seq(u64::MAX));
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for item in table.range(from.as_slice()..=to.as_slice()).map_err(se)? {
        if out.len() >= limit.events.max(1) || (!out.is_empty() && bytes >= limit.bytes) {
            return Ok((out, true));
        }
        let (_, v) = item.map_err(se)?;
        let value = v.value();
        bytes = bytes.saturating_add(value.len());
        out.push(decode(value)?);
    }
    Ok((out, false))
}

/// The outbox's tables inside one write transaction.
pub(super) struct OutboxTables<'t> {
    pub(super) outbox: Table<'t, &'static [u8], &'static [u8]>,
    pub(super) pending: Table<'t, &'static [u8], u64>,
    pub(super) progress: Table<'t, &'static [u8], u64>,
}

impl OutboxTables<'_> {
    /// Adds the delivery `event` calls for, if any; true when one was added.
    pub(super) fn enqueue(
        &mut self,
        record: &JobRecord,
        event: &JobEvent,
    ) -> Result<bool, StoreError> {
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

    pub(super) fn put(&mut self, delivery: &Delivery) -> Result<(), StoreError> {
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
