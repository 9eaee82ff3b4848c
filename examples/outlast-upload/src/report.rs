//! What the user sees: indicatif bars on a terminal, plain lines (no `\r`, no colour) when
//! stdout is not a terminal, or NDJSON events with `--json`. Every part of the program reports
//! through [`Reporter::emit`] with a typed [`Event`]; the event names are a stable interface.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

/// One thing that happened. Serialised as `{"event": "<name>", ...fields}`; names and fields
/// are documented in the README and only ever gain fields.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event")]
pub enum Event {
    /// The run begins.
    #[serde(rename = "run.start")]
    RunStart {
        /// Files to send.
        files: usize,
        /// Jobs of the run.
        jobs: usize,
        /// Source bytes.
        bytes: u64,
        /// The state file.
        state_file: String,
        /// True when an earlier state of the same command was found.
        resumed: bool,
    },
    /// A file is ready to send.
    #[serde(rename = "file.prepared")]
    FilePrepared {
        /// Relative name.
        file: String,
        /// `prepared`, `original_smaller` or `as_is`.
        how: String,
        /// Source bytes.
        bytes_in: u64,
        /// Bytes to send.
        bytes_out: u64,
        /// sha256 of what is sent.
        sha256: String,
        /// Dimensions after preparation (photos).
        #[serde(skip_serializing_if = "Option::is_none")]
        width: Option<u32>,
        /// Dimensions after preparation (photos).
        #[serde(skip_serializing_if = "Option::is_none")]
        height: Option<u32>,
    },
    /// Durable upload progress (at most every 250 ms per file).
    #[serde(rename = "upload.progress")]
    UploadProgress {
        /// Relative name.
        file: String,
        /// The upload.
        upload_id: String,
        /// Durable offset.
        offset: u64,
        /// Total bytes.
        length: u64,
        /// Measured send rate.
        bytes_per_sec: u64,
    },
    /// A file is complete on the server.
    #[serde(rename = "upload.done")]
    UploadDone {
        /// Relative name.
        file: String,
        /// The upload.
        upload_id: String,
        /// Its sha256.
        sha256: String,
        /// Its size.
        size: u64,
        /// The server already had it: nothing was sent.
        deduplicated: bool,
        /// Bytes sent by this process for it.
        sent_bytes: u64,
    },
    /// A file could not be uploaded; its job is not submitted.
    #[serde(rename = "upload.failed")]
    UploadFailed {
        /// Relative name.
        file: String,
        /// Stable code.
        code: String,
        /// For people.
        message: String,
    },
    /// The gateway accepted (or recognised) a job.
    #[serde(rename = "job.submitted")]
    JobSubmitted {
        /// The job.
        job_id: String,
        /// Its files.
        files: Vec<String>,
        /// False when the idempotency key named an existing job.
        created: bool,
    },
    /// The job waits; `position` 0 is next.
    #[serde(rename = "job.queued")]
    JobQueued {
        /// The job.
        job_id: String,
        /// Its first file.
        file: String,
        /// Queue position.
        position: u32,
        /// Why, when the gateway says.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The job runs.
    #[serde(rename = "job.started")]
    JobStarted {
        /// The job.
        job_id: String,
        /// Its first file.
        file: String,
        /// Attempt, from 1.
        attempt: u32,
    },
    /// Step progress.
    #[serde(rename = "job.progress")]
    JobProgress {
        /// The job.
        job_id: String,
        /// Its first file.
        file: String,
        /// Done.
        value: u64,
        /// Total (0: unknown).
        max: u64,
        /// What runs.
        #[serde(skip_serializing_if = "Option::is_none")]
        label: Option<String>,
    },
    /// The job finished (`completed`, `failed`, `canceled`) or was refused (`refused`).
    #[serde(rename = "job.done")]
    JobDone {
        /// The job (absent when refused at submission).
        #[serde(skip_serializing_if = "Option::is_none")]
        job_id: Option<String>,
        /// Its first file.
        file: String,
        /// Terminal state.
        state: String,
        /// Failure code and message.
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
        /// Output names.
        outputs: Vec<String>,
    },
    /// An output was downloaded and its sha256 verified.
    #[serde(rename = "output.saved")]
    OutputSaved {
        /// The job.
        job_id: String,
        /// Its first file.
        file: String,
        /// Output name.
        name: String,
        /// Where it was saved.
        path: String,
        /// Bytes.
        size: u64,
        /// Verified sha256.
        sha256: String,
        /// Bytes fetched by this process (less than `size` after a Range resume).
        fetched_bytes: u64,
    },
    /// An output could not be downloaded or failed verification.
    #[serde(rename = "output.failed")]
    OutputFailed {
        /// The job.
        job_id: String,
        /// Its first file.
        file: String,
        /// Output name.
        name: String,
        /// `checksum_mismatch` or `download_failed`.
        code: String,
        /// For people.
        message: String,
    },
    /// A connection failed and is retried.
    #[serde(rename = "connection.retry")]
    ConnectionRetry {
        /// `upload`, `submit`, `follow` or `download`.
        what: String,
        /// Delay before the next attempt.
        delay_ms: u64,
        /// What went wrong.
        error: String,
    },
    /// Ctrl-C: stopped cleanly, state saved.
    #[serde(rename = "run.interrupted")]
    RunInterrupted {
        /// The state file.
        state_file: String,
        /// How to continue.
        hint: String,
    },
    /// The run ended.
    #[serde(rename = "run.done")]
    RunDone {
        /// The exit status.
        exit: i32,
        /// Jobs completed.
        completed: usize,
        /// Jobs failed, canceled or refused.
        failed: usize,
        /// Outputs saved and verified.
        outputs: usize,
    },
}

/// How events are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// indicatif bars (stdout is a terminal).
    Bars,
    /// One plain line per event and a periodic summary.
    Plain,
    /// NDJSON.
    Json,
    /// Errors only, on stderr.
    Quiet,
}

