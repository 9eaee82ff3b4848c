//! Lossless Huffman-table optimization of a baseline JPEG (what `jpegtran
//! -optimize` does): the entropy-coded data is decoded to symbols, optimal
//! tables are built from their frequencies (JPEG Annex K.2), and the scan is
//! re-encoded. Used on the encoder's interleaved output so files stay
//! single-scan baseline (readable by every decoder) yet ~15 % smaller.
//!
//! Anything outside the shape our encoder writes (progressive, restart
//! markers, non-interleaved scans, 12-bit) returns `None` and the caller
//! keeps the original bytes.

/// One decoded entropy-coding event: which table, the symbol, and the extra
/// bits that follow it.
#[derive(Debug, Clone, Copy)]
struct Event {
    /// 0..=3 DC tables, 4..=7 AC tables.
    table: u8,
    symbol: u8,
    extra_len: u8,
    extra: u16,
}

/// A Huffman table as stored in a DHT segment.
#[derive(Debug, Clone, Default)]
struct Table {
    /// Number of codes of each length 1..=16.
    bits: [u8; 16],
    values: Vec<u8>,
}

/// Bits looked up at once by the fast decoding path.
const FAST_BITS: u32 = 9;

/// Decoding view of a table (JPEG Annex F.2.2.3) plus a lookup table for
/// codes of up to `FAST_BITS` bits: (length, symbol), length 0 = slow path.
#[derive(Debug)]
struct Decoder {
    fast: Vec<(u8, u8)>,
    max_code: [i32; 17],
    val_ptr: [i32; 17],
    min_code: [i32; 17],
    values: Vec<u8>,
}

impl Decoder {
    fn new(t: &Table) -> Decoder {
        let mut d = Decoder {
            fast: vec![(0, 0); 1 << FAST_BITS],
            max_code: [-1; 17],
            val_ptr: [0; 17],
            min_code: [0; 17],
            values: t.values.clone(),
        };
        let (mut code, mut k) = (0i32, 0i32);
        for len in 1..=16 {
            let n = i32::from(t.bits[len - 1]);
            if n > 0 {
                d.val_ptr[len] = k;
                d.min_code[len] = code;
                code += n;
                k += n;
                d.max_code[len] = code - 1;
                if len as u32 <= FAST_BITS {
                    let first = d.min_code[len];
                    for c in first..code {
                        let sym = t.values.get((d.val_ptr[len] + c - first) as usize).copied();
                        let shift = FAST_BITS - len as u32;
                        let start = (c as usize) << shift;
                        for e in d.fast.iter_mut().skip(start).take(1 << shift) {
                            *e = (len as u8, sym.unwrap_or(0));
                        }
                    }
                }
            }
            code <<= 1;
        }
        d
    }
}

/// Reads bits MSB-first from unstuffed entropy data; past the end it reads
/// zeros, and `overrun` tells the caller the data was too short.
struct BitReader<'a> {
    data: &'a [u8],
    pos: usize,
    /// Next bits, left-aligned.
    acc: u64,
    count: u32,
}

impl BitReader<'_> {
    fn refill(&mut self) {
        while self.count <= 56 {
            let b = self.data.get(self.pos).copied().unwrap_or(0);
            self.pos += 1;
            self.acc |= u64::from(b) << (56 - self.count);
            self.count += 8;
        }
    }

    fn consume(&mut self, n: u32) {
        self.acc <<= n;
        self.count -= n;
    }

    fn overrun(&self) -> bool {
        (self.pos * 8).saturating_sub(self.count as usize) > self.data.len() * 8
    }

    fn bits(&mut self, n: u8) -> Option<u16> {
        if n == 0 {
            return Some(0);
        }
        if n > 16 {
            return None;
        }
        self.refill();
        let v = (self.acc >> (64 - u32::from(n))) as u16;
        self.consume(u32::from(n));
        Some(v)
    }

    fn decode(&mut self, d: &Decoder) -> Option<u8> {
        self.refill();
        let (len, sym) = d.fast[(self.acc >> (64 - FAST_BITS)) as usize];
        if len > 0 {
            self.consume(u32::from(len));
            return Some(sym);
        }
        for len in FAST_BITS as usize + 1..=16 {
            let code = (self.acc >> (64 - len)) as i32;
            if code <= d.max_code[len] {
                self.consume(len as u32);
                let idx = d.val_ptr[len] + code - d.min_code[len];
                return d.values.get(usize::try_from(idx).ok()?).copied();
            }
        }
        None
    }
}

/// Writes bits MSB-first; with `stuff`, a 0x00 follows every 0xFF byte as
/// entropy-coded data requires.
struct BitWriter {
    out: Vec<u8>,
    acc: u64,
    count: u32,
    stuff: bool,
}

