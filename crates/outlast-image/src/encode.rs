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
    /// RGBA, straight alpha.
    pub pixels: &'a [u8],
    pub width: u32,
    pub height: u32,
    /// Keep the alpha channel (PNG/WebP); otherwise it is dropped.
    pub alpha: bool,
}

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
            let mut out = Vec::with_capacity(frame.pixels.len() / 8);
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
                encoder.add_icc_profile(icc).map_err(|e| fail(&e))?;
            }
            if let Some(exif) = &extras.exif {
                encoder.add_exif_metadata(exif).map_err(|e| fail(&e))?;
            }
            // The encoder ignores the fourth channel.
            encoder
                .encode(frame.pixels, w, h, ColorType::Rgba)
                .map_err(|e| fail(&e))?;
            Ok(crate::huffman::optimize(&out).unwrap_or(out))
        }
        Format::Png => {
            let rgb;
            let pixels = if frame.alpha {
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
