//! `shrink IN OUT [--max-edge N] [--quality Q] [--format jpeg|png|webp] [--target-bytes N] [--preset eco|standard|high] [--threads N]`
//!
//! Prepares one image with `outlast_image::process` and prints the report.

use std::process::ExitCode;

use outlast_image::{ExifPolicy, Format, Options, Preset};

const USAGE: &str = "usage: shrink IN OUT [--max-edge N] [--quality Q] [--format jpeg|png|webp] \
[--target-bytes N] [--preset eco|standard|high] [--keep-exif] [--keep-gps] [--threads N]";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("shrink: {msg}");
            ExitCode::FAILURE
        }
    }
}

fn parse<T: std::str::FromStr>(flag: &str, v: Option<String>) -> Result<T, String> {
    let v = v.ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
    v.parse().map_err(|_| format!("bad value for {flag}: {v}"))
}

/// Flags as given; applied on top of the preset once all are read.
#[derive(Debug, Default)]
struct Flags {
    max_edge: Option<u32>,
    quality: Option<u8>,
    target_bytes: Option<u64>,
    format: Option<Format>,
    exif: Option<ExifPolicy>,
    threads: Option<usize>,
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let mut positional = Vec::new();
    let mut preset = Preset::Standard;
    let mut flags = Flags::default();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--max-edge" => flags.max_edge = Some(parse(&arg, args.next())?),
            "--quality" => flags.quality = Some(parse(&arg, args.next())?),
            "--target-bytes" => flags.target_bytes = Some(parse(&arg, args.next())?),
            "--format" => {
                let v: String = parse(&arg, args.next())?;
                flags.format =
                    Some(Format::parse(&v).ok_or_else(|| format!("unknown format {v}"))?);
            }
            "--preset" => {
                let v: String = parse(&arg, args.next())?;
                preset = Preset::parse(&v).ok_or_else(|| format!("unknown preset {v}"))?;
            }
            "--threads" => flags.threads = Some(parse(&arg, args.next())?),
            "--keep-exif" => flags.exif = Some(ExifPolicy::Safe),
            "--keep-gps" => flags.exif = Some(ExifPolicy::SafeWithGps),
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            s if s.starts_with("--") => return Err(format!("unknown flag {s}\n{USAGE}")),
            _ => positional.push(arg),
        }
    }
    let [input, output] = positional.as_slice() else {
        return Err(USAGE.to_string());
    };
    let mut options = Options::preset(preset);
    if let Some(e) = flags.max_edge {
        options.max_edge = Some(e);
    }
    if let Some(q) = flags.quality {
        options.quality = q;
    }
    options.target_bytes = flags.target_bytes;
    options.format = flags.format;
    options.threads = flags.threads;
    if let Some(p) = flags.exif {
        options.metadata.exif = p;
    }
    let bytes = std::fs::read(input).map_err(|e| format!("cannot read {input}: {e}"))?;
    let out = outlast_image::process(&bytes, &options)
        .map_err(|e| format!("{input}: [{}] {e}", e.code()))?;
    std::fs::write(output, &out.bytes).map_err(|e| format!("cannot write {output}: {e}"))?;
    let r = &out.report;
    println!(
        "{input} -> {output}: {} {}x{} {} bytes (orientation {}) -> {} {}x{} {} bytes, quality {}, {} attempt(s), {:.1} ms",
        r.input_format,
        r.input_width,
        r.input_height,
        r.input_bytes,
        r.orientation,
        r.output_format,
        r.output_width,
        r.output_height,
        r.output_bytes,
        r.quality
            .map_or_else(|| "lossless".to_string(), |q| q.to_string()),
        r.attempts,
        r.elapsed.as_secs_f64() * 1000.0
    );
    Ok(())
}
