//! Every metric the gateway records: its name as a constant, its kind and labels, and the
//! description `/metrics` shows (registered once at start-up by [`describe`]). Code records
//! metrics only through these names, so this file is the complete list (docs/operations.md
//! mirrors it).

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Counter `{backend}`: jobs accepted (cached answers included).
pub const JOBS_SUBMITTED: &str = "outlast_jobs_submitted_total";
/// Counter `{backend, state}`: runs that ended (completed, failed, canceled).
pub const JOBS_FINISHED: &str = "outlast_jobs_finished_total";
/// Histogram `{backend}`: seconds from submission to the end of a run.
pub const JOB_DURATION: &str = "outlast_job_duration_seconds";
/// Histogram `{backend}`: seconds a job waited from submission to its first start.
pub const JOB_QUEUE_WAIT: &str = "outlast_job_queue_wait_seconds";
/// Counter `{code}`: jobs failed, by failure code (`timeout` counts the time limits).
pub const JOBS_FAILED: &str = "outlast_jobs_failed_total";
/// Counter: job events stored (committed to the job store).
pub const EVENTS_STORED: &str = "outlast_events_stored_total";
/// Counter `{transport}`: job events sent to clients (`ws`, `sse`, `poll`).
pub const EVENTS_SENT: &str = "outlast_events_sent_total";
/// Counter `{route, method, status}`: HTTP requests answered, by matched route template.
pub const HTTP_REQUESTS: &str = "outlast_http_requests_total";
/// Histogram `{route, method}`: seconds from a request's head to its response head.
pub const HTTP_REQUEST_DURATION: &str = "outlast_http_request_duration_seconds";
/// Gauge `{backend}`: jobs waiting in the queue.
pub const QUEUE_DEPTH: &str = "outlast_queue_depth";
/// Gauge `{backend}`: jobs running now.
pub const JOBS_RUNNING: &str = "outlast_jobs_running";
/// Counter `{backend}`: submissions answered from the result cache.
pub const CACHE_HITS: &str = "outlast_cache_hits_total";
/// Counter `{backend}`: cache lookups that found nothing usable.
pub const CACHE_MISSES: &str = "outlast_cache_misses_total";
/// Counter: store transactions that committed event appends (one fsync each; many jobs' events
/// share one under load: group commit).
pub const STORE_EVENT_COMMITS: &str = "outlast_store_event_commits_total";
/// Counter: transactions that committed upload records (offsets, states; one fsync each; the
/// writes of many uploads share one under load: group commit).
pub const UPLOAD_RECORD_COMMITS: &str = "outlast_upload_record_commits_total";
/// Gauge: open WebSocket sessions.
pub const WS_CONNECTIONS: &str = "outlast_ws_connections";
/// Counter: WebSocket sessions ever opened.
pub const WS_CONNECTIONS_TOTAL: &str = "outlast_ws_connections_total";
/// Counter `{recovered}`: subscriptions that resumed a stream from a position.
pub const WS_RESUMES: &str = "outlast_ws_resumes_total";
/// Counter: sessions closed because the peer stopped answering pings.
pub const WS_PING_TIMEOUTS: &str = "outlast_ws_ping_timeouts_total";
/// Counter: sessions closed because a write could not complete in time.
pub const WS_SLOW_CONSUMERS: &str = "outlast_ws_slow_consumers_total";
/// Counter `{code}`: client messages refused as malformed, unknown or invalid.
pub const WS_BAD_MESSAGES: &str = "outlast_ws_bad_messages_total";
/// Gauge: jobs with at least one live subscriber.
pub const LIVE_JOB_CHANNELS: &str = "outlast_live_job_channels";
/// Counter `{transport}`: upload bytes received and stored (tus, ws).
pub const UPLOAD_BYTES: &str = "outlast_upload_bytes_total";
/// Counter: tus chunks refused because their checksum did not match.
pub const UPLOAD_CHECKSUM_MISMATCHES: &str = "outlast_upload_checksum_mismatches_total";
/// Counter: uploads refused because the disk would fall below its reserve.
pub const UPLOAD_DISK_REFUSALS: &str = "outlast_upload_disk_refusals_total";
/// Counter: uploads answered by an existing upload with the same sha256.
pub const UPLOAD_DEDUP_HITS: &str = "outlast_upload_dedup_hits_total";
/// Counter: uploads created.
pub const UPLOADS_CREATED: &str = "outlast_uploads_created_total";
/// Counter `{verified}`: uploads completed (`ok`, or `mismatch` with a declared sha256).
pub const UPLOADS_COMPLETED: &str = "outlast_uploads_completed_total";
/// Counter: uploads removed by garbage collection after expiry.
pub const UPLOADS_EXPIRED: &str = "outlast_uploads_expired_total";
/// Gauge `{server}`: 1 while a ComfyUI server is in rotation, 0 while it is out.
pub const COMFYUI_SERVER_UP: &str = "outlast_comfyui_server_up";
/// Counter `{found_by}`: stranded jobs (stored unfinished, neither queued nor running) queued
/// again, found by the sweep or a resubmit.
pub const JOBS_HEALED: &str = "outlast_jobs_healed_total";
/// Counter `{reason}`: new jobs refused by an owner's bounds (`queued` cap, `rate`).
pub const JOBS_REFUSED: &str = "outlast_jobs_refused_total";
/// Gauge: open HTTP connections (upgraded WebSockets included).
pub const HTTP_CONNECTIONS: &str = "outlast_http_connections";
/// Counter: connections refused (503 and close) beyond `http.max_connections` + reserve.
pub const HTTP_REFUSED: &str = "outlast_http_connections_refused_total";
/// Counter: connections closed after `http.idle_timeout` without a byte moving.
pub const HTTP_IDLE_CLOSED: &str = "outlast_http_idle_closed_total";
/// Counter: request bodies cut by `http.body_idle_timeout` or `http.body_read_timeout`.
pub const HTTP_BODY_TIMEOUTS: &str = "outlast_http_body_timeouts_total";
/// Counter: job streams (WebSocket subscriptions, SSE, long-polls) refused by
/// `streams.max_per_owner`.
pub const STREAMS_REFUSED: &str = "outlast_streams_refused_total";
/// Counter: responses ended because the client stopped reading (`streams.sse_write_timeout`).
pub const HTTP_WRITE_STALLS: &str = "outlast_http_write_stalls_total";
/// Counter: ComfyUI WebSocket reconnects.
pub const COMFYUI_RECONNECTS: &str = "outlast_comfyui_reconnects_total";
/// Counter: reconciliations of a prompt from ComfyUI's history and queue.
pub const COMFYUI_RECONCILIATIONS: &str = "outlast_comfyui_reconciliations_total";
/// Counter `{backend}`: canceled jobs stored `canceled` without the backend having confirmed
/// that the work stopped (ComfyUI unreachable past `comfyui.cancel_timeout`, a process group
/// that outlived SIGKILL, a shutdown during the stop).
pub const CANCELS_UNCONFIRMED: &str = "outlast_cancels_unconfirmed_total";
/// Counter: cancel requests to a ComfyUI server sent again because it did not answer.
pub const COMFYUI_CANCEL_RETRIES: &str = "outlast_comfyui_cancel_retries_total";
/// Counter `{outcome}`: webhook delivery attempts by outcome (`delivered`, `retry`, `failed`
/// after the last retry, `disabled` by a 410, `refused` by the egress policy).
pub const WEBHOOK_ATTEMPTS: &str = "outlast_webhook_attempts_total";
/// Histogram: seconds one webhook attempt took (resolve, connect, answer).
pub const WEBHOOK_ATTEMPT_DURATION: &str = "outlast_webhook_attempt_duration_seconds";