impl BitWriter {
    fn unstuffed(capacity: usize) -> BitWriter {
        BitWriter {
            out: Vec::with_capacity(capacity),
            acc: 0,
            count: 0,
            stuff: false,
        }
    }

    fn put(&mut self, value: u32, len: u8) {
        if len == 0 {
            return;
        }
        self.acc = (self.acc << len) | u64::from(value & ((1u32 << len) - 1));
        self.count += u32::from(len);
        while self.count >= 8 {
            self.count -= 8;
            let byte = (self.acc >> self.count) as u8;
            self.out.push(byte);
            if byte == 0xFF && self.stuff {
                self.out.push(0);
            }
        }
    }

    /// The whole bytes written and the bits after them: (bytes, bits, count < 8).
    fn into_parts(self) -> (Vec<u8>, u32, u8) {
        let tail = (self.acc & ((1 << self.count) - 1)) as u32;
        (self.out, tail, self.count as u8)
    }

    fn finish(mut self) -> Vec<u8> {
        let pad = (8 - self.count % 8) % 8;
        self.put((1u32 << pad) - 1, pad as u8);
        self.out
    }
}

/// Optimal code lengths for `freq` (JPEG Annex K.2, with the reserved
/// all-ones code and the 16-bit limit), as a DHT table.
fn optimal_table(freq: &[u32; 256]) -> Table {
    let mut f = [0u64; 257];
    for (i, &v) in freq.iter().enumerate() {
        f[i] = u64::from(v);
    }
    f[256] = 1;
    let mut size = [0u32; 257];
    let mut others = [-1i32; 257];
    loop {
        // The two least frequent (ties: the larger index, as libjpeg does).
        let (mut c1, mut v1) = (u64::MAX, usize::MAX);
        for (i, &v) in f.iter().enumerate() {
            if v > 0 && v <= c1 {
                (c1, v1) = (v, i);
            }
        }
        let (mut c2, mut v2) = (u64::MAX, usize::MAX);
        for (i, &v) in f.iter().enumerate() {
            if v > 0 && v <= c2 && i != v1 {
                (c2, v2) = (v, i);
            }
        }
        if v2 == usize::MAX {
            break;
        }
        f[v1] += f[v2];
        f[v2] = 0;
        let mut v = v1;
        size[v] += 1;
        while others[v] >= 0 {
            v = others[v] as usize;
            size[v] += 1;
        }
        others[v] = v2 as i32;
        let mut v = v2;
        size[v] += 1;
        while others[v] >= 0 {
            v = others[v] as usize;
            size[v] += 1;
        }
    }
    let mut bits = [0u32; 33];
    for &s in &size {
        if s > 0 {
            bits[s.min(32) as usize] += 1;
        }
    }
    for i in (17..=32).rev() {
        while bits[i] > 0 {
            let mut j = i - 2;
            while bits[j] == 0 {
                j -= 1;
            }
            bits[i] -= 2;
            bits[i - 1] += 1;
            bits[j + 1] += 2;
            bits[j] -= 1;
        }
    }
    // Drop the reserved code point from the longest length.
    let mut i = 16;
    while i > 0 && bits[i] == 0 {
        i -= 1;
    }
    bits[i] = bits[i].saturating_sub(1);
    let mut values = Vec::new();
    for len in 1..=32 {
        for (sym, &s) in size.iter().enumerate().take(256) {
            if s == len {
                values.push(sym as u8);
            }
        }
    }
    let mut table = Table::default();
    for (slot, &n) in table.bits.iter_mut().zip(&bits[1..=16]) {
        *slot = n as u8;
    }
    table.values = values;
    table
}

/// (code, length) per symbol for a table (JPEG Annex C).
fn encoding(t: &Table) -> [(u16, u8); 256] {
    let mut codes = [(0u16, 0u8); 256];
    let (mut code, mut k) = (0u32, 0usize);
    for len in 1..=16u8 {
        for _ in 0..t.bits[usize::from(len) - 1] {
            if let Some(&sym) = t.values.get(k) {
                codes[usize::from(sym)] = (code as u16, len);
            }
            code += 1;
            k += 1;
        }
        code <<= 1;
    }
    codes
}

fn be16(b: &[u8], at: usize) -> Option<usize> {
    Some(usize::from(*b.get(at)?) << 8 | usize::from(*b.get(at + 1)?))
}

/// Rewrites `jpeg` with optimal Huffman tables; `None` if it is not the
/// simple baseline shape this handles.
pub(crate) fn optimize(jpeg: &[u8]) -> Option<Vec<u8>> {
    let scan = read(jpeg)?;
    let height = scan.height;
    join(vec![scan], height)
}

