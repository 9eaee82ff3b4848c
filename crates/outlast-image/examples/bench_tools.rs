//! Helpers for `bench.sh`: make a photo-like test JPEG, make a reference
//! downscale, and compute SSIM between two images.
//!
//! `bench_tools photo OUT WIDTH HEIGHT ORIENTATION`
//! `bench_tools quadrants OUT WIDTH HEIGHT ORIENTATION` (the Node test's fixture)
//! `bench_tools ssim REFERENCE_SOURCE WIDTH HEIGHT CANDIDATE...`

use std::process::ExitCode;

use outlast_image::{Limits, decode};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("photo") if args.len() == 5 => photo(&args[1..]),
        Some("quadrants") if args.len() == 5 => quadrants(&args[1..]),
        Some("ssim") if args.len() >= 5 => ssim_cmd(&args[1..]),
        _ => Err(
            "usage: bench_tools photo OUT W H ORIENTATION | ssim SOURCE W H CANDIDATE...".into(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_tools: {e}");
            ExitCode::FAILURE
        }
    }
}

fn num<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("not a number: {s}"))
}

/// Deterministic pseudo-random numbers (xorshift64*), so every run makes the same photo.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Smooth value noise on a lattice of `cell` px, bilinear with smoothstep.
fn value_noise(lattice: &[f32], lw: usize, x: f32, y: f32, cell: f32) -> f32 {
    let (gx, gy) = (x / cell, y / cell);
    let (ix, iy) = (gx as usize, gy as usize);
    let (fx, fy) = (gx - ix as f32, gy - iy as f32);
    let s = |t: f32| t * t * (3.0 - 2.0 * t);
    let at = |i: usize, j: usize| lattice[(j % lw) * lw + (i % lw)];
    let top = at(ix, iy) + (at(ix + 1, iy) - at(ix, iy)) * s(fx);
    let bottom = at(ix, iy + 1) + (at(ix + 1, iy + 1) - at(ix, iy + 1)) * s(fx);
    top + (bottom - top) * s(fy)
}

/// A landscape-like scene: sky gradient, fractal hills and texture, soft
/// discs, hard-edged boxes, fine sensor grain. Stored rotated so that
/// `orientation` brings it upright, like a phone held in portrait.
fn photo(args: &[String]) -> Result<(), String> {
    let (w, h): (usize, usize) = (num(&args[1])?, num(&args[2])?);
    let orientation: u16 = num(&args[3])?;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let lw = 256;
    let lattice: Vec<f32> = (0..lw * lw).map(|_| rng.unit()).collect();
    let discs: Vec<(f32, f32, f32, [f32; 3])> = (0..40)
        .map(|_| {
            let c = [rng.unit(), rng.unit(), rng.unit()];
            (
                rng.unit() * w as f32,
                rng.unit() * h as f32,
                20.0 + rng.unit() * 250.0,
                c,
            )
        })
        .collect();
    let boxes: Vec<(f32, f32, f32, f32, [f32; 3])> = (0..25)
        .map(|_| {
            let c = [rng.unit(), rng.unit(), rng.unit()];
            let (x, y) = (rng.unit() * w as f32, rng.unit() * h as f32);
            (
                x,
                y,
                x + 30.0 + rng.unit() * 300.0,
                y + 30.0 + rng.unit() * 200.0,
                c,
            )
        })
        .collect();
    let mut rgb = vec![0u8; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            let (fx, fy) = (x as f32, y as f32);
            let mut n = 0.0;
            let mut amp = 0.5;
            let mut cell = 400.0;
            for _ in 0..6 {
                n += amp * value_noise(&lattice, lw, fx + 1000.0, fy + 1000.0, cell);
                amp *= 0.5;
                cell /= 2.3;
            }
            let horizon = h as f32 * (0.45 + 0.15 * value_noise(&lattice, lw, fx, 7.0, 600.0));
            let mut c = if fy < horizon {
                let t = fy / horizon;
                [
                    0.35 + 0.3 * t + 0.1 * n,
                    0.55 + 0.25 * t + 0.1 * n,
                    0.9 - 0.1 * t,
                ]
            } else {
                [0.25 + 0.5 * n, 0.35 + 0.45 * n, 0.12 + 0.3 * n]
            };
            for &(cx, cy, r, col) in &discs {
                let d = ((fx - cx).powi(2) + (fy - cy).powi(2)).sqrt();
                let a = ((r - d) / 6.0).clamp(0.0, 1.0) * 0.8;
                for k in 0..3 {
                    c[k] = c[k] * (1.0 - a) + col[k] * (0.6 + 0.4 * n) * a;
                }
            }
            for &(x0, y0, x1, y1, col) in &boxes {
                if fx >= x0 && fx < x1 && fy >= y0 && fy < y1 {
                    let stripe = if ((fx - x0) as usize / 6).is_multiple_of(2) {
                        1.0
                    } else {
                        0.8
                    };
                    c = [col[0] * stripe, col[1] * stripe, col[2] * stripe];
                }
            }
            let grain = (rng.unit() - 0.5) * 0.05;
            let at = (y * w + x) * 3;
            for k in 0..3 {
                rgb[at + k] = ((c[k] + grain).clamp(0.0, 1.0) * 255.0).round() as u8;
            }
        }
    }
    write_oriented(&args[0], rgb, w, h, orientation, 92)
}

