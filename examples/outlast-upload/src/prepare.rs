//! Photo preparation before upload: orient, downscale, re-encode and strip metadata with
//! `outlast-image` per preset; keeps the original when it is smaller and needs nothing done.
//! Every other file is sent as it is. Synchronous (run it on a blocking thread).

use std::io::Read;
use std::path::{Path, PathBuf};

use outlast_image::{Format, Options, Preset};
use sha2::{Digest, Sha256};

use crate::cli::PresetArg;

/// What will be uploaded for one input.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Prepared {
    /// The file to send: the original, or the prepared copy in the run's cache.
    pub path: PathBuf,
    /// Bytes to send.
    pub size: u64,
    /// sha256 (hex) of those bytes.
    pub sha256: String,
    /// `prepared` (a re-encoded photo), `original_smaller` or `as_is` (not a photo / preset
    /// original / could not be decoded).
    pub how: String,
    /// Media type when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime: Option<String>,
    /// Dimensions after preparation, for photos.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dims: Option<(u32, u32)>,
}

/// Prepares `source` into `cache_dir` (named by content hash, so a rerun reuses it).
pub fn prepare(source: &Path, preset: PresetArg, cache_dir: &Path) -> std::io::Result<Prepared> {
    let preset = match preset {
        PresetArg::Eco => Some(Preset::Eco),
        PresetArg::Standard => Some(Preset::Standard),
        PresetArg::High => Some(Preset::High),
        PresetArg::Original => None,
    };
    let mut head = [0u8; 16];
    let n = std::fs::File::open(source)?.read(&mut head)?;
    let format = Format::sniff(&head[..n]);
    let (Some(preset), Some(format)) = (preset, format) else {
        return as_is(source, format);
    };
    let bytes = std::fs::read(source)?;
    let out = match outlast_image::process(&bytes, &Options::preset(preset)) {
        Ok(out) => out,
        // Not decodable by us (corrupt, too large, exotic): the backend may still know it.
        Err(_) => return as_is(source, Some(format)),
    };
    let original_is_clean = out.report.orientation <= 1 && !has_metadata(&bytes, format);
    if out.bytes.len() >= bytes.len() && original_is_clean {
        let mut p = as_is(source, Some(format))?;
        p.how = "original_smaller".into();
        p.dims = Some((out.report.input_width, out.report.input_height));
        return Ok(p);
    }
    let sha256 = hex::encode(Sha256::digest(&out.bytes));
    std::fs::create_dir_all(cache_dir)?;
    let path = cache_dir.join(format!("{sha256}.{}", out.report.output_format.name()));
    if !path.exists() {
        crate::state::write_atomic(&path, &out.bytes)?;
    }
    Ok(Prepared {
        path,
        size: out.bytes.len() as u64,
        sha256,
        how: "prepared".into(),
        mime: Some(out.report.output_format.mime().into()),
        dims: Some((out.report.output_width, out.report.output_height)),
    })
}

fn as_is(source: &Path, format: Option<Format>) -> std::io::Result<Prepared> {
    let (size, sha256) = hash_file(source)?;
    Ok(Prepared {
        path: source.to_path_buf(),
        size,
        sha256,
        how: "as_is".into(),
        mime: format.map(|f| f.mime().to_string()),
        dims: None,
    })
}

/// sha256 (hex) and length of a file, streamed.
pub fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut len = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        len += n as u64;
    }
    Ok((len, hex::encode(hasher.finalize())))
}

/// True when the file carries metadata a prepared copy would strip (EXIF, XMP, IPTC, comments,
/// text chunks). ICC profiles do not count: preparation keeps them too.
fn has_metadata(bytes: &[u8], format: Format) -> bool {
    match format {
        Format::Jpeg => {
            let mut i = 2;
            while i + 4 <= bytes.len() && bytes[i] == 0xFF {
                let marker = bytes[i + 1];
                if marker == 0xDA {
                    return false;
                }
                // APP1 (EXIF/XMP), APP3..APP15 (IPTC is APP13), COM.
                if marker == 0xE1 || (0xE3..=0xEF).contains(&marker) || marker == 0xFE {
                    return true;
                }
                let len = usize::from(u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]));
                i += 2 + len;
            }
            false
        }
        Format::Png => {
            let mut i = 8;
            while i + 8 <= bytes.len() {
                let len = u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]])
                    as usize;
                let kind = &bytes[i + 4..i + 8];
                if matches!(kind, b"eXIf" | b"tEXt" | b"zTXt" | b"iTXt") {
                    return true;
                }
                if kind == b"IDAT" {
                    return false;
                }
                i += 12 + len;
            }
            false
        }
        // WebP's EXIF/XMP chunks: be conservative and always re-encode.
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jpeg_metadata_is_seen() {
        // SOI, APP0 (JFIF, len 4), SOS
        let plain = [0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x04, 0, 0, 0xFF, 0xDA, 0, 2];
        assert!(!has_metadata(&plain, Format::Jpeg));
        let exif = [0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x04, 0, 0, 0xFF, 0xDA, 0, 2];
        assert!(has_metadata(&exif, Format::Jpeg));
    }
}
