//! Upload records in their own redb file (`uploads.redb`): one row per upload plus a digest
//! index for dedup. Reads are blocking (run them in `spawn_blocking`); every write is awaited
//! until its redb commit is durable (fsynced), so an offset stored here survives `kill -9`.
//! Writes of many uploads are group-committed (see [`RecordStore`]).
//!
//! A separate file rather than tables in the job database: uploads commit far more often
//! (every chunk) than jobs, and the two never need to commit together.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};

use outlast_protocol::upload::UploadState;
use outlast_protocol::{OwnerId, UploadId};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};

/// upload id (16 bytes) -> UploadRecord (MessagePack).
const UPLOADS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("uploads");
/// owner + 0x00 + sha256 hex -> upload id (16 bytes) of a complete upload with that content.
const DIGESTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("digests");

/// Everything the gateway keeps about one upload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadRecord {
    /// The upload.
    pub id: UploadId,
    /// Who may see it.
    pub owner: OwnerId,
    /// Total size, when known.
    pub length: Option<u64>,
    /// Durable offset: `[0, offset)` of the data file is fsynced.
    pub offset: u64,
    /// `Upload-Metadata` in header form (empty when none).
    pub metadata: String,
    /// The uploader's file name (metadata `filename` or `name`).
    pub filename: Option<String>,
    /// The sha256 (hex) the client declared for the whole file.
    pub declared_sha256: Option<String>,
    /// The sha256 (hex) computed while the bytes arrived, once complete.
    pub sha256: Option<String>,
    /// A part of a later concatenation (`Upload-Concat: partial`).
    pub partial: bool,
    /// The parts of a final (concatenated) upload.
    pub final_of: Option<Vec<UploadId>>,
    /// Where it stands.
    pub state: UploadState,
    /// Why it failed.
    pub error: Option<String>,
    /// Creation time (ms since the epoch).
    pub created_ms: u64,
    /// Last write or use (ms since the epoch); expiry counts from here.
    pub touched_ms: u64,
    /// Bytes written to the data file over the upload's life.
    pub bytes_written: u64,
}

/// A storage failure (disk, database).
#[derive(Debug, thiserror::Error)]
#[error("upload store: {0}")]
pub struct StoreError(String);

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError(e.to_string())
    }
}

