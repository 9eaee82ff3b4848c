//! Resumable uploads: one store behind two transports (tus 1.0.0 over HTTP in [`tus`], chunk
//! frames over the WebSocket in [`ws`]).
//!
//! Invariants:
//! - The offset anyone is told (HEAD, 204, acks) is durable: data fsynced first, then the
//!   record committed to `uploads.redb`, then the answer.
//! - One writer per upload: a [`Writer`] holds the upload's async mutex for as long as it
//!   writes. A second writer is refused (`upload_locked`) or waits briefly; bytes never
//!   interleave.
//! - The sha256 is computed as bytes arrive (no second read); only after a restart or a
//!   discarded chunk is `[0, offset)` read once to rebuild the hasher state.

pub mod data;
pub mod progress;
pub mod store;
pub mod tus;
pub mod ws;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use outlast_protocol::tus::{ChecksumAlgorithm, Metadata};
use outlast_protocol::upload::{DATA_HEADER_LEN, UploadInfo, UploadLimits, UploadState};
use outlast_protocol::{ErrorCode, Offset, OwnerId, UploadId};
use tokio::sync::OwnedMutexGuard;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::backend::InputFile;
use crate::config::UploadConfig;
use crate::error::AppError;
use crate::jobs::InputResolver;
use crate::store::now_ms;
use data::{ChunkHasher, DataFile};
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
// At most one progress push per `outlast_protocol::upload::PROGRESS_EVERY` per writer.
use outlast_protocol::upload::ProgressThrottle;

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

    fn path(&self, id: UploadId) -> PathBuf {
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
                metrics::counter!("outlast_upload_disk_refusals_total").increment(1);
                Err(AppError::new(
                    ErrorCode::InsufficientStorage,
                    "not enough free disk space for this upload",
                ))
            }
            Ok(_) => Ok(()),
            Err(e) => Err(AppError::internal(format!("statvfs: {e}"))),
        }
    }

    fn check_size(&self, length: u64) -> Result<(), AppError> {
        if length > self.cfg.max_size {
            return Err(AppError::new(
                ErrorCode::MessageTooLarge,
                format!("uploads are limited to {} bytes", self.cfg.max_size),
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
                let copy = r.clone();
                self.blocking(move |s| s.put(&copy)).await?;
                metrics::counter!("outlast_upload_dedup_hits_total").increment(1);
                return Ok((r, true));
            }
        }
        if let Some(len) = new.length {
            self.check_disk(len)?;
        }
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
        let copy = record.clone();
        if let Err(e) = self.blocking(move |s| s.put(&copy)).await {
            self.release_open(owner);
            return Err(e);
        }
        metrics::counter!("outlast_uploads_created_total").increment(1);
        if record.length == Some(0) {
            // Nothing will ever be written: complete it now.
            let mut w = self.lock(owner, record.id, None).await?;
            let record = w.commit().await?;
            return Ok((record, false));
        }
        Ok((record, false))
    }

    /// Concatenates complete partial uploads into a new, complete final upload.
    pub async fn create_final(
        self: &Arc<Self>,
        owner: &OwnerId,
        parts: Vec<UploadId>,
        metadata: Metadata,
    ) -> Result<UploadRecord, AppError> {
        let mut sources = Vec::with_capacity(parts.len());
        let mut total = 0u64;
        for id in &parts {
            let r = self.owned(owner, *id).await?;
            if !r.partial {
                return Err(AppError::invalid(format!("{id} is not a partial upload")));
            }
            if r.state != UploadState::Complete {
                return Err(AppError::invalid(format!(
                    "partial upload {id} is not complete"
                )));
            }
            let len = r.length.unwrap_or(r.offset);
            total = total.saturating_add(len);
            sources.push((self.path(*id), len));
        }
        self.check_size(total)?;
        self.check_disk(total)?;
        let (mut record, _) = self
            .create(
                owner,
                NewUpload {
                    length: Some(total),
                    metadata,
                    declared_sha256: None,
                    partial: false,
                },
            )
            .await?;
        record.final_of = Some(parts);
        let copy = record.clone();
        self.blocking(move |s| s.put(&copy)).await?;
        if total == 0 {
            return self.owned(owner, record.id).await;
        }
        let mut w = self.lock(owner, record.id, None).await?;
        let mut slot = w.take_slot().await?;
        let (slot, copied) = tokio::task::spawn_blocking(move || {
            let mut at = 0u64;
            for (path, len) in &sources {
                match slot.append_from(at, path, *len) {
                    Ok(next) => at = next,
                    Err(e) => return (slot, Err(e)),
                }
            }
            (slot, Ok(at))
        })
        .await
        .map_err(AppError::internal)?;
        w.slot = Some(slot);
        w.received = copied.map_err(io_err)?;
        w.commit().await
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

    /// Becomes the upload's only writer. Without `wait`, a busy upload is `upload_locked` at
    /// once; with it, waits up to that long for the other writer to finish.
    pub async fn lock(
        self: &Arc<Self>,
        owner: &OwnerId,
        id: UploadId,
        wait: Option<Duration>,
    ) -> Result<Writer, AppError> {
        self.owned(owner, id).await?;
        let slot = self.slot(id);
        let locked = || {
            AppError::new(
                ErrorCode::UploadLocked,
                "another request is writing this upload; retry shortly",
            )
        };
        let guard = match wait {
            None => slot.try_lock_owned().map_err(|_| locked())?,
            Some(d) => tokio::time::timeout(d, slot.lock_owned())
                .await
                .map_err(|_| locked())?,
        };
        // Read again under the lock: the previous writer may have moved the offset.
        let record = self.owned(owner, id).await?;
        Ok(Writer {
            uploads: Arc::clone(self),
            received: record.offset,
            record,
            slot: Some(guard),
            inflight: None,
            started: Instant::now(),
            session_bytes: 0,
            progress_throttle: ProgressThrottle::new(),
        })
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
        self.blocking(move |s| {
            s.remove(&record)?;
            match std::fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(StoreError::from(e)),
            }
        })
        .await?;
        if open {
            self.release_open(&owner);
        }
        Ok(())
    }

    /// Removes expired uploads that nobody is writing; returns how many.
    pub async fn collect_garbage(self: &Arc<Self>) -> Result<usize, AppError> {
        let now = now_ms();
        let all = self.blocking(|s| s.all()).await?;
        let mut removed = 0;
        for r in all {
            if self.expires_ms(&r) >= now {
                continue;
            }
            let slot = self.slot(r.id);
            let Ok(guard) = slot.try_lock_owned() else {
                continue;
            };
            // Re-check under the lock: a writer may have touched it meanwhile.
            let id = r.id;
            let fresh = self.blocking(move |s| s.get(id)).await?;
            if let Some(fresh) = fresh
                && self.expires_ms(&fresh) < now
            {
                self.remove(fresh).await?;
                removed += 1;
            }
            drop(guard);
            self.drop_slot(id);
        }
        if removed > 0 {
            metrics::counter!("outlast_uploads_expired_total").increment(removed as u64);
            tracing::info!(removed, "removed expired uploads");
        }
        Ok(removed)
    }

    /// Runs garbage collection until `shutdown`.
    pub async fn gc_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let shortest = self.cfg.expiry.min(self.cfg.retention);
        let every = (shortest / 4).clamp(Duration::from_millis(50), Duration::from_secs(60));
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.collect_garbage().await {
                tracing::warn!(error = %e, "upload garbage collection failed");
            }
        }
    }
}

