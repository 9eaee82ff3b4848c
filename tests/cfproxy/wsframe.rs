//! Where WebSocket frames begin and end in a byte stream (RFC 6455 section 5.2), so the edge can
//! put its own close frame between two of the origin's frames instead of inside one. No I/O.

/// The `1001 going away` close frame an edge restart sends (server to client: unmasked).
pub const CLOSE_GOING_AWAY: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];

/// Follows frame boundaries over the bytes of one direction.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frames {
    /// Header bytes of the next frame seen so far.
    header: Vec<u8>,
    /// Payload bytes of the current frame still to come.
    left: u64,
}

impl Frames {
    /// True between two frames (nothing of a frame seen, or the last one complete).
    pub fn at_boundary(&self) -> bool {
        self.header.is_empty() && self.left == 0
    }

    /// Consumes bytes from the start of `bytes`; with `stop_at_boundary`, stops at the first
    /// boundary (possibly at once). Returns how many were consumed.
    pub fn advance(&mut self, bytes: &[u8], stop_at_boundary: bool) -> usize {
        let mut i = 0;
        loop {
            if stop_at_boundary && self.at_boundary() || i == bytes.len() {
                return i;
            }
            if self.left > 0 {
                let take = self.left.min((bytes.len() - i) as u64);
                self.left -= take;
                i += take as usize;
                continue;
            }
            self.header.push(bytes[i]);
            i += 1;
            if let Some(payload) = payload_len(&self.header) {
                self.left = payload;
                self.header.clear();
            }
        }
    }
}

/// The payload length once `header` holds a whole frame header, else None.
fn payload_len(header: &[u8]) -> Option<u64> {
    let (&b1, rest) = header.get(1).map(|b| (b, &header[2..]))?;
    let masked = b1 & 0x80 != 0;
    let (ext, short) = match b1 & 0x7F {
        126 => (2, None),
        127 => (8, None),
        n => (0, Some(u64::from(n))),
    };
    let need = ext + if masked { 4 } else { 0 };
    if rest.len() < need {
        return None;
    }
    Some(short.unwrap_or_else(|| {
        rest[..ext]
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![0x82];
        let m = if masked { 0x80 } else { 0 };
        match payload {
            0..=125 => f.push(m | payload as u8),
            126..=65535 => {
                f.push(m | 126);
                f.extend_from_slice(&(payload as u16).to_be_bytes());
            }
            _ => {
                f.push(m | 127);
                f.extend_from_slice(&(payload as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(7u8, payload));
        f
    }

    #[test]
    fn boundaries_are_found_for_every_length_form_and_split() {
        for (len, masked) in [
            (0, false),
            (5, true),
            (125, false),
            (300, true),
            (70_000, false),
        ] {
            let mut stream = frame(len, masked);
            let first = stream.len();
            stream.extend(frame(3, false));
            for split in [1, 2, first / 2, first - 1, first] {
                let mut f = Frames::default();
                let a = f.advance(&stream[..split], false);
                assert_eq!(a, split);
                assert_eq!(f.at_boundary(), split == first, "{len} split {split}");
                let b = f.advance(&stream[a..], true);
                assert_eq!(a + b, first, "{len}: stops at the end of the first frame");
                assert!(f.at_boundary());
                assert_eq!(f.advance(&stream[first..], false), stream.len() - first);
                assert!(f.at_boundary());
            }
        }
    }
}