fn se(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

fn digest_key(owner: &OwnerId, sha256_hex: &str) -> Vec<u8> {
    let mut k = owner.as_str().as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(sha256_hex.as_bytes());
    k
}

/// Most record writes one transaction takes; more wait for the next one.
const MAX_GROUP_WRITES: usize = 512;

/// A write of one record, as the committing thread applies it.
enum Write {
    /// Insert or replace (MessagePack bytes encoded by the caller), and enter the digest index.
    Put {
        id: UploadId,
        bytes: Vec<u8>,
        digest: Option<Vec<u8>>,
    },
    /// Remove the record and its digest entry when the entry points at it.
    Remove {
        id: UploadId,
        digest: Option<Vec<u8>>,
    },
}

struct Request {
    write: Write,
    reply: tokio::sync::oneshot::Sender<Result<(), StoreError>>,
}

/// The redb file holding upload records. Reads are blocking calls (run them in
/// `spawn_blocking`); writes go to one committing thread, and the writes of many uploads that
/// arrive while a commit is being made durable share the next transaction (group commit: one
/// fsync for many offsets). An idle store adds no wait: a lone write commits at once.
#[derive(Debug)]
pub struct RecordStore {
    db: Arc<Database>,
    tx: Option<mpsc::Sender<Request>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// Held by the committing thread for each transaction (tests hold it to make writes queue).
    #[cfg_attr(not(test), allow(dead_code))]
    gate: Arc<Mutex<()>>,
    /// Transactions committed so far.
    commits: Arc<AtomicU64>,
}

impl RecordStore {
    /// Opens or creates the database and starts its committing thread.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(se)?;
        let txn = db.begin_write().map_err(se)?;
        {
            txn.open_table(UPLOADS).map_err(se)?;
            txn.open_table(DIGESTS).map_err(se)?;
        }
        txn.commit().map_err(se)?;
        let db = Arc::new(db);
        let (tx, rx) = mpsc::channel();
        let gate = Arc::new(Mutex::new(()));
        let commits = Arc::new(AtomicU64::new(0));
        let thread = {
            let (db, gate, commits) = (Arc::clone(&db), Arc::clone(&gate), Arc::clone(&commits));
            std::thread::Builder::new()
                .name("outlast-upload-commit".into())
                .spawn(move || run(&db, &rx, &gate, &commits))?
        };
        Ok(Self {
            db,
            tx: Some(tx),
            thread: Some(thread),
            gate,
            commits,
        })
    }

    /// One record.
    pub fn get(&self, id: UploadId) -> Result<Option<UploadRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(se)?;
        let table = txn.open_table(UPLOADS).map_err(se)?;
        match table.get(id.as_bytes().as_slice()).map_err(se)? {
            Some(v) => rmp_serde::from_slice(v.value()).map(Some).map_err(se),
            None => Ok(None),
        }
    }

    /// Every record (start-up and garbage collection).
    pub fn all(&self) -> Result<Vec<UploadRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(se)?;
        let table = txn.open_table(UPLOADS).map_err(se)?;
        let mut out = Vec::new();
        for item in table.iter().map_err(se)? {
            let (_, v) = item.map_err(se)?;
            out.push(rmp_serde::from_slice(v.value()).map_err(se)?);
        }
        Ok(out)
    }

    /// Writes a record; durable (fsynced) when it returns. A complete, verified, non-partial
    /// upload also enters the digest index.
    pub async fn put(&self, record: &UploadRecord) -> Result<(), StoreError> {
        let bytes = rmp_serde::to_vec_named(record).map_err(se)?;
        let digest = match (record.state, &record.sha256, record.partial) {
            (UploadState::Complete, Some(sha), false) => Some(digest_key(&record.owner, sha)),
            _ => None,
        };
        self.write(Write::Put {
            id: record.id,
            bytes,
            digest,
        })
        .await
    }

    /// Removes a record and its digest entry; durable when it returns.
    pub async fn remove(&self, record: &UploadRecord) -> Result<(), StoreError> {
        let digest = record
            .sha256
            .as_ref()
            .map(|sha| digest_key(&record.owner, sha));
        self.write(Write::Remove {
            id: record.id,
            digest,
        })
        .await
    }

    async fn write(&self, write: Write) -> Result<(), StoreError> {
        let stopped = || StoreError("the upload committer stopped".into());
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.tx
            .as_ref()
            .ok_or_else(stopped)?
            .send(Request { write, reply })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Transactions committed so far.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// The complete upload of `owner` with this content, if any.
    pub fn find_digest(
        &self,
        owner: &OwnerId,
        sha256_hex: &str,
    ) -> Result<Option<UploadId>, StoreError> {
        let txn = self.db.begin_read().map_err(se)?;
        let table = txn.open_table(DIGESTS).map_err(se)?;
        let key = digest_key(owner, sha256_hex);
        Ok(table.get(key.as_slice()).map_err(se)?.and_then(|v| {
            <[u8; 16]>::try_from(v.value())
                .ok()
                .map(UploadId::from_bytes)
        }))
    }
}

impl Drop for RecordStore {
    /// Lets the committing thread finish the writes already sent and waits for it, so the
    /// database file is closed when the store is.
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(db: &Database, rx: &mpsc::Receiver<Request>, gate: &Mutex<()>, commits: &AtomicU64) {
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP_WRITES {
            let Ok(next) = rx.try_recv() else { break };
            group.push(next);
        }
        let result = {
            let _held = gate.lock().unwrap_or_else(PoisonError::into_inner);
            apply(db, group.iter().map(|r| &r.write))
        };
        match result {
            Ok(()) => {
                commits.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(crate::metrics::UPLOAD_RECORD_COMMITS).increment(1);
                for request in group {
                    let _ = request.reply.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, writes = group.len(), "could not store upload records");
                for request in group {
                    let _ = request.reply.send(Err(StoreError(e.0.clone())));
                }
            }
        }
    }
}

