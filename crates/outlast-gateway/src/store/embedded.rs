//! The default store: one redb database file, every commit fsynced before it is acknowledged.

mod commit;
mod tables;

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use outlast_protocol::{EventKind, JobEvent, JobId, JobSnapshot, JobSpec, OwnerId, Seq};
use redb::{Database, ReadableDatabase, ReadableTable};
use tokio::sync::Notify;

use super::outbox::{Delivery, DeliveryStatus};
use super::{
    CacheEntry, CacheKey, Created, JobRecord, JobStore, PageLimit, Rejected, StoreError,
    StreamStart,
};
use crate::hub::Hub;
use tables::{
    BACKEND_STATE, EVENTS, IDEMPOTENCY, JOBS, META, OUTBOX, OUTBOX_PENDING, OUTBOX_PROGRESS,
    OutboxTables, RESULT_CACHE, decode, encode, event_key, events_page, idem_key, load_record, se,
};

/// redb-backed [`JobStore`].
#[derive(Debug)]
pub struct EmbeddedStore {
    db: Arc<Database>,
    /// Held across commit + publish so subscribers see events in commit order. A std Mutex:
    /// it is only taken inside `spawn_blocking`, never across an await.
    write_order: Arc<Mutex<()>>,
    outbox_wake: Arc<Notify>,
    /// The one thread that commits event appends, many batches per transaction.
    committer: commit::Committer,
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
        let db = Arc::new(db);
        let write_order = Arc::new(Mutex::new(()));
        let outbox_wake = Arc::new(Notify::new());
        let committer = commit::Committer::start(commit::Shared {
            db: Arc::clone(&db),
            hub,
            write_order: Arc::clone(&write_order),
            history_max_events,
            outbox_wake: Arc::clone(&outbox_wake),
        })?;
        Ok(Self {
            db,
            write_order,
            outbox_wake,
            committer,
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
                    kept_after_coalescing: 0,
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
        self.committer.append(batch).await
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
        limit: PageLimit,
    ) -> Result<Option<StreamStart>, StoreError> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(se)?;
            let jobs = txn.open_table(JOBS).map_err(se)?;
            let Some(record) = load_record(&jobs, job)? else {
                return Ok(None);
            };
            let events = txn.open_table(EVENTS).map_err(se)?;
            let (events, more) = events_page(&events, job, after, limit)?;
            Ok(Some(StreamStart {
                record,
                events,
                more,
            }))
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

    async fn save_delivery(&self, mut delivery: Delivery) -> Result<bool, StoreError> {
        let wake = Arc::clone(&self.outbox_wake);
        let pending = delivery.status == DeliveryStatus::Pending;
        let saved = self
            .blocking(move |db| {
                let txn = db.begin_write().map_err(se)?;
                let current = {
                    let mut tables = OutboxTables {
                        outbox: txn.open_table(OUTBOX).map_err(se)?,
                        pending: txn.open_table(OUTBOX_PENDING).map_err(se)?,
                        progress: txn.open_table(OUTBOX_PROGRESS).map_err(se)?,
                    };
                    let key = event_key(delivery.job, delivery.source.seq);
                    let stored = match tables.outbox.get(key.as_slice()).map_err(se)? {
                        Some(v) => decode::<Delivery>(v.value())?.version,
                        None => 0,
                    };
                    let current = stored == delivery.version;
                    if current {
                        delivery.version = stored + 1;
                        tables.put(&delivery)?;
                    }
                    current
                };
                if !current {
                    txn.abort().map_err(se)?;
                    return Ok(false);
                }
                txn.commit().map_err(se)?;
                Ok(true)
            })
            .await?;
        if saved && pending {
            wake.notify_one();
        }
        Ok(saved)
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A store with one job of `n` progress events whose labels are `label` bytes long.
    async fn store_with(n: u64, label: usize) -> (tempfile::TempDir, EmbeddedStore, JobId) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(&dir.path().join("t.redb"), Arc::new(Hub::new()), 1 << 20)
            .expect("open");
        let owner: OwnerId = "alice".parse().expect("owner");
        let spec = JobSpec::new("demo", serde_json::json!({}));
        let Created::New(record) = store.create(owner, spec, [0; 32], 0).await.expect("create")
        else {
            panic!("a new job");
        };
        let job = record.snapshot.job_id;
        let batch = (1..=n)
            .map(|value| {
                let label = Some("x".repeat(label));
                (
                    job,
                    EventKind::Progress {
                        value,
                        max: n,
                        label,
                    },
                )
            })
            .collect();
        store.append(batch).await.expect("append");
        (dir, store, job)
    }

    /// (events stored, label bytes, after, limit, first and last seq of the page, more)
    type Case = (u64, usize, u64, PageLimit, (u64, u64), bool);

    #[tokio::test]
    async fn history_is_read_in_pages_bounded_by_events_and_bytes() {
        let events = |n| PageLimit {
            events: n,
            bytes: usize::MAX,
        };
        let bytes = |b| PageLimit {
            events: usize::MAX,
            bytes: b,
        };
        // (events stored, label bytes, after, limit, seqs of the page, more)
        let cases: &[Case] = &[
            (600, 0, 0, PageLimit::REPLAY, (1, 256), true),
            (600, 0, 256, PageLimit::REPLAY, (257, 512), true),
            (600, 0, 512, PageLimit::REPLAY, (513, 600), false),
            (600, 0, 600, PageLimit::REPLAY, (601, 600), false),
            (10, 0, 0, events(10), (1, 10), false),
            (10, 0, 0, events(9), (1, 9), true),
            (10, 0, 0, events(0), (1, 1), true),
            // 64 KiB events: a 256 KiB page ends once its bytes reach the limit.
            (10, 64 * 1024, 0, PageLimit::REPLAY, (1, 4), true),
            // One event larger than the byte limit is still a page of one.
            (3, 4096, 1, bytes(100), (2, 2), true),
            (3, 4096, 2, bytes(100), (3, 3), false),
        ];
        for &(n, label, after, limit, (first, last), more) in cases {
            let (_dir, store, job) = store_with(n, label).await;
            let page = store
                .stream_start(job, Seq(after), limit)
                .await
                .expect("read")
                .expect("the job");
            let seqs: Vec<u64> = page.events.iter().map(|e| e.seq.0).collect();
            let case = format!("{n} events of {label} B after {after}, {limit:?}");
            assert_eq!(seqs, (first..=last).collect::<Vec<_>>(), "{case}");
            assert_eq!(page.more, more, "{case}: more");
            assert_eq!(page.record.snapshot.seq, Seq(n), "{case}: the record");
        }
    }
}