#[async_trait]
impl InputResolver for Uploads {
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
        let copy = r.clone();
        self.blocking(move |s| s.put(&copy)).await?;
        Ok(InputFile {
            path: self.path(upload),
            size: r.length.unwrap_or(r.offset),
            filename: r.filename,
            // Computed by the gateway as the bytes arrived, never the client's claim.
            sha256: r.sha256,
        })
    }
}

type Slot = OwnedMutexGuard<DataFile>;

/// The one writer of an upload. Bytes handed to [`Writer::write`] are on disk but not durable
/// until [`Writer::commit`]; dropping a writer without committing loses them (the next writer
/// cuts the file back to the durable offset).
#[derive(Debug)]
pub struct Writer {
    uploads: Arc<Uploads>,
    record: UploadRecord,
    slot: Option<Slot>,
    inflight: Option<JoinHandle<(Slot, std::io::Result<()>)>>,
    /// Where the next byte goes (>= the durable `record.offset`).
    received: u64,
    started: Instant,
    session_bytes: u64,
    progress_throttle: ProgressThrottle<Instant>,
}

impl Writer {
    /// The record as of the last commit.
    pub fn record(&self) -> &UploadRecord {
        &self.record
    }

    /// Where the next byte goes.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Bytes still allowed (None: length unknown).
    pub fn remaining(&self) -> Option<u64> {
        self.record.length.map(|l| l.saturating_sub(self.received))
    }

