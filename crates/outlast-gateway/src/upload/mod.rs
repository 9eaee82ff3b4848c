//! Resumable uploads: one store behind two transports (tus 1.0.0 over HTTP in [`tus`], chunk
//! frames over the WebSocket in [`ws`]).
//!
//! Invariants:
//! - The offset anyone is told (HEAD, 204, acks) is durable: data fsynced first, then the
//!   record committed to `uploads.redb`, then the answer.
//! - One writer per upload: a [`writer::Writer`] holds the upload's async mutex for as long as it
//!   writes. A second writer is refused (`upload_locked`) or waits briefly; bytes never
//!   interleave.
//! - The sha256 is computed as bytes arrive (no second read); only after a restart or a
//!   discarded chunk is `[0, offset)` read once to rebuild the hasher state.

pub mod data;
mod gc;
pub mod progress;
pub mod store;
pub mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use outlast_protocol::tus::Metadata;
use outlast_protocol::upload::{
    DATA_HEADER_LEN, MAX_METADATA_BYTES, UploadInfo, UploadLimits, UploadState,
};
use outlast_protocol::{ErrorCode, Offset, OwnerId, UploadId};

use crate::backend::{InputFile, InputResolver, Readiness};
use crate::clock::now_ms;
use crate::config::UploadConfig;
use crate::error::AppError;
use crate::metrics as m;
use data::DataFile;
use progress::ProgressHub;
use store::{RecordStore, StoreError, UploadRecord};

/// During one long PATCH, make what arrived durable after this many bytes, so a crash loses
/// little and HEAD moves while a slow chunk is still arriving.
pub use outlast_protocol::upload::CHECKPOINT_BYTES;
/// Unacknowledged bytes a WebSocket client may have in flight.
pub use outlast_protocol::upload::WINDOW_BYTES;
/// Largest WebSocket chunk: a whole frame is buffered in memory, so keep it modest. A chunk
/// frame is also a WebSocket message, so `max_message_bytes` bounds it too.
pub use outlast_protocol::upload::WS_MAX_CHUNK;

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        AppError::internal(e)
    }
}

fn io_err(e: std::io::Error) -> AppError {
    AppError::internal(format!("upload data file: {e}"))
}

/// A new upload.
#[derive(Debug, Clone, Default)]
pub struct NewUpload {
    /// Total size, when known.
    pub length: Option<u64>,
    /// Metadata.
    pub metadata: Metadata,
    /// sha256 the client declared for the whole file.
    pub declared_sha256: Option<[u8; 32]>,
    /// `Upload-Concat: partial`.
    pub partial: bool,
}

/// The upload service; one per gateway.
#[derive(Debug)]
pub struct Uploads {
    cfg: UploadConfig,
    /// Largest WebSocket message (`max_message_bytes`): chunk frames must fit.
    ws_message_max: u64,
    dir: PathBuf,
    store: Arc<RecordStore>,
    // std Mutexes: only short map operations happen under them, never an await.
    slots: Mutex<HashMap<UploadId, Arc<tokio::sync::Mutex<DataFile>>>>,
    open_counts: Mutex<HashMap<OwnerId, usize>>,
    /// Owner-level fan-out of progress to WebSocket connections.
    pub progress: ProgressHub,
    /// Woken when an upload completes, fails or goes away (jobs may wait for one).
    changes: std::sync::OnceLock<Arc<tokio::sync::Notify>>,
}

impl Uploads {
    /// Opens the store under `data_dir/uploads`. `ws_message_max` is the WebSocket message
    /// limit, which bounds chunk frames.
    pub fn open(
        cfg: UploadConfig,
        data_dir: &Path,
        ws_message_max: u64,
    ) -> anyhow::Result<Arc<Self>> {
        let dir = data_dir.join("uploads");
        std::fs::create_dir_all(&dir)?;
        let store = RecordStore::open(&data_dir.join("uploads.redb"))?;
        let mut counts: HashMap<OwnerId, usize> = HashMap::new();
        for r in store.all()? {
            if r.state == UploadState::Open {
                *counts.entry(r.owner).or_default() += 1;
            }
        }
        Ok(Arc::new(Self {
            cfg,
            ws_message_max,
            dir,
            store: Arc::new(store),
            slots: Mutex::new(HashMap::new()),
            open_counts: Mutex::new(counts),
            progress: ProgressHub::default(),
            changes: std::sync::OnceLock::new(),
        }))
    }

