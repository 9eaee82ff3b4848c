//! `Options::threads`: the resize and the encode are split into bands on the
//! workers, and neither the thread count nor the split may change a byte.

mod fixtures;

use fixtures::*;
use outlast_image::{Error, Format, Limits, Options, decode, process};

/// Thread counts to compare: one, two, more than this machine may have, default.
const COUNTS: [Option<usize>; 4] = [Some(1), Some(2), Some(5), None];

fn with_threads(base: &Options, threads: Option<usize>) -> Options {
    Options {
        threads,
        ..base.clone()
    }
}

/// Processes `file` at every count in `COUNTS` and checks all outputs are
/// the same bytes; returns them.
fn same_bytes_for_every_count(file: &[u8], base: &Options) -> Vec<u8> {
    let first = process(file, &with_threads(base, COUNTS[0])).expect("processes");
    for threads in &COUNTS[1..] {
        let out = process(file, &with_threads(base, *threads)).expect("processes");
        let mut report = out.report.clone();
        report.elapsed = first.report.elapsed;
        assert_eq!(report, first.report, "threads {threads:?}");
        assert!(
            out.bytes == first.bytes,
            "threads {threads:?}: {} bytes differ from threads=1's {} bytes",
            out.bytes.len(),
            first.bytes.len()
        );
    }
    first.bytes
}

#[test]
fn a_noisy_photo_gives_the_same_bytes_for_any_thread_count() {
    // 1500x1100 to 1000x733: 12 resize bands, 6 encode bands (4:2:0).
    let (w, h) = (1500, 1100);
    let file = jpeg(&noisy(w, h, 7), w, h, 92);
    for quality in [80, 95] {
        let base = Options {
            max_edge: Some(1000),
            quality,
            ..Options::default()
        };
        let bytes = same_bytes_for_every_count(&file, &base);
        let img = decode(&bytes, &Limits::default()).expect("output decodes");
        assert_eq!((img.width, img.height), (1000, 733), "q{quality}");
    }
    // The size search encodes several times; each must agree.
    let base = Options {
        max_edge: Some(1000),
        target_bytes: Some(150_000),
        ..Options::default()
    };
    let bytes = same_bytes_for_every_count(&file, &base);
    assert!(bytes.len() <= 150_000);
}

#[test]
fn orientation_six_is_upright_with_one_thread_and_with_many() {
    // Stored 900x1300 (rotated), shown 1300x900, to 1040x720: both band
    // splits cross the picture's quadrant borders.
    let (w, h) = (1300, 900);
    let (stored, sw, sh) = stored_for(&upright(w, h), w, h, 6);
    let file = with_exif(&jpeg(&stored, sw, sh, 95), &exif_tiff(6, false));
    let base = Options {
        max_edge: Some(1040),
        ..Options::default()
    };
    let bytes = same_bytes_for_every_count(&file, &base);
    let img = decode(&bytes, &Limits::default()).expect("output decodes");
    assert_eq!((img.width, img.height, img.orientation), (1040, 720, 1));
    let (iw, ih) = (img.width as usize, img.height as usize);
    for (q, want) in QUADRANTS.iter().enumerate() {
        let (x, y) = ((1 + 2 * (q % 2)) * iw / 4, (1 + 2 * (q / 2)) * ih / 4);
        let at = (y * iw + x) * img.channels;
        let got = &img.pixels[at..at + 3];
        assert!(
            got.iter().zip(want).all(|(&g, &w)| g.abs_diff(w) <= 40),
            "quadrant {q}: got {got:?}, want {want:?}"
        );
    }
}

#[test]
fn transparent_and_lossless_outputs_do_not_depend_on_the_thread_count() {
    let (w, h) = (700, 520);
    let mut rgba = Vec::with_capacity(w * h * 4);
    for (i, p) in noisy(w, h, 3).chunks_exact(3).enumerate() {
        rgba.extend_from_slice(p);
        rgba.push(if i % 7 == 0 { 90 } else { 255 });
    }
    let file = png(&rgba, w, h, 4);
    for format in [None, Some(Format::Jpeg), Some(Format::WebP)] {
        let base = Options {
            max_edge: Some(600),
            format,
            ..Options::default()
        };
        same_bytes_for_every_count(&file, &base);
    }
}

#[test]
fn zero_threads_is_an_invalid_option() {
    let file = jpeg(&noisy(64, 48, 1), 64, 48, 90);
    let err = process(
        &file,
        &Options {
            threads: Some(0),
            ..Options::default()
        },
    )
    .expect_err("refused");
    assert!(
        matches!(
            err,
            Error::InvalidOption {
                name: "threads",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.code(), "invalid_option");
}
