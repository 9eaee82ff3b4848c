//! Encoding RGB/RGBA pixels as JPEG (4:2:0 below quality 90, optimized
//! Huffman tables), PNG or lossless WebP, with optional ICC and EXIF blocks.

use jpeg_encoder::{ColorType, Encoder, SamplingFactor};

use crate::{Error, Format};

/// What the encoder writes besides the pixels.
#[derive(Debug, Default, Clone)]
pub(crate) struct Extras {
    pub icc: Option<Vec<u8>>,
    /// A TIFF block (no `Exif\0\0` prefix).
    pub exif: Option<Vec<u8>>,
}

/// Pixels ready to encode.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Frame<'a> {
    /// RGB (`channels` 3) or RGBA with straight alpha (4).
    pub pixels: &'a [u8],
    pub width: u32,
    pub height: u32,
    pub channels: usize,
    /// Keep the alpha channel (PNG/WebP); otherwise it is dropped.
    pub alpha: bool,
}

/// Pixel rows per band of the JPEG encode: a whole number of MCU rows (8 or
/// 16 px) and fixed, so the bands do not depend on the thread count.
const BAND_ROWS: usize = 128;

pub(crate) fn encode(
    frame: Frame<'_>,
    format: Format,
    quality: u8,
    extras: &Extras,
) -> Result<Vec<u8>, Error> {
    let fail = |e: &dyn std::fmt::Display| Error::Encode {
        format,
        detail: e.to_string(),
    };
    match format {
        Format::Jpeg => {
            let (w, h) = match (u16::try_from(frame.width), u16::try_from(frame.height)) {
                (Ok(w), Ok(h)) => (w, h),
                _ => return Err(fail(&"JPEG is limited to 65535 px per side")),
            };
            let color = if frame.channels == 3 {
                ColorType::Rgb
            } else {
                ColorType::Rgba
            };
            let encode_rows = |pixels: &[u8], rows: u16, extras: &Extras| {
                baseline(pixels, w, rows, color, quality, extras).map_err(|e| fail(&e))
            };
            let whole = || {
                let out = encode_rows(frame.pixels, h, extras)?;
                Ok(crate::huffman::optimize(&out).unwrap_or(out))
            };
            let row_bytes = frame.width as usize * frame.channels;
            if usize::from(h) <= BAND_ROWS || row_bytes == 0 {
                return whole();
            }
            // Bands of rows are encoded on the workers, read back into
            // entropy-coding events and joined into the bytes a single
            // encode would give (see `huffman::join`).
            let bands: Vec<(usize, &[u8])> = frame
                .pixels
                .chunks(row_bytes * BAND_ROWS)
                .enumerate()
                .collect();
            let none = Extras::default();
            let scans = crate::workers::map(bands, |(i, pixels)| {
                let rows = (pixels.len() / row_bytes) as u16;
                let jpeg = encode_rows(pixels, rows, if i == 0 { extras } else { &none })?;
                Ok(crate::huffman::read(&jpeg))
            });
            let scans: Option<Vec<_>> = scans.into_iter().collect::<Result<_, Error>>()?;
            match scans.and_then(|s| crate::huffman::join(s, usize::from(h))) {
                Some(out) => Ok(out),
                None => whole(),
            }
        }
        Format::Png => {
            let rgb;
            let pixels = if frame.alpha || frame.channels == 3 {
                frame.pixels
            } else {
                rgb = crate::decode::rgba_to_rgb(frame.pixels);
                &rgb
            };
            let mut out = Vec::new();
            let mut info = png::Info::with_size(frame.width, frame.height);
            info.color_type = if frame.alpha {
                png::ColorType::Rgba
            } else {
                png::ColorType::Rgb
            };
            info.bit_depth = png::BitDepth::Eight;
            info.icc_profile = extras.icc.as_deref().map(Into::into);
            info.exif_metadata = extras.exif.as_deref().map(Into::into);
            let mut encoder = png::Encoder::with_info(&mut out, info).map_err(|e| fail(&e))?;
            encoder.set_compression(png::Compression::Balanced);
            let mut writer = encoder.write_header().map_err(|e| fail(&e))?;
            writer.write_image_data(pixels).map_err(|e| fail(&e))?;
            writer.finish().map_err(|e| fail(&e))?;
            Ok(out)
        }
        Format::WebP => {
            let mut out = Vec::new();
            let mut encoder = image_webp::WebPEncoder::new(&mut out);
            if let Some(icc) = &extras.icc {
                encoder.set_icc_profile(icc.clone());
            }
            if let Some(exif) = &extras.exif {
                encoder.set_exif_metadata(exif.clone());
            }
            let rgb;
            let (pixels, color) = if frame.alpha {
                (frame.pixels, image_webp::ColorType::Rgba8)
            } else if frame.channels == 3 {
                (frame.pixels, image_webp::ColorType::Rgb8)
            } else {
                rgb = crate::decode::rgba_to_rgb(frame.pixels);
                (&rgb[..], image_webp::ColorType::Rgb8)
            };
            encoder
                .encode(pixels, frame.width, frame.height, color)
                .map_err(|e| fail(&e))?;
            Ok(out)
        }
    }
}

