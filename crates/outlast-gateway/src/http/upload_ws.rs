//! Uploads over the WebSocket: `upload_create`/`upload_resume` messages, chunk frames, and
//! acknowledgements of durable offsets, for one connection.
//!
//! A connection holds an upload's writer while chunks flow and lets it go after a short idle
//! time (or when the connection ends, after committing what arrived), so the same upload can
//! continue over another connection or over tus. Acks are coalesced: the data is fsynced and
//! acknowledged every [`SYNC_BYTES`] or [`FLUSH_DELAY`] after the first unacknowledged byte,
//! whichever comes first; the client's window ([`super::WINDOW_BYTES`]) keeps the link busy
//! meanwhile.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use outlast_protocol::tus::{Metadata, parse_sha256_hex};
use outlast_protocol::upload::{
    AckAction, AckCadence, DATA_HEADER_LEN, UploadState, parse_data_header,
};
use outlast_protocol::v1::{ClientMsg, Control, ServerMsg};
use outlast_protocol::{ErrorCode, Offset, OwnerId, UploadId};
use tokio::time::Instant;

use crate::error::AppError;
use crate::metrics as m;
use crate::upload::progress::ProgressSubscription;
use crate::upload::writer::Writer;
use crate::upload::{NewUpload, Uploads};

// The ack cadence (`SYNC_BYTES`, `FLUSH_DELAY`, `IDLE_RELEASE`) is decided by
// `outlast_protocol::upload::AckCadence`.
pub use outlast_protocol::upload::{FLUSH_DELAY, IDLE_RELEASE, SYNC_BYTES};
/// How long `upload_resume` (or a chunk) waits for another writer (e.g. the connection that
/// was just cut, still committing) to let go.
pub const LOCK_WAIT: Duration = Duration::from_secs(5);
/// Uploads one connection may write at once.
pub const MAX_ATTACHED: usize = 16;

/// True when a binary frame is an upload chunk.
pub fn is_data(frame: &[u8]) -> bool {
    outlast_protocol::upload::is_data_frame(frame)
}

struct Attached {
    writer: Writer,
    cadence: AckCadence<Instant>,
}

impl std::fmt::Debug for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attached")
            .field("upload", &self.writer.record().id)
            .field("received", &self.writer.received())
            .finish()
    }
}

/// What [`SessionUploads::on_wake`] acts on.
#[derive(Debug)]
pub enum Wake {
    /// Progress of one of the owner's uploads, to forward.
    Progress(Box<Control>),
    /// A flush or release deadline passed.
    Timer,
}

/// The upload side of one WebSocket session.
#[derive(Debug)]
pub struct SessionUploads {
    uploads: Arc<Uploads>,
    owner: OwnerId,
    progress: Option<ProgressSubscription>,
    attached: HashMap<UploadId, Attached>,
}

fn error(req: Option<u64>, e: AppError) -> ServerMsg {
    Control::Error {
        req,
        code: e.code,
        message: e.message,
    }
    .into()
}

impl SessionUploads {
    /// Starts receiving the owner's upload progress.
    pub fn new(uploads: Arc<Uploads>, owner: OwnerId) -> Self {
        let progress = Some(uploads.progress.subscribe(&owner));
        Self {
            uploads,
            owner,
            progress,
            attached: HashMap::new(),
        }
    }

    /// When the next flush or release is due: the session's one timer wakes it then, and
    /// [`SessionUploads::on_wake`] with [`Wake::Timer`] does what is due.
    pub fn deadline(&self) -> Option<Instant> {
        self.attached
            .values()
            .map(|a| a.cadence.poll_timeout())
            .min()
    }

    /// Waits for the owner's next upload progress. Cancel-safe: it only waits.
    pub async fn next_progress(&mut self) -> Control {
        loop {
            match self.progress.as_mut() {
                Some(rx) => match rx.recv().await {
                    Some(Ok(c)) => return c,
                    // Progress is a snapshot: skipping some is fine.
                    Some(Err(_lagged)) => continue,
                    None => self.progress = None,
                },
                None => std::future::pending::<()>().await,
            }
        }
    }

    /// Acts on a wake-up; returns the messages to send.
    pub async fn on_wake(&mut self, wake: Wake) -> Vec<ServerMsg> {
        match wake {
            Wake::Progress(c) => vec![(*c).into()],
            Wake::Timer => {
                let now = Instant::now();
                let mut out = Vec::new();
                let ids: Vec<UploadId> = self.attached.keys().copied().collect();
                for id in ids {
                    let Some(a) = self.attached.get(&id) else {
                        continue;
                    };
                    match a.cadence.poll(now) {
                        AckAction::Ack => self.flush(id, &mut out).await,
                        AckAction::Release => {
                            self.attached.remove(&id);
                        }
                        AckAction::Wait => {}
                    }
                }
                out
            }
        }
    }

    /// Commits what arrived for `id` and acknowledges it; releases finished uploads.
    async fn flush(&mut self, id: UploadId, out: &mut Vec<ServerMsg>) {
        let Some(a) = self.attached.get_mut(&id) else {
            return;
        };
        a.cadence.on_acked();
        match a.writer.commit().await {
            Ok(r) => {
                let complete = r.state != UploadState::Open;
                out.push(
                    Control::UploadAck {
                        upload_id: id,
                        offset: Offset(r.offset),
                        complete,
                    }
                    .into(),
                );
                if complete {
                    self.attached.remove(&id);
                }
            }
            Err(e) => {
                self.attached.remove(&id);
                out.push(error(None, e));
            }
        }
    }

