//! Choosing the output size (never larger than the input) and Lanczos3
//! resampling in bands of output rows.

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};

use crate::{Error, Options};

/// The largest size within the bounds of `options` keeping the aspect ratio,
/// for an image displayed at `width` x `height`. Never larger than the input.
pub(crate) fn fit(width: u32, height: u32, options: &Options) -> (u32, u32) {
    let (w, h) = (f64::from(width), f64::from(height));
    let mut scale = 1.0f64;
    if let Some(mw) = options.max_width {
        scale = scale.min(f64::from(mw) / w);
    }
    if let Some(mh) = options.max_height {
        scale = scale.min(f64::from(mh) / h);
    }
    if let Some(me) = options.max_edge {
        scale = scale.min(f64::from(me) / w.max(h));
    }
    scale_to(width, height, scale)
}

/// `width` x `height` scaled by `scale` (at most 1), each side at least 1 px.
pub(crate) fn scale_to(width: u32, height: u32, scale: f64) -> (u32, u32) {
    if scale >= 1.0 {
        return (width, height);
    }
    let side = |v: u32| ((f64::from(v) * scale).round() as u32).clamp(1, v);
    (side(width), side(height))
}

/// Output rows per band of the resize. Fixed, so that the bands (and the
/// bytes) do not depend on the thread count. Each band's scratch buffer is
/// the source width by this many rows, instead of one for the whole image.
const BAND_ROWS: u32 = 64;

/// Resamples 8-bit RGB (`channels` 3) or RGBA (4) with a Lanczos3
/// convolution; `alpha` false (opaque image) skips the premultiplication.
/// Returns a copy if sizes match.
///
/// Opaque images are cut into bands of output rows, each resampled from
/// the source rows it needs (a crop of the same source, so every output row
/// gets the same filter taps as in one whole-image pass) on its own worker.
/// Images with alpha are done in one pass: the resampler premultiplies its
/// whole source view, which per band would repeat that work.
pub(crate) fn resize(
    pixels: &[u8],
    (width, height): (u32, u32),
    channels: usize,
    alpha: bool,
    (to_w, to_h): (u32, u32),
) -> Result<Vec<u8>, Error> {
    if (width, height) == (to_w, to_h) {
        return Ok(pixels.to_vec());
    }
    let fail = |e: &dyn std::fmt::Display| Error::Resize(e.to_string());
    let pixel_type = if channels == 3 {
        PixelType::U8x3
    } else {
        PixelType::U8x4
    };
    let src = ImageRef::new(width, height, pixels, pixel_type).map_err(|e| fail(&e))?;
    let row = to_w as usize * channels;
    let mut out = vec![0u8; row * to_h as usize];
    let band_rows = if alpha { to_h } else { BAND_ROWS };
    let scale = f64::from(height) / f64::from(to_h);
    let bands: Vec<(u32, &mut [u8])> = out
        .chunks_mut(row * band_rows as usize)
        .zip((0..).step_by(band_rows as usize))
        .map(|(band, y0)| (y0, band))
        .collect();
    let results = crate::workers::map(bands, |(y0, band)| {
        let rows = (band.len() / row) as u32;
        let mut dst = Image::from_slice_u8(to_w, rows, band, pixel_type).map_err(|e| fail(&e))?;
        let mut options = ResizeOptions::new()
            .resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3))
            .use_alpha(alpha);
        if rows != to_h {
            // The last band ends exactly at the source's bottom edge (a
            // product could round past it, and the resampler refuses that).
            let top = f64::from(y0) * scale;
            let bottom = if y0 + rows >= to_h {
                f64::from(height)
            } else {
                (f64::from(y0 + rows) * scale).min(f64::from(height))
            };
            options = options.crop(0.0, top, f64::from(width), bottom - top);
        }
        Resizer::new()
            .resize(&src, &mut dst, &options)
            .map_err(|e| fail(&e))
    });
    results.into_iter().collect::<Result<Vec<()>, Error>>()?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noisy(len: usize) -> Vec<u8> {
        let mut s = 0x2545_F491u32;
        (0..len)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                ((i % 509) as u32 / 3 + (s & 63)) as u8
            })
            .collect()
    }

    /// One whole-image pass, as the pipeline did before the bands.
    fn one_pass(px: &[u8], (w, h): (u32, u32), pixel_type: PixelType, to: (u32, u32)) -> Vec<u8> {
        let src = ImageRef::new(w, h, px, pixel_type).expect("image");
        let mut dst = Image::new(to.0, to.1, pixel_type);
        let options = ResizeOptions::new()
            .resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3))
            .use_alpha(false);
        Resizer::new()
            .resize(&src, &mut dst, &options)
            .expect("resizes");
        dst.into_vec()
    }

    /// Bands of output rows give exactly the pixels of one pass, for
    /// reductions that do and do not divide evenly, on one worker and on
    /// several.
    #[test]
    fn bands_give_the_pixels_of_one_pass() {
        let cases = [
            ((4032, 3024), (2048, 1536)),
            ((3024, 4032), (1536, 2048)),
            ((1500, 1100), (1000, 733)),
            ((999, 777), (333, 259)),
            ((640, 480), (639, 479)),
            ((300, 200), (120, 65)),
        ];
        for (from, to) in cases {
            for (channels, pixel_type) in [(3, PixelType::U8x3), (4, PixelType::U8x4)] {
                let px = noisy(from.0 as usize * from.1 as usize * channels);
                let want = one_pass(&px, from, pixel_type, to);
                for threads in [1, 2] {
                    let got =
                        crate::workers::install(threads, || resize(&px, from, channels, false, to))
                            .expect("resizes");
                    assert!(
                        got == want,
                        "{from:?} -> {to:?} x{channels}, {threads} threads: {} of {} bytes differ",
                        got.iter().zip(&want).filter(|(a, b)| a != b).count(),
                        want.len()
                    );
                }
            }
        }
    }
}