    /// The configuration.
    pub fn config(&self) -> &UploadConfig {
        &self.cfg
    }

    /// Chunk sizing for tus clients.
    pub fn limits(&self) -> UploadLimits {
        UploadLimits {
            max_chunk_bytes: self.cfg.max_chunk_bytes,
            target_chunk_ms: self.cfg.target_chunk.as_millis() as u64,
            window_bytes: WINDOW_BYTES,
        }
    }

    /// Chunk sizing for WebSocket clients.
    pub fn ws_limits(&self) -> UploadLimits {
        UploadLimits {
            max_chunk_bytes: self
                .cfg
                .max_chunk_bytes
                .min(WS_MAX_CHUNK)
                .min(self.ws_message_max.saturating_sub(DATA_HEADER_LEN as u64)),
            ..self.limits()
        }
    }

    pub(crate) fn path(&self, id: UploadId) -> PathBuf {
        self.dir.join(format!("{id}.bin"))
    }

    /// When the upload expires (ms since the epoch).
    pub fn expires_ms(&self, r: &UploadRecord) -> u64 {
        let keep = match r.state {
            UploadState::Open => self.cfg.expiry,
            UploadState::Complete | UploadState::Failed => self.cfg.retention,
        };
        r.touched_ms.saturating_add(keep.as_millis() as u64)
    }

