//! Just enough HTTP/1.1 for an edge: request and response heads (parsed with `httparse`), how a
//! message's body is framed (RFC 9112 section 6), and a scanner that finds where a chunked body
//! ends without changing a byte of it. No I/O here: the connection driver feeds bytes in.

/// Largest request or response head the edge accepts (Cloudflare's header limit is 32 KB).
pub const MAX_HEAD: usize = 32 * 1024;

/// Headers looked at per message; more is answered like an oversized head.
const MAX_HEADERS: usize = 128;

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the sender closes (responses only).
    UntilClose,
}

/// Why a head was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Larger than [`MAX_HEAD`] or more than [`MAX_HEADERS`] headers.
    TooLarge,
    /// Not HTTP/1.1 as the edge reads it (bad syntax, conflicting lengths, unknown coding).
    Invalid,
}

/// What the edge needs to know of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// Bytes of the head, up to and including the blank line.
    pub len: usize,
    /// `HEAD` requests get responses without a body.
    pub is_head: bool,
    /// How the body is framed.
    pub body: Body,
    /// `Upgrade: websocket`.
    pub websocket: bool,
    /// `Accept` names `text/event-stream`.
    pub accepts_event_stream: bool,
}

/// What the edge needs to know of a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// Bytes of the head, up to and including the blank line.
    pub len: usize,
    /// The status code.
    pub status: u16,
    /// How the body is framed (given the request's method).
    pub body: Body,
}

/// Parses a request head at the start of `buf`; `Ok(None)` means more bytes are needed.
pub fn parse_request(buf: &[u8]) -> Result<Option<RequestHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Invalid),
    };
    if len > MAX_HEAD {
        return Err(HeadError::TooLarge);
    }
    let body = match framing(req.headers)? {
        Some(b) => b,
        None => Body::None,
    };
    Ok(Some(RequestHead {
        len,
        is_head: req.method == Some("HEAD"),
        body,
        websocket: has_token(req.headers, "upgrade", "websocket"),
        accepts_event_stream: has_token(req.headers, "accept", "text/event-stream"),
    }))
}

/// Parses a response head at the start of `buf` to a request that was (`is_head`) a `HEAD`;
/// `Ok(None)` means more bytes are needed.
pub fn parse_response(buf: &[u8], is_head: bool) -> Result<Option<ResponseHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Invalid),
    };
    let status = resp.code.ok_or(HeadError::Invalid)?;
    let body = if is_head || (100..200).contains(&status) || status == 204 || status == 304 {
        Body::None
    } else {
        framing(resp.headers)?.unwrap_or(Body::UntilClose)
    };
    Ok(Some(ResponseHead { len, status, body }))
}

/// The body framing the headers declare: chunked wins over a length; None when neither is set.
fn framing(headers: &[httparse::Header<'_>]) -> Result<Option<Body>, HeadError> {
    let mut length: Option<u64> = None;
    let mut chunked = false;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let value = std::str::from_utf8(h.value).map_err(|_| HeadError::Invalid)?;
            // Only `chunked` as the final coding delimits a body the edge can follow.
            let last = value.rsplit(',').next().unwrap_or("").trim();
            if !last.eq_ignore_ascii_case("chunked") {
                return Err(HeadError::Invalid);
            }
            chunked = true;
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(h.value).map_err(|_| HeadError::Invalid)?;
            let n: u64 = value.trim().parse().map_err(|_| HeadError::Invalid)?;
            if length.is_some_and(|l| l != n) {
                return Err(HeadError::Invalid);
            }
            length = Some(n);
        }
    }
    Ok(if chunked {
        Some(Body::Chunked)
    } else {
        length.map(Body::Length)
    })
}

/// A comma-separated header `name` lists `token` (case-insensitive).
fn has_token(headers: &[httparse::Header<'_>], name: &str, token: &str) -> bool {
    headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case(name)
            && String::from_utf8_lossy(h.value)
                .split(',')
                .any(|t| t.trim().to_ascii_lowercase().starts_with(token))
    })
}

/// A chunked body is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Reading the hex size (`digits` so far); `ext` once a `;` started an extension.
    Size {
        value: u64,
        digits: u8,
        ext: bool,
    },
    /// The size line's `\r` arrived; `\n` is next.
    SizeLf(u64),
    /// Inside a chunk's data: bytes left.
    Data(u64),
    /// After the data: `\r` then `\n`.
    DataCr,
    DataLf,
    /// Trailer section: bytes on the current line (0: an empty line ends the body).
    Trailer(usize),
    TrailerLf(usize),
    /// The body ended.
    Done,
}

/// Follows a chunked body through its framing: where it ends, and how many data bytes it held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkedScan {
    state: Chunk,
    /// Data bytes (chunk payloads) seen so far.
    pub data_bytes: u64,
}

impl Default for ChunkedScan {
    fn default() -> Self {
        ChunkedScan {
            state: Chunk::Size {
                value: 0,
                digits: 0,
                ext: false,
            },
            data_bytes: 0,
        }
    }
}

