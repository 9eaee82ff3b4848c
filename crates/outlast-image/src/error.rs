//! The crate's one error type: every failure has a stable machine-readable code.

use crate::Format;

/// Everything that can go wrong while preparing an image.
///
/// [`Error::code`] returns a stable string that clients may match on; the
/// `Display` text is for people and may change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The input is not a JPEG, PNG or WebP file (or is too short to tell).
    #[error("unsupported or unrecognised image format")]
    UnsupportedFormat,
    /// The input file is larger than [`crate::Limits::max_input_bytes`].
    #[error("input is {len} bytes, over the limit of {max} bytes")]
    InputTooLarge {
        /// Size of the input.
        len: u64,
        /// Configured limit.
        max: u64,
    },
    /// The header declares dimensions over the configured limits
    /// (checked before any pixel memory is allocated).
    #[error(
        "image declares {width}x{height} pixels, over the limit of {max_dimension} px per side or {max_pixels} pixels in total"
    )]
    TooLarge {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// Configured limit per side.
        max_dimension: u32,
        /// Configured limit on width x height.
        max_pixels: u64,
    },
    /// The header declares a zero width or height.
    #[error("image has zero width or height")]
    EmptyImage,
    /// The file is corrupt, truncated or uses a feature the decoder lacks.
    #[error("corrupt or truncated {format} image: {detail}")]
    Corrupt {
        /// Format the input was sniffed as.
        format: Format,
        /// Decoder's description of the problem.
        detail: String,
    },
    /// An option is out of range.
    #[error("invalid option {name}: {reason}")]
    InvalidOption {
        /// Name of the option field.
        name: &'static str,
        /// Why it was refused.
        reason: String,
    },
    /// The encoder refused the image (for example JPEG over 65535 px per side).
    #[error("could not encode {format}: {detail}")]
    Encode {
        /// Output format.
        format: Format,
        /// Encoder's description of the problem.
        detail: String,
    },
    /// The resampler failed (should not happen for valid dimensions).
    #[error("resize failed: {0}")]
    Resize(String),
    /// `target_bytes` could not be reached within the configured floors.
    #[error(
        "cannot fit into {target} bytes: smallest attempt was {smallest} bytes ({width}x{height}, {quality}) with quality floor {min_quality} and edge floor {min_edge} px"
    )]
    TargetUnreachable {
        /// Requested maximum size.
        target: u64,
        /// Size of the smallest output produced.
        smallest: u64,
        /// Width of that output.
        width: u32,
        /// Height of that output.
        height: u32,
        /// Quality used for that output ("lossless" for PNG/WebP).
        quality: String,
        /// Configured quality floor.
        min_quality: u8,
        /// Configured long-edge floor.
        min_edge: u32,
    },
}

impl Error {
    /// Stable, machine-readable code for this error.
    pub fn code(&self) -> &'static str {
        match self {
            Error::UnsupportedFormat => "unsupported_format",
            Error::InputTooLarge { .. } => "input_too_large",
            Error::TooLarge { .. } => "image_too_large",
            Error::EmptyImage => "empty_image",
            Error::Corrupt { .. } => "corrupt_image",
            Error::InvalidOption { .. } => "invalid_option",
            Error::Encode { .. } => "encode_failed",
            Error::Resize(_) => "resize_failed",
            Error::TargetUnreachable { .. } => "target_unreachable",
        }
    }

    pub(crate) fn corrupt(format: Format, detail: impl std::fmt::Display) -> Error {
        Error::Corrupt {
            format,
            detail: detail.to_string(),
        }
    }
}
