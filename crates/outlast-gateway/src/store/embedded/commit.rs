//! Group commit for event appends: one thread writes every event batch, and the batches that
//! arrive while a transaction is being made durable go into the next transaction together, so
//! many jobs share one fsync. An idle store adds no wait: the thread starts a transaction as soon
//! as the first batch arrives.
//!
//! The store's invariants hold per event exactly as with one transaction per batch: a job's seq
//! is assigned inside the transaction that stores the event (a later batch of the same group
//! reads the earlier one's writes), nothing is published before its commit, and events are
//! published in commit order while the write-order lock is held.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};

use outlast_protocol::replay::coalesce;
use outlast_protocol::{EventKind, JobEvent, JobId, Seq};
use redb::Database;
use tokio::sync::{Notify, oneshot};

use super::tables::{EVENTS, JOBS, OUTBOX, OUTBOX_PENDING, OUTBOX_PROGRESS, OutboxTables};
use super::tables::{encode, event_key, events_after, load_record, se};
use crate::clock::now_ms;
use crate::hub::Hub;
use crate::store::{Rejected, StoreError};

/// Most events one transaction takes; more wait for the next one (bounds one commit's latency).
const MAX_GROUP_EVENTS: usize = 4096;

/// What one `append` call gets back.
pub(super) type Appended = Result<Vec<Result<JobEvent, Rejected>>, StoreError>;

struct Request {
    batch: Vec<(JobId, EventKind)>,
    reply: oneshot::Sender<Appended>,
}

/// Everything the committing thread needs.
pub(super) struct Shared {
    pub db: Arc<Database>,
    pub hub: Arc<Hub>,
    pub write_order: Arc<Mutex<()>>,
    pub history_max_events: u64,
    pub outbox_wake: Arc<Notify>,
}

/// The handle to the committing thread; dropping it lets the thread finish the waiting batches
/// and waits for it (so the database file is closed when the store is).
pub(super) struct Committer {
    tx: Option<mpsc::Sender<Request>>,
    thread: Option<std::thread::JoinHandle<()>>,
    counters: Arc<Counters>,
}

/// What the committing thread counted (per store; the metrics count the same per process).
#[derive(Default)]
struct Counters {
    /// Transactions committed.
    commits: AtomicU64,
    /// Stored events read back by coalescing passes over long histories.
    history_reads: AtomicU64,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer").finish_non_exhaustive()
    }
}

impl Committer {
    /// Starts the committing thread.
    pub(super) fn start(shared: Shared) -> Result<Self, StoreError> {
        let (tx, rx) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let counted = Arc::clone(&counters);
        let thread = std::thread::Builder::new()
            .name("outlast-commit".into())
            .spawn(move || run(&shared, &rx, &counted))
            .map_err(se)?;
        Ok(Committer {
            tx: Some(tx),
            thread: Some(thread),
            counters,
        })
    }