    /// The wire description.
    pub fn info(&self, r: &UploadRecord) -> UploadInfo {
        UploadInfo {
            upload_id: r.id,
            offset: Offset(r.offset),
            length: r.length,
            state: r.state,
            sha256: r.sha256.clone(),
            bytes_written: r.bytes_written,
            expires_ms: self.expires_ms(r),
            error: r.error.clone(),
        }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&RecordStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, AppError> {
        let store = Arc::clone(&self.store);
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(AppError::internal)?
            .map_err(AppError::from)
    }

    /// The record of `id` if `owner` owns it: `not_found` for unknown and foreign ids,
    /// `upload_expired` for expired ones not yet collected.
    pub async fn owned(&self, owner: &OwnerId, id: UploadId) -> Result<UploadRecord, AppError> {
        let record = self.blocking(move |s| s.get(id)).await?;
        match record {
            Some(r) if &r.owner == owner => {
                if self.expires_ms(&r) < now_ms() {
                    Err(AppError::new(
                        ErrorCode::UploadExpired,
                        "the upload expired",
                    ))
                } else {
                    Ok(r)
                }
            }
            _ => Err(AppError::not_found("upload")),
        }
    }

    /// Refuses (507) when writing `need` more bytes would leave less than the reserve free.
    pub fn check_disk(&self, need: u64) -> Result<(), AppError> {
        // The field types differ between platforms, hence the casts.
        #[allow(clippy::unnecessary_cast)]
        let free = nix::sys::statvfs::statvfs(&self.dir)
            .map(|s| (s.blocks_available() as u64).saturating_mul(s.fragment_size() as u64));
        match free {
            Ok(free) if free < need.saturating_add(self.cfg.min_free_bytes) => {
                metrics::counter!(m::UPLOAD_DISK_REFUSALS).increment(1);
                Err(AppError::new(
                    ErrorCode::InsufficientStorage,
                    "not enough free disk space for this upload",
                ))
            }
            Ok(_) => Ok(()),
            Err(e) => Err(AppError::internal(format!("statvfs: {e}"))),
        }
    }

    pub(super) fn check_size(&self, length: u64) -> Result<(), AppError> {
        if length > self.cfg.max_size {
            return Err(AppError::new(
                ErrorCode::MessageTooLarge,
                format!("uploads are limited to {} bytes", self.cfg.max_size),
            ));
        }
        Ok(())
    }

    /// Refuses (429 `limit_exceeded`) an upload of `more` bytes that would take the owner's
    /// stored upload bytes past `max_bytes_per_owner`. A scan of the owner's records; open
    /// uploads count with their declared length (deferred ones with what they hold).
    async fn check_quota(&self, owner: &OwnerId, more: u64) -> Result<(), AppError> {
        let quota = self.cfg.max_bytes_per_owner;
        if quota == 0 {
            return Ok(());
        }
        let o = owner.clone();
        let held: u64 = self
            .blocking(move |s| {
                Ok(s.all()?
                    .iter()
                    .filter(|r| r.owner == o && r.state != UploadState::Failed)
                    .map(|r| r.length.unwrap_or(r.offset))
                    .fold(0u64, u64::saturating_add))
            })
            .await?;
        if held.saturating_add(more) > quota {
            return Err(AppError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "uploads of one owner may hold at most {quota} bytes ({held} held); \
                     delete some or let them expire"
                ),
            ));
        }
        Ok(())
    }

    fn reserve_open(&self, owner: &OwnerId) -> Result<(), AppError> {
        let mut counts = self
            .open_counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let n = counts.entry(owner.clone()).or_default();
        if *n >= self.cfg.max_open_per_owner {
            return Err(AppError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "at most {} incomplete uploads per owner; finish or delete one",
                    self.cfg.max_open_per_owner
                ),
            ));
        }
        *n += 1;
        Ok(())
    }

    fn release_open(&self, owner: &OwnerId) {
        let mut counts = self
            .open_counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = counts.get_mut(owner) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(owner);
            }
        }
    }

    /// Creates an upload, or returns the owner's identical complete upload (`true`) when the
    /// declared sha256 (and length, when given) match one: then nothing needs to be sent.
    pub async fn create(
        self: &Arc<Self>,
        owner: &OwnerId,
        new: NewUpload,
    ) -> Result<(UploadRecord, bool), AppError> {
        if let Some(len) = new.length {
            self.check_size(len)?;
        }
        let metadata_len = new.metadata.encode().len();
        if metadata_len > MAX_METADATA_BYTES {
            return Err(AppError::new(
                ErrorCode::MessageTooLarge,
                format!(
                    "upload metadata is limited to {MAX_METADATA_BYTES} bytes (tus encoding); \
                     this has {metadata_len}"
                ),
            ));
        }
        let declared = new.declared_sha256.map(|d| data::hex(&d));
        if let (Some(sha), false) = (&declared, new.partial) {
            let (o, sha) = (owner.clone(), sha.clone());
            let existing = self
                .blocking(move |s| {
                    Ok(match s.find_digest(&o, &sha)? {
                        Some(id) => s.get(id)?,
                        None => None,
                    })
                })
                .await?;
            if let Some(mut r) = existing
                && r.state == UploadState::Complete
                && &r.owner == owner
                && new.length.is_none_or(|l| r.length == Some(l))
            {
                r.touched_ms = now_ms();
                self.store.put(&r).await?;
                metrics::counter!(m::UPLOAD_DEDUP_HITS).increment(1);
                return Ok((r, true));
            }
        }
        if let Some(len) = new.length {
            self.check_disk(len)?;
        }
        self.check_quota(owner, new.length.unwrap_or(0)).await?;
        self.reserve_open(owner)?;
        let now = now_ms();
        let filename = new
            .metadata
            .text("filename")
            .or_else(|| new.metadata.text("name"))
            .map(|f| f.chars().take(255).collect());
        let record = UploadRecord {
            id: UploadId::random(),
            owner: owner.clone(),
            length: new.length,
            offset: 0,
            metadata: new.metadata.encode(),
            filename,
            declared_sha256: declared,
            sha256: None,
            partial: new.partial,
            final_of: None,
            state: UploadState::Open,
            error: None,
            created_ms: now,
            touched_ms: now,
            bytes_written: 0,
        };
        if let Err(e) = self.store.put(&record).await {
            let e = AppError::from(e);
            self.release_open(owner);
            return Err(e);
        }
        metrics::counter!(m::UPLOADS_CREATED).increment(1);
        if record.length == Some(0) {
            // Nothing will ever be written: complete it now.
            let mut w = self.lock(owner, record.id, None).await?;
            let record = w.commit().await?;
            return Ok((record, false));
        }
        Ok((record, false))
    }

    fn slot(&self, id: UploadId) -> Arc<tokio::sync::Mutex<DataFile>> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            slots
                .entry(id)
                .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(DataFile::new(self.path(id))))),
        )
    }

    fn drop_slot(&self, id: UploadId) {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }

    /// Terminates an upload (tus DELETE).
    pub async fn delete(self: &Arc<Self>, owner: &OwnerId, id: UploadId) -> Result<(), AppError> {
        let w = self.lock(owner, id, Some(Duration::from_secs(2))).await?;
        self.remove(w.record.clone()).await?;
        drop(w);
        self.drop_slot(id);
        Ok(())
    }

    async fn remove(&self, record: UploadRecord) -> Result<(), AppError> {
        let path = self.path(record.id);
        let open = record.state == UploadState::Open;
        let owner = record.owner.clone();
        self.store.remove(&record).await?;
        self.blocking(move |_| match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::from(e)),
        })
        .await?;
        if open {
            self.release_open(&owner);
        }
        self.changed();
        Ok(())
    }
}

