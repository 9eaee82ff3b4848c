//! Uploads on the wire: the upload description shared by HTTP and WebSocket answers, the
//! binary chunk frame of WebSocket uploads, the chunk-size rule for slow links, and the
//! acknowledgement cadence ([`AckCadence`], [`ProgressThrottle`]) with `now` passed in.
//!
//! A chunk travels in one binary WebSocket frame: the tag byte [`DATA_FRAME_TAG`] (0xC1, a byte
//! MessagePack never uses, so chunk frames and MessagePack messages cannot be confused), the
//! upload id (16 bytes), the offset of the first byte (u64, big-endian) and the bytes.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ids::{Offset, UploadId};

/// First byte of every chunk frame.
pub const DATA_FRAME_TAG: u8 = 0xC1;
/// Bytes before the chunk's data.
pub const DATA_HEADER_LEN: usize = 1 + 16 + 8;

/// Where an upload stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UploadState {
    /// Accepting bytes.
    Open,
    /// Every byte arrived and the digest checks out; usable as a job input.
    Complete,
    /// Every byte arrived but the declared sha256 did not match; not usable.
    Failed,
}

/// One upload as the server sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadInfo {
    /// The upload.
    pub upload_id: UploadId,
    /// Durable offset: every byte before it is on disk.
    pub offset: Offset,
    /// Total size, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// Where it stands.
    pub state: UploadState,
    /// sha256 (hex) of the content, once complete.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Bytes the server has written for this upload (a resumed upload that never resends a
    /// byte has `bytes_written == length`).
    pub bytes_written: u64,
    /// When an abandoned upload is removed (ms since the Unix epoch).
    pub expires_ms: u64,
    /// Why the upload failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// How a client should size and pace its chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadLimits {
    /// Largest chunk the server accepts in one frame (WebSocket) or PATCH body (tus).
    pub max_chunk_bytes: u64,
    /// How long one chunk should take; size chunks by the measured rate (see [`ChunkSizer`]).
    pub target_chunk_ms: u64,
    /// Unacknowledged bytes a WebSocket client may have in flight.
    pub window_bytes: u64,
}

/// Why a binary frame is not a chunk frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DataFrameError {
    /// Not tagged as a chunk.
    #[error("not an upload chunk frame")]
    NotData,
    /// Shorter than the header.
    #[error("upload chunk frame shorter than its {DATA_HEADER_LEN}-byte header")]
    Truncated,
}

/// True when a binary frame is a chunk frame (and not a MessagePack message).
pub fn is_data_frame(frame: &[u8]) -> bool {
    frame.first() == Some(&DATA_FRAME_TAG)
}

/// The header of a chunk frame; append the bytes after it.
pub fn encode_data_header(upload: UploadId, offset: Offset) -> [u8; DATA_HEADER_LEN] {
    let mut h = [0u8; DATA_HEADER_LEN];
    h[0] = DATA_FRAME_TAG;
    h[1..17].copy_from_slice(upload.as_bytes());
    h[17..].copy_from_slice(&offset.0.to_be_bytes());
    h
}

/// Splits a chunk frame into upload, offset and the position where the data starts.
pub fn parse_data_header(frame: &[u8]) -> Result<(UploadId, Offset), DataFrameError> {
    if !is_data_frame(frame) {
        return Err(DataFrameError::NotData);
    }
    if frame.len() < DATA_HEADER_LEN {
        return Err(DataFrameError::Truncated);
    }
    let mut id = [0u8; 16];
    id.copy_from_slice(&frame[1..17]);
    let mut off = [0u8; 8];
    off.copy_from_slice(&frame[17..DATA_HEADER_LEN]);
    Ok((UploadId::from_bytes(id), Offset(u64::from_be_bytes(off))))
}

/// Picks the next chunk size from the measured rate so each chunk takes about the target
/// duration: a slow uplink gets small chunks (a cut loses little, no proxy time limit is hit),
/// a fast one large chunks (little per-chunk overhead). Pure: the caller measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkSizer {
    min: u64,
    max: u64,
    target: Duration,
    current: u64,
}

impl ChunkSizer {
    /// Starts at `min` and never leaves `[min, max]`.
    pub fn new(min: u64, max: u64, target: Duration) -> Self {
        let min = min.max(1);
        Self {
            min,
            max: max.max(min),
            target,
            current: min,
        }
    }

    /// The size to send next.
    pub fn next(&self) -> u64 {
        self.current
    }

    /// Records that `bytes` took `elapsed`. Growth is limited to doubling per step so one
    /// fast sample cannot create a chunk that takes minutes on a link that slows down again.
    pub fn record(&mut self, bytes: u64, elapsed: Duration) {
        let secs = elapsed.as_secs_f64().max(1e-3);
        let ideal = (bytes as f64 / secs * self.target.as_secs_f64()) as u64;
        let capped = ideal.min(self.current.saturating_mul(2));
        self.current = capped.clamp(self.min, self.max);
    }
}

