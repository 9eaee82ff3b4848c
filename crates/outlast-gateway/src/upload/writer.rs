//! The one writer of an upload: appends bytes (batched on a blocking task), checkpoints,
//! per-chunk checksums, and commits (data fsynced, then the record) before offsets are told.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use outlast_protocol::tus::ChecksumAlgorithm;
use outlast_protocol::tus::Metadata;
use outlast_protocol::upload::{ProgressThrottle, UploadState};
use outlast_protocol::{ErrorCode, OwnerId, UploadId};
use tokio::sync::OwnedMutexGuard;
use tokio::task::JoinHandle;

use super::data::{ChunkHasher, DataFile};
use super::store::UploadRecord;
use super::{NewUpload, Uploads, io_err};
use crate::clock::now_ms;
use crate::error::AppError;
use crate::metrics as m;

type Slot = OwnedMutexGuard<DataFile>;

/// Bytes written since the last flush after which a writer starts an early flush in the
/// background (one at a time): the disk writes while the next bytes arrive, instead of all of
/// a chunk's bytes waiting for the commit.
pub const EARLY_FLUSH_BYTES: u64 = 2 << 20;

/// Handing out writers: the only way to write an upload's bytes.
impl Uploads {
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
            flushed_to: record.offset,
            record,
            slot: Some(guard),
            inflight: None,
            early_flush: None,
            flush_early: false,
            early_flushes: 0,
            write_batches: 0,
            started: Instant::now(),
            session_bytes: 0,
            progress_throttle: ProgressThrottle::new(),
        })
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
        let mut seen = std::collections::HashSet::with_capacity(parts.len());
        if let Some(twice) = parts.iter().find(|id| !seen.insert(**id)) {
            return Err(AppError::invalid(format!(
                "partial upload {twice} is named more than once in Upload-Concat"
            )));
        }
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
        self.store.put(&record).await?;
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
}

/// The one writer of an upload. Bytes handed to [`Writer::write`] are on disk but not durable
/// until [`Writer::commit`]; dropping a writer without committing loses them (the next writer
/// cuts the file back to the durable offset).
#[derive(Debug)]
pub struct Writer {
    pub(super) uploads: Arc<Uploads>,
    pub(super) record: UploadRecord,
    pub(super) slot: Option<Slot>,
    pub(super) inflight: Option<JoinHandle<(Slot, std::io::Result<()>)>>,
    /// An fdatasync started while bytes still stream in (see [`EARLY_FLUSH_BYTES`]), so the
    /// commit's own fsync finds most of them on disk already. Only ever an extra flush: the
    /// commit still fsyncs everything before the offset is stored.
    pub(super) early_flush: Option<JoinHandle<()>>,
    /// Whether early flushes are on ([`Writer::flush_early`]).
    pub(super) flush_early: bool,
    /// Early flushes started (for tests and tracing).
    pub(super) early_flushes: u32,
    /// Batches handed to the disk thread (for tests and tracing).
    pub(crate) write_batches: u32,
    /// Where `received` stood when the last early flush (or commit) started.
    pub(super) flushed_to: u64,
    /// Where the next byte goes (>= the durable `record.offset`).
    pub(super) received: u64,
    pub(super) started: Instant,
    pub(super) session_bytes: u64,
    pub(super) progress_throttle: ProgressThrottle<Instant>,
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

    pub(super) async fn take_slot(&mut self) -> Result<Slot, AppError> {
        self.wait_idle().await?;
        self.slot
            .take()
            .ok_or_else(|| AppError::internal("upload writer lost its slot"))
    }

