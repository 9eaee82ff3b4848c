//! Wall-clock time for stored timestamps (creation times, expiry, cache freshness), and one
//! helper for optional monotonic deadlines.
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

/// Sleeps until the monotonic deadline `at`, forever when `None` (a `select!` branch that is
/// armed only while a deadline exists).
pub async fn sleep_until_opt(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