/// One baseline JPEG with standard Huffman tables, 4:2:0 below quality 90.
fn baseline(
    pixels: &[u8],
    width: u16,
    height: u16,
    color: ColorType,
    quality: u8,
    extras: &Extras,
) -> Result<Vec<u8>, jpeg_encoder::EncodingError> {
    let mut out = Vec::with_capacity(pixels.len() / 8);
    let mut encoder = Encoder::new(&mut out, quality);
    // Like libjpeg/vips: subsample chroma at normal qualities only.
    encoder.set_sampling_factor(if quality < 90 {
        SamplingFactor::F_2_2
    } else {
        SamplingFactor::F_1_1
    });
    // jpeg-encoder writes one scan per component when it optimizes
    // Huffman tables, and zune-jpeg 0.5 (so also the `image` crate)
    // decodes such 4:2:0 files with wrong colours. Interleaved
    // baseline with standard tables is readable everywhere; the
    // tables are optimized afterwards by `huffman::optimize`.
    if let Some(icc) = &extras.icc {
        encoder.add_icc_profile(icc)?;
    }
    if let Some(exif) = &extras.exif {
        encoder.add_exif_metadata(exif)?;
    }
    // With RGBA the encoder ignores the fourth channel.
    encoder.encode(pixels, width, height, color)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noisy(w: usize, h: usize, channels: usize) -> Vec<u8> {
        let mut s = 0x9E37_79B9u32;
        (0..w * h * channels)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                // Smooth ramps plus grain, so DC values vary across bands.
                let (x, y) = ((i / channels) % w, (i / channels) / w);
                ((x * 3 + y * 2 + i % channels * 40) % 200 + (s & 15) as usize) as u8
            })
            .collect()
    }

    /// The banded encode must be byte for byte the single encode (which is
    /// what the pipeline did before the split), for 4:2:0 and 4:4:4, RGB
    /// and RGBA, with header extras, for heights that are and are not a
    /// whole number of bands or MCU rows, on one worker and on several.
    #[test]
    fn bands_join_to_the_bytes_of_one_encode() {
        let extras = Extras {
            icc: Some(vec![7u8; 300]),
            exif: Some(b"MM\0*\0\0\0\x08\0\0".to_vec()),
        };
        let cases = [
            (203, 300, 3, 80),
            (640, 129, 3, 80),
            (97, 517, 4, 95),
            (1000, 257, 3, 30),
            (64, 1024, 3, 89),
            (33, 401, 3, 100),
        ];
        for (w, h, channels, quality) in cases {
            let px = noisy(w, h, channels);
            let frame = Frame {
                pixels: &px,
                width: w as u32,
                height: h as u32,
                channels,
                alpha: false,
            };
            let color = if channels == 3 {
                ColorType::Rgb
            } else {
                ColorType::Rgba
            };
            for extras in [&Extras::default(), &extras] {
                let one =
                    baseline(&px, w as u16, h as u16, color, quality, extras).expect("encodes");
                let one = crate::huffman::optimize(&one).expect("our encoder's shape");
                for threads in [1, 3] {
                    let banded = crate::workers::install(threads, || {
                        encode(frame, Format::Jpeg, quality, extras)
                    })
                    .expect("encodes");
                    assert!(
                        banded == one,
                        "{w}x{h}x{channels} q{quality}, {threads} threads: {} vs {} bytes",
                        banded.len(),
                        one.len()
                    );
                }
            }
        }
    }
}