/// Totals for the summary line and the total bar.
#[derive(Debug, Default)]
struct Totals {
    bytes_total: u64,
    /// Durable bytes per file.
    done: HashMap<String, u64>,
    jobs_total: usize,
    jobs_done: usize,
    jobs_running: usize,
    last_progress_json: HashMap<String, Instant>,
    rate: u64,
    /// A summary line was printed.
    summarised: bool,
}

#[derive(Debug)]
struct Bars {
    multi: MultiProgress,
    total: ProgressBar,
    files: HashMap<String, ProgressBar>,
    jobs: HashMap<String, ProgressBar>,
}

/// Shows [`Event`]s in the chosen [`Mode`]. Shared by every task (`&Reporter`).
#[derive(Debug)]
pub struct Reporter {
    mode: Mode,
    started: Instant,
    inner: Mutex<(Totals, Option<Bars>, Instant)>,
}

fn file_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix:.bold} [{bar:30.cyan/blue}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

impl Reporter {
    /// A reporter; `Bars` draws on stdout.
    pub fn new(mode: Mode) -> Reporter {
        let bars = (mode == Mode::Bars).then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout_with_hz(10));
            let total = multi.add(ProgressBar::new(0));
            total.set_style(
                ProgressStyle::with_template(
                    "{prefix:.bold} [{bar:30.green/white}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            total.set_prefix("total");
            total.enable_steady_tick(Duration::from_millis(200));
            Bars {
                multi,
                total,
                files: HashMap::new(),
                jobs: HashMap::new(),
            }
        });
        Reporter {
            mode,
            started: Instant::now(),
            inner: Mutex::new((Totals::default(), bars, Instant::now())),
        }
    }

    /// Sets the totals shown by the bar and the summary.
    pub fn set_totals(&self, bytes: u64, jobs: Option<usize>) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.0.bytes_total = bytes;
        if let Some(jobs) = jobs {
            g.0.jobs_total = jobs;
        }
        if let Some(b) = &g.1 {
            b.total.set_length(bytes);
        }
    }

    /// An error for people: stderr in every mode (above the bars on a terminal).
    pub fn error(&self, message: &str) {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match &g.1 {
            Some(b) => b.multi.suspend(|| eprintln!("error: {message}")),
            None => eprintln!("error: {message}"),
        }
    }

    /// A note for people (not in `--json` or `--quiet`).
    pub fn note(&self, message: &str) {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match (&g.1, self.mode) {
            (Some(b), _) => {
                let _ = b.multi.println(message);
            }
            (None, Mode::Plain) => println!("{message}"),
            _ => {}
        }
    }

    /// Reports one event.
    pub fn emit(&self, event: Event) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (totals, bars, _) = &mut *guard;
        // Bookkeeping shared by every mode.
        match &event {
            Event::UploadProgress {
                file,
                offset,
                bytes_per_sec,
                ..
            } => {
                totals.done.insert(file.clone(), *offset);
                totals.rate = *bytes_per_sec;
            }
            Event::UploadDone { file, size, .. } => {
                totals.done.insert(file.clone(), *size);
            }
            Event::JobStarted { .. } => totals.jobs_running += 1,
            Event::JobDone { .. } => {
                totals.jobs_done += 1;
                totals.jobs_running = totals.jobs_running.saturating_sub(1);
            }
            _ => {}
        }
        match self.mode {
            // The way to continue is shown even when nothing else is.
            Mode::Quiet => {
                if let Event::RunInterrupted { hint, .. } = &event {
                    eprintln!("interrupted: {hint}");
                }
            }
            // After the bars are gone: plain lines.
            Mode::Bars if matches!(event, Event::RunInterrupted { .. } | Event::RunDone { .. }) => {
                if let Some(line) = plain_line(&event) {
                    println!("{line}");
                }
            }
            Mode::Json => {
                if let Event::UploadProgress {
                    file,
                    offset,
                    length,
                    ..
                } = &event
                {
                    let now = Instant::now();
                    let last = totals.last_progress_json.get(file).copied();
                    if offset < length && last.is_some_and(|t| now - t < Duration::from_millis(250))
                    {
                        return;
                    }
                    totals.last_progress_json.insert(file.clone(), now);
                }
                if let Ok(line) = serde_json::to_string(&event) {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                }
            }
            Mode::Plain => {
                if let Some(line) = plain_line(&event) {
                    let mut out = std::io::stdout().lock();
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                }
            }
            Mode::Bars => {
                if let Some(b) = bars {
                    draw(b, totals, &event);
                }
            }
        }
    }

    /// Called every second: the plain summary line (first after 1 s, then every 5 s).
    pub fn tick(&self) {
        if self.mode != Mode::Plain {
            return;
        }
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let first = !g.0.summarised && now - self.started >= Duration::from_secs(1);
        if !first && (!g.0.summarised || now - g.2 < Duration::from_secs(5)) {
            return;
        }
        g.0.summarised = true;
        g.2 = now;
        let t = &g.0;
        let done: u64 = t.done.values().sum();
        println!(
            "summary: uploaded {}/{} bytes ({} B/s), jobs {} done, {} running, of {}",
            done, t.bytes_total, t.rate, t.jobs_done, t.jobs_running, t.jobs_total
        );
    }

    /// Removes the bars (before the last lines are printed).
    pub fn finish(&self) {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = &g.1 {
            for bar in b.files.values().chain(b.jobs.values()) {
                bar.finish_and_clear();
            }
            b.total.finish();
        }
    }
}

