//! Upload records in their own redb file (`uploads.redb`): one row per upload plus a digest
//! index for dedup. Every call is blocking (run it in `spawn_blocking`) and every write is a
//! durable (fsynced) redb commit, so an offset stored here survives `kill -9`.
//!
//! A separate file rather than tables in the job database: uploads commit far more often
//! (every chunk) than jobs, and the two never need to commit together.

use std::path::Path;

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

/// The redb file holding upload records.
#[derive(Debug)]
pub struct RecordStore {
    db: Database,
}

impl RecordStore {
    /// Opens or creates the database.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(se)?;
        let txn = db.begin_write().map_err(se)?;
        {
            txn.open_table(UPLOADS).map_err(se)?;
            txn.open_table(DIGESTS).map_err(se)?;
        }
        txn.commit().map_err(se)?;
        Ok(Self { db })
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

    /// Writes a record durably; a complete, verified, non-partial upload also enters the
    /// digest index.
    pub fn put(&self, record: &UploadRecord) -> Result<(), StoreError> {
        let bytes = rmp_serde::to_vec_named(record).map_err(se)?;
        let txn = self.db.begin_write().map_err(se)?;
        {
            let mut table = txn.open_table(UPLOADS).map_err(se)?;
            table
                .insert(record.id.as_bytes().as_slice(), bytes.as_slice())
                .map_err(se)?;
            if let (UploadState::Complete, Some(sha), false) =
                (record.state, &record.sha256, record.partial)
            {
                let mut digests = txn.open_table(DIGESTS).map_err(se)?;
                let key = digest_key(&record.owner, sha);
                digests
                    .insert(key.as_slice(), record.id.as_bytes().as_slice())
                    .map_err(se)?;
            }
        }
        txn.commit().map_err(se)
    }

    /// Removes a record and its digest entry.
    pub fn remove(&self, record: &UploadRecord) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(se)?;
        {
            let mut table = txn.open_table(UPLOADS).map_err(se)?;
            table.remove(record.id.as_bytes().as_slice()).map_err(se)?;
            if let Some(sha) = &record.sha256 {
                let mut digests = txn.open_table(DIGESTS).map_err(se)?;
                let key = digest_key(&record.owner, sha);
                let points_here = digests
                    .get(key.as_slice())
                    .map_err(se)?
                    .is_some_and(|v| v.value() == record.id.as_bytes().as_slice());
                if points_here {
                    digests.remove(key.as_slice()).map_err(se)?;
                }
            }
        }
        txn.commit().map_err(se)
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