/// Four solid quadrants: red, green / blue, yellow (upright).
fn quadrants(args: &[String]) -> Result<(), String> {
    let (w, h): (usize, usize) = (num(&args[1])?, num(&args[2])?);
    let colours = [
        [220u8, 20, 20],
        [20, 200, 20],
        [20, 20, 220],
        [230, 230, 30],
    ];
    let mut rgb = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            rgb.extend_from_slice(&colours[usize::from(y >= h / 2) * 2 + usize::from(x >= w / 2)]);
        }
    }
    write_oriented(&args[0], rgb, w, h, num(&args[3])?, 90)
}

/// Writes upright pixels as a JPEG stored so that the orientation tag brings
/// them upright: for orientation 6 the stored image is turned 90 CCW.
fn write_oriented(
    path: &str,
    rgb: Vec<u8>,
    w: usize,
    h: usize,
    orientation: u16,
    quality: u8,
) -> Result<(), String> {
    let (stored, sw, sh) = match orientation {
        6 => (rotate_ccw(&rgb, w, h), h, w),
        1 => (rgb, w, h),
        _ => return Err("only orientations 1 and 6 are supported here".into()),
    };
    let mut jpeg = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut jpeg, quality);
    enc.set_sampling_factor(jpeg_encoder::SamplingFactor::F_2_2);
    enc.add_exif_metadata(&orientation_tiff(orientation))
        .map_err(|e| e.to_string())?;
    enc.encode(&stored, sw as u16, sh as u16, jpeg_encoder::ColorType::Rgb)
        .map_err(|e| e.to_string())?;
    std::fs::write(path, &jpeg).map_err(|e| e.to_string())
}

fn rotate_ccw(src: &[u8], w: usize, h: usize) -> Vec<u8> {
    // Output is h wide, w tall; output (x, y) shows source (w - 1 - y, x).
    let mut out = vec![0u8; src.len()];
    for y in 0..w {
        for x in 0..h {
            let s = (x * w + (w - 1 - y)) * 3;
            let d = (y * h + x) * 3;
            out[d..d + 3].copy_from_slice(&src[s..s + 3]);
        }
    }
    out
}

/// A big-endian TIFF block with just the orientation tag.
fn orientation_tiff(orientation: u16) -> Vec<u8> {
    let mut t = b"MM\x00\x2a\x00\x00\x00\x08\x00\x01\x01\x12\x00\x03\x00\x00\x00\x01".to_vec();
    t.extend_from_slice(&orientation.to_be_bytes());
    t.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    t
}

fn luma(img: &outlast_image::Image) -> Vec<f64> {
    img.pixels
        .chunks_exact(img.channels)
        .map(|p| 0.299 * f64::from(p[0]) + 0.587 * f64::from(p[1]) + 0.114 * f64::from(p[2]))
        .collect()
}

