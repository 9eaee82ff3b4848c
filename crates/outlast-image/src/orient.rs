//! Applying an EXIF orientation (1..=8) to an interleaved 8-bit pixel buffer.
//!
//! The pipeline resizes first and orients second: the transform then touches
//! the small image, which is cheaper than rotating the full-size decode.

/// Output dimensions for a stored `width` x `height` image with `orientation`.
pub(crate) fn oriented_size(width: u32, height: u32, orientation: u8) -> (u32, u32) {
    if swaps_axes(orientation) {
        (height, width)
    } else {
        (width, height)
    }
}

/// Orientations 5..=8 exchange width and height.
pub(crate) fn swaps_axes(orientation: u8) -> bool {
    (5..=8).contains(&orientation)
}

/// Returns the pixels as they should be displayed. `channels` is 3 or 4.
pub(crate) fn apply(pixels: Vec<u8>, width: u32, height: u32, channels: usize, o: u8) -> Vec<u8> {
    match (o, channels) {
        (2..=8, 3) => transform::<3>(&pixels, width as usize, height as usize, o),
        (2..=8, 4) => transform::<4>(&pixels, width as usize, height as usize, o),
        _ => pixels,
    }
}

/// Side of the square tiles used when the transform exchanges axes, so that
/// reads and writes both stay within a few cache lines.
const TILE: usize = 32;

fn transform<const N: usize>(src: &[u8], w: usize, h: usize, o: u8) -> Vec<u8> {
    let mut out = vec![0u8; src.len()];
    let (ow, oh) = if swaps_axes(o) { (h, w) } else { (w, h) };
    // Maps an output coordinate to the source coordinate it shows.
    let source = |x: usize, y: usize| -> (usize, usize) {
        match o {
            2 => (w - 1 - x, y),
            3 => (w - 1 - x, h - 1 - y),
            4 => (x, h - 1 - y),
            5 => (y, x),
            6 => (y, h - 1 - x),
            7 => (w - 1 - y, h - 1 - x),
            _ => (w - 1 - y, x),
        }
    };
    if !swaps_axes(o) {
        for y in 0..oh {
            let row = &mut out[y * ow * N..(y + 1) * ow * N];
            for (x, px) in row.chunks_exact_mut(N).enumerate() {
                let (sx, sy) = source(x, y);
                let at = (sy * w + sx) * N;
                px.copy_from_slice(&src[at..at + N]);
            }
        }
        return out;
    }
    for ty in (0..oh).step_by(TILE) {
        for tx in (0..ow).step_by(TILE) {
            for y in ty..(ty + TILE).min(oh) {
                for x in tx..(tx + TILE).min(ow) {
                    let (sx, sy) = source(x, y);
                    let from = (sy * w + sx) * N;
                    let to = (y * ow + x) * N;
                    out[to..to + N].copy_from_slice(&src[from..from + N]);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 3x2 single-channel-like image stored as RGB with distinct values.
    fn img() -> Vec<u8> {
        (0..6u8).flat_map(|v| [v, v, v]).collect()
    }

    fn values(p: &[u8]) -> Vec<u8> {
        p.chunks_exact(3).map(|c| c[0]).collect()
    }

    #[test]
    fn all_orientations_map_as_exif_defines() {
        // Stored:  0 1 2
        //          3 4 5
        let cases: [(u8, &[u8]); 8] = [
            (1, &[0, 1, 2, 3, 4, 5]),
            (2, &[2, 1, 0, 5, 4, 3]),
            (3, &[5, 4, 3, 2, 1, 0]),
            (4, &[3, 4, 5, 0, 1, 2]),
            (5, &[0, 3, 1, 4, 2, 5]),
            (6, &[3, 0, 4, 1, 5, 2]),
            (7, &[5, 2, 4, 1, 3, 0]),
            (8, &[2, 5, 1, 4, 0, 3]),
        ];
        for (o, want) in cases {
            assert_eq!(values(&apply(img(), 3, 2, 3, o)), want, "orientation {o}");
        }
    }
}
