//! End-to-end behaviour of `process` on fixtures the tests make: orientation,
//! metadata, sizes, target bytes, formats.

mod fixtures;

use fixtures::*;
use outlast_image::{Error, ExifPolicy, Format, Limits, Options, Preset, decode, process};

fn close(a: &[u8], b: [u8; 3]) -> bool {
    a.iter().zip(b).all(|(&x, y)| x.abs_diff(y) <= 40)
}

/// Colour at the centre of each quadrant of a decoded image.
fn quadrant_colours(img: &outlast_image::Image) -> Vec<Vec<u8>> {
    let (w, h) = (img.width as usize, img.height as usize);
    [
        (w / 4, h / 4),
        (3 * w / 4, h / 4),
        (w / 4, 3 * h / 4),
        (3 * w / 4, 3 * h / 4),
    ]
    .iter()
    .map(|&(x, y)| {
        let at = (y * w + x) * img.channels;
        img.pixels[at..at + 3].to_vec()
    })
    .collect()
}

#[test]
fn all_eight_orientations_come_out_upright() {
    let (w, h) = (96, 64);
    let upright_px = upright(w, h);
    for o in 1..=8u8 {
        let (stored, sw, sh) = stored_for(&upright_px, w, h, o);
        let file = with_exif(&jpeg(&stored, sw, sh, 95), &exif_tiff(u16::from(o), false));
        for max_edge in [None, Some(48)] {
            let options = Options {
                max_edge,
                ..Options::default()
            };
            let out = process(&file, &options).expect("processes");
            assert_eq!(out.report.orientation, o);
            let expect = if max_edge.is_some() {
                (48, 32)
            } else {
                (96, 64)
            };
            assert_eq!(
                (out.report.output_width, out.report.output_height),
                expect,
                "orientation {o}"
            );
            let img = decode(&out.bytes, &Limits::default()).expect("output decodes");
            assert_eq!(img.orientation, 1, "output carries no rotation");
            assert_eq!((img.width, img.height), expect);
            let got = quadrant_colours(&img);
            for (q, want) in QUADRANTS.iter().enumerate() {
                assert!(
                    close(&got[q], *want),
                    "orientation {o}, quadrant {q}: got {:?}, want {want:?}",
                    got[q]
                );
            }
        }
    }
}

#[test]
fn metadata_is_stripped_unless_asked_to_keep() {
    let file = with_exif(&jpeg(&noisy(64, 48, 1), 64, 48, 90), &exif_tiff(6, true));
    let marker = GPS_MARKER.to_le_bytes();
    assert!(find(&file, &marker).is_some(), "fixture carries GPS");

    let stripped = process(&file, &Options::default())
        .expect("processes")
        .bytes;
    assert!(find(&stripped, b"Exif\0\0").is_none(), "no EXIF by default");
    assert!(find(&stripped, &marker).is_none(), "no GPS by default");
    assert!(find(&stripped, MAKE).is_none());

    let mut options = Options::default();
    options.metadata.exif = ExifPolicy::Safe;
    let safe = process(&file, &options).expect("processes");
    assert!(
        find(&safe.bytes, MAKE).is_some(),
        "safe subset keeps the make"
    );
    assert!(
        find(&safe.bytes, &marker).is_none(),
        "safe subset drops GPS"
    );
    assert!(find(&safe.bytes, &[0x25, 0x88]).is_none(), "no GPS pointer");
    // The kept EXIF must not rotate the already upright pixels again.
    let img = decode(&safe.bytes, &Limits::default()).expect("decodes");
    assert_eq!(img.orientation, 1);
    assert_eq!((img.width, img.height), (48, 64));

    options.metadata.exif = ExifPolicy::SafeWithGps;
    let gps = process(&file, &options).expect("processes").bytes;
    assert!(find(&gps, &marker).is_some(), "GPS kept when asked");

    for format in [Format::Png, Format::WebP] {
        let out = process(
            &file,
            &Options {
                format: Some(format),
                ..Options::default()
            },
        )
        .expect("processes");
        assert!(find(&out.bytes, &marker).is_none(), "{format}: no GPS");
        assert!(find(&out.bytes, MAKE).is_none(), "{format}: no EXIF");
    }
}

#[test]
fn output_is_never_larger_in_pixels_than_input() {
    let sizes = [
        (1, 1),
        (7, 3),
        (3, 7),
        (40, 40),
        (300, 20),
        (20, 300),
        (257, 129),
    ];
    let bounds = [None, Some(1), Some(5), Some(64), Some(10_000)];
    for (w, h) in sizes {
        let file = jpeg(&noisy(w, h, 7), w, h, 85);
        for preset in [Preset::Eco, Preset::Standard, Preset::High] {
            for max_edge in bounds {
                for max_width in bounds {
                    let options = Options {
                        max_edge,
                        max_width,
                        max_height: max_edge.map(|e| e / 2 + 1),
                        ..Options::preset(preset)
                    };
                    let r = process(&file, &options).expect("processes").report;
                    let (ow, oh) = (r.output_width, r.output_height);
                    assert!(ow >= 1 && oh >= 1);
                    assert!(
                        ow <= w as u32 && oh <= h as u32,
                        "{w}x{h} grew to {ow}x{oh}"
                    );
                    if let Some(e) = max_edge {
                        assert!(ow.max(oh) <= e.max(1));
                    }
                    if let Some(mw) = max_width {
                        assert!(ow <= mw);
                    }
                }
            }
        }
    }
}