fn draw(b: &mut Bars, totals: &Totals, event: &Event) {
    let done: u64 = totals.done.values().sum();
    b.total.set_position(done);
    b.total.set_message(format!(
        "jobs {}/{} done, {} running",
        totals.jobs_done, totals.jobs_total, totals.jobs_running
    ));
    match event {
        Event::UploadProgress {
            file,
            offset,
            length,
            ..
        } => {
            let bar = b.files.entry(file.clone()).or_insert_with(|| {
                let bar = b.multi.insert_before(&b.total, ProgressBar::new(*length));
                bar.set_style(file_style());
                bar.set_prefix(short(file));
                bar
            });
            bar.set_position(*offset);
        }
        Event::UploadDone { file, .. } => {
            if let Some(bar) = b.files.remove(file) {
                bar.finish_and_clear();
            }
            if let Some(line) = plain_line(event) {
                let _ = b.multi.println(line);
            }
        }
        Event::JobQueued {
            job_id,
            file,
            position,
            ..
        } => {
            job_bar(b, job_id, file).set_message(format!("queued, position {position}"));
        }
        Event::JobStarted { job_id, file, .. } => {
            job_bar(b, job_id, file).set_message("running");
        }
        Event::JobProgress {
            job_id,
            file,
            value,
            max,
            label,
        } => {
            let bar = job_bar(b, job_id, file);
            if *max > 0 {
                bar.set_length(*max);
                bar.set_position(*value);
            }
            bar.set_message(label.clone().unwrap_or_else(|| "running".into()));
        }
        Event::JobDone { job_id, .. } => {
            if let Some(bar) = job_id.as_ref().and_then(|j| b.jobs.remove(j)) {
                bar.finish_and_clear();
            }
            if let Some(line) = plain_line(event) {
                let _ = b.multi.println(line);
            }
        }
        other => {
            if let Some(line) = plain_line(other) {
                let _ = b.multi.println(line);
            }
        }
    }
}

