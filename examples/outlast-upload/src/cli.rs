//! Command-line flags and environment variables (clap derive), with the help text that
//! documents exit statuses and examples.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Exit statuses, fixed forever (never renumbered).
pub mod exit {
    /// Every job completed and every output verified.
    pub const OK: i32 = 0;
    /// Some job failed, was canceled, or was refused at submission.
    pub const JOB_FAILED: i32 = 1;
    /// Usage or input error (bad flag, missing path, unreadable workflow).
    pub const USAGE: i32 = 2;
    /// Gave up on the connection to the gateway (`--retry-for` elapsed).
    pub const CONNECTION: i32 = 3;
    /// An output failed verification (sha256 mismatch).
    pub const VERIFY: i32 = 4;
    /// Interrupted: after Ctrl-C (state saved; run the same command to continue).
    pub const INTERRUPTED: i32 = 130;
}

const AFTER_HELP: &str = "\
EXAMPLES:
  # Send a folder of photos to the demo backend, wait, download results to ./outlast-results
  outlast-upload ~/Pictures/holiday

  # A ComfyUI workflow whose LoadImage node has {\"$input\": \"photo\"}; eco preset; 1 Mbit/s cap
  outlast-upload --backend comfyui --workflow flow.json --input-name photo \\
      --preset eco --bwlimit 1M --url https://outlast.example.com photos/

  # Machine-readable progress (NDJSON on stdout)
  outlast-upload --json photos/ | jq -c 'select(.event == \"job.done\")'

RESUME:
  The run's state lives in DIR/.outlast-upload/ (DIR = --out). After Ctrl-C, kill -9, a reboot
  or a dropped line, run the SAME command again: uploads continue from the server's durable
  offsets, already submitted jobs are re-attached (idempotency keys), nothing is sent or
  submitted twice, and finished downloads are kept. --fresh starts a new run instead.

EXIT STATUS (never renumbered):
    0  all jobs completed and all outputs verified (with --no-wait: all jobs submitted)
    1  some job failed, was canceled, or was refused at submission
    2  usage or input error (bad flag, missing path, unreadable workflow)
    3  gave up on the connection to the gateway (see --retry-for)
    4  an output failed verification (sha256 mismatch; the bad file is removed, run again)
  130  interrupted by Ctrl-C (the first stops cleanly and saves the state, a second exits at once)
  When several apply, the first of 130, 2, 3, 4, 1 wins.

NDJSON EVENTS (--json; one object per line, field \"event\"):
  run.start, file.prepared, upload.progress, upload.done, upload.failed, job.submitted,
  job.queued, job.started, job.progress, job.done, output.saved, output.failed,
  connection.retry, run.interrupted, run.done. See examples/outlast-upload/README.md.";

/// Upload files and folders to an Outlast gateway, run a job per file, wait and download results.
#[derive(Debug, Clone, Parser)]
#[command(name = "outlast-upload", version, about, after_help = AFTER_HELP)]
pub struct Args {
    /// Files or folders to send (folders recursively, in a stable order).
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,

    /// Gateway base URL (http:// only in this build).
    #[arg(long, env = "OUTLAST_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,

    /// Bearer token.
    #[arg(long, env = "OUTLAST_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Backend that runs the jobs.
    #[arg(long, env = "OUTLAST_BACKEND", default_value = "demo")]
    pub backend: String,

    /// Workflow JSON file; a node input {"$input": NAME} takes the uploaded file.
    #[arg(long, value_name = "FILE")]
    pub workflow: Option<PathBuf>,

    /// Job input name the file is given as (with --one-job: NAME, NAME2, NAME3, ...).
    /// Default: the single `$input` placeholder of --workflow, else `image`.
    #[arg(long, value_name = "NAME")]
    pub input_name: Option<String>,

    /// One job for all files instead of one job per file.
    #[arg(long)]
    pub one_job: bool,

    /// Photo preparation before upload (other files are sent as they are).
    #[arg(long, value_enum, default_value_t = PresetArg::Standard)]
    pub preset: PresetArg,

    /// Where results are downloaded (and where the resume state lives).
    #[arg(long, value_name = "DIR", default_value = "./outlast-results")]
    pub out: PathBuf,

    /// Upload and submit, then exit without waiting for the jobs.
    #[arg(long)]
    pub no_wait: bool,

    /// NDJSON events on stdout instead of bars or lines.
    #[arg(long, conflicts_with = "quiet")]
    pub json: bool,

    /// Print nothing but errors (on stderr).
    #[arg(long, short)]
    pub quiet: bool,

    /// Upload transport.
    #[arg(long, value_enum, default_value_t = Transport::Ws)]
    pub transport: Transport,

    /// Files uploaded at once.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel: u16,

    /// Upload bandwidth cap in bytes per second, with k/M/G suffixes (decimal; `b` suffix for
    /// bits: 2Mb = 2 Mbit/s), e.g. 500k, 1.5M.
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub bwlimit: Option<u64>,

    /// Also send hidden files and folders (names starting with a dot).
    #[arg(long)]
    pub hidden: bool,

    /// Give up (exit 3) when the gateway stays unreachable this long, e.g. 30s, 10m.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub retry_for: Duration,

    /// Start a new run instead of resuming the state of the same command.
    #[arg(long)]
    pub fresh: bool,
}

/// `--preset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PresetArg {
    /// 1280 px, quality 70.
    Eco,
    /// 2048 px, quality 80.
    Standard,
    /// 3072 px, quality 88.
    High,
    /// Send photos unchanged.
    Original,
}

impl PresetArg {
    /// The wire-stable name.
    pub fn name(self) -> &'static str {
        match self {
            PresetArg::Eco => "eco",
            PresetArg::Standard => "standard",
            PresetArg::High => "high",
            PresetArg::Original => "original",
        }
    }
}

/// `--transport`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    /// WebSocket chunk frames with windowed acks.
    Ws,
    /// tus 1.0.0 over HTTP.
    Tus,
}

/// Parses `500k`, `1.5M`, `2Mb` (bits), `1000` into bytes per second.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, bits) = match t.strip_suffix('b') {
        Some(rest) => (rest, true),
        None => (t.strip_suffix('B').unwrap_or(t), false),
    };
    let (num, mult) = match num.chars().last() {
        Some('k' | 'K') => (&num[..num.len() - 1], 1e3),
        Some('m' | 'M') => (&num[..num.len() - 1], 1e6),
        Some('g' | 'G') => (&num[..num.len() - 1], 1e9),
        _ => (num, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a rate like 500k, 1.5M or 2Mb"))?;
    let bytes = v * mult / if bits { 8.0 } else { 1.0 };
    if !(bytes >= 1.0 && bytes.is_finite()) {
        return Err(format!("{s:?}: the rate must be at least 1 byte/s"));
    }
    Ok(bytes as u64)
}

/// Parses `250ms`, `30s`, `10m`, `2h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s or 10m"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "" | "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    };
    if !(secs >= 0.0 && secs.is_finite()) {
        return Err(format!("{s:?} is not a duration"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_durations_parse() {
        assert_eq!(parse_rate("500k"), Ok(500_000));
        assert_eq!(parse_rate("1.5M"), Ok(1_500_000));
        assert_eq!(parse_rate("2Mb"), Ok(250_000));
        assert_eq!(parse_rate("1000"), Ok(1000));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0").is_err());
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("3 weeks").is_err());
    }
}
