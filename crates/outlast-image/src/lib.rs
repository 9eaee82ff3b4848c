//! Client-side photo preparation: orient, downscale, compress, strip metadata.
//!
//! One synchronous call, [`process`], turns a JPEG, PNG or WebP file into a
//! smaller JPEG, PNG or (lossless) WebP:
//!
//! 1. the format is sniffed and the header read; declared dimensions over
//!    [`Limits`] are refused before any pixel memory is allocated;
//! 2. the first frame is decoded to 8-bit RGB(A); alpha is composited onto
//!    [`Options::background`] for JPEG output;
//! 3. the output size is the largest that fits the bounds of [`Options`]
//!    after applying the EXIF orientation (never larger than the input);
//! 4. the image is resampled with Lanczos3 in stored orientation, then
//!    rotated/flipped upright (cheaper than rotating the full-size image);
//! 5. it is encoded (JPEG: 4:2:0 below quality 90, optimized Huffman tables)
//!    with metadata stripped except what [`Metadata`] keeps;
//! 6. with [`Options::target_bytes`] the quality, then the size, is lowered
//!    in a bounded search until the file fits.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let photo = std::fs::read("photo.jpg")?;
//! let out = outlast_image::process(&photo, &outlast_image::Options::default())?;
//! println!("{}x{} in {} bytes", out.report.output_width, out.report.output_height, out.bytes.len());
//! # Ok(())
//! # }
//! ```
//!
//! Natively the resize and the JPEG encode are split into row bands run on
//! [`Options::threads`] workers (default: every core); the bands are the
//! same for any thread count, so the output bytes are too. The decode is
//! serial (JPEG entropy data without restart markers cannot be split).
//!
//! The crate has no async code and no I/O; it also builds for
//! `wasm32-unknown-unknown` (single-threaded), where `wasm` holds the
//! JavaScript binding.

mod clock;
mod decode;
mod encode;
mod error;
mod exif;
mod huffman;
mod options;
mod orient;
mod pipeline;
mod resize;
#[cfg(target_arch = "wasm32")]
mod wasm;
mod workers;

pub use error::Error;
pub use options::{ExifPolicy, Format, Limits, Metadata, Options, Preset};
pub use pipeline::{Image, Output, Report, decode, process};
