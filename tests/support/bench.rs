//! Measuring helpers the benchmarks share: the disk's own fsync rate (the baseline every
//! durable figure is a ratio to), percentiles and the wall clock in milliseconds.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// Sequential appends of `record` bytes, each followed by fsync, for `secs`, in `dir` (the
/// file system the gateway's data directory is on): fsyncs per second.
pub fn disk_fsync_rate(dir: &Path, record: usize, secs: f64) -> anyhow::Result<f64> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path)?;
    let buf = vec![0x5au8; record];
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed().as_secs_f64() < secs {
        file.write_all(&buf)?;
        file.sync_all()?;
        n += 1;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(rate)
}

/// The `p` quantile (0..=1, nearest rank) of ascending `sorted`; NaN when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Milliseconds since the Unix epoch (the clock the gateway stamps events with).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