/// Largest upload metadata, in bytes of its tus encoding (`key base64,key base64`), for both
/// transports: tus `Upload-Metadata` and the WebSocket `upload_create.metadata`.
pub const MAX_METADATA_BYTES: usize = 4096;
/// Unacknowledged bytes a WebSocket client may have in flight.
pub const WINDOW_BYTES: u64 = 16 << 20;
/// Largest chunk in one WebSocket frame (the configured limit is capped by it).
pub const WS_MAX_CHUNK: u64 = 8 << 20;
/// A long tus PATCH without a checksum commits (fsync + record) every this many bytes.
pub const CHECKPOINT_BYTES: u64 = 16 << 20;
/// Minimum time between progress pushes of one writer.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// WebSocket: acknowledge (fsync + commit) after this many unacknowledged bytes ...
pub const SYNC_BYTES: u64 = 4 << 20;
/// ... or this long after the first unacknowledged byte.
pub const FLUSH_DELAY: Duration = Duration::from_millis(20);
/// WebSocket: let go of an upload's writer after this long without chunks.
pub const IDLE_RELEASE: Duration = Duration::from_secs(2);

/// True when a tus PATCH body without a checksum should commit what it wrote so far:
/// `pending` bytes were written since the last durable offset.
pub fn checkpoint_due(pending: u64) -> bool {
    pending >= CHECKPOINT_BYTES
}

/// What [`AckCadence`] asks the driver to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckAction {
    /// Nothing yet; wait until [`AckCadence::poll_timeout`].
    Wait,
    /// Commit (fsync + record) and send `upload_ack`, then call [`AckCadence::on_acked`].
    Ack,
    /// Idle with nothing unacknowledged: let go of the upload's writer.
    Release,
}

/// When to acknowledge the chunks of one upload attached to a WebSocket connection: after
/// [`SYNC_BYTES`] unacknowledged bytes, at the last byte, or [`FLUSH_DELAY`] after the first
/// unacknowledged byte, whichever comes first; and release the writer after [`IDLE_RELEASE`]
/// without chunks. Generic over the instant type so the gateway can pass tokio's and tests a
/// fake one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckCadence<T> {
    unacked_since: Option<T>,
    last_chunk: T,
}

impl<T: Copy + Ord + std::ops::Add<Duration, Output = T>> AckCadence<T> {
    /// An upload just attached at `now`, with nothing unacknowledged.
    pub fn new(now: T) -> Self {
        Self {
            unacked_since: None,
            last_chunk: now,
        }
    }

    /// A chunk was written at `now`; `pending` bytes are not yet durable and `done` is true
    /// when the upload has all its bytes.
    pub fn on_chunk(&mut self, now: T, pending: u64, done: bool) -> AckAction {
        self.last_chunk = now;
        self.unacked_since.get_or_insert(now);
        if done || pending >= SYNC_BYTES {
            AckAction::Ack
        } else {
            AckAction::Wait
        }
    }

    /// An acknowledgement was sent (or the commit was attempted): nothing is unacknowledged.
    pub fn on_acked(&mut self) {
        self.unacked_since = None;
    }

    /// True when some bytes wait for an acknowledgement.
    pub fn has_unacked(&self) -> bool {
        self.unacked_since.is_some()
    }

    /// The next time [`AckCadence::poll`] has something to do.
    pub fn poll_timeout(&self) -> T {
        match self.unacked_since {
            Some(t) => t + FLUSH_DELAY,
            None => self.last_chunk + IDLE_RELEASE,
        }
    }

    /// What is due at `now`.
    pub fn poll(&self, now: T) -> AckAction {
        match self.unacked_since {
            Some(t) if now >= t + FLUSH_DELAY => AckAction::Ack,
            None if now >= self.last_chunk + IDLE_RELEASE => AckAction::Release,
            _ => AckAction::Wait,
        }
    }
}

/// At most one progress push per [`PROGRESS_EVERY`] for one writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProgressThrottle<T> {
    last_push: Option<T>,
}

impl<T: Copy + Ord + std::ops::Add<Duration, Output = T>> ProgressThrottle<T> {
    /// Nothing pushed yet.
    pub fn new() -> Self {
        Self { last_push: None }
    }

    /// True when a push is due at `now` (the first always is).
    pub fn due(&self, now: T) -> bool {
        self.last_push.is_none_or(|t| now >= t + PROGRESS_EVERY)
    }

