//! Choosing the output size (never larger than the input) and Lanczos3 resampling.

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

/// Resamples 8-bit RGBA with a Lanczos3 convolution; `alpha` false (opaque
/// image) skips the premultiplication. Returns a copy if sizes match.
pub(crate) fn resize(
    pixels: &[u8],
    (width, height): (u32, u32),
    alpha: bool,
    (to_w, to_h): (u32, u32),
) -> Result<Vec<u8>, Error> {
    if (width, height) == (to_w, to_h) {
        return Ok(pixels.to_vec());
    }
    let src = ImageRef::new(width, height, pixels, PixelType::U8x4)
        .map_err(|e| Error::Resize(e.to_string()))?;
    let mut dst = Image::new(to_w, to_h, PixelType::U8x4);
    let options = ResizeOptions::new()
        .resize_alg(ResizeAlg::Convolution(FilterType::Lanczos3))
        .use_alpha(alpha);
    Resizer::new()
        .resize(&src, &mut dst, &options)
        .map_err(|e| Error::Resize(e.to_string()))?;
    Ok(dst.into_vec())
}
