//! Typed options: presets, size bounds, output format, target size, limits, metadata policy.

use std::fmt;

use crate::Error;

/// An image container format this crate reads and writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// JPEG (baseline or progressive in, baseline out).
    Jpeg,
    /// PNG (first frame of APNG in).
    Png,
    /// WebP (lossy or lossless in, first frame of animations; lossless out).
    WebP,
}

impl Format {
    /// Lower-case name, as used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Format::Jpeg => "jpeg",
            Format::Png => "png",
            Format::WebP => "webp",
        }
    }

    /// MIME type of the format.
    pub fn mime(self) -> &'static str {
        match self {
            Format::Jpeg => "image/jpeg",
            Format::Png => "image/png",
            Format::WebP => "image/webp",
        }
    }

    /// Parses `jpeg`/`jpg`, `png` or `webp` (case-insensitive).
    pub fn parse(s: &str) -> Option<Format> {
        match s.to_ascii_lowercase().as_str() {
            "jpeg" | "jpg" => Some(Format::Jpeg),
            "png" => Some(Format::Png),
            "webp" => Some(Format::WebP),
            _ => None,
        }
    }

    /// Sniffs the format from the first bytes of a file.
    pub fn sniff(bytes: &[u8]) -> Option<Format> {
        if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
            Some(Format::Jpeg)
        } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
            Some(Format::Png)
        } else if bytes.len() >= 12 && &bytes[0..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
            Some(Format::WebP)
        } else {
            None
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The size/quality trade-offs the product offers users.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// Smallest upload: 1280 px long edge, JPEG quality 70.
    Eco,
    /// The default: 2048 px long edge, JPEG quality 80.
    Standard,
    /// Near-original look: 3072 px long edge, JPEG quality 88.
    High,
}

impl Preset {
    /// Parses `eco`, `standard` or `high`.
    pub fn parse(s: &str) -> Option<Preset> {
        match s.to_ascii_lowercase().as_str() {
            "eco" => Some(Preset::Eco),
            "standard" => Some(Preset::Standard),
            "high" => Some(Preset::High),
            _ => None,
        }
    }
}

/// Hard limits checked before any expensive work (decompression bombs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted input file. Default 100 MiB.
    pub max_input_bytes: u64,
    /// Largest accepted width or height as declared in the header. Default 20 000.
    pub max_dimension: u32,
    /// Largest accepted width x height as declared in the header. Default 120 MP
    /// (a 108 MP phone sensor fits; 3 bytes per pixel are then ~360 MB).
    pub max_pixels: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_input_bytes: 100 * 1024 * 1024,
            max_dimension: 20_000,
            max_pixels: 120_000_000,
        }
    }
}

/// Which EXIF fields survive when metadata is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExifPolicy {
    /// No EXIF at all (the default).
    #[default]
    Strip,
    /// Camera, lens, exposure, date/time, artist and copyright; no GPS,
    /// serial numbers, maker notes, comments or thumbnails.
    Safe,
    /// [`ExifPolicy::Safe`] plus the GPS block. Only when the user asks.
    SafeWithGps,
}

/// What metadata to carry from input to output. XMP, IPTC, comments and
/// text chunks are always dropped; orientation is applied to the pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metadata {
    /// Keep the ICC colour profile (colour data, not personal data). Default
    /// true so that wide-gamut phone photos keep their colours.
    pub icc_profile: bool,
    /// EXIF policy. Default [`ExifPolicy::Strip`].
    pub exif: ExifPolicy,
}

impl Default for Metadata {
    fn default() -> Self {
        Metadata {
            icc_profile: true,
            exif: ExifPolicy::Strip,
        }
    }
}

impl Metadata {
    /// Drop everything, including the ICC profile.
    pub fn strip_all() -> Metadata {
        Metadata {
            icc_profile: false,
            exif: ExifPolicy::Strip,
        }
    }
}

/// How to prepare one image. Start from [`Options::default`] (the standard
/// preset) or [`Options::preset`] and change fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Largest output width (after orientation). `None`: no bound.
    pub max_width: Option<u32>,
    /// Largest output height (after orientation). `None`: no bound.
    pub max_height: Option<u32>,
    /// Largest output long edge. `None`: no bound. Images are never upscaled.
    pub max_edge: Option<u32>,
    /// Output format. `None`: JPEG, or PNG if the input has transparent pixels.
    pub format: Option<Format>,
    /// JPEG quality 1..=100 (the starting point when `target_bytes` is set).
    /// PNG and WebP output are lossless and ignore it.
    pub quality: u8,
    /// Upper bound on the output size in bytes. The quality is lowered (down
    /// to `min_quality`), then the dimensions (down to `min_edge`), until
    /// the output fits; otherwise [`Error::TargetUnreachable`].
    pub target_bytes: Option<u64>,
    /// Quality floor for the `target_bytes` search.
    pub min_quality: u8,
    /// Long-edge floor (px) for the `target_bytes` search.
    pub min_edge: u32,
    /// Colour that transparent pixels are composited onto for JPEG output.
    pub background: [u8; 3],
    /// What metadata to keep.
    pub metadata: Metadata,
    /// Bomb limits.
    pub limits: Limits,
    /// Worker threads for the resize and the encode (natively; wasm32 is
    /// always single-threaded). `None`: every core the OS offers. The output
    /// bytes are the same for any count.
    pub threads: Option<usize>,
}

impl Default for Options {
    fn default() -> Self {
        Options::preset(Preset::Standard)
    }
}

impl Options {
    /// Options for one of the product's presets.
    pub fn preset(preset: Preset) -> Options {
        let (edge, quality) = match preset {
            Preset::Eco => (1280, 70),
            Preset::Standard => (2048, 80),
            Preset::High => (3072, 88),
        };
        Options {
            max_width: None,
            max_height: None,
            max_edge: Some(edge),
            format: None,
            quality,
            target_bytes: None,
            min_quality: 40,
            min_edge: 320,
            background: [255, 255, 255],
            metadata: Metadata::default(),
            limits: Limits::default(),
            threads: None,
        }
    }

    /// Worker threads to use: [`Options::threads`] or every available core.
    pub(crate) fn worker_threads(&self) -> usize {
        self.threads.unwrap_or_else(crate::workers::available)
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        let bad = |name, reason: &str| {
            Err(Error::InvalidOption {
                name,
                reason: reason.to_string(),
            })
        };
        if !(1..=100).contains(&self.quality) {
            return bad("quality", "must be 1..=100");
        }
        if !(1..=100).contains(&self.min_quality) {
            return bad("min_quality", "must be 1..=100");
        }
        for (name, v) in [
            ("max_width", self.max_width),
            ("max_height", self.max_height),
            ("max_edge", self.max_edge),
        ] {
            if v == Some(0) {
                return bad(name, "must be at least 1");
            }
        }
        if self.min_edge == 0 {
            return bad("min_edge", "must be at least 1");
        }
        if self.threads == Some(0) {
            return bad("threads", "must be at least 1 (None: all cores)");
        }
        if self.target_bytes == Some(0) {
            return bad("target_bytes", "must be at least 1");
        }
        Ok(())
    }
}