#[test]
fn target_bytes_is_met_or_the_error_says_why() {
    let file = jpeg(&noisy(900, 600, 3), 900, 600, 95);
    let unbounded = process(&file, &Options::default()).expect("processes");
    for target in [60_000u64, 25_000, 12_000, 5_000] {
        let options = Options {
            target_bytes: Some(target),
            min_edge: 64,
            ..Options::default()
        };
        let out = process(&file, &options).expect("fits");
        assert!(
            out.bytes.len() as u64 <= target,
            "{target}: {}",
            out.bytes.len()
        );
        assert_eq!(out.report.output_bytes, out.bytes.len() as u64);
        assert!(out.report.attempts >= 1);
        if target < unbounded.bytes.len() as u64 {
            assert!(out.report.attempts > 1);
        }
    }
    // Impossible within the floors: typed error with the numbers.
    let options = Options {
        target_bytes: Some(300),
        min_edge: 400,
        min_quality: 60,
        ..Options::default()
    };
    match process(&file, &options) {
        Err(e @ Error::TargetUnreachable { .. }) => {
            assert_eq!(e.code(), "target_unreachable");
            let Error::TargetUnreachable {
                target,
                smallest,
                width,
                ..
            } = e
            else {
                unreachable!()
            };
            assert_eq!(target, 300);
            assert!(smallest > 300);
            assert_eq!(width, 400);
        }
        other => panic!("expected target_unreachable, got {other:?}"),
    }
    // Lossless output can only shrink in size.
    let options = Options {
        format: Some(Format::Png),
        target_bytes: Some(60_000),
        min_edge: 16,
        ..Options::default()
    };
    let out = process(&file, &options).expect("png fits");
    assert!(out.bytes.len() <= 60_000);
    assert_eq!(out.report.quality, None);
}

#[test]
fn png_and_webp_inputs_with_alpha() {
    let (w, h) = (40, 30);
    let mut rgba = Vec::new();
    for p in upright(w, h).chunks(3) {
        rgba.extend_from_slice(p);
        rgba.push(if p[0] > 200 && p[1] < 50 { 0 } else { 255 });
    }
    for (name, file) in [("png", png(&rgba, w, h, 4)), ("webp", webp(&rgba, w, h, 4))] {
        // Transparent input, no format asked: PNG keeps the alpha.
        let out = process(&file, &Options::default()).expect(name);
        assert_eq!(out.report.output_format, Format::Png, "{name}");
        let img = decode(&out.bytes, &Limits::default()).expect("decodes");
        assert_eq!(img.channels, 4);
        assert_eq!(img.pixels[3], 0, "{name}: top-left stays transparent");
        // JPEG output: transparent pixels land on the background colour.
        let options = Options {
            format: Some(Format::Jpeg),
            background: [255, 255, 255],
            ..Options::default()
        };
        let out = process(&file, &options).expect(name);
        let img = decode(&out.bytes, &Limits::default()).expect("decodes");
        let q = quadrant_colours(&img);
        assert!(close(&q[0], [255, 255, 255]), "{name}: {:?}", q[0]);
        assert!(close(&q[3], QUADRANTS[3]), "{name}: {:?}", q[3]);
    }
    let opaque = webp(&upright(w, h), w, h, 3);
    let out = process(&opaque, &Options::default()).expect("webp");
    assert_eq!(out.report.input_format, Format::WebP);
    assert_eq!(out.report.output_format, Format::Jpeg);
}

#[test]
fn every_output_format_round_trips() {
    let file = jpeg(&upright(64, 48), 64, 48, 95);
    for format in [Format::Jpeg, Format::Png, Format::WebP] {
        let out = process(
            &file,
            &Options {
                format: Some(format),
                max_edge: Some(32),
                ..Options::default()
            },
        )
        .expect("processes");
        assert_eq!(Format::sniff(&out.bytes), Some(format));
        let img = decode(&out.bytes, &Limits::default()).expect("decodes");
        assert_eq!((img.width, img.height), (32, 24));
        let q = quadrant_colours(&img);
        for i in 0..4 {
            assert!(close(&q[i], QUADRANTS[i]), "{format} quadrant {i}");
        }
    }
}

#[test]
fn bad_options_are_typed_errors() {
    let file = jpeg(&upright(8, 8), 8, 8, 90);
    for options in [
        Options {
            quality: 0,
            ..Options::default()
        },
        Options {
            max_edge: Some(0),
            ..Options::default()
        },
        Options {
            target_bytes: Some(0),
            ..Options::default()
        },
    ] {
        let e = process(&file, &options).expect_err("refused");
        assert_eq!(e.code(), "invalid_option");
    }
}

#[test]
fn grayscale_and_cmyk_jpeg_inputs() {
    let (w, h) = (40usize, 30usize);
    let gray: Vec<u8> = (0..w * h).map(|i| (i % 256) as u8).collect();
    let mut file = Vec::new();
    jpeg_encoder::Encoder::new(&mut file, 90)
        .encode(&gray, w as u16, h as u16, jpeg_encoder::ColorType::Luma)
        .expect("encodes");
    let out = process(&file, &Options::default()).expect("grayscale");
    assert_eq!(
        (out.report.output_width, out.report.output_height),
        (40, 30)
    );

    let cmyk: Vec<u8> = (0..w * h * 4).map(|i| (i * 7 % 256) as u8).collect();
    let mut file = Vec::new();
    jpeg_encoder::Encoder::new(&mut file, 90)
        .encode(&cmyk, w as u16, h as u16, jpeg_encoder::ColorType::Cmyk)
        .expect("encodes");
    let out = process(&file, &Options::default()).expect("cmyk");
    assert_eq!(
        (out.report.output_width, out.report.output_height),
        (40, 30)
    );
}
