//! A small, bounds-checked EXIF (TIFF) reader: the orientation tag, and a
//! rebuilt block holding only a whitelisted safe subset of tags.

/// IFD0 tags kept by the safe subset: make, model, date/time, artist, copyright.
const SAFE_IFD0: &[u16] = &[0x010F, 0x0110, 0x0132, 0x013B, 0x8298];
/// Exif sub-IFD tags kept: exposure, aperture, ISO, dates and offsets, flash,
/// focal length, white balance, colour space, lens make/model. No serial
/// numbers, maker notes or user comments.
const SAFE_EXIF: &[u16] = &[
    0x829A, 0x829D, 0x8822, 0x8827, 0x9000, 0x9003, 0x9004, 0x9010, 0x9011, 0x9012, 0x9201, 0x9202,
    0x9204, 0x9207, 0x9209, 0x920A, 0xA001, 0xA402, 0xA403, 0xA405, 0xA406, 0xA433, 0xA434,
];
const TAG_ORIENTATION: u16 = 0x0112;
const TAG_EXIF_IFD: u16 = 0x8769;
const TAG_GPS_IFD: u16 = 0x8825;
/// Largest EXIF block we emit: what fits in one JPEG APP1 segment.
const MAX_OUT: usize = 65_000;

/// A parsed TIFF header over borrowed bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Exif<'a> {
    tiff: &'a [u8],
    big_endian: bool,
}

/// One IFD entry with its value bytes (in the source byte order).
#[derive(Debug, Clone)]
struct Entry<'a> {
    tag: u16,
    kind: u16,
    count: u32,
    value: std::borrow::Cow<'a, [u8]>,
}

fn type_size(kind: u16) -> Option<usize> {
    match kind {
        1 | 2 | 6 | 7 => Some(1),
        3 | 8 => Some(2),
        4 | 9 | 11 => Some(4),
        5 | 10 | 12 => Some(8),
        _ => None,
    }
}