    async fn attach(&mut self, id: UploadId, wait: Duration) -> Result<&mut Attached, AppError> {
        if !self.attached.contains_key(&id) {
            if self.attached.len() >= MAX_ATTACHED {
                return Err(AppError::new(
                    ErrorCode::LimitExceeded,
                    format!("at most {MAX_ATTACHED} uploads at once per connection"),
                ));
            }
            let writer = self.uploads.lock(&self.owner, id, Some(wait)).await?;
            self.attached.insert(
                id,
                Attached {
                    writer,
                    cadence: AckCadence::new(Instant::now()),
                },
            );
        }
        self.attached
            .get_mut(&id)
            .ok_or_else(|| AppError::internal("attached upload vanished"))
    }

    fn status(
        &self,
        req: Option<u64>,
        r: &crate::upload::store::UploadRecord,
        dedup: bool,
    ) -> ServerMsg {
        Control::UploadStatus {
            req,
            upload: self.uploads.info(r),
            deduplicated: dedup,
            limits: self.uploads.ws_limits(),
        }
        .into()
    }

    /// `upload_create` and `upload_resume`; other messages are not for this module.
    pub async fn handle(&mut self, msg: ClientMsg) -> Vec<ServerMsg> {
        match msg {
            ClientMsg::UploadCreate {
                req,
                length,
                metadata,
                sha256,
            } => match self.create(length, metadata, sha256).await {
                Ok((r, dedup)) => vec![self.status(req, &r, dedup)],
                Err(e) => vec![error(req, e)],
            },
            ClientMsg::UploadResume { req, upload_id } => {
                let mut out = Vec::new();
                if self.attached.contains_key(&upload_id) {
                    self.flush(upload_id, &mut out).await;
                }
                let result = self
                    .attach(upload_id, LOCK_WAIT)
                    .await
                    .map(|a| a.writer.record().clone());
                match result {
                    Ok(r) => {
                        if r.state != UploadState::Open {
                            self.attached.remove(&upload_id);
                        }
                        out.push(self.status(req, &r, false));
                    }
                    Err(e) => out.push(error(req, e)),
                }
                out
            }
            _ => Vec::new(),
        }
    }

    async fn create(
        &mut self,
        length: Option<u64>,
        metadata: std::collections::BTreeMap<String, String>,
        sha256: Option<String>,
    ) -> Result<(crate::upload::store::UploadRecord, bool), AppError> {
        let metadata =
            Metadata::from_text(&metadata).map_err(|e| AppError::invalid(e.to_string()))?;
        let declared = match sha256 {
            Some(hex) => Some(
                parse_sha256_hex(&hex)
                    .ok_or_else(|| AppError::invalid("sha256 must be 64 hex digits"))?,
            ),
            None => None,
        };
        let (r, dedup) = self
            .uploads
            .create(
                &self.owner,
                NewUpload {
                    length,
                    metadata,
                    declared_sha256: declared,
                    partial: false,
                },
            )
            .await?;
        if r.state == UploadState::Open {
            self.attach(r.id, LOCK_WAIT).await?;
        }
        Ok((r, dedup))
    }

    /// A chunk frame.
    pub async fn data(&mut self, frame: Bytes) -> Vec<ServerMsg> {
        let (id, offset) = match parse_data_header(&frame) {
            Ok(h) => h,
            Err(e) => {
                return vec![error(
                    None,
                    AppError::new(ErrorCode::MalformedMessage, e.to_string()),
                )];
            }
        };
        let data = frame.slice(DATA_HEADER_LEN..);
        let max = self.uploads.ws_limits().max_chunk_bytes;
        if data.len() as u64 > max {
            return vec![error(
                None,
                AppError::new(
                    ErrorCode::MessageTooLarge,
                    format!("chunks are limited to {max} bytes"),
                ),
            )];
        }
        if let Err(e) = self.uploads.check_disk(data.len() as u64) {
            return vec![error(None, e)];
        }
        let a = match self.attach(id, LOCK_WAIT).await {
            Ok(a) => a,
            Err(e) => return vec![error(None, e)],
        };
        if offset.0 != a.writer.received() {
            let expected = a.writer.received();
            return vec![error(
                None,
                AppError::new(
                    ErrorCode::OffsetMismatch,
                    format!(
                        "upload {id}: chunk at offset {} but the upload continues at {expected}; \
                         send upload_resume and continue from its offset",
                        offset.0
                    ),
                ),
            )];
        }
        let len = data.len() as u64;
        if let Err(e) = a.writer.write(data).await {
            let mut out = vec![error(None, e)];
            self.flush(id, &mut out).await;
            self.attached.remove(&id);
            return out;
        }
        metrics::counter!(m::UPLOAD_BYTES, "transport" => "ws").increment(len);
        let pending = a.writer.received() - a.writer.record().offset;
        let done = a.writer.remaining() == Some(0);
        let mut out = Vec::new();
        if a.cadence.on_chunk(Instant::now(), pending, done) == AckAction::Ack {
            self.flush(id, &mut out).await;
        }
        out
    }

    /// The connection ended: commit what arrived for every upload and let go of them.
    pub async fn close(&mut self) {
        let ids: Vec<UploadId> = self.attached.keys().copied().collect();
        let mut ignored = Vec::new();
        for id in ids {
            self.flush(id, &mut ignored).await;
        }
        self.attached.clear();
        self.progress = None;
    }
}