    /// Stores `batch` in the next group; answers once it is durable and published.
    pub(super) async fn append(&self, batch: Vec<(JobId, EventKind)>) -> Appended {
        let (reply, answer) = oneshot::channel();
        self.tx
            .as_ref()
            .ok_or_else(|| StoreError("the event store is closed".into()))?
            .send(Request { batch, reply })
            .map_err(|_| StoreError("the event committer stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError("the event committer stopped".into()))?
    }
}

impl Committer {
    /// Transactions committed so far.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(super) fn commits(&self) -> u64 {
        self.counters.commits.load(Ordering::Relaxed)
    }

    /// Stored events read back by coalescing passes so far.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(super) fn history_reads(&self) -> u64 {
        self.counters.history_reads.load(Ordering::Relaxed)
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(shared: &Shared, rx: &mpsc::Receiver<Request>, counters: &Counters) {
    while let Ok(first) = rx.recv() {
        let mut events = first.batch.len();
        let mut group = vec![first];
        while events < MAX_GROUP_EVENTS {
            let Ok(next) = rx.try_recv() else { break };
            events += next.batch.len();
            group.push(next);
        }
        let batches = group
            .iter_mut()
            .map(|r| std::mem::take(&mut r.batch))
            .collect();
        match commit(shared, batches, &counters.history_reads) {
            Ok(answers) => {
                counters.commits.fetch_add(1, Ordering::Relaxed);
                for (request, answer) in group.into_iter().zip(answers) {
                    let _ = request.reply.send(Ok(answer));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, batches = group.len(), "could not store events");
                for request in group {
                    let _ = request.reply.send(Err(StoreError(e.0.clone())));
                }
            }
        }
    }
}

/// One transaction for all `batches`; each batch's answers in its order.
fn commit(
    shared: &Shared,
    batches: Vec<Vec<(JobId, EventKind)>>,
    history_reads: &AtomicU64,
) -> Result<Vec<Vec<Result<JobEvent, Rejected>>>, StoreError> {
    let _order = shared
        .write_order
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    let txn = shared.db.begin_write().map_err(se)?;
    let mut answers = Vec::with_capacity(batches.len());
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
        for batch in batches {
            let mut results = Vec::with_capacity(batch.len());
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
                if coalescing_due(&record, shared.history_max_events) {
                    let stored = events_after(&events, job_id, Seq::ZERO)?;
                    history_reads.fetch_add(stored.len() as u64, Ordering::Relaxed);
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
                    record.kept_after_coalescing = record.stored_events;
                }
                jobs.insert(job_id.as_bytes().as_slice(), encode(&record)?.as_slice())
                    .map_err(se)?;
                results.push(Ok(event));
            }
            answers.push(results);
        }
    }
    txn.commit().map_err(se)?;
    metrics::counter!(crate::metrics::STORE_EVENT_COMMITS).increment(1);
    // Durable now: publish in commit order while still holding the order lock.
    for event in answers.iter().flatten().flatten() {
        crate::metrics::record_stored(&event.kind);
        shared.hub.publish(event.clone());
    }
    if queued_webhooks {
        shared.outbox_wake.notify_one();
    }
    Ok(answers)
}