    /// Receive rate of this writer.
    pub fn bytes_per_sec(&self) -> u64 {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        (self.session_bytes as f64 / secs) as u64
    }

    async fn take_slot(&mut self) -> Result<Slot, AppError> {
        if let Some(job) = self.inflight.take() {
            let (mut slot, result) = job.await.map_err(AppError::internal)?;
            if let Err(e) = result {
                // How much of the failed batch reached the disk is unknown: fall back to the
                // durable offset; the next write cuts the file back to it.
                slot.forget();
                self.received = self.record.offset;
                self.slot = Some(slot);
                return Err(io_err(e));
            }
            self.slot = Some(slot);
        }
        self.slot
            .take()
            .ok_or_else(|| AppError::internal("upload writer lost its slot"))
    }

    /// Waits for the write in flight.
    pub async fn settle(&mut self) -> Result<(), AppError> {
        let slot = self.take_slot().await?;
        self.slot = Some(slot);
        Ok(())
    }

    /// Sets the length of a deferred-length upload.
    pub async fn set_length(&mut self, length: u64) -> Result<(), AppError> {
        if let Some(known) = self.record.length {
            if known == length {
                return Ok(());
            }
            return Err(AppError::invalid("the upload's length is already set"));
        }
        self.uploads.check_size(length)?;
        if length < self.received {
            return Err(AppError::invalid(
                "Upload-Length is below the current offset",
            ));
        }
        self.record.length = Some(length);
        let copy = self.record.clone();
        self.uploads.blocking(move |s| s.put(&copy)).await
    }

    /// Starts a per-request checksum (tus `Upload-Checksum`).
    pub async fn begin_chunk(&mut self, algorithm: ChecksumAlgorithm) -> Result<(), AppError> {
        let mut slot = self.take_slot().await?;
        slot.chunk = Some(ChunkHasher::new(algorithm));
        self.slot = Some(slot);
        Ok(())
    }

    /// The per-request checksum of the bytes written since [`Writer::begin_chunk`].
    pub async fn finish_chunk(&mut self) -> Result<Option<Vec<u8>>, AppError> {
        let mut slot = self.take_slot().await?;
        let digest = slot.chunk.take().map(ChunkHasher::finish);
        self.slot = Some(slot);
        Ok(digest)
    }

    /// Forgets everything written since the last commit (checksum mismatch, cut checksummed body).
    pub async fn discard(&mut self) -> Result<(), AppError> {
        let mut slot = self.take_slot().await?;
        let offset = self.record.offset;
        let (slot, r) = tokio::task::spawn_blocking(move || {
            let r = slot.discard_after(offset);
            (slot, r)
        })
        .await
        .map_err(AppError::internal)?;
        self.slot = Some(slot);
        r.map_err(io_err)?;
        self.received = offset;
        Ok(())
    }

