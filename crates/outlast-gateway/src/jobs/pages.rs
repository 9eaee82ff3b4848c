//! One subscriber's read of a job's stored history, a page at a time: the WebSocket's
//! `subscribe` and catch-up, SSE and the long poll all read history through [`Pages`], so a
//! client resuming from 0 on a job with a long history never makes the gateway hold it whole.
//!
//! Each page is planned on its own ([`Jobs::open_stream`]): exact, or the snapshot when the
//! history after the position was coalesced since the last page. The next page starts after
//! what the last one delivered, as the [`Cursor`] has it.

use outlast_protocol::replay::Cursor;
use outlast_protocol::{JobId, OwnerId, Seq};

use super::{Jobs, StreamOpen};
use crate::error::AppError;

/// Where a subscriber is in a job's history, and whether stored history is still unread.
#[derive(Debug, Clone)]
pub struct Pages {
    owner: OwnerId,
    job: JobId,
    cursor: Cursor,
    /// Stored events after the cursor may still be unread.
    unread: bool,
}

impl Pages {
    /// A read of `job` for `owner` after `after` (None: from the beginning).
    pub fn new(owner: OwnerId, job: JobId, after: Option<Seq>) -> Self {
        Self {
            owner,
            job,
            cursor: Cursor::new(after),
            unread: true,
        }
    }

    /// The next page after what was delivered; `None` once the stored history (as of the last
    /// read) has been read. The cursor moves past the page.
    pub async fn next(&mut self, jobs: &Jobs) -> Result<Option<StreamOpen>, AppError> {
        if !self.unread {
            return Ok(None);
        }
        let page = jobs
            .open_stream(&self.owner, self.job, Some(self.cursor.position()))
            .await?;
        if let Some(s) = &page.snapshot {
            self.cursor.on_snapshot(s.seq);
        }
        for e in &page.events {
            self.cursor.on_replayed(e.seq);
        }
        self.unread = page.more;
        Ok(Some(page))
    }

    /// Live events missed something (a gap, a lagged channel): read the store again after the
    /// position.
    pub fn reread(&mut self) {
        self.unread = true;
    }

    /// True while stored history after the position may still be unread.
    pub fn unread(&self) -> bool {
        self.unread
    }

    /// The position: everything up to it was delivered.
    pub fn position(&self) -> Seq {
        self.cursor.position()
    }

    /// The cursor, for sorting live events (delivered, duplicate, gap).
    pub fn cursor(&mut self) -> &mut Cursor {
        &mut self.cursor
    }
}