fn job_bar<'a>(b: &'a mut Bars, job_id: &str, file: &str) -> &'a ProgressBar {
    b.jobs.entry(job_id.to_string()).or_insert_with(|| {
        let bar = b.multi.add(ProgressBar::new(1));
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:.bold} job [{bar:20.yellow/white}] {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(short(file));
        bar
    })
}

fn short(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    if chars.len() <= 28 {
        format!("{name:<28}")
    } else {
        let tail: String = chars[chars.len() - 27..].iter().collect();
        format!("…{tail}")
    }
}

/// The plain line of an event, or `None` for events only shown as bars / summary.
fn plain_line(event: &Event) -> Option<String> {
    Some(match event {
        Event::RunStart {
            files,
            jobs,
            bytes,
            resumed,
            ..
        } => format!(
            "{} run: {files} files, {bytes} bytes, {jobs} jobs",
            if *resumed { "resuming" } else { "starting" }
        ),
        Event::FilePrepared {
            file,
            how,
            bytes_in,
            bytes_out,
            ..
        } => format!("prepared {file}: {how}, {bytes_in} -> {bytes_out} bytes"),
        Event::UploadProgress { .. } | Event::JobProgress { .. } => return None,
        Event::UploadDone {
            file,
            upload_id,
            deduplicated,
            sent_bytes,
            size,
            ..
        } => {
            if *deduplicated {
                format!("uploaded {file}: {upload_id} (already on the server, nothing sent)")
            } else {
                format!("uploaded {file}: {upload_id}, {size} bytes ({sent_bytes} sent now)")
            }
        }
        Event::UploadFailed {
            file,
            code,
            message,
        } => format!("upload failed {file}: {code}: {message}"),
        Event::JobSubmitted {
            job_id,
            files,
            created,
        } => format!(
            "submitted {}: {job_id}{}",
            files.join(", "),
            if *created { "" } else { " (existing job)" }
        ),
        Event::JobQueued {
            file,
            position,
            reason,
            ..
        } => match reason {
            Some(r) => format!("queued {file}: position {position} ({r})"),
            None => format!("queued {file}: position {position}"),
        },
        Event::JobStarted { file, attempt, .. } => format!("started {file} (attempt {attempt})"),
        Event::JobDone {
            file, state, error, ..
        } => match error {
            Some(e) => format!("job {state} {file}: {e}"),
            None => format!("job {state} {file}"),
        },
        Event::OutputSaved {
            name, path, size, ..
        } => format!("saved {name} -> {path} ({size} bytes, sha256 verified)"),
        Event::OutputFailed {
            file,
            name,
            code,
            message,
            ..
        } => format!("output failed {file} {name}: {code}: {message}"),
        Event::ConnectionRetry {
            what,
            delay_ms,
            error,
        } => format!("{what}: {error}; retrying in {delay_ms} ms"),
        Event::RunInterrupted { hint, .. } => format!("interrupted: {hint}"),
        Event::RunDone {
            exit,
            completed,
            failed,
            outputs,
        } => format!(
            "done: {completed} jobs completed, {failed} failed, {outputs} outputs saved (exit {exit})"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_have_stable_names() {
        let v = serde_json::to_value(Event::JobQueued {
            job_id: "job_1".into(),
            file: "a.jpg".into(),
            position: 3,
            reason: None,
        })
        .expect("json");
        assert_eq!(v["event"], "job.queued");
        assert_eq!(v["position"], 3);
        assert!(v.get("reason").is_none());
        let line = plain_line(&Event::RunDone {
            exit: 0,
            completed: 1,
            failed: 0,
            outputs: 1,
        })
        .expect("line");
        assert!(!line.contains('\r') && !line.contains('\u{1b}'));
    }
}
