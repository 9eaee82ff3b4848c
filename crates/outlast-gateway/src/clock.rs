//! Wall-clock time for stored timestamps (creation times, expiry, cache freshness).
//!
//! Deadlines and intervals use tokio's monotonic `Instant`; only values that are stored or shown
//! to clients come from here.

/// Current Unix time in milliseconds (0 if the system clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