/// One baseline JPEG file's entropy-coded data as events, plus what is
/// needed to join several such files (horizontal bands of one image) into
/// one file with one scan.
#[derive(Debug)]
pub(crate) struct Scan {
    /// SOI and every segment before the scan except DHT, frame header included.
    prefix: Vec<u8>,
    /// Offset in `prefix` of the frame header's 16-bit height.
    height_at: usize,
    width: usize,
    height: usize,
    /// Pixel rows per MCU row.
    mcu_rows: usize,
    /// The SOS segment.
    sos: Vec<u8>,
    /// Which of the 8 table slots (4 DC, 4 AC) the file defines.
    defined: [bool; 8],
    events: Vec<Event>,
    freq: [[u32; 256]; 8],
    /// Per scan component: index in `events` of its first DC event.
    first_dc: Vec<usize>,
    /// Per scan component: the DC value of its last block.
    last_dc: Vec<i32>,
}

/// The value of a coefficient coded as category `s` with extra bits `v`
/// (JPEG F.2.2.1, EXTEND).
fn extend(v: u16, s: u8) -> i32 {
    if s == 0 {
        return 0;
    }
    let v = i32::from(v);
    if v < 1 << (s - 1) {
        v - (1 << s) + 1
    } else {
        v
    }
}

/// Category and extra bits coding `d` (the inverse of [`extend`]).
fn category(d: i32) -> (u8, u16) {
    let s = (32 - d.unsigned_abs().leading_zeros()) as u8;
    let extra = if d < 0 { d + (1 << s) - 1 } else { d };
    (s, extra as u16)
}