impl Uploads {
    /// Tells whoever watches (the job scheduler) that an upload's state changed.
    fn changed(&self) {
        if let Some(wake) = self.changes.get() {
            wake.notify_one();
        }
    }
}

#[async_trait]
impl InputResolver for Uploads {
    async fn check(&self, owner: &OwnerId, upload: UploadId) -> Result<Readiness, AppError> {
        let r = match self.owned(owner, upload).await {
            Ok(r) => r,
            Err(e) if e.code == ErrorCode::UploadExpired => {
                return Err(AppError::not_found("upload"));
            }
            Err(e) => return Err(e),
        };
        match r.state {
            UploadState::Open => Ok(Readiness::Pending {
                offset: r.offset,
                length: r.length,
            }),
            _ => self.resolve(owner, upload).await.map(Readiness::Ready),
        }
    }

    fn watch(&self, wake: Arc<tokio::sync::Notify>) {
        let _ = self.changes.set(wake);
    }

    async fn resolve(&self, owner: &OwnerId, upload: UploadId) -> Result<InputFile, AppError> {
        let mut r = match self.owned(owner, upload).await {
            Ok(r) => r,
            Err(e) if e.code == ErrorCode::UploadExpired => {
                return Err(AppError::not_found("upload"));
            }
            Err(e) => return Err(e),
        };
        match r.state {
            UploadState::Complete => {}
            UploadState::Open => {
                return Err(AppError::new(
                    ErrorCode::InputNotReady,
                    format!(
                        "upload {upload} is not complete ({} of {} bytes)",
                        r.offset,
                        r.length.map_or_else(|| "?".to_owned(), |l| l.to_string())
                    ),
                ));
            }
            UploadState::Failed => {
                return Err(AppError::new(
                    ErrorCode::InputNotReady,
                    format!("upload {upload} failed verification"),
                ));
            }
        }
        // Using an upload keeps it: its retention counts from its last use, so a queued job's
        // input is not collected under it (unless it waits longer than the retention).
        r.touched_ms = now_ms();
        self.store.put(&r).await?;
        Ok(InputFile {
            path: self.path(upload),
            size: r.length.unwrap_or(r.offset),
            filename: r.filename,
            // Computed by the gateway as the bytes arrived, never the client's claim.
            sha256: r.sha256,
        })
    }
}
