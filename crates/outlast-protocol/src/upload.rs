//! Uploads on the wire: the upload description shared by HTTP and WebSocket answers, the
//! binary chunk frame of WebSocket uploads, and the chunk-size rule for slow links.
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
}
