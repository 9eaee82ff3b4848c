//! Decoding JPEG, PNG and WebP into 8-bit pixels, with the header checked
//! against the limits before any pixel buffer is allocated.
//!
//! PNG and WebP are decoded to RGBA. JPEG is decoded straight to RGB, on
//! every target (a quarter less memory to hold and resample than RGBA).

use std::io::Cursor;

use zune_core::bytestream::ZCursor;
use zune_core::colorspace::ColorSpace;
use zune_core::options::DecoderOptions;
use zune_jpeg::JpegDecoder;

use crate::exif::Exif;
use crate::{Error, Format, Limits};

/// Decoded pixels plus what the pipeline needs from the container.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub format: Format,
    pub width: u32,
    pub height: u32,
    /// RGB (`channels` 3) or RGBA with straight alpha (`channels` 4).
    pub pixels: Vec<u8>,
    /// 3 or 4; 3 only for opaque images.
    pub channels: usize,
    /// Some pixel is not fully opaque.
    pub transparent: bool,
    /// EXIF orientation 1..=8.
    pub orientation: u8,
    pub icc: Option<Vec<u8>>,
    pub exif: Option<Vec<u8>>,
}

/// Rejects empty images and images over the limits. Called on header values only.
pub(crate) fn check_dimensions(width: u32, height: u32, limits: &Limits) -> Result<(), Error> {
    if width == 0 || height == 0 {
        return Err(Error::EmptyImage);
    }
    if width > limits.max_dimension
        || height > limits.max_dimension
        || u64::from(width) * u64::from(height) > limits.max_pixels
    {
        return Err(Error::TooLarge {
            width,
            height,
            max_dimension: limits.max_dimension,
            max_pixels: limits.max_pixels,
        });
    }
    Ok(())
}

/// Sniffs the format and decodes the first frame.
pub(crate) fn decode(bytes: &[u8], limits: &Limits) -> Result<Decoded, Error> {
    if bytes.len() as u64 > limits.max_input_bytes {
        return Err(Error::InputTooLarge {
            len: bytes.len() as u64,
            max: limits.max_input_bytes,
        });
    }
    let format = Format::sniff(bytes).ok_or(Error::UnsupportedFormat)?;
    let mut decoded = match format {
        Format::Jpeg => decode_jpeg(bytes, limits)?,
        Format::Png => decode_png(bytes, limits)?,
        Format::WebP => decode_webp(bytes, limits)?,
    };
    decoded.orientation = decoded
        .exif
        .as_deref()
        .and_then(Exif::parse)
        .map_or(1, |e| e.orientation());
    Ok(decoded)
}

fn decode_jpeg(bytes: &[u8], limits: &Limits) -> Result<Decoded, Error> {
    let corrupt = |e: zune_jpeg::errors::DecodeErrors| Error::corrupt(Format::Jpeg, e);
    // The decoder's own size limits are opened to the JPEG maximum so that our
    // limits (checked right after the header) decide and give a typed error.
    // Strict mode: a truncated or damaged file is an error, not an upload of
    // a half-grey picture.
    let channels = 3;
    let options = DecoderOptions::default()
        .set_max_width(usize::from(u16::MAX))
        .set_max_height(usize::from(u16::MAX))
        .set_strict_mode(true)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    decoder.decode_headers().map_err(corrupt)?;
    let (w, h) = decoder
        .dimensions()
        .ok_or_else(|| Error::corrupt(Format::Jpeg, "no frame header"))?;
    let (width, height) = (w as u32, h as u32);
    check_dimensions(width, height, limits)?;
    let icc = decoder.icc_profile();
    let exif = decoder.exif().cloned();
    let pixels = decoder.decode().map_err(corrupt)?;
    if pixels.len() != width as usize * height as usize * channels {
        return Err(Error::corrupt(Format::Jpeg, "unexpected output size"));
    }
    Ok(Decoded {
        format: Format::Jpeg,
        width,
        height,
        pixels,
        channels,
        transparent: false,
        orientation: 1,
        icc,
        exif,
    })
}