    /// Writes bytes at the current position. The write runs in the background; the next call
    /// (or `settle`/`commit`) waits for it, so receiving and writing overlap.
    pub async fn write(&mut self, data: Bytes) -> Result<(), AppError> {
        self.write_batch(vec![data]).await
    }

    /// Writes several buffers back to back (one trip to the disk thread).
    pub async fn write_batch(&mut self, batch: Vec<Bytes>) -> Result<(), AppError> {
        if self.record.state != UploadState::Open {
            return Err(AppError::invalid("the upload is already complete"));
        }
        let len: u64 = batch.iter().map(|b| b.len() as u64).sum();
        if self.remaining().is_some_and(|r| len > r) {
            return Err(AppError::new(
                ErrorCode::MessageTooLarge,
                "more bytes than the upload's length",
            ));
        }
        let mut slot = self.take_slot().await?;
        let mut at = self.received;
        self.inflight = Some(tokio::task::spawn_blocking(move || {
            for data in &batch {
                if let Err(e) = slot.write_at(at, data) {
                    return (slot, Err(e));
                }
                at += data.len() as u64;
            }
            (slot, Ok(()))
        }));
        self.received += len;
        self.session_bytes += len;
        if self.progress_throttle.due(Instant::now()) {
            self.push_progress();
        }
        Ok(())
    }

    fn push_progress(&mut self) {
        self.progress_throttle.pushed(Instant::now());
        self.uploads.progress.publish(
            &self.record.owner,
            self.record.id,
            self.received,
            self.record.length,
            self.bytes_per_sec(),
        );
    }

    /// Makes everything written durable (fsync, then the record), completing and verifying
    /// the upload when the last byte is in. Returns the committed record.
    pub async fn commit(&mut self) -> Result<UploadRecord, AppError> {
        let mut slot = self.take_slot().await?;
        let received = self.received;
        let complete =
            self.record.state == UploadState::Open && self.record.length == Some(received);
        if received == self.record.offset && !complete {
            self.slot = Some(slot);
            return Ok(self.record.clone());
        }
        let (slot, synced) = tokio::task::spawn_blocking(move || {
            let r = slot.sync().and_then(|()| {
                if complete {
                    // Empty uploads never wrote: make the hasher stand at 0.
                    slot.ensure_at(received)?;
                }
                Ok(slot.sha256_at(received))
            });
            (slot, r)
        })
        .await
        .map_err(AppError::internal)?;
        self.slot = Some(slot);
        let digest = synced.map_err(io_err)?;
        let mut next = self.record.clone();
        next.bytes_written += received - next.offset;
        next.offset = received;
        next.touched_ms = now_ms();
        let mut mismatch = false;
        if complete {
            let hex = digest.map(|d| data::hex(&d));
            match (&next.declared_sha256, &hex) {
                (Some(want), Some(got)) if want != got => {
                    next.state = UploadState::Failed;
                    next.error = Some(format!("sha256 mismatch: declared {want}, received {got}"));
                    mismatch = true;
                }
                _ => next.state = UploadState::Complete,
            }
            next.sha256 = hex;
        }
        let copy = next.clone();
        self.uploads.blocking(move |s| s.put(&copy)).await?;
        self.record = next;
        self.push_progress();
        if complete {
            self.uploads.release_open(&self.record.owner);
            metrics::counter!("outlast_uploads_completed_total", "verified" => if mismatch { "mismatch" } else { "ok" })
                .increment(1);
        }
        if mismatch {
            return Err(AppError::new(
                ErrorCode::ChecksumMismatch,
                self.record
                    .error
                    .clone()
                    .unwrap_or_else(|| "sha256 mismatch".into()),
            ));
        }
        Ok(self.record.clone())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if self.record.state != UploadState::Open {
            // Complete: nobody writes again; the slot (and its open file) can go.
            self.uploads.drop_slot(self.record.id);
        }
    }
}