impl ChunkedScan {
    /// True once the last chunk and the trailers went by.
    pub fn done(&self) -> bool {
        self.state == Chunk::Done
    }

    /// Consumes bytes of the body from the start of `bytes`, stopping where the body ends;
    /// returns how many belong to it.
    pub fn advance(&mut self, bytes: &[u8]) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            self.state = match self.state {
                Chunk::Done => return Ok(i),
                Chunk::Data(left) => {
                    let take = left.min((bytes.len() - i) as u64);
                    self.data_bytes += take;
                    i += take as usize;
                    self.state = if take == left {
                        Chunk::DataCr
                    } else {
                        Chunk::Data(left - take)
                    };
                    continue;
                }
                Chunk::Size { value, digits, ext } => match b {
                    b'\r' if digits > 0 => Chunk::SizeLf(value),
                    _ if ext => Chunk::Size { value, digits, ext },
                    b';' if digits > 0 => Chunk::Size {
                        value,
                        digits,
                        ext: true,
                    },
                    b' ' | b'\t' if digits > 0 => Chunk::Size { value, digits, ext },
                    _ => {
                        let d = (b as char).to_digit(16).ok_or(ChunkError)?;
                        if digits >= 15 {
                            return Err(ChunkError);
                        }
                        Chunk::Size {
                            value: value * 16 + u64::from(d),
                            digits: digits + 1,
                            ext,
                        }
                    }
                },
                Chunk::SizeLf(0) if b == b'\n' => Chunk::Trailer(0),
                Chunk::SizeLf(n) if b == b'\n' => Chunk::Data(n),
                Chunk::DataCr if b == b'\r' => Chunk::DataLf,
                Chunk::DataLf if b == b'\n' => Chunk::Size {
                    value: 0,
                    digits: 0,
                    ext: false,
                },
                Chunk::Trailer(n) if b == b'\r' => Chunk::TrailerLf(n),
                Chunk::Trailer(n) => Chunk::Trailer(n + 1),
                Chunk::TrailerLf(0) if b == b'\n' => Chunk::Done,
                Chunk::TrailerLf(_) if b == b'\n' => Chunk::Trailer(0),
                _ => return Err(ChunkError),
            };
            i += 1;
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_framing_table() {
        let cases: &[(&str, Result<Option<Body>, HeadError>)] = &[
            ("GET / HTTP/1.1\r\nHost: a\r\n\r\n", Ok(Some(Body::None))),
            (
                "PATCH /u HTTP/1.1\r\nContent-Length: 12\r\n\r\n",
                Ok(Some(Body::Length(12))),
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                Ok(Some(Body::Chunked)),
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n",
                Ok(Some(Body::Chunked)),
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
                Err(HeadError::Invalid),
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                Err(HeadError::Invalid),
            ),
            ("POST / HTTP/1.1\r\nContent-Le", Ok(None)),
        ];
        for (text, want) in cases {
            let got = parse_request(text.as_bytes()).map(|h| h.map(|h| h.body));
            assert_eq!(&got, want, "{text:?}");
        }
        let text = b"GET /v1/ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: WebSocket\r\n\r\nrest";
        let ws = parse_request(text).unwrap().unwrap();
        assert!(ws.websocket);
        assert_eq!(ws.len, text.len() - 4);
        let sse = parse_request(b"GET / HTTP/1.1\r\nAccept: text/event-stream\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(sse.accepts_event_stream && !sse.websocket);
        let big = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(parse_request(big.as_bytes()), Err(HeadError::TooLarge));
    }

    #[test]
    fn response_framing_table() {
        let cases: &[(&str, bool, Body)] = &[
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                false,
                Body::Length(5),
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
                true,
                Body::None,
            ),
            ("HTTP/1.1 204 No Content\r\n\r\n", false, Body::None),
            (
                "HTTP/1.1 101 Switching Protocols\r\n\r\n",
                false,
                Body::None,
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", false, Body::UntilClose),
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false,
                Body::Chunked,
            ),
        ];
        for (text, is_head, want) in cases {
            let got = parse_response(text.as_bytes(), *is_head).unwrap().unwrap();
            assert_eq!(got.body, *want, "{text:?}");
            assert_eq!(got.len, text.len());
        }
    }

    #[test]
    fn chunked_scan_finds_the_end_in_any_split() {
        let body = b"5;ext=1\r\nhello\r\n0B\r\n world plus\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let end = body.len() - 4;
        for split in 0..=body.len() {
            let mut scan = ChunkedScan::default();
            let a = scan.advance(&body[..split]).unwrap();
            let b = scan.advance(&body[a..]).unwrap();
            assert_eq!(a + b, end, "split at {split}");
            assert!(scan.done());
            assert_eq!(scan.data_bytes, 5 + 11);
        }
        let mut scan = ChunkedScan::default();
        assert_eq!(scan.advance(b"zz\r\n"), Err(ChunkError));
        let mut scan = ChunkedScan::default();
        assert_eq!(scan.advance(b"3\r\nabcX"), Err(ChunkError));
    }
}