/// Whether an append that took a job's history to `record.stored_events` runs a coalescing pass
/// (one read of the whole stored history): once the history is past its bound and has grown
/// since the last pass by half the bound or by half of what that pass kept, whichever is more.
/// A history of events that cannot be coalesced (outputs) so costs a bounded number of reads
/// per append (the passes' sizes grow geometrically) instead of a whole read on every append;
/// a history of progress is coalesced as soon as it passes the bound, as before.
fn coalescing_due(record: &crate::store::JobRecord, max: u64) -> bool {
    let kept = record.kept_after_coalescing;
    record.stored_events > max
        && record.stored_events >= kept.saturating_add((max / 2).max(kept / 2).max(1))
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::{Arc, PoisonError};

    use outlast_protocol::{EventKind, JobId, JobSpec, OwnerId, Seq};

    use super::super::EmbeddedStore;
    use crate::hub::{Hub, Pushed};
    use crate::store::{Created, JobStore, Rejected};

    fn progress(value: u64) -> EventKind {
        EventKind::Progress {
            value,
            max: 100,
            label: None,
        }
    }

    async fn new_job(store: &EmbeddedStore) -> JobId {
        let spec = JobSpec::new("demo", serde_json::json!({}));
        match store.create(OwnerId::local(), spec, [0; 32], 1).await {
            Ok(Created::New(record)) => record.snapshot.job_id,
            other => panic!("create: {other:?}"),
        }
    }

    type Pending<'a> = Pin<Box<dyn Future<Output = super::Appended> + 'a>>;

    /// Appends that wait while a commit is in flight share one transaction, and each job's
    /// events still get consecutive sequence numbers in submission order, also when one job has
    /// several batches in the same group.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_appends_share_one_commit_and_keep_each_jobs_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hub = Arc::new(Hub::new());
        let store = EmbeddedStore::open(&dir.path().join("jobs.redb"), Arc::clone(&hub), 10_000)
            .expect("open");
        let mut jobs = Vec::new();
        for _ in 0..16 {
            jobs.push(new_job(&store).await);
        }
        let mut live = hub.subscribe(jobs[0]);
        let before = store.committer.commits();
        // A commit "in flight": the committing thread waits for the order lock while every
        // append below is queued behind it.
        let held = store
            .write_order
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut pending: Vec<Pending<'_>> = Vec::new();
        for round in 0..2u64 {
            for &job in &jobs {
                pending.push(Box::pin(store.append(vec![
                    (job, progress(round * 2 + 1)),
                    (job, progress(round * 2 + 2)),
                ])));
            }
        }
        // An unknown job in the same group is refused alone.
        pending.push(Box::pin(store.append(vec![(JobId::random(), progress(9))])));
        // Polled once each without an await while the lock is held: every request is sent.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        for append in &mut pending {
            assert!(
                append.as_mut().poll(&mut cx).is_pending(),
                "nothing may commit yet"
            );
        }
        drop(held);
        let mut answers = Vec::new();
        for append in pending {
            answers.push(append.await.expect("append"));
        }
        let commits = store.committer.commits() - before;
        assert!(
            commits <= 2,
            "33 waiting batches took {commits} transactions, not one or two"
        );
        for (i, answer) in answers.iter().take(32).enumerate() {
            let round = (i / 16) as u64;
            let seqs: Vec<Seq> = answer
                .iter()
                .map(|r| r.as_ref().expect("stored").seq)
                .collect();
            assert_eq!(
                seqs,
                vec![Seq(round * 2 + 1), Seq(round * 2 + 2)],
                "batch {i}"
            );
        }
        assert!(matches!(answers[32][..], [Err(Rejected::UnknownJob)]));
        // Published after the commit, in commit order.
        for expected in 1..=4u64 {
            match live.recv().await.expect("open").expect("not lagged") {
                Pushed::Event(published) => assert_eq!(published.event.seq, Seq(expected)),
                Pushed::Place(_) => panic!("no queue place was published"),
            }
        }
        let start = store
            .stream_start(jobs[5], Seq::ZERO, crate::store::PageLimit::REPLAY)
            .await
            .expect("read")
            .expect("job");
        assert_eq!(start.events.len(), 4);
        assert_eq!(start.record.snapshot.seq, Seq(4));
    }

    /// An idle store commits a lone append at once (no waiting for a group to fill): one
    /// transaction per append when appends come one after another.
    #[tokio::test]
    async fn a_lone_append_commits_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store =
            EmbeddedStore::open(&dir.path().join("jobs.redb"), Arc::new(Hub::new()), 10_000)
                .expect("open");
        let job = new_job(&store).await;
        let before = store.committer.commits();
        for value in 1..=3 {
            let answer = store
                .append(vec![(job, progress(value))])
                .await
                .expect("append");
            assert_eq!(answer[0].as_ref().expect("stored").seq, Seq(value));
        }
        assert_eq!(store.committer.commits() - before, 3);
    }

    /// A history past its bound that cannot be coalesced (outputs) is not read whole on every
    /// append: the passes read a bounded number of events per append. Progress is still
    /// coalesced once it passes the bound, and every output stays stored.
    #[tokio::test]
    async fn a_history_of_outputs_past_its_bound_is_not_read_on_every_append() {
        const MAX: u64 = 16;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(&dir.path().join("jobs.redb"), Arc::new(Hub::new()), MAX)
            .expect("open");
        let job = new_job(&store).await;
        let output = |i: u64| {
            EventKind::Output(outlast_protocol::OutputInfo {
                name: format!("out-{i}.png"),
                mime: "image/png".into(),
                size: 1,
                sha256: "00".repeat(32),
            })
        };
        let appends = 400u64;
        for i in 0..appends {
            let kind = if i % 4 == 0 { progress(i) } else { output(i) };
            store.append(vec![(job, kind)]).await.expect("append");
        }
        let reads = store.committer.history_reads();
        // Reading the whole history on every append past the bound would read ~300 * 200.
        assert!(
            reads <= 8 * appends,
            "coalescing read {reads} stored events for {appends} appends"
        );
        let record = store.get(job).await.expect("read").expect("job");
        let outputs = appends - appends / 4;
        assert!(
            record.stored_events >= outputs && record.stored_events <= outputs * 3 / 2 + MAX,
            "{} events stored: every output, and progress up to half of them",
            record.stored_events
        );
        assert!(
            record.complete_after > Seq::ZERO,
            "old progress was coalesced"
        );
    }
}