fn decode_png(bytes: &[u8], limits: &Limits) -> Result<Decoded, Error> {
    let corrupt = |e: png::DecodingError| Error::corrupt(Format::Png, e);
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    // 8 bytes per pixel covers 16-bit RGBA before stripping, plus slack for chunks.
    let budget = limits.max_pixels.saturating_mul(8).saturating_add(64 << 20);
    decoder.set_limits(png::Limits {
        bytes: usize::try_from(budget).unwrap_or(usize::MAX),
    });
    let header = decoder.read_header_info().map_err(corrupt)?;
    check_dimensions(header.width, header.height, limits)?;
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().map_err(corrupt)?;
    let (width, height) = (reader.info().width, reader.info().height);
    let icc = reader.info().icc_profile.as_ref().map(|c| c.to_vec());
    let exif = reader.info().exif_metadata.as_ref().map(|c| c.to_vec());
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| Error::corrupt(Format::Png, "image too large for memory"))?;
    let mut buf = vec![0u8; size];
    let frame = reader.next_frame(&mut buf).map_err(corrupt)?;
    let (fw, fh) = (frame.width, frame.height);
    buf.truncate(frame.buffer_size());
    let n = fw as usize * fh as usize;
    let pixels: Vec<u8> = match frame.color_type {
        png::ColorType::Rgb => rgb_to_rgba(&buf),
        png::ColorType::Rgba => buf,
        png::ColorType::Grayscale => buf.iter().flat_map(|&g| [g, g, g, 255]).collect(),
        png::ColorType::GrayscaleAlpha => buf
            .chunks_exact(2)
            .flat_map(|p| [p[0], p[0], p[0], p[1]])
            .collect(),
        png::ColorType::Indexed => {
            return Err(Error::corrupt(Format::Png, "palette was not expanded"));
        }
    };
    if pixels.len() != n * 4 || (fw, fh) != (width, height) {
        return Err(Error::corrupt(Format::Png, "unexpected output size"));
    }
    Ok(Decoded {
        format: Format::Png,
        width,
        height,
        transparent: has_transparency(&pixels),
        pixels,
        channels: 4,
        orientation: 1,
        icc,
        exif,
    })
}

fn decode_webp(bytes: &[u8], limits: &Limits) -> Result<Decoded, Error> {
    let corrupt = |e: image_webp::DecodingError| Error::corrupt(Format::WebP, e);
    let mut decoder = image_webp::WebPDecoder::new(Cursor::new(bytes)).map_err(corrupt)?;
    let (width, height) = decoder.dimensions();
    check_dimensions(width, height, limits)?;
    let budget = limits.max_pixels.saturating_mul(8).saturating_add(64 << 20);
    decoder.set_memory_limit(usize::try_from(budget).unwrap_or(usize::MAX));
    let icc = decoder.icc_profile().ok().flatten();
    let exif = decoder.exif_metadata().ok().flatten();
    let alpha = decoder.has_alpha();
    let size = decoder
        .output_buffer_size()
        .ok_or_else(|| Error::corrupt(Format::WebP, "image too large for memory"))?;
    let mut pixels = vec![0u8; size];
    decoder.read_image(&mut pixels).map_err(corrupt)?;
    if !alpha {
        pixels = rgb_to_rgba(&pixels);
    }
    Ok(Decoded {
        format: Format::WebP,
        width,
        height,
        transparent: alpha && has_transparency(&pixels),
        pixels,
        channels: 4,
        orientation: 1,
        icc,
        exif,
    })
}

/// True if any pixel of an RGBA buffer is not fully opaque.
pub(crate) fn has_transparency(rgba: &[u8]) -> bool {
    rgba.chunks_exact(4).any(|p| p[3] != 255)
}

fn rgb_to_rgba(rgb: &[u8]) -> Vec<u8> {
    rgb.chunks_exact(3)
        .flat_map(|p| [p[0], p[1], p[2], 255])
        .collect()
}

/// Drops the alpha channel of an opaque RGBA buffer.
pub(crate) fn rgba_to_rgb(rgba: &[u8]) -> Vec<u8> {
    rgba.chunks_exact(4)
        .flat_map(|p| [p[0], p[1], p[2]])
        .collect()
}

/// Composites straight-alpha RGBA onto a solid background, in place; the
/// result is opaque.
pub(crate) fn flatten(rgba: &mut [u8], background: [u8; 3]) {
    for p in rgba.chunks_exact_mut(4) {
        let a = u32::from(p[3]);
        for c in 0..3 {
            let v = u32::from(p[c]) * a + u32::from(background[c]) * (255 - a);
            p[c] = ((v + 127) / 255) as u8;
        }
        p[3] = 255;
    }
}