/// Every metric: name and description (a test checks the list covers the constants above).
pub const ALL: &[(&str, &str)] = &[
    (JOBS_SUBMITTED, "Jobs accepted, cached answers included"),
    (JOBS_FINISHED, "Job runs that ended, by final state"),
    (JOB_DURATION, "Seconds from submission to the end of a run"),
    (
        JOB_QUEUE_WAIT,
        "Seconds a job waited from submission to its first start",
    ),
    (
        JOBS_FAILED,
        "Jobs failed, by failure code (timeout included)",
    ),
    (EVENTS_STORED, "Job events committed to the job store"),
    (EVENTS_SENT, "Job events sent to clients, by transport"),
    (
        HTTP_REQUESTS,
        "HTTP requests answered, by route template, method and status",
    ),
    (
        HTTP_REQUEST_DURATION,
        "Seconds from a request's head to its response head, by route template",
    ),
    (QUEUE_DEPTH, "Jobs waiting in the queue"),
    (JOBS_RUNNING, "Jobs running now"),
    (
        HTTP_CONNECTIONS,
        "Open HTTP connections, upgraded WebSockets included",
    ),
    (
        HTTP_REFUSED,
        "Connections refused beyond the connection limit and its reserve",
    ),
    (HTTP_IDLE_CLOSED, "Connections closed for idleness"),
    (
        HTTP_BODY_TIMEOUTS,
        "Request bodies cut for arriving too slowly",
    ),
    (
        STREAMS_REFUSED,
        "Job streams refused by the per-owner stream limit",
    ),
    (
        HTTP_WRITE_STALLS,
        "Streaming responses ended because the client stopped reading",
    ),
    (
        JOBS_REFUSED,
        "New jobs refused by an owner's bounds (queued cap, rate), by reason",
    ),
    (
        JOBS_HEALED,
        "Stranded jobs (stored unfinished, not queued or running) queued again",
    ),
    (CACHE_HITS, "Submissions answered from the result cache"),
    (
        CACHE_MISSES,
        "Result cache lookups that found nothing usable",
    ),
    (
        STORE_EVENT_COMMITS,
        "Store transactions that committed event appends (one fsync each)",
    ),
    (
        UPLOAD_RECORD_COMMITS,
        "Transactions that committed upload records (one fsync each)",
    ),
    (WS_CONNECTIONS, "Open WebSocket sessions"),
    (WS_CONNECTIONS_TOTAL, "WebSocket sessions ever opened"),
    (
        WS_RESUMES,
        "Subscriptions that resumed a stream from a position",
    ),
    (
        WS_PING_TIMEOUTS,
        "Sessions closed because pings went unanswered",
    ),
    (
        WS_SLOW_CONSUMERS,
        "Sessions closed because a write did not complete in time",
    ),
    (WS_BAD_MESSAGES, "Client messages refused, by error code"),
    (LIVE_JOB_CHANNELS, "Jobs with at least one live subscriber"),
    (
        UPLOAD_BYTES,
        "Upload bytes received and stored, by transport",
    ),
    (
        UPLOAD_CHECKSUM_MISMATCHES,
        "tus chunks refused for a checksum mismatch",
    ),
    (
        UPLOAD_DISK_REFUSALS,
        "Uploads refused to keep the disk reserve",
    ),
    (
        UPLOAD_DEDUP_HITS,
        "Uploads answered by an existing upload with the same sha256",
    ),
    (UPLOADS_CREATED, "Uploads created"),
    (
        UPLOADS_COMPLETED,
        "Uploads completed, by sha256 verification",
    ),
    (UPLOADS_EXPIRED, "Expired uploads removed"),
    (COMFYUI_SERVER_UP, "1 while a ComfyUI server is in rotation"),
    (COMFYUI_RECONNECTS, "ComfyUI WebSocket reconnects"),
    (
        COMFYUI_RECONCILIATIONS,
        "Prompt reconciliations from ComfyUI history and queue",
    ),
    (
        CANCELS_UNCONFIRMED,
        "Jobs reported canceled before their backend confirmed the stop",
    ),
    (
        COMFYUI_CANCEL_RETRIES,
        "Cancel requests sent again to an unreachable ComfyUI server",
    ),
    (WEBHOOK_ATTEMPTS, "Webhook delivery attempts, by outcome"),
    (
        WEBHOOK_ATTEMPT_DURATION,
        "Seconds one webhook delivery attempt took",
    ),
];