impl<'a> Exif<'a> {
    /// Parses a TIFF header; accepts a leading `Exif\0\0` as some writers add it.
    pub(crate) fn parse(data: &'a [u8]) -> Option<Exif<'a>> {
        let tiff = data.strip_prefix(b"Exif\0\0").unwrap_or(data);
        let big_endian = match tiff.get(0..2)? {
            b"MM" => true,
            b"II" => false,
            _ => return None,
        };
        let exif = Exif { tiff, big_endian };
        if exif.u16_at(2)? != 42 {
            return None;
        }
        Some(exif)
    }

    fn u16_at(&self, at: usize) -> Option<u16> {
        let b: [u8; 2] = self.tiff.get(at..at.checked_add(2)?)?.try_into().ok()?;
        Some(if self.big_endian {
            u16::from_be_bytes(b)
        } else {
            u16::from_le_bytes(b)
        })
    }

    fn u32_at(&self, at: usize) -> Option<u32> {
        let b: [u8; 4] = self.tiff.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }

    fn ifd0_offset(&self) -> Option<usize> {
        self.u32_at(4).map(|o| o as usize)
    }

    /// Reads the entries of the IFD at `offset` (at most 512, as a bound).
    fn entries(&self, offset: usize) -> Option<Vec<Entry<'a>>> {
        let n = usize::from(self.u16_at(offset)?).min(512);
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let at = offset.checked_add(2 + 12 * i)?;
            let tag = self.u16_at(at)?;
            let kind = self.u16_at(at + 2)?;
            let count = self.u32_at(at + 4)?;
            let Some(size) = type_size(kind) else {
                continue;
            };
            let Some(len) = size.checked_mul(count as usize).filter(|&l| l <= MAX_OUT) else {
                continue;
            };
            let value = if len <= 4 {
                self.tiff.get(at + 8..at + 8 + len)
            } else {
                let start = self.u32_at(at + 8)? as usize;
                start
                    .checked_add(len)
                    .and_then(|end| self.tiff.get(start..end))
            };
            if let Some(v) = value {
                out.push(Entry {
                    tag,
                    kind,
                    count,
                    value: std::borrow::Cow::Borrowed(v),
                });
            }
        }
        Some(out)
    }

    /// The orientation tag (1..=8); 1 when absent or invalid.
    pub(crate) fn orientation(&self) -> u8 {
        self.ifd0_offset()
            .and_then(|o| self.entries(o))
            .and_then(|es| {
                es.into_iter()
                    .find(|e| e.tag == TAG_ORIENTATION && e.kind == 3 && e.count == 1)
            })
            .and_then(|e| {
                let b: [u8; 2] = e.value.get(0..2)?.try_into().ok()?;
                Some(if self.big_endian {
                    u16::from_be_bytes(b)
                } else {
                    u16::from_le_bytes(b)
                })
            })
            .filter(|o| (1..=8).contains(o))
            .map_or(1, |o| o as u8)
    }

    fn sub_ifd(&self, ifd0: &[Entry<'a>], tag: u16, allow: Option<&[u16]>) -> Vec<Entry<'a>> {
        let Some(ptr) = ifd0
            .iter()
            .find(|e| e.tag == tag && e.count == 1 && e.kind == 4)
        else {
            return Vec::new();
        };
        let Some(b) = ptr
            .value
            .get(0..4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
        else {
            return Vec::new();
        };
        let off = if self.big_endian {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        } as usize;
        let mut es = self.entries(off).unwrap_or_default();
        es.retain(|e| allow.is_none_or(|a| a.contains(&e.tag)));
        es
    }

    /// A new TIFF block with only the safe subset (plus GPS when asked) and
    /// orientation 1, since the pixels are rotated. `None` if nothing is left.
    pub(crate) fn safe_subset(&self, gps: bool) -> Option<Vec<u8>> {
        let ifd0_all = self.entries(self.ifd0_offset()?)?;
        let mut ifd0: Vec<Entry<'a>> = ifd0_all
            .iter()
            .filter(|e| SAFE_IFD0.contains(&e.tag))
            .cloned()
            .collect();
        let exif = self.sub_ifd(&ifd0_all, TAG_EXIF_IFD, Some(SAFE_EXIF));
        // GPS entries are all plain values (no pointers), so copying them is safe.
        let gps = if gps {
            self.sub_ifd(&ifd0_all, TAG_GPS_IFD, None)
        } else {
            Vec::new()
        };
        if ifd0.is_empty() && exif.is_empty() && gps.is_empty() {
            return None;
        }
        let one = self.short(1);
        ifd0.push(Entry {
            tag: TAG_ORIENTATION,
            kind: 3,
            count: 1,
            value: one.into(),
        });
        // Pointer placeholders; their values are patched once the layout is known.
        if !exif.is_empty() {
            ifd0.push(self.long_entry(TAG_EXIF_IFD, 0));
        }
        if !gps.is_empty() {
            ifd0.push(self.long_entry(TAG_GPS_IFD, 0));
        }
        ifd0.sort_by_key(|e| e.tag);
        let exif_at = 8 + ifd_size(&ifd0);
        let gps_at = exif_at + if exif.is_empty() { 0 } else { ifd_size(&exif) };
        for e in &mut ifd0 {
            if e.tag == TAG_EXIF_IFD {
                *e = self.long_entry(TAG_EXIF_IFD, exif_at as u32);
            } else if e.tag == TAG_GPS_IFD {
                *e = self.long_entry(TAG_GPS_IFD, gps_at as u32);
            }
        }
        let mut out = Vec::with_capacity(gps_at + ifd_size(&gps));
        out.extend_from_slice(if self.big_endian { b"MM" } else { b"II" });
        out.extend_from_slice(&self.short(42));
        out.extend_from_slice(&self.long(8));
        self.write_ifd(&mut out, &ifd0);
        if !exif.is_empty() {
            self.write_ifd(&mut out, &exif);
        }
        if !gps.is_empty() {
            self.write_ifd(&mut out, &gps);
        }
        (out.len() <= MAX_OUT).then_some(out)
    }

    fn short(&self, v: u16) -> Vec<u8> {
        if self.big_endian {
            v.to_be_bytes().to_vec()
        } else {
            v.to_le_bytes().to_vec()
        }
    }

    fn long(&self, v: u32) -> [u8; 4] {
        if self.big_endian {
            v.to_be_bytes()
        } else {
            v.to_le_bytes()
        }
    }

    fn long_entry(&self, tag: u16, v: u32) -> Entry<'a> {
        Entry {
            tag,
            kind: 4,
            count: 1,
            value: self.long(v).to_vec().into(),
        }
    }

    /// Writes an IFD at the end of `out`; values over 4 bytes follow the
    /// entry table, each at an even offset.
    fn write_ifd(&self, out: &mut Vec<u8>, entries: &[Entry<'_>]) {
        let start = out.len();
        let mut data_at = start + 2 + 12 * entries.len() + 4;
        let mut data = Vec::new();
        out.extend_from_slice(&self.short(entries.len() as u16));
        for e in entries {
            out.extend_from_slice(&self.short(e.tag));
            out.extend_from_slice(&self.short(e.kind));
            out.extend_from_slice(&self.long(e.count));
            if e.value.len() <= 4 {
                let mut inline = [0u8; 4];
                inline[..e.value.len()].copy_from_slice(&e.value);
                out.extend_from_slice(&inline);
            } else {
                out.extend_from_slice(&self.long(data_at as u32));
                data.extend_from_slice(&e.value);
                if e.value.len() % 2 == 1 {
                    data.push(0);
                }
                data_at = start + 2 + 12 * entries.len() + 4 + data.len();
            }
        }
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(&data);
    }
}

fn ifd_size(entries: &[Entry<'_>]) -> usize {
    let data: usize = entries
        .iter()
        .filter(|e| e.value.len() > 4)
        .map(|e| e.value.len().div_ceil(2) * 2)
        .sum();
    2 + 12 * entries.len() + 4 + data
}

#[cfg(test)]
mod tests {
    use super::*;

    fn le_tiff_with(orientation: u16) -> Vec<u8> {
        let mut t = b"II\x2a\x00\x08\x00\x00\x00".to_vec();
        t.extend_from_slice(&1u16.to_le_bytes());
        t.extend_from_slice(&TAG_ORIENTATION.to_le_bytes());
        t.extend_from_slice(&3u16.to_le_bytes());
        t.extend_from_slice(&1u32.to_le_bytes());
        t.extend_from_slice(&orientation.to_le_bytes());
        t.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        t
    }

    #[test]
    fn reads_orientation_and_rejects_garbage() {
        for o in 1..=8 {
            assert_eq!(
                Exif::parse(&le_tiff_with(o)).map(|e| e.orientation()),
                Some(o as u8)
            );
        }
        assert_eq!(
            Exif::parse(&le_tiff_with(9)).map(|e| e.orientation()),
            Some(1)
        );
        assert!(Exif::parse(b"garbage").is_none());
        let t = le_tiff_with(6);
        for cut in 0..t.len() {
            let _ = Exif::parse(&t[..cut]).map(|e| (e.orientation(), e.safe_subset(true)));
        }
    }
}
