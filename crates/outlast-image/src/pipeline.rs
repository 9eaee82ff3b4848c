//! The whole job: decode, check limits, pick sizes, resize, orient, encode,
//! and the bounded search for `target_bytes`.

use std::time::Duration;

use crate::clock::Clock;
use crate::decode::{self, Decoded};
use crate::encode::{self, Extras, Frame};
use crate::exif::Exif;
use crate::{Error, ExifPolicy, Format, Options, orient, resize};

/// The prepared image and what was done to it.
#[derive(Debug, Clone)]
pub struct Output {
    /// The encoded file.
    pub bytes: Vec<u8>,
    /// What went in, what came out, and how long it took.
    pub report: Report,
}

/// A summary of one [`process`] call.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Sniffed input format.
    pub input_format: Format,
    /// Input size in bytes.
    pub input_bytes: u64,
    /// Input width as displayed (after orientation).
    pub input_width: u32,
    /// Input height as displayed (after orientation).
    pub input_height: u32,
    /// EXIF orientation found in the input (1..=8) and applied to the pixels.
    pub orientation: u8,
    /// Output format.
    pub output_format: Format,
    /// Output size in bytes.
    pub output_bytes: u64,
    /// Output width.
    pub output_width: u32,
    /// Output height.
    pub output_height: u32,
    /// JPEG quality used; `None` for lossless PNG/WebP.
    pub quality: Option<u8>,
    /// Number of encodes (more than one only when searching for `target_bytes`).
    pub attempts: u32,
    /// Wall time of the whole call.
    pub elapsed: Duration,
}

/// Rounds of size reduction the `target_bytes` search may take after the quality floor.
const MAX_SIZE_ROUNDS: u32 = 6;

/// Prepares one image: see the crate documentation for the steps.
/// Natively the work runs on [`Options::threads`] workers.
pub fn process(input: &[u8], options: &Options) -> Result<Output, Error> {
    let clock = Clock::start();
    options.validate()?;
    crate::workers::install(options.worker_threads(), || run(input, options, clock))
}

fn run(input: &[u8], options: &Options, clock: Clock) -> Result<Output, Error> {
    let mut decoded = decode::decode(input, &options.limits)?;
    let format = options.format.unwrap_or(if decoded.transparent {
        Format::Png
    } else {
        Format::Jpeg
    });
    // JPEG has no alpha: composite onto the background first.
    if decoded.transparent && format == Format::Jpeg {
        decode::flatten(&mut decoded.pixels, options.background);
        decoded.transparent = false;
    }
    let extras = extras(&decoded, options);
    let o = decoded.orientation;
    let (shown_w, shown_h) = orient::oriented_size(decoded.width, decoded.height, o);
    let mut size = resize::fit(shown_w, shown_h, options);

    let (alpha, channels) = (decoded.transparent, decoded.channels);
    let mut attempts = 0u32;
    let mut encode_at = |size: (u32, u32), quality: u8, pixels: &[u8]| {
        attempts += 1;
        let frame = Frame {
            pixels,
            width: size.0,
            height: size.1,
            channels,
            alpha,
        };
        encode::encode(frame, format, quality, &extras)
    };
    let lossy = format == Format::Jpeg;
    let mut rounds = 0;
    let (bytes, quality) = loop {
        let Some(target) = options.target_bytes else {
            // Rendered once: the full-size decode is handed to the
            // resampler, which reuses its buffer and frees it before the
            // orientation and the encode.
            let pixels = render_once(&mut decoded, size)?;
            break (encode_at(size, options.quality, &pixels)?, options.quality);
        };
        let pixels = render(&decoded, size)?;
        let first = encode_at(size, options.quality, &pixels)?;
        if first.len() as u64 <= target {
            break (first, options.quality);
        }
        let mut smallest = (first, options.quality);
        if lossy && options.min_quality < options.quality {
            // Largest quality in [min_quality, quality) that fits.
            let (mut lo, mut hi) = (options.min_quality, options.quality - 1);
            let mut best = None;
            while lo <= hi {
                let q = lo + (hi - lo) / 2;
                let out = encode_at(size, q, &pixels)?;
                if out.len() as u64 <= target {
                    best = Some((out, q));
                    lo = q + 1;
                } else {
                    if out.len() < smallest.0.len() {
                        smallest = (out, q);
                    }
                    if q == options.min_quality {
                        break;
                    }
                    hi = q - 1;
                }
            }
            if let Some(found) = best {
                break found;
            }
        }
        // Even the quality floor is too big: shrink, using bytes ~ pixels.
        let long = size.0.max(size.1);
        let floor = options.min_edge.min(shown_w.max(shown_h));
        if long <= floor || rounds >= MAX_SIZE_ROUNDS {
            return Err(Error::TargetUnreachable {
                target,
                smallest: smallest.0.len() as u64,
                width: size.0,
                height: size.1,
                quality: if lossy {
                    format!("quality {}", smallest.1)
                } else {
                    "lossless".to_string()
                },
                min_quality: options.min_quality,
                min_edge: options.min_edge,
            });
        }
        rounds += 1;
        let ratio = (target as f64 / smallest.0.len() as f64).sqrt() * 0.9;
        let new_long = ((f64::from(long) * ratio) as u32).clamp(floor, long - 1);
        size = resize::scale_to(size.0, size.1, f64::from(new_long) / f64::from(long));
    };
    let report = Report {
        input_format: decoded.format,
        input_bytes: input.len() as u64,
        input_width: shown_w,
        input_height: shown_h,
        orientation: o,
        output_format: format,
        output_bytes: bytes.len() as u64,
        output_width: size.0,
        output_height: size.1,
        quality: lossy.then_some(quality),
        attempts,
        elapsed: clock.elapsed(),
    };
    Ok(Output { bytes, report })
}