    /// Waits until no write is in flight. Cancel-safe: the write stays in flight when the wait
    /// is dropped, so a receive loop may race it against the next bytes of the body.
    pub async fn wait_idle(&mut self) -> Result<(), AppError> {
        let Some(job) = self.inflight.as_mut() else {
            return Ok(());
        };
        // Polling the handle by reference leaves it in place until it is done.
        let done = job.await;
        self.inflight = None;
        let (mut slot, result) = done.map_err(AppError::internal)?;
        if let Err(e) = result {
            // How much of the failed batch reached the disk is unknown: fall back to the
            // durable offset; the next write cuts the file back to it.
            slot.forget();
            self.received = self.record.offset;
            self.slot = Some(slot);
            return Err(io_err(e));
        }
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
        Ok(self.uploads.store.put(&self.record).await?)
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
    /// (or `wait_idle`/`commit`) waits for it, so receiving and writing overlap.
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
        // A deferred length is not known yet, but the upload may still not outgrow the limit.
        if self.record.length.is_none() {
            self.uploads.check_size(self.received.saturating_add(len))?;
        }
        let mut slot = self.take_slot().await?;
        self.write_batches += 1;
        self.maybe_flush_early(&slot);
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

    /// Turns early flushes on: for a long body whose commit waits at its end (a tus PATCH).
    /// WebSocket chunks commit every few MiB on their own and gain nothing from it.
    pub fn flush_early(&mut self) {
        self.flush_early = true;
    }

    /// Starts an early flush of what the earlier batches wrote, when enough of it waits and no
    /// early flush is running. A failed early flush is left for the commit's fsync to report.
    fn maybe_flush_early(&mut self, slot: &DataFile) {
        if !self.flush_early
            || self.received - self.flushed_to < EARLY_FLUSH_BYTES
            || self.early_flush.as_ref().is_some_and(|f| !f.is_finished())
        {
            return;
        }
        let Some(Ok(file)) = slot.flush_handle() else {
            return;
        };
        self.flushed_to = self.received;
        self.early_flushes += 1;
        self.early_flush = Some(tokio::task::spawn_blocking(move || {
            let _ = file.sync_data();
        }));
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
        if let Some(early) = self.early_flush.take() {
            // Its flush overlaps the one below; waiting keeps one flush per file at a time.
            let _ = early.await;
        }
        let received = self.received;
        self.flushed_to = received;
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
            let hex = digest.map(|d| super::data::hex(&d));
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
        self.uploads.store.put(&next).await?;
        self.record = next;
        self.push_progress();
        if complete {
            self.uploads.release_open(&self.record.owner);
            self.uploads.changed();
            metrics::counter!(m::UPLOADS_COMPLETED, "verified" => if mismatch { "mismatch" } else { "ok" })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UploadConfig;

    async fn three_mib_written(early: bool) -> (tempfile::TempDir, Writer, UploadRecord) {
        let dir = tempfile::tempdir().expect("temp dir");
        let uploads = Uploads::open(UploadConfig::default(), dir.path(), 1 << 20).expect("open");
        let owner = OwnerId::local();
        let new = NewUpload {
            length: Some(3 << 20),
            metadata: Metadata::default(),
            declared_sha256: None,
            partial: false,
        };
        let (r, _) = uploads.create(&owner, new).await.expect("create");
        let mut w = uploads.lock(&owner, r.id, None).await.expect("lock");
        if early {
            w.flush_early();
        }
        for _ in 0..3 {
            w.write(Bytes::from(vec![7u8; 1 << 20]))
                .await
                .expect("write");
        }
        let committed = w.commit().await.expect("commit");
        (dir, w, committed)
    }

    #[tokio::test]
    async fn a_long_body_starts_an_early_flush_and_still_commits_every_byte() {
        let (_dir, w, r) = three_mib_written(true).await;
        // 2 MiB were written when the third MiB came: that write started one flush.
        assert_eq!(w.early_flushes, 1, "early flushes started");
        assert_eq!(r.offset, 3 << 20);
        assert_eq!(r.state, UploadState::Complete);
        assert!(
            w.early_flush.is_none(),
            "the commit waited for the early flush"
        );
        let (_dir, w, r) = three_mib_written(false).await;
        assert_eq!(w.early_flushes, 0, "off unless asked for");
        assert_eq!(r.offset, 3 << 20);
    }
}