/// One transaction for every write of a group, in order (a later write of the same record
/// wins, as it would in its own transaction).
fn apply<'a>(db: &Database, writes: impl Iterator<Item = &'a Write>) -> Result<(), StoreError> {
    let txn = db.begin_write().map_err(se)?;
    {
        let mut table = txn.open_table(UPLOADS).map_err(se)?;
        let mut digests = txn.open_table(DIGESTS).map_err(se)?;
        for write in writes {
            match write {
                Write::Put { id, bytes, digest } => {
                    table
                        .insert(id.as_bytes().as_slice(), bytes.as_slice())
                        .map_err(se)?;
                    if let Some(key) = digest {
                        digests
                            .insert(key.as_slice(), id.as_bytes().as_slice())
                            .map_err(se)?;
                    }
                }
                Write::Remove { id, digest } => {
                    table.remove(id.as_bytes().as_slice()).map_err(se)?;
                    if let Some(key) = digest {
                        let points_here = digests
                            .get(key.as_slice())
                            .map_err(se)?
                            .is_some_and(|v| v.value() == id.as_bytes().as_slice());
                        if points_here {
                            digests.remove(key.as_slice()).map_err(se)?;
                        }
                    }
                }
            }
        }
    }
    txn.commit().map_err(se)
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;

    use super::*;

    fn record(i: u64) -> UploadRecord {
        UploadRecord {
            id: UploadId::random(),
            owner: OwnerId::local(),
            length: Some(1000),
            offset: i,
            metadata: String::new(),
            filename: None,
            declared_sha256: None,
            sha256: None,
            partial: false,
            final_of: None,
            state: UploadState::Open,
            error: None,
            created_ms: 1,
            touched_ms: 1,
            bytes_written: i,
        }
    }

    type Pending<'a> = Pin<Box<dyn Future<Output = Result<(), StoreError>> + 'a>>;

    /// Writes that wait while a commit is in flight share one transaction; within the group
    /// they apply in the order sent (a record put then removed is gone, a record put twice
    /// holds the later copy), and each is durable once answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_waiting_behind_a_commit_share_one_transaction_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("uploads.redb");
        let store = RecordStore::open(&path).expect("open");
        let records: Vec<UploadRecord> = (0..32).map(record).collect();
        let mut moved = records[1].clone();
        moved.offset = 999;
        let mut complete = records[2].clone();
        complete.offset = 1000;
        complete.state = UploadState::Complete;
        complete.sha256 = Some("ab".repeat(32));
        let before = store.commits();
        // A commit "in flight": the committing thread waits at the gate for its transaction
        // while every write below is sent behind it.
        let held = store.gate.lock().unwrap_or_else(PoisonError::into_inner);
        let mut pending: Vec<Pending<'_>> = records
            .iter()
            .map(|r| Box::pin(store.put(r)) as Pending<'_>)
            .collect();
        pending.push(Box::pin(store.remove(&records[0])));
        pending.push(Box::pin(store.put(&moved)));
        pending.push(Box::pin(store.put(&complete)));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        for write in &mut pending {
            assert!(
                write.as_mut().poll(&mut cx).is_pending(),
                "nothing may commit yet"
            );
        }
        drop(held);
        for write in pending {
            write.await.expect("stored");
        }
        let commits = store.commits() - before;
        assert!(
            commits <= 2,
            "35 waiting writes took {commits} transactions, not one or two"
        );
        drop(store);
        // Durable: a new handle on the file reads what every answer promised.
        let store = RecordStore::open(&path).expect("reopen");
        assert_eq!(store.get(records[0].id).expect("read"), None);
        assert_eq!(store.get(moved.id).expect("read"), Some(moved));
        assert_eq!(
            store.get(complete.id).expect("read"),
            Some(complete.clone())
        );
        for r in &records[3..] {
            assert_eq!(store.get(r.id).expect("read").as_ref(), Some(r));
        }
        assert_eq!(
            store
                .find_digest(&OwnerId::local(), complete.sha256.as_deref().expect("sha"))
                .expect("read"),
            Some(complete.id)
        );
    }

    /// An idle store commits a lone write at once: one transaction per write when writes come
    /// one after another.
    #[tokio::test]
    async fn a_lone_write_commits_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = RecordStore::open(&dir.path().join("uploads.redb")).expect("open");
        let before = store.commits();
        let mut r = record(0);
        for offset in [10, 20, 30] {
            r.offset = offset;
            store.put(&r).await.expect("stored");
            assert_eq!(
                store.get(r.id).expect("read").map(|r| r.offset),
                Some(offset)
            );
        }
        assert_eq!(store.commits() - before, 3);
    }
}