/// Reads a baseline, single-scan, interleaved JPEG into events; `None` for
/// any other shape (progressive, restart markers, 12-bit, damaged).
pub(crate) fn read(jpeg: &[u8]) -> Option<Scan> {
    if jpeg.get(0..2)? != [0xFF, 0xD8] {
        return None;
    }
    let mut tables: [Option<Table>; 8] = Default::default();
    // (id, h, v) per frame component.
    let mut components: Vec<(u8, u8, u8)> = Vec::new();
    let (mut width, mut height) = (0usize, 0usize);
    let mut prefix = vec![0xFF, 0xD8];
    let mut height_at = None;
    let mut at = 2;
    let (sos_at, sos_len) = loop {
        if *jpeg.get(at)? != 0xFF {
            return None;
        }
        let marker = *jpeg.get(at + 1)?;
        let len = be16(jpeg, at + 2)?;
        let body = jpeg.get(at + 4..at + 2 + len)?;
        match marker {
            0xDA => break (at, len),
            0xC0 => {
                if body.first()? != &8 || height_at.is_some() {
                    return None;
                }
                height = be16(body, 1)?;
                width = be16(body, 3)?;
                let n = usize::from(*body.get(5)?);
                for c in 0..n {
                    let id = *body.get(6 + 3 * c)?;
                    let hv = *body.get(7 + 3 * c)?;
                    components.push((id, hv >> 4, hv & 15));
                }
                height_at = Some(prefix.len() + 5);
                prefix.extend_from_slice(jpeg.get(at..at + 2 + len)?);
            }
            0xC4 => {
                let mut p = 0;
                while p < body.len() {
                    let tc_th = *body.get(p)?;
                    let slot = usize::from(tc_th >> 4) * 4 + usize::from(tc_th & 3);
                    if tc_th >> 4 > 1 {
                        return None;
                    }
                    let mut t = Table::default();
                    t.bits.copy_from_slice(body.get(p + 1..p + 17)?);
                    let n: usize = t.bits.iter().map(|&b| usize::from(b)).sum();
                    t.values = body.get(p + 17..p + 17 + n)?.to_vec();
                    tables[slot] = Some(t);
                    p += 17 + n;
                }
            }
            // Restart intervals, progressive or other frame types: leave alone.
            0xDD | 0xC1..=0xC3 | 0xC5..=0xCF => return None,
            _ => prefix.extend_from_slice(jpeg.get(at..at + 2 + len)?),
        }
        at += 2 + len;
    };
    let height_at = height_at?;
    let sos = jpeg.get(sos_at + 4..sos_at + 2 + sos_len)?;
    let ns = usize::from(*sos.first()?);
    if ns != components.len() || ns == 0 || ns > 4 || width == 0 || height == 0 {
        return None;
    }
    // (dc slot, ac slot, blocks h, blocks v) per scan component, frame order.
    let mut scan = Vec::with_capacity(ns);
    for (i, comp) in components.iter().enumerate() {
        let (id, sel) = (*sos.get(1 + 2 * i)?, *sos.get(2 + 2 * i)?);
        if id != comp.0 {
            return None;
        }
        scan.push((
            usize::from(sel >> 4),
            4 + usize::from(sel & 15),
            comp.1,
            comp.2,
        ));
    }
    let decoders: Vec<Option<Decoder>> = tables
        .iter()
        .map(|t| t.as_ref().map(Decoder::new))
        .collect();
    // Unstuff the entropy-coded segment up to the first marker.
    let data_start = sos_at + 2 + sos_len;
    let mut data = Vec::with_capacity(jpeg.len() - data_start);
    let mut p = data_start;
    let tail_at = loop {
        let b = *jpeg.get(p)?;
        if b == 0xFF {
            match *jpeg.get(p + 1)? {
                0x00 => {
                    data.push(0xFF);
                    p += 2;
                }
                _ => break p,
            }
        } else {
            data.push(b);
            p += 1;
        }
    };
    if jpeg.get(tail_at..)? != [0xFF, 0xD9] {
        return None;
    }
    let hmax = usize::from(components.iter().map(|c| c.1).max()?);
    let vmax = usize::from(components.iter().map(|c| c.2).max()?);
    if hmax == 0 || vmax == 0 {
        return None;
    }
    let mcus = width.div_ceil(8 * hmax) * height.div_ceil(8 * vmax);
    let mut reader = BitReader {
        data: &data,
        pos: 0,
        acc: 0,
        count: 0,
    };
    let mut events = Vec::with_capacity(data.len());
    let mut freq = [[0u32; 256]; 8];
    let mut first_dc = vec![usize::MAX; ns];
    let mut last_dc = vec![0i32; ns];
    for _ in 0..mcus {
        for (ci, &(dc, ac, h, v)) in scan.iter().enumerate() {
            for _ in 0..usize::from(h) * usize::from(v) {
                let s = reader.decode(decoders[dc].as_ref()?)?;
                if s > 11 {
                    return None;
                }
                let extra = reader.bits(s)?;
                if first_dc[ci] == usize::MAX {
                    first_dc[ci] = events.len();
                }
                last_dc[ci] += extend(extra, s);
                events.push(Event {
                    table: dc as u8,
                    symbol: s,
                    extra_len: s,
                    extra,
                });
                freq[dc][usize::from(s)] += 1;
                let mut k = 1;
                while k < 64 {
                    let rs = reader.decode(decoders[ac].as_ref()?)?;
                    let (r, s) = (rs >> 4, rs & 15);
                    let extra = reader.bits(s)?;
                    events.push(Event {
                        table: ac as u8,
                        symbol: rs,
                        extra_len: s,
                        extra,
                    });
                    freq[ac][usize::from(rs)] += 1;
                    if s == 0 {
                        if r == 15 {
                            k += 16;
                            continue;
                        }
                        break;
                    }
                    k += usize::from(r) + 1;
                }
                if k > 64 {
                    return None;
                }
            }
        }
    }
    if reader.overrun() || first_dc.contains(&usize::MAX) {
        return None;
    }
    Some(Scan {
        prefix,
        height_at,
        width,
        height,
        mcu_rows: 8 * vmax,
        sos: jpeg.get(sos_at..data_start)?.to_vec(),
        defined: std::array::from_fn(|i| tables[i].is_some()),
        events,
        freq,
        first_dc,
        last_dc,
    })
}

