//! Choosing the output size (never larger than the input) and Lanczos3
//! resampling in bands of output rows.

use fast_image_resize::images::{TypedImage, TypedImageRef};
use fast_image_resize::pixels::{U8x3, U8x4};
use fast_image_resize::{FilterType, PixelTrait, ResizeAlg, ResizeOptions, Resizer};

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

/// One call of the resampler: `src` (`src_w` x `src_h` pixels of
/// `channels` bytes) into `dst` (`dst_w` x `dst_h`). Typed, so that only
/// the two pixel types used are compiled (which keeps the wasm module
/// small).
fn resample(
    channels: usize,
    (src, src_w, src_h): (&[u8], u32, u32),
    (dst, dst_w, dst_h): (&mut [u8], u32, u32),
    options: &ResizeOptions,
) -> Result<(), Error> {
    fn typed<P: PixelTrait>(
        (src, src_w, src_h): (&[u8], u32, u32),
        (dst, dst_w, dst_h): (&mut [u8], u32, u32),
        options: &ResizeOptions,
    ) -> Result<(), Error> {
        let fail = |e: &dyn std::fmt::Display| Error::Resize(e.to_string());
        let src = TypedImageRef::<P>::from_buffer(src_w, src_h, src).map_err(|e| fail(&e))?;
        let mut dst = TypedImage::<P>::from_buffer(dst_w, dst_h, dst).map_err(|e| fail(&e))?;
        Resizer::new()
            .resize_typed(&src, &mut dst, options)
            .map_err(|e| fail(&e))
    }
    match channels {
        3 => typed::<U8x3>((src, src_w, src_h), (dst, dst_w, dst_h), options),
        4 => typed::<U8x4>((src, src_w, src_h), (dst, dst_w, dst_h), options),
        _ => Err(Error::Resize(format!("{channels} channels per pixel"))),
    }
}

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
        resample(
            channels,
            (pixels, width, height),
            (band, to_w, rows),
            &options,
        )
    });
    results.into_iter().collect::<Result<Vec<()>, Error>>()?;
    Ok(out)
}

/// Lanczos3 reaches this many source pixels either side of an output
/// pixel's centre, per unit of reduction (fast_image_resize widens the
/// kernel by the scale when downscaling).
const LANCZOS3_SUPPORT: f64 = 3.0;

/// Like [`resize`] for an opaque image, but consumes the decoded buffer and
/// reuses it: the vertical pass (the resampler's first pass for 8-bit
/// pixels) writes its rows into the front of the source buffer, which is
/// then cut to the intermediate's size, and the horizontal pass writes the
/// output. The peak is the decoded image plus two bands instead of the
/// decoded image plus the output; the bytes are those of [`resize`].
///
/// The vertical pass keeps [`resize`]'s bands of output rows. A band may
/// overwrite source rows once no band still to run needs them: output row
/// `y` reads source rows from about `y * scale - support` on, which for a
/// reduction runs ahead of `y`. So the bands run in waves: each wave's
/// bands write below the first source row any of them reads, and run in
/// parallel. The first bands, whose output overlaps their own input, are
/// resampled into a separate buffer and copied in. The waves depend only
/// on the sizes, never on the thread count.
pub(crate) fn resize_in_place(
    mut pixels: Vec<u8>,
    (width, height): (u32, u32),
    channels: usize,
    (to_w, to_h): (u32, u32),
) -> Result<Vec<u8>, Error> {
    let row = width as usize * channels;
    if pixels.len() != row * height as usize {
        return Err(Error::Resize("pixel buffer does not match its size".into()));
    }
    if (width, height) == (to_w, to_h) {
        return Ok(pixels);
    }
    if to_h != height {
        vertical_in_place(&mut pixels, (width, height), channels, to_h)?;
        pixels.truncate(row * to_h as usize);
        // Give the rows below the intermediate back to the allocator now.
        pixels.shrink_to_fit();
    }
    if to_w == width {
        return Ok(pixels);
    }
    // Horizontal pass, in bands of rows, each a view of its own rows: the
    // horizontal taps do not depend on the rows around, so these bands may
    // follow the thread count without changing a byte. Few bands, as each
    // call computes the filter weights of the whole output width again
    // (sines: slow in wasm); one on a single worker.
    let out_row = to_w as usize * channels;
    let mut out = vec![0u8; out_row * to_h as usize];
    let workers = crate::workers::current();
    let parts = if workers <= 1 { 1 } else { 2 * workers };
    let band_rows = (to_h as usize).div_ceil(parts).max(1);
    let bands: Vec<(&[u8], &mut [u8])> = pixels
        .chunks(row * band_rows)
        .zip(out.chunks_mut(out_row * band_rows))
        .collect();
    let results = crate::workers::map(bands, |(src, dst)| {
        let rows = (dst.len() / out_row) as u32;
        let options = ResizeOptions::new()
            .resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3))
            .use_alpha(false);
        resample(channels, (src, width, rows), (dst, to_w, rows), &options)
    });
    results.into_iter().collect::<Result<Vec<()>, Error>>()?;
    Ok(out)
}

/// One band of the vertical pass: output rows `y0..end` and the source
/// rows it reads (`first..` the bottom, in full-image coordinates).
#[derive(Debug, Clone, Copy)]
struct VBand {
    y0: u32,
    end: u32,
    top: f64,
    bottom: f64,
    first: u32,
}