/// Resizes in stored orientation (cheaper: the rotation then touches the
/// small image), then orients. `size` is the displayed output size.
fn render(decoded: &Decoded, size: (u32, u32)) -> Result<Vec<u8>, Error> {
    let o = decoded.orientation;
    let stored_target = orient::oriented_size(size.0, size.1, o);
    let resized = resize::resize(
        &decoded.pixels,
        (decoded.width, decoded.height),
        decoded.channels,
        decoded.transparent,
        stored_target,
    )?;
    Ok(orient::apply(
        resized,
        stored_target.0,
        stored_target.1,
        o,
        decoded.channels,
    ))
}

/// [`render`] for the last use of the decode: takes its pixels. Opaque
/// images are resampled in the decode's own buffer
/// ([`resize::resize_in_place`]), so the peak is about the decode alone.
fn render_once(decoded: &mut Decoded, size: (u32, u32)) -> Result<Vec<u8>, Error> {
    if decoded.transparent {
        let pixels = render(decoded, size);
        decoded.pixels = Vec::new();
        return pixels;
    }
    let o = decoded.orientation;
    let stored_target = orient::oriented_size(size.0, size.1, o);
    let resized = resize::resize_in_place(
        std::mem::take(&mut decoded.pixels),
        (decoded.width, decoded.height),
        decoded.channels,
        stored_target,
    )?;
    Ok(orient::apply(
        resized,
        stored_target.0,
        stored_target.1,
        o,
        decoded.channels,
    ))
}

fn extras(decoded: &Decoded, options: &Options) -> Extras {
    let icc = if options.metadata.icc_profile {
        decoded.icc.clone().filter(|p| !p.is_empty())
    } else {
        None
    };
    let exif = match options.metadata.exif {
        ExifPolicy::Strip => None,
        ExifPolicy::Safe | ExifPolicy::SafeWithGps => decoded
            .exif
            .as_deref()
            .and_then(Exif::parse)
            .and_then(|e| e.safe_subset(options.metadata.exif == ExifPolicy::SafeWithGps)),
    };
    Extras { icc, exif }
}

/// Decoded, upright pixels (see [`decode`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Width as displayed.
    pub width: u32,
    /// Height as displayed.
    pub height: u32,
    /// 3 (RGB) or 4 (RGBA, straight alpha).
    pub channels: usize,
    /// Interleaved 8-bit samples, row by row.
    pub pixels: Vec<u8>,
    /// The EXIF orientation that was applied (1..=8).
    pub orientation: u8,
}

/// Decodes the first frame of a JPEG, PNG or WebP file, checks `limits`
/// before allocating, and applies the EXIF orientation. No resizing.
pub fn decode(input: &[u8], limits: &crate::Limits) -> Result<Image, Error> {
    let d = decode::decode(input, limits)?;
    let (width, height) = orient::oriented_size(d.width, d.height, d.orientation);
    let shown = orient::apply(d.pixels, d.width, d.height, d.orientation, d.channels);
    let (channels, pixels) = match (d.transparent, d.channels) {
        (true, _) => (4, shown),
        (false, 3) => (3, shown),
        (false, _) => (3, decode::rgba_to_rgb(&shown)),
    };
    Ok(Image {
        width,
        height,
        channels,
        pixels,
        orientation: d.orientation,
    })
}