/// Joins the scans of horizontal bands of one image, top to bottom, into one
/// baseline file with optimal Huffman tables; the first band's header
/// segments are kept (with the total height). Every band but the last must
/// be a whole number of MCU rows; all must share width and scan layout.
///
/// Each band was coded with its own DC predictors starting at zero; the
/// first DC difference of every component is recoded against the previous
/// band's last DC value and the bit streams are concatenated, so the result
/// is exactly the file a single encode of the whole image would give. The
/// re-encoding of the bands runs on the workers.
pub(crate) fn join(mut scans: Vec<Scan>, height: usize) -> Option<Vec<u8>> {
    let first = scans.first()?;
    let n = scans.len();
    if scans.iter().map(|s| s.height).sum::<usize>() != height {
        return None;
    }
    for (i, s) in scans.iter().enumerate() {
        let whole_rows = i + 1 == n || s.height % s.mcu_rows == 0;
        if s.width != first.width
            || s.mcu_rows != first.mcu_rows
            || s.sos != first.sos
            || s.defined != first.defined
            || !whole_rows
        {
            return None;
        }
    }
    // Recode each band's first DC differences against the band above.
    for k in 1..n {
        let above = scans[k - 1].last_dc.clone();
        let band = &mut scans[k];
        for (c, &pred) in above.iter().enumerate() {
            let e = band.events.get_mut(band.first_dc[c])?;
            let (s, extra) = category(extend(e.extra, e.extra_len) - pred);
            if s > 11 {
                return None;
            }
            band.freq[usize::from(e.table)][usize::from(e.symbol)] -= 1;
            band.freq[usize::from(e.table)][usize::from(s)] += 1;
            (e.symbol, e.extra_len, e.extra) = (s, s, extra);
        }
    }
    let mut freq = [[0u32; 256]; 8];
    for s in &scans {
        for (total, f) in freq.iter_mut().zip(&s.freq) {
            for (t, v) in total.iter_mut().zip(f) {
                *t += v;
            }
        }
    }
    let defined = scans.first()?.defined;
    let new_tables: Vec<Option<Table>> = (0..8)
        .map(|i| defined[i].then(|| optimal_table(&freq[i])))
        .collect();
    let codes: Vec<[(u16, u8); 256]> = new_tables
        .iter()
        .map(|t| t.as_ref().map_or([(0, 0); 256], encoding))
        .collect();
    let head = scans.first()?;
    let mut out = head.prefix.clone();
    let total_height = u16::try_from(height).ok()?.to_be_bytes();
    out.get_mut(head.height_at..head.height_at + 2)?
        .copy_from_slice(&total_height);
    let sos = head.sos.clone();
    // Each band's bits, unstuffed: whole bytes plus the bits left over.
    let parts = crate::workers::map(scans, |scan| {
        let mut w = BitWriter::unstuffed(scan.events.len());
        for e in &scan.events {
            let (code, len) = codes[usize::from(e.table)][usize::from(e.symbol)];
            if len == 0 {
                return None;
            }
            w.put(u32::from(code), len);
            w.put(u32::from(e.extra), e.extra_len);
        }
        Some(w.into_parts())
    });
    let mut dht = Vec::new();
    for (slot, t) in new_tables.iter().enumerate() {
        if let Some(t) = t {
            dht.push(((slot / 4) << 4 | (slot % 4)) as u8);
            dht.extend_from_slice(&t.bits);
            dht.extend_from_slice(&t.values);
        }
    }
    out.extend_from_slice(&[0xFF, 0xC4]);
    out.extend_from_slice(&u16::try_from(dht.len() + 2).ok()?.to_be_bytes());
    out.extend_from_slice(&dht);
    out.extend_from_slice(&sos);
    let mut writer = BitWriter {
        out,
        acc: 0,
        count: 0,
        stuff: true,
    };
    for part in parts {
        let (bytes, tail, tail_len) = part?;
        for &b in &bytes {
            writer.put(u32::from(b), 8);
        }
        writer.put(tail, tail_len);
    }
    let mut out = writer.finish();
    out.extend_from_slice(&[0xFF, 0xD9]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noisy(w: usize, h: usize) -> Vec<u8> {
        let mut s = 0x1234_5678u32;
        (0..w * h * 3)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                ((i % 251) as u32 / 2 + (s & 31)) as u8
            })
            .collect()
    }

    #[test]
    fn optimized_files_decode_to_the_same_pixels_and_are_smaller() {
        let (w, h) = (203, 97);
        let px = noisy(w, h);
        for (quality, sampling) in [
            (80, jpeg_encoder::SamplingFactor::F_2_2),
            (30, jpeg_encoder::SamplingFactor::F_2_2),
            (95, jpeg_encoder::SamplingFactor::F_1_1),
            (100, jpeg_encoder::SamplingFactor::F_2_1),
        ] {
            let mut jpeg = Vec::new();
            let mut enc = jpeg_encoder::Encoder::new(&mut jpeg, quality);
            enc.set_sampling_factor(sampling);
            enc.encode(&px, w as u16, h as u16, jpeg_encoder::ColorType::Rgb)
                .expect("encodes");
            let optimized = optimize(&jpeg).expect("our encoder's shape");
            assert!(optimized.len() < jpeg.len(), "q{quality}");
            let limits = crate::Limits::default();
            let a = crate::decode(&jpeg, &limits).expect("original decodes");
            let b = crate::decode(&optimized, &limits).expect("optimized decodes");
            assert_eq!(a, b, "q{quality}: identical pixels");
            for cut in [0, 1, 10, jpeg.len() / 2, jpeg.len() - 3] {
                let _ = optimize(&jpeg[..cut]);
            }
        }
        assert!(optimize(b"not a jpeg").is_none());
    }
}
