//! Applying an EXIF orientation (1..=8) to an interleaved 8-bit pixel buffer,
//! in bands of output rows spread over the workers.
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

/// Returns the pixels (`channels` 3 or 4 per pixel) as they should be displayed.
pub(crate) fn apply(pixels: Vec<u8>, width: u32, height: u32, o: u8, channels: usize) -> Vec<u8> {
    match (o, channels) {
        (2..=8, 3) => transform::<3>(&pixels, width as usize, height as usize, o),
        (2..=8, _) => transform::<4>(&pixels, width as usize, height as usize, o),
        _ => pixels,
    }
}

/// Side of the square tiles used when the transform exchanges axes, so that
/// reads and writes both stay within a few cache lines.
const TILE: usize = 32;

/// Output rows per band handed to one worker (a multiple of `TILE`).
const BAND_ROWS: usize = 4 * TILE;

fn transform<const N: usize>(src: &[u8], w: usize, h: usize, o: u8) -> Vec<u8> {
    let mut out = vec![0u8; src.len()];
    let (ow, oh) = if swaps_axes(o) { (h, w) } else { (w, h) };
    // The source pixel shown at output (x, y) is at index
    // `origin + x * step_x + y * step_y` (in pixels): every orientation is affine.
    let (wi, hi) = (w as isize, h as isize);
    let (origin, step_x, step_y): (isize, isize, isize) = match o {
        2 => (wi - 1, -1, wi),
        3 => (wi * hi - 1, -1, -wi),
        4 => ((hi - 1) * wi, 1, -wi),
        5 => (0, wi, 1),
        6 => ((hi - 1) * wi, -wi, 1),
        7 => (wi * hi - 1, -wi, -1),
        _ => (wi - 1, wi, -1),
    };
    let src_px: &[[u8; N]] = src.as_chunks::<N>().0;
    let out_px: &mut [[u8; N]] = out.as_chunks_mut::<N>().0;
    if ow == 0 || oh == 0 {
        return out;
    }
    let bands: Vec<(usize, &mut [[u8; N]])> = out_px
        .chunks_mut(ow * BAND_ROWS)
        .enumerate()
        .map(|(i, band)| (i * BAND_ROWS, band))
        .collect();
    crate::workers::map(bands, |(y0, band)| {
        let rows = band.len() / ow;
        // Square tiles keep both the reads and the writes within a few cache
        // lines when the transform exchanges axes.
        for ty in (0..rows).step_by(TILE) {
            for tx in (0..ow).step_by(TILE) {
                for y in ty..(ty + TILE).min(rows) {
                    let row = origin + (y0 + y) as isize * step_y;
                    let dst = &mut band[y * ow + tx..y * ow + (tx + TILE).min(ow)];
                    for (i, px) in dst.iter_mut().enumerate() {
                        let at = row + (tx + i) as isize * step_x;
                        *px = src_px[at as usize];
                    }
                }
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 3x2 image stored as RGBA with distinct values.
    fn img() -> Vec<u8> {
        (0..6u8).flat_map(|v| [v, v, v, 255]).collect()
    }

    fn values(p: &[u8]) -> Vec<u8> {
        p.chunks_exact(4).map(|c| c[0]).collect()
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
            assert_eq!(values(&apply(img(), 3, 2, o, 4)), want, "orientation {o}");
        }
    }
}