/// Histogram buckets (seconds) for request-sized durations: HTTP answers, webhook attempts.
pub const FAST_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0,
];
/// Histogram buckets (seconds) for job-sized durations: queue waits and runs (up to 30 min).
pub const JOB_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0,
];

/// The buckets of a histogram metric (by name): job-sized for jobs, request-sized otherwise.
pub fn buckets_for(name: &str) -> &'static [f64] {
    if name == JOB_DURATION || name == JOB_QUEUE_WAIT {
        JOB_BUCKETS
    } else {
        FAST_BUCKETS
    }
}

/// The histograms among [`ALL`] (every `_seconds` metric is one).
pub fn histograms() -> impl Iterator<Item = &'static str> {
    ALL.iter()
        .map(|&(name, _)| name)
        .filter(|n| n.ends_with("_seconds"))
}

/// The Prometheus recorder with [`buckets_for`] set on every histogram, so they render as
/// `_bucket`/`_sum`/`_count` (not summaries) and can be aggregated across gateways.
pub fn recorder()
-> Result<metrics_exporter_prometheus::PrometheusRecorder, metrics_exporter_prometheus::BuildError>
{
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    let builder = histograms().try_fold(PrometheusBuilder::new(), |b, name| {
        b.set_buckets_for_metric(Matcher::Full(name.to_owned()), buckets_for(name))
    })?;
    Ok(builder.build_recorder())
}