    /// A push was sent at `now` (also for pushes forced by a commit).
    pub fn pushed(&mut self, now: T) {
        self.last_push = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_frames_round_trip() {
        let id = UploadId::random();
        let mut frame = encode_data_header(id, Offset(1 << 40)).to_vec();
        frame.extend_from_slice(b"abc");
        assert!(is_data_frame(&frame));
        assert_eq!(parse_data_header(&frame), Ok((id, Offset(1 << 40))));
        assert_eq!(&frame[DATA_HEADER_LEN..], b"abc");
        assert_eq!(
            parse_data_header(&frame[..10]),
            Err(DataFrameError::Truncated)
        );
        // A MessagePack map never starts with the tag.
        let msgpack = rmp_serde::to_vec_named(&UploadState::Open).expect("encode");
        assert!(!is_data_frame(&msgpack));
    }

    #[test]
    fn chunk_sizer_follows_the_rate() {
        let mut s = ChunkSizer::new(256 << 10, 64 << 20, Duration::from_secs(5));
        // 1 Mbit/s: 125 kB/s -> about 625 kB per 5 s chunk, reached after one doubling.
        let at_1mbit = |bytes: u64| Duration::from_secs_f64(bytes as f64 / 125_000.0);
        s.record(256 << 10, at_1mbit(256 << 10));
        assert_eq!(s.next(), 512 << 10);
        s.record(512 << 10, at_1mbit(512 << 10));
        assert!((600_000..=650_000).contains(&s.next()), "{}", s.next());
        // Fast link: grows by doubling, up to the maximum.
        for _ in 0..20 {
            s.record(s.next(), Duration::from_millis(10));
        }
        assert_eq!(s.next(), 64 << 20);
        // Slow again: shrinks at once.
        s.record(64 << 20, Duration::from_secs(6000));
        assert_eq!(s.next(), 256 << 10);
    }

    #[test]
    fn constants_keep_their_values() {
        assert_eq!(WINDOW_BYTES, 16 * 1024 * 1024);
        assert_eq!(CHECKPOINT_BYTES, 16 * 1024 * 1024);
        assert_eq!(WS_MAX_CHUNK, 8 * 1024 * 1024);
        assert_eq!(SYNC_BYTES, 4 * 1024 * 1024);
        assert_eq!(PROGRESS_EVERY, Duration::from_millis(250));
        assert_eq!(FLUSH_DELAY, Duration::from_millis(20));
        assert_eq!(IDLE_RELEASE, Duration::from_secs(2));
        assert!(!checkpoint_due(CHECKPOINT_BYTES - 1));
        assert!(checkpoint_due(CHECKPOINT_BYTES));
    }

    #[derive(Debug, Clone, Copy)]
    enum Step {
        /// At ms: a chunk leaving `pending` bytes unacknowledged, `done`, expected action.
        Chunk(u64, u64, bool, AckAction),
        /// At ms: poll, expected action.
        Poll(u64, AckAction),
        Acked,
        /// Expected poll_timeout in ms.
        Timeout(u64),
    }

    #[test]
    fn ack_cadence_table() {
        use AckAction::*;
        use Step::*;
        let mib = 1 << 20;
        let cases: &[&[Step]] = &[
            // Idle from the start: released after IDLE_RELEASE.
            &[Timeout(2000), Poll(1999, Wait), Poll(2000, Release)],
            // Small chunks: acknowledged FLUSH_DELAY after the first one.
            &[
                Chunk(0, mib, false, Wait),
                Timeout(20),
                Chunk(10, 2 * mib, false, Wait),
                Timeout(20),
                Poll(19, Wait),
                Poll(20, Ack),
                Acked,
                Timeout(2010),
            ],
            // SYNC_BYTES unacknowledged: at once.
            &[
                Chunk(5, 4 * mib - 1, false, Wait),
                Chunk(6, 4 * mib, false, Ack),
                Acked,
                Poll(30, Wait),
                Timeout(2006),
            ],
            // The last byte: at once.
            &[Chunk(5, 1, true, Ack)],
            // After an ack the next chunk starts a new flush delay.
            &[
                Chunk(0, 1, false, Wait),
                Acked,
                Chunk(100, 1, false, Wait),
                Timeout(120),
                Poll(119, Wait),
                Poll(120, Ack),
            ],
            // Unacknowledged bytes are never released, however long.
            &[Chunk(0, 1, false, Wait), Poll(10_000, Ack)],
        ];
        for (row, steps) in cases.iter().enumerate() {
            let t0 = std::time::Instant::now();
            let at = |ms: u64| t0 + Duration::from_millis(ms);
            let mut c = AckCadence::new(at(0));
            for (i, step) in steps.iter().enumerate() {
                match *step {
                    Chunk(ms, pending, done, want) => {
                        assert_eq!(
                            c.on_chunk(at(ms), pending, done),
                            want,
                            "row {row} step {i}"
                        );
                        assert!(c.has_unacked());
                    }
                    Poll(ms, want) => assert_eq!(c.poll(at(ms)), want, "row {row} step {i}"),
                    Acked => {
                        c.on_acked();
                        assert!(!c.has_unacked());
                    }
                    Timeout(ms) => assert_eq!(c.poll_timeout(), at(ms), "row {row} step {i}"),
                }
            }
        }
    }

    #[test]
    fn progress_throttle() {
        let t0 = std::time::Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut p = ProgressThrottle::new();
        for (ms, due, push) in [
            (0, true, true),
            (100, false, false),
            (249, false, false),
            (250, true, true),
            (300, false, false),
            (400, false, true),
            (649, false, false),
            (650, true, false),
        ] {
            assert_eq!(p.due(at(ms)), due, "{ms}");
            if push {
                p.pushed(at(ms));
            }
        }
    }
}
