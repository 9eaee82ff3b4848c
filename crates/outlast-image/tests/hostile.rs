//! Hostile input: decompression bombs are refused from the header, and
//! thousands of truncated or bit-flipped JPEG/PNG/WebP files give typed
//! errors (or a valid image), never a panic. A deterministic stand-in for a
//! fuzz target, runnable on stable Rust.

mod fixtures;

use fixtures::*;
use outlast_image::{Error, Format, Limits, Options, process};

fn expect_too_large(file: &[u8], what: &str) {
    match process(file, &Options::default()) {
        Err(e @ Error::TooLarge { .. }) => assert_eq!(e.code(), "image_too_large"),
        other => panic!("{what}: expected image_too_large, got {other:?}"),
    }
}

/// Offset of the first SOF0 marker's height field.
fn sof_dims_at(jpeg: &[u8]) -> usize {
    find(jpeg, &[0xFF, 0xC0]).expect("SOF0") + 5
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn jpeg_bomb_is_refused_from_the_header() {
    let mut file = jpeg(&upright(16, 16), 16, 16, 90);
    let at = sof_dims_at(&file);
    // 60000 x 60000 declared in a file of a few hundred bytes.
    file[at..at + 2].copy_from_slice(&60000u16.to_be_bytes());
    file[at + 2..at + 4].copy_from_slice(&60000u16.to_be_bytes());
    assert!(file.len() < 2000);
    expect_too_large(&file, "jpeg");
}

#[test]
fn png_bomb_is_refused_from_the_header() {
    let mut file = png(&upright(16, 16), 16, 16, 3);
    // IHDR data starts at 16; width, height, then the CRC over type+data at 29.
    file[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    file[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let crc = crc32(&file[12..29]);
    file[29..33].copy_from_slice(&crc.to_be_bytes());
    expect_too_large(&file, "png");
    // Within the per-side limit but over the pixel budget.
    file[16..20].copy_from_slice(&19_000u32.to_be_bytes());
    file[20..24].copy_from_slice(&19_000u32.to_be_bytes());
    let crc = crc32(&file[12..29]);
    file[29..33].copy_from_slice(&crc.to_be_bytes());
    expect_too_large(&file, "png pixels");
}

#[test]
fn webp_bomb_is_refused_from_the_header() {
    let mut file = webp(&upright(16, 16), 16, 16, 3);
    let at = find(&file, b"VP8L").expect("lossless chunk") + 8;
    assert_eq!(file[at], 0x2F);
    // 14 bits width-1, 14 bits height-1: 16383 x 16383 (268 MP). (16384
    // would wrap to 0 in image-webp 0.2.4's header arithmetic.)
    let bits = u32::from_le_bytes(file[at + 1..at + 5].try_into().expect("4 bytes"));
    let patched = (bits & !((1 << 28) - 1)) | (16382 << 14) | 16382;
    file[at + 1..at + 5].copy_from_slice(&patched.to_le_bytes());
    expect_too_large(&file, "webp");
}

#[test]
fn limits_are_configurable_and_input_size_is_capped() {
    let file = jpeg(&upright(64, 64), 64, 64, 90);
    let mut options = Options::default();
    options.limits.max_pixels = 1000;
    assert_eq!(
        process(&file, &options).expect_err("over").code(),
        "image_too_large"
    );
    options.limits = Limits {
        max_input_bytes: 100,
        ..Limits::default()
    };
    assert_eq!(
        process(&file, &options).expect_err("over").code(),
        "input_too_large"
    );
}

#[test]
fn garbage_and_empty_input_are_typed_errors() {
    for input in [
        &b""[..],
        b"hello",
        b"\xFF\xD8",
        b"\x89PNG\r\n\x1a\n",
        b"RIFF\0\0\0\0WEBP",
    ] {
        let e = process(input, &Options::default()).expect_err("refused");
        assert!(
            ["unsupported_format", "corrupt_image"].contains(&e.code()),
            "{input:?}: {e}"
        );
    }
}

/// Deterministic xorshift, so failures reproduce.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

fn mutants(seed: u64, file: &[u8], count: usize) -> impl Iterator<Item = Vec<u8>> + '_ {
    let mut rng = Rng(seed);
    (0..count).map(move |i| {
        let mut m = file.to_vec();
        match i % 4 {
            // Truncation at every length first, then random ones.
            0 => m.truncate(if i / 4 < file.len() {
                i / 4
            } else {
                rng.below(file.len())
            }),
            1 => {
                let at = rng.below(m.len());
                m[at] ^= 1 << rng.below(8);
            }
            2 => {
                for _ in 0..1 + rng.below(8) {
                    let at = rng.below(m.len());
                    m[at] = rng.below(256) as u8;
                }
            }
            _ => {
                // Header-area damage: dimensions, lengths, table sizes.
                let at = rng.below(m.len().min(200));
                m[at] = [0x00, 0xFF, 0x7F, 0x80][rng.below(4)];
                let cut = m.len() - rng.below(m.len() / 2 + 1);
                m.truncate(cut);
            }
        }
        m
    })
}

#[test]
fn mutated_files_never_panic() {
    let (w, h) = (24, 18);
    let rgb = noisy(w, h, 11);
    let mut rgba = Vec::new();
    for p in rgb.chunks(3) {
        rgba.extend_from_slice(p);
        rgba.push(p[0]);
    }
    let exif = exif_tiff(6, true);
    let mut progressive = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut progressive, 85);
    enc.set_progressive(true);
    enc.encode(&rgb, w as u16, h as u16, jpeg_encoder::ColorType::Rgb)
        .expect("encodes");
    let seeds: Vec<(&str, Vec<u8>)> = vec![
        ("jpeg", with_exif(&jpeg(&rgb, w, h, 85), &exif)),
        ("jpeg-progressive", progressive),
        ("png", png(&rgba, w, h, 4)),
        ("webp-lossless", webp(&rgba, w, h, 4)),
    ];
    let mut options = Options {
        max_edge: Some(16),
        ..Options::default()
    };
    options.metadata.exif = outlast_image::ExifPolicy::SafeWithGps;
    let mut total = 0;
    let mut errors = 0;
    for (k, (name, file)) in seeds.iter().enumerate() {
        for m in mutants(0x5EED + k as u64, file, 1500) {
            total += 1;
            match process(&m, &options) {
                Ok(out) => {
                    assert!(out.report.output_width <= 16 && out.report.output_height <= 16);
                    assert!(Format::sniff(&out.bytes).is_some(), "{name}");
                }
                Err(e) => {
                    errors += 1;
                    assert!(!e.code().is_empty() && !e.to_string().is_empty());
                }
            }
        }
    }
    assert_eq!(total, 6000);
    assert!(errors > 1000, "mutations were mostly caught ({errors})");
}
