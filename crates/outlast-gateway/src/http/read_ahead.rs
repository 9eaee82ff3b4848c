//! Read-ahead for streams read in small pieces: a connection's socket reads go straight into
//! the caller's buffer until a small read comes back full (bytes are streaming in); then
//! reads go through a larger buffer allocated for the burst and freed once a fill comes back
//! short or has to wait (the stream went quiet).
//!
//! Why: an upgraded WebSocket is read by tungstenite at most `read_buffer_size` (1 KiB, kept
//! small for idle connections) per call, so a 1 MiB upload chunk cost ~1,024 system calls.
//! Through this it costs ~16, and an idle connection holds no extra memory.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, ReadBuf};

/// The burst buffer's size.
const BURST: usize = 64 * 1024;
/// Reads into a destination smaller than this may go through the burst buffer; larger ones
/// (hyper's own buffer, 8 KiB and up, which adapts) always go straight to the socket.
const SMALL: usize = 4 * 1024;

/// The read-ahead state of one stream.
#[derive(Debug, Default)]
pub struct ReadAhead {
    /// Allocated only during a burst; `start..end` is what is buffered and not yet handed out.
    buf: Option<Box<[u8]>>,
    start: usize,
    end: usize,
    /// The last fill of the burst buffer was full: keep it for the next.
    full_fill: bool,
    /// The last direct small read filled its destination.
    streaming: bool,
}

impl ReadAhead {
    /// Reads from `inner` into `dst`, through the burst buffer while bytes stream in.
    pub fn poll_read<R: AsyncRead + Unpin>(
        &mut self,
        inner: &mut R,
        cx: &mut Context<'_>,
        dst: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.start < self.end {
            self.hand_out(dst);
            return Poll::Ready(Ok(()));
        }
        let room = dst.remaining();
        if room == 0 {
            return Poll::Ready(Ok(()));
        }
        if !(self.streaming && room < SMALL) {
            let before = dst.filled().len();
            ready!(Pin::new(inner).poll_read(cx, dst))?;
            let got = dst.filled().len() - before;
            self.streaming = got > 0 && got == room;
            return Poll::Ready(Ok(()));
        }
        let buf = self
            .buf
            .get_or_insert_with(|| vec![0u8; BURST].into_boxed_slice());
        let mut fill = ReadBuf::new(buf);
        match Pin::new(inner).poll_read(cx, &mut fill) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => {
                self.release();
                return Poll::Ready(Err(e));
            }
            Poll::Pending => {
                // Nothing waiting: the burst is over, and a waiting connection holds no buffer.
                self.release();
                return Poll::Pending;
            }
        }
        let got = fill.filled().len();
        (self.start, self.end) = (0, got);
        self.full_fill = got == BURST;
        if got == 0 {
            // End of stream: nothing more to buffer.
            self.release();
            return Poll::Ready(Ok(()));
        }
        self.hand_out(dst);
        Poll::Ready(Ok(()))
    }

    /// Copies buffered bytes into `dst`; frees the buffer when drained after a short fill.
    fn hand_out(&mut self, dst: &mut ReadBuf<'_>) {
        let Some(buf) = self.buf.as_deref() else {
            return;
        };
        let n = dst.remaining().min(self.end - self.start);
        dst.put_slice(&buf[self.start..self.start + n]);
        self.start += n;
        if self.start == self.end && !self.full_fill {
            self.release();
        }
    }

    fn release(&mut self) {
        self.buf = None;
        (self.start, self.end) = (0, 0);
        self.full_fill = false;
        self.streaming = false;
    }

    /// Whether a burst buffer is allocated now.
    #[cfg(test)]
    fn holds_buffer(&self) -> bool {
        self.buf.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// Reads through `ra` in `piece`-sized calls until `want` bytes arrived.
    async fn read_pieces<R: AsyncRead + Unpin>(
        ra: &mut ReadAhead,
        r: &mut R,
        piece: usize,
        want: usize,
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let mut chunk = vec![0u8; piece];
        while out.len() < want {
            let mut dst = ReadBuf::new(&mut chunk);
            std::future::poll_fn(|cx| ra.poll_read(r, cx, &mut dst))
                .await
                .expect("reads");
            let n = dst.filled().len();
            assert!(n > 0, "early end after {} bytes", out.len());
            out.extend_from_slice(&chunk[..n]);
        }
        out
    }

    #[tokio::test]
    async fn bytes_arrive_in_order_through_bursts_and_quiet_spells() {
        let (mut tx, mut rx) = tokio::io::duplex(256 * 1024);
        let data: Vec<u8> = (0..600_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let sent = data.clone();
        let writer = tokio::spawn(async move {
            // A burst, then a trickle with pauses, then another burst.
            tx.write_all(&sent[..300_000]).await.expect("writes");
            for piece in sent[300_000..301_000].chunks(100) {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                tx.write_all(piece).await.expect("writes");
            }
            tx.write_all(&sent[301_000..]).await.expect("writes");
            tx
        });
        let mut ra = ReadAhead::default();
        let got = read_pieces(&mut ra, &mut rx, 2048, data.len()).await;
        assert_eq!(got.len(), data.len());
        assert!(got == data, "bytes differ");
        let tx = writer.await.expect("writer");
        drop(tx);
        // The end of the stream reads as 0 bytes and leaves no buffer behind.
        let mut chunk = [0u8; 2048];
        let mut dst = ReadBuf::new(&mut chunk);
        std::future::poll_fn(|cx| ra.poll_read(&mut rx, cx, &mut dst))
            .await
            .expect("reads");
        assert_eq!(dst.filled().len(), 0);
        assert!(!ra.holds_buffer());
    }

    /// Counts the reads that reach the stream below.
    struct Counting<R> {
        inner: R,
        reads: usize,
    }

    impl<R: AsyncRead + Unpin> AsyncRead for Counting<R> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.reads += 1;
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    #[tokio::test]
    async fn a_burst_read_in_small_pieces_takes_few_reads_below() {
        let (mut tx, rx) = tokio::io::duplex(1 << 20);
        let data: Vec<u8> = (0..640_000u32).map(|i| (i % 253) as u8).collect();
        tx.write_all(&data).await.expect("writes");
        let mut rx = Counting {
            inner: rx,
            reads: 0,
        };
        let mut ra = ReadAhead::default();
        let got = read_pieces(&mut ra, &mut rx, 2048, data.len()).await;
        assert!(got == data, "bytes differ");
        // 313 pieces of 2 KiB; through 64 KiB fills that is 10 and the first direct read.
        assert!(rx.reads <= 12, "{} reads below for 313 pieces", rx.reads);
    }

    #[tokio::test]
    async fn a_quiet_stream_frees_the_burst_buffer() {
        let (mut tx, mut rx) = tokio::io::duplex(256 * 1024);
        tx.write_all(&[1u8; 100_000]).await.expect("writes");
        let mut ra = ReadAhead::default();
        let got = read_pieces(&mut ra, &mut rx, 2048, 100_000).await;
        assert_eq!(got.len(), 100_000);
        // The last fill was short (the writer stopped), so the buffer went with it.
        assert!(!ra.holds_buffer());
        // A small message later is read directly.
        tx.write_all(&[2u8; 10]).await.expect("writes");
        let got = read_pieces(&mut ra, &mut rx, 2048, 10).await;
        assert_eq!(got, vec![2u8; 10]);
        assert!(!ra.holds_buffer());
    }
}