/// The vertical pass of [`resize_in_place`]: `width` x `to_h` rows left at
/// the front of `pixels` (the rest is garbage).
fn vertical_in_place(
    pixels: &mut [u8],
    (width, height): (u32, u32),
    channels: usize,
    to_h: u32,
) -> Result<(), Error> {
    let row = pixels.len() / height as usize;
    let scale = f64::from(height) / f64::from(to_h);
    let radius = LANCZOS3_SUPPORT * scale.max(1.0);
    // The same bands and crops as `resize`.
    let bands: Vec<VBand> = (0..to_h)
        .step_by(BAND_ROWS as usize)
        .map(|y0| {
            let end = (y0 + BAND_ROWS).min(to_h);
            let top = f64::from(y0) * scale;
            let bottom = if end >= to_h {
                f64::from(height)
            } else {
                (f64::from(end) * scale).min(f64::from(height))
            };
            // The first tap of the band's first row is at
            // floor(centre - radius) with centre > top; one row of slack.
            let first = ((top - radius).floor() - 1.0).clamp(0.0, f64::from(height)) as u32;
            VBand {
                y0,
                end,
                top,
                bottom,
                first,
            }
        })
        .collect();
    // Resamples `band` from `src`, a view of the source rows from `origin`
    // down, into `dst` (its output rows).
    let run = |band: VBand, src: &[u8], origin: u32, dst: &mut [u8]| {
        let rows = band.end - band.y0;
        let options = ResizeOptions::new()
            .resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3))
            .use_alpha(false)
            .crop(
                0.0,
                band.top - f64::from(origin),
                f64::from(width),
                band.bottom - band.top,
            );
        let src_h = height - origin;
        resample(channels, (src, width, src_h), (dst, width, rows), &options)
    };
    // `reads_from[i]`: the first source row band `i` or any band after
    // it reads. Bands before `lead` write over rows that they (or a band
    // before them) still read: they go to a separate buffer, resampled
    // from the untouched source, and are copied in afterwards.
    let mut reads_from: Vec<u32> = bands.iter().map(|b| b.first).collect();
    for i in (0..reads_from.len().saturating_sub(1)).rev() {
        reads_from[i] = reads_from[i].min(reads_from[i + 1]);
    }
    let lead = bands
        .iter()
        .zip(&reads_from)
        .rposition(|(b, &from)| b.end > from)
        .map_or(0, |i| i + 1);
    if lead > 0 {
        let lead_rows = bands[lead - 1].end as usize;
        let mut first_rows = vec![0u8; lead_rows * row];
        {
            let src = &*pixels;
            let jobs: Vec<(VBand, &mut [u8])> = bands[..lead]
                .iter()
                .copied()
                .zip(first_rows.chunks_mut(row * BAND_ROWS as usize))
                .collect();
            let results = crate::workers::map(jobs, |(band, dst)| run(band, src, 0, dst));
            results.into_iter().collect::<Result<Vec<()>, Error>>()?;
        }
        // Every later band reads from below these rows.
        pixels[..first_rows.len()].copy_from_slice(&first_rows);
    }
    let mut next = lead;
    while next < bands.len() {
        // This wave: the bands from `next` whose output ends above the
        // first row read by any band still to run (at least band `next`:
        // it is not a leading band).
        let origin = reads_from[next];
        let stop = next + bands[next..].iter().take_while(|b| b.end <= origin).count();
        if stop == next {
            return Err(Error::Resize("no band can be resampled in place".into()));
        }
        let wave = &bands[next..stop];
        let split = origin as usize * row;
        let (head, tail) = pixels.split_at_mut(split);
        let src = &*tail;
        let start = wave[0].y0 as usize * row;
        let end = wave[wave.len() - 1].end as usize * row;
        let dst = head
            .get_mut(start..end)
            .ok_or_else(|| Error::Resize("band outside the buffer".into()))?;
        let jobs: Vec<(VBand, &mut [u8])> = wave
            .iter()
            .copied()
            .zip(dst.chunks_mut(row * BAND_ROWS as usize))
            .collect();
        let results = crate::workers::map(jobs, |(band, dst)| run(band, src, origin, dst));
        results.into_iter().collect::<Result<Vec<()>, Error>>()?;
        next = stop;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use fast_image_resize::PixelType;
    use fast_image_resize::images::{Image, ImageRef};

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

    /// Resampling in the decode's own buffer gives exactly the pixels of
    /// one pass too: for large and slight reductions (the slight ones
    /// resample most bands in the separate buffer), height or width only,
    /// images of fewer rows than a band, on one worker and on several.
    #[test]
    fn in_place_gives_the_pixels_of_one_pass() {
        let cases = [
            ((4032, 3024), (2048, 1536)),
            ((3024, 4032), (1536, 2048)),
            ((4000, 3000), (100, 75)),
            ((999, 777), (333, 259)),
            ((640, 480), (639, 479)),
            ((640, 480), (300, 480)),
            ((640, 480), (640, 217)),
            ((300, 200), (120, 65)),
            ((50, 40), (7, 5)),
            ((20, 1000), (1, 50)),
        ];
        for (from, to) in cases {
            for (channels, pixel_type) in [(3, PixelType::U8x3), (4, PixelType::U8x4)] {
                let px = noisy(from.0 as usize * from.1 as usize * channels);
                let want = one_pass(&px, from, pixel_type, to);
                for threads in [1, 2] {
                    let got = crate::workers::install(threads, || {
                        resize_in_place(px.clone(), from, channels, to)
                    })
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

    /// A buffer that does not match the stated size is an error, not a panic.
    #[test]
    fn in_place_refuses_a_short_buffer() {
        let err = resize_in_place(vec![0; 10], (4, 4), 3, (2, 2)).expect_err("refused");
        assert_eq!(err.code(), "resize_failed");
    }
}
