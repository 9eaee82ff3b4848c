//! `shrink IN OUT [--max-edge N] [--quality Q] [--format jpeg|png|webp] [--target-bytes N] [--preset eco|standard|high]`
//!
//! Prepares one image with `outlast_image::process` and prints the report.

use std::process::ExitCode;

use outlast_image::{Format, Options, Preset};

const USAGE: &str = "usage: shrink IN OUT [--max-edge N] [--quality Q] [--format jpeg|png|webp] \
[--target-bytes N] [--preset eco|standard|high] [--keep-exif] [--keep-gps]";

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

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let mut positional = Vec::new();
    // The preset is applied first, then the individual flags override it.
    let mut preset = Preset::Standard;
    let mut edits: Vec<Box<dyn Fn(&mut Options)>> = Vec::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--max-edge" => {
                let n: u32 = parse(&arg, args.next())?;
                edits.push(Box::new(move |o| o.max_edge = Some(n)));
            }
            "--quality" => {
                let q: u8 = parse(&arg, args.next())?;
                edits.push(Box::new(move |o| o.quality = q));
            }
            "--target-bytes" => {
                let n: u64 = parse(&arg, args.next())?;
                edits.push(Box::new(move |o| o.target_bytes = Some(n)));
            }
            "--format" => {
                let v: String = parse(&arg, args.next())?;
                let f = Format::parse(&v).ok_or_else(|| format!("unknown format {v}"))?;
                edits.push(Box::new(move |o| o.format = Some(f)));
            }
            "--preset" => {
                let v: String = parse(&arg, args.next())?;
                preset = Preset::parse(&v).ok_or_else(|| format!("unknown preset {v}"))?;
            }
            "--keep-exif" => {
                edits.push(Box::new(|o| {
                    o.metadata.exif = outlast_image::ExifPolicy::Safe;
                }));
            }
            "--keep-gps" => {
                edits.push(Box::new(|o| {
                    o.metadata.exif = outlast_image::ExifPolicy::SafeWithGps;
                }));
            }
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
    for edit in &edits {
        edit(&mut options);
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