/// Separable Lanczos3 in f64, straight from the definition: the reference
/// downscale both candidates are compared against.
fn lanczos_reference(src: &[f64], w: usize, h: usize, tw: usize, th: usize) -> Vec<f64> {
    fn kernel(x: f64) -> f64 {
        if x == 0.0 {
            1.0
        } else if x.abs() < 3.0 {
            let px = std::f64::consts::PI * x;
            3.0 * px.sin() * (px / 3.0).sin() / (px * px)
        } else {
            0.0
        }
    }
    fn pass(src: &[f64], n: usize, m: usize, lines: usize, stride: usize, step: usize) -> Vec<f64> {
        // Resamples `lines` lines of length n (elements `step` apart, lines
        // `stride` apart) to length m; output laid out line by line.
        let scale = n as f64 / m as f64;
        let support = 3.0 * scale.max(1.0);
        let mut out = vec![0.0; lines * m];
        for i in 0..m {
            let center = (i as f64 + 0.5) * scale;
            let lo = (center - support).floor().max(0.0) as usize;
            let hi = ((center + support).ceil() as usize).min(n);
            let weights: Vec<f64> = (lo..hi)
                .map(|j| kernel((j as f64 + 0.5 - center) / scale.max(1.0)))
                .collect();
            let total: f64 = weights.iter().sum();
            for l in 0..lines {
                let mut acc = 0.0;
                for (k, wgt) in weights.iter().enumerate() {
                    acc += wgt * src[l * stride + (lo + k) * step];
                }
                out[l * m + i] = acc / total;
            }
        }
        out
    }
    let horizontal = pass(src, w, tw, h, w, 1); // h lines of tw
    let vertical = pass(&horizontal, h, th, tw, 1, tw); // tw lines of th
    let mut out = vec![0.0; tw * th];
    for x in 0..tw {
        for y in 0..th {
            out[y * tw + x] = vertical[x * th + y];
        }
    }
    out
}

/// Mean SSIM over 8x8 windows with a stride of 4, on luma.
fn ssim(a: &[f64], b: &[f64], w: usize, h: usize) -> f64 {
    let (c1, c2) = ((0.01f64 * 255.0).powi(2), (0.03f64 * 255.0).powi(2));
    let mut sum = 0.0;
    let mut count = 0usize;
    for y in (0..h.saturating_sub(7)).step_by(4) {
        for x in (0..w.saturating_sub(7)).step_by(4) {
            let (mut ma, mut mb, mut va, mut vb, mut cov) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for dy in 0..8 {
                for dx in 0..8 {
                    let i = (y + dy) * w + x + dx;
                    ma += a[i];
                    mb += b[i];
                }
            }
            ma /= 64.0;
            mb /= 64.0;
            for dy in 0..8 {
                for dx in 0..8 {
                    let i = (y + dy) * w + x + dx;
                    va += (a[i] - ma).powi(2);
                    vb += (b[i] - mb).powi(2);
                    cov += (a[i] - ma) * (b[i] - mb);
                }
            }
            va /= 63.0;
            vb /= 63.0;
            cov /= 63.0;
            sum += ((2.0 * ma * mb + c1) * (2.0 * cov + c2))
                / ((ma * ma + mb * mb + c1) * (va + vb + c2));
            count += 1;
        }
    }
    sum / count.max(1) as f64
}

fn ssim_cmd(args: &[String]) -> Result<(), String> {
    let limits = Limits::default();
    let load = |p: &str| -> Result<outlast_image::Image, String> {
        let bytes = std::fs::read(p).map_err(|e| format!("{p}: {e}"))?;
        decode(&bytes, &limits).map_err(|e| format!("{p}: {e}"))
    };
    let source = load(&args[0])?;
    let (tw, th): (usize, usize) = (num(&args[1])?, num(&args[2])?);
    let reference = lanczos_reference(
        &luma(&source),
        source.width as usize,
        source.height as usize,
        tw,
        th,
    );
    for path in &args[3..] {
        let cand = load(path)?;
        if (cand.width as usize, cand.height as usize) != (tw, th) {
            return Err(format!(
                "{path} is {}x{}, not {tw}x{th}",
                cand.width, cand.height
            ));
        }
        println!("{path}\t{:.5}", ssim(&reference, &luma(&cand), tw, th));
    }
    Ok(())
}