/// Counts one event committed to the job store ([`EVENTS_STORED`]; a failure also in
/// [`JOBS_FAILED`] by its code). Called by the store after each commit.
pub fn record_stored(kind: &outlast_protocol::EventKind) {
    metrics::counter!(EVENTS_STORED).increment(1);
    if let outlast_protocol::EventKind::Failed(f) = kind {
        metrics::counter!(JOBS_FAILED, "code" => failure_code(f.code)).increment(1);
    }
}

/// A failure code as its wire name (`timeout`, `backend_error`, ...), for a label.
pub fn failure_code(code: outlast_protocol::FailureCode) -> String {
    match serde_json::to_value(code) {
        Ok(serde_json::Value::String(s)) => s,
        _ => "unknown".to_owned(),
    }
}

/// Registers every description with the installed recorder (call once after installing it).
pub fn describe() {
    for &(name, text) in ALL {
        if name.ends_with("_seconds") {
            describe_histogram!(name, Unit::Seconds, text);
        } else if name.ends_with("_total") {
            describe_counter!(name, text);
        } else {
            describe_gauge!(name, text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_constant_is_described_once() {
        let source = include_str!("metrics.rs");
        let declared: Vec<&str> = source
            .lines()
            .filter_map(|l| l.strip_prefix("pub const "))
            .filter(|l| !l.starts_with("ALL"))
            .filter_map(|l| l.split('"').nth(1))
            .collect();
        let mut described: Vec<&str> = ALL.iter().map(|(n, _)| *n).collect();
        described.sort_unstable();
        described.dedup();
        assert_eq!(described.len(), ALL.len(), "a metric is described twice");
        let mut declared_sorted = declared.clone();
        declared_sorted.sort_unstable();
        assert_eq!(declared_sorted, described);
        assert!(declared.iter().all(|n| n.starts_with("outlast_")));
    }

    /// (name, type, labels) of every constant, from its doc line (`/// Counter `{a, b}`: ...`).
    fn declared_with_kinds() -> Vec<(String, String, String)> {
        let source = include_str!("metrics.rs");
        let mut doc = String::new();
        let mut out = Vec::new();
        for line in source.lines() {
            if let Some(d) = line.strip_prefix("/// ") {
                if doc.is_empty() {
                    doc = d.to_owned();
                }
                continue;
            }
            let name = line
                .strip_prefix("pub const ")
                .and_then(|rest| rest.split('"').nth(1))
                .filter(|n| n.starts_with("outlast_"));
            if let Some(name) = name {
                let head = doc.split(':').next().unwrap_or("");
                let kind = head.split(' ').next().unwrap_or("").to_lowercase();
                let labels = head
                    .split_once("`{")
                    .and_then(|(_, l)| l.split_once("}`"))
                    .map_or("", |(l, _)| l);
                out.push((name.to_owned(), kind, labels.replace(' ', "")));
            }
            doc.clear();
        }
        out
    }

    #[test]
    fn docs_operations_md_lists_every_metric_with_its_type_and_labels() {
        let docs = include_str!("../../../docs/operations.md");
        let mut listed: Vec<(String, String, String)> = docs
            .lines()
            .filter(|l| l.starts_with("| `outlast_"))
            .map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let labels = cells[3].replace(['`', ' '], "");
                (
                    cells[1].trim_matches('`').to_owned(),
                    cells[2].to_owned(),
                    labels,
                )
            })
            .collect();
        let mut declared = declared_with_kinds();
        assert_eq!(declared.len(), ALL.len(), "every constant has a doc line");
        for (name, kind, _) in &declared {
            let by_suffix = if name.ends_with("_seconds") {
                "histogram"
            } else if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            assert_eq!(
                kind, by_suffix,
                "{name}: `describe` registers kinds by suffix"
            );
        }
        listed.sort();
        declared.sort();
        assert_eq!(
            listed, declared,
            "docs/operations.md's metric table differs from metrics.rs"
        );
    }

    #[test]
    fn histograms_have_buckets_and_failure_codes_their_wire_names() {
        assert!(histograms().count() >= 4);
        for h in histograms() {
            let b = buckets_for(h);
            assert!(b.windows(2).all(|w| w[0] < w[1]), "{h}: buckets ascend");
        }
        assert_eq!(buckets_for(JOB_DURATION).last(), Some(&1800.0));
        assert_eq!(
            failure_code(outlast_protocol::FailureCode::Timeout),
            "timeout"
        );
        assert_eq!(
            failure_code(outlast_protocol::FailureCode::CommandFailed),
            "command_failed"
        );
        assert!(recorder().is_ok());
    }
}
