//! One run: checks the flags, walks the inputs, loads the resume state, then drives the
//! pipeline (prepare + upload N at once -> batch submit -> follow over one WebSocket ->
//! download and verify) and turns the outcome into the documented exit status.

use std::collections::{BTreeSet, HashSet};
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, UNIX_EPOCH};

use futures::StreamExt;
use outlast_protocol::{IdempotencyKey, JobSpec, JobState};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::cli::{Args, exit};
use crate::download::{Downloaded, download_job};
use crate::net::{Ctx, Limiter, Stop};
use crate::report::{Event, Mode, Reporter};
use crate::state::{FileState, JobRecord, Store, job_key, run_key};
use crate::submit::{Answer, Submitter};
use crate::walk::{Input, walk};

/// A job to be: indexes into the inputs, and the prefix of its result names.
#[derive(Debug, Clone)]
struct Slot {
    inputs: Vec<usize>,
    prefix: String,
}

/// Runs the command; returns the exit status.
pub async fn run(args: Args) -> i32 {
    // Registered first, so a Ctrl-C at any later moment is ours.
    let mut sigint = match signal(SignalKind::interrupt()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot handle Ctrl-C: {e}");
            return exit::USAGE;
        }
    };
    let prepared = match plan(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e:#}");
            return exit::USAGE;
        }
    };
    let Plan {
        inputs,
        workflow,
        input_name,
        key,
    } = prepared;
    let mode = if args.json {
        Mode::Json
    } else if args.quiet {
        Mode::Quiet
    } else if std::io::stdout().is_terminal() {
        Mode::Bars
    } else {
        Mode::Plain
    };
    let state_path = args
        .out
        .join(".outlast-upload")
        .join(format!("run-{key}.json"));
    let resumed = state_path.exists() && !args.fresh;
    let store = match Store::open(state_path, args.fresh) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return exit::USAGE;
        }
    };
    let file_idx = reconcile(&store, &inputs);
    let slots = slots(&args, &inputs);
    let http = match reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: HTTP client: {e}");
            return exit::USAGE;
        }
    };
    let ctx = Ctx {
        base: args.url.trim_end_matches('/').to_string(),
        limiter: args.bwlimit.map(Limiter::new),
        report: Reporter::new(mode),
        store,
        http,
        cancel: CancellationToken::new(),
        args,
    };
    if let Err(e) = ctx.store.save().await {
        ctx.report
            .error(&format!("cannot write the state file: {e:#}"));
        return exit::USAGE;
    }
    ctx.report.emit(Event::RunStart {
        files: inputs.len(),
        jobs: slots.len(),
        bytes: inputs.iter().map(|i| i.size).sum(),
        state_file: ctx.store.path().display().to_string(),
        resumed,
    });
    refresh_totals(&ctx, &file_idx, Some(slots.len()));

    let gave_up: Mutex<Option<String>> = Mutex::new(None);
    let stop = |s: Stop| {
        if let Stop::GiveUp(reason) = s {
            let mut g = gave_up.lock().unwrap_or_else(|p| p.into_inner());
            g.get_or_insert(reason);
            ctx.cancel.cancel();
        }
    };
    let interrupted = CancellationToken::new();
    let finished = CancellationToken::new();

    let (ready_tx, ready_rx) = mpsc::unbounded_channel::<(usize, bool)>();
    let (follow_tx, follow_rx) = mpsc::channel::<crate::follow::Follow>(1024);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<usize>();

    let uploads = async {
        let parallel = usize::from(ctx.args.parallel);
        let mut results = futures::stream::iter(0..inputs.len())
            .map(|i| upload_one(&ctx, &inputs[i], file_idx[i], &file_idx))
            .buffer_unordered(parallel);
        let mut i = 0;
        while let Some((idx, r)) = results.next().await {
            i += 1;
            match r {
                Ok(ok) => {
                    let _ = ready_tx.send((idx, ok));
                }
                Err(s) => stop(s),
            }
        }
        drop(ready_tx);
        i
    };
    let submitter = submit_ready(
        &ctx,
        &inputs,
        &file_idx,
        &slots,
        &workflow,
        &input_name,
        ready_rx,
        follow_tx,
        done_tx.clone(),
        &stop,
    );
    let follower = async {
        if ctx.args.no_wait {
            drop(follow_rx);
            drop(done_tx);
            return;
        }
        let r = crate::follow::follow(&ctx, follow_rx, done_tx).await;
        if let Err(s) = r {
            stop(s);
        }
    };
    let downloader = async {
        let mut total = Downloaded::default();
        while let Some(idx) = done_rx.recv().await {
            match download_job(&ctx, idx).await {
                Ok(d) => {
                    total.saved += d.saved;
                    total.bad += d.bad;
                }
                Err(s) => {
                    stop(s);
                    break;
                }
            }
        }
        total
    };
    let work = async {
        let r = tokio::join!(uploads, submitter, follower, downloader);
        finished.cancel();
        r
    };
    let ticker = async {
        let mut iv = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = iv.tick() => ctx.report.tick(),
                () = finished.cancelled() => break,
            }
        }
    };
    let signals = async {
        if sigint.recv().await.is_none() {
            return std::future::pending().await;
        }
        interrupted.cancel();
        ctx.cancel.cancel();
        ctx.report
            .note("stopping: saving the state (press Ctrl-C again to exit at once)");
        let _ = sigint.recv().await;
        eprintln!("interrupted twice: exiting at once (the state saved so far is kept)");
        std::process::exit(exit::INTERRUPTED);
    };
    let ((_, (records, refused), (), downloads), ()) = tokio::select! {
        r = async { tokio::join!(work, ticker) } => r,
        () = signals => unreachable_exit(),
    };
    let _ = ctx.store.save().await;
    ctx.report.finish();

    let hint = format!("run the same command again to continue: {}", command_line());
    if interrupted.is_cancelled() {
        ctx.report.emit(Event::RunInterrupted {
            state_file: ctx.store.path().display().to_string(),
            hint: hint.clone(),
        });
        return finish(&ctx, exit::INTERRUPTED, 0, 0, downloads.saved);
    }
    let gave_up = gave_up.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if let Some(reason) = gave_up {
        ctx.report.error(&format!("{reason}; {hint}"));
        return finish(&ctx, exit::CONNECTION, 0, 0, downloads.saved);
    }
    let (completed, failed) = ctx.store.read(|s| {
        let mut completed = 0;
        let mut failed = refused;
        for &r in &records {
            match s.jobs[r].state {
                Some(JobState::Completed) => completed += 1,
                Some(JobState::Failed | JobState::Canceled) => failed += 1,
                _ => {}
            }
        }
        (completed, failed)
    });
    let missing_outputs = if ctx.args.no_wait {
        0
    } else {
        ctx.store.read(|s| {
            records
                .iter()
                .filter(|&&r| s.jobs[r].state == Some(JobState::Completed))
                .map(|&r| {
                    let j = &s.jobs[r];
                    j.outputs
                        .iter()
                        .filter(|o| !j.downloaded.contains(&o.name))
                        .count()
                })
                .sum::<usize>()
        })
    };
    let code = if downloads.bad > 0 || missing_outputs > 0 {
        exit::VERIFY
    } else if failed > 0 {
        exit::JOB_FAILED
    } else {
        exit::OK
    };
    if code == exit::OK && !ctx.args.no_wait {
        // The prepared copies are no longer needed once every result is verified.
        let _ = std::fs::remove_dir_all(ctx.args.out.join(".outlast-upload").join("prepared"));
    }
    finish(&ctx, code, completed, failed, downloads.saved)
}

/// What the pipeline's parts return: (uploads, (job records, refused), follower, downloads).
type Outcome = (usize, (Vec<usize>, usize), (), Downloaded);

fn unreachable_exit() -> (Outcome, ()) {
    std::process::exit(exit::INTERRUPTED)
}

fn finish(ctx: &Ctx, code: i32, completed: usize, failed: usize, outputs: usize) -> i32 {
    ctx.report.emit(Event::RunDone {
        exit: code,
        completed,
        failed,
        outputs,
    });
    code
}

/// The command as typed, for "run the same command again".
fn command_line() -> String {
    std::env::args()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
            {
                a
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

struct Plan {
    inputs: Vec<Input>,
    workflow: serde_json::Value,
    input_name: String,
    key: String,
}

/// Everything that can be a usage or input error (exit 2), checked before any network use.
fn plan(args: &Args) -> anyhow::Result<Plan> {
    if args.url.starts_with("https://") {
        anyhow::bail!(
            "--url {}: this build speaks http:// only (put it on the same host or LAN, or use a tunnel)",
            args.url
        );
    }
    anyhow::ensure!(
        args.url.starts_with("http://"),
        "--url {:?} must start with http://",
        args.url
    );
    let (workflow, workflow_text) = match &args.workflow {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| anyhow::anyhow!("--workflow {}: {e}", p.display()))?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("--workflow {}: not JSON: {e}", p.display()))?;
            (v, text)
        }
        None => (serde_json::Value::Null, String::new()),
    };
    let mut names = BTreeSet::new();
    placeholders(&workflow, &mut names);
    let input_name = match (&args.input_name, names.len()) {
        (Some(n), _) => n.clone(),
        (None, 1) => names.into_iter().next().unwrap_or_default(),
        (None, _) => "image".to_string(),
    };
    anyhow::ensure!(
        !input_name.is_empty() && input_name.len() <= 64,
        "--input-name must be 1 to 64 characters"
    );
    let inputs = walk(&args.paths, args.hidden)?;
    let mut parts: Vec<String> = vec![
        args.url.trim_end_matches('/').to_string(),
        args.backend.clone(),
        workflow_text,
        args.preset.name().into(),
        args.one_job.to_string(),
        input_name.clone(),
        args.hidden.to_string(),
    ];
    for p in &args.paths {
        parts.push(
            std::fs::canonicalize(p)
                .unwrap_or_else(|_| p.clone())
                .display()
                .to_string(),
        );
    }
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    Ok(Plan {
        inputs,
        workflow,
        input_name,
        key: run_key(&refs),
    })
}

/// Collects the names of `{"$input": NAME}` placeholders.
fn placeholders(v: &serde_json::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            if m.len() == 1
                && let Some(serde_json::Value::String(name)) = m.get("$input")
            {
                out.insert(name.clone());
                return;
            }
            m.values().for_each(|x| placeholders(x, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| placeholders(x, out)),
        _ => {}
    }
}

fn mtime_ms(path: &Path) -> u64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Matches the walked inputs with the state's files (by relative name); a changed source
/// (size or mtime) starts that file afresh. Returns each input's index in `state.files`.
fn reconcile(store: &Store, inputs: &[Input]) -> Vec<usize> {
    store.update(|s| {
        inputs
            .iter()
            .map(|input| {
                let mtime = mtime_ms(&input.path);
                let fresh = FileState {
                    rel: input.rel.clone(),
                    source_size: input.size,
                    source_mtime_ms: mtime,
                    prepared: None,
                    upload_id: None,
                    uploaded: false,
                };
                match s.files.iter().position(|f| f.rel == input.rel) {
                    Some(i) => {
                        let f = &mut s.files[i];
                        if f.source_size != input.size || f.source_mtime_ms != mtime {
                            *f = fresh;
                        }
                        i
                    }
                    None => {
                        s.files.push(fresh);
                        s.files.len() - 1
                    }
                }
            })
            .collect()
    })
}

/// One job per file (results `<dir>/<stem>.<output>`), or one for all (`--one-job`).
fn slots(args: &Args, inputs: &[Input]) -> Vec<Slot> {
    if args.one_job {
        return vec![Slot {
            inputs: (0..inputs.len()).collect(),
            prefix: String::new(),
        }];
    }
    let stem = |rel: &str| match rel.rfind('.') {
        Some(dot) if dot > rel.rfind('/').map_or(0, |s| s + 1) => rel[..dot].to_string(),
        _ => rel.to_string(),
    };
    let mut count = std::collections::HashMap::<String, usize>::new();
    for i in inputs {
        *count.entry(stem(&i.rel)).or_default() += 1;
    }
    inputs
        .iter()
        .enumerate()
        .map(|(n, i)| {
            let s = stem(&i.rel);
            // Two inputs with the same stem (a.jpg, a.png) keep their extension apart.
            let base = if count[&s] > 1 { i.rel.clone() } else { s };
            Slot {
                inputs: vec![n],
                prefix: format!("{base}."),
            }
        })
        .collect()
}

fn refresh_totals(ctx: &Ctx, file_idx: &[usize], jobs: Option<usize>) {
    let bytes = ctx.store.read(|s| {
        file_idx
            .iter()
            .map(|&i| {
                let f = &s.files[i];
                f.prepared.as_ref().map_or(f.source_size, |p| p.size)
            })
            .sum()
    });
    ctx.report.set_totals(bytes, jobs);
}

/// Prepares and uploads one input: `(input index, uploaded?)`, or the run stops.
async fn upload_one(
    ctx: &Ctx,
    input: &Input,
    fi: usize,
    file_idx: &[usize],
) -> (usize, Result<bool, Stop>) {
    let me = file_idx.iter().position(|&x| x == fi).unwrap_or(0);
    (me, upload_inner(ctx, input, fi, file_idx).await)
}

async fn upload_inner(
    ctx: &Ctx,
    input: &Input,
    fi: usize,
    file_idx: &[usize],
) -> Result<bool, Stop> {
    if ctx.cancel.is_cancelled() {
        return Err(Stop::Interrupted);
    }
    let (prepared, upload_id, uploaded) = ctx.store.read(|s| {
        let f = &s.files[fi];
        (f.prepared.clone(), f.upload_id, f.uploaded)
    });
    // A finished upload needs no local copy any more.
    let prepared = match prepared.filter(|p| p.path.exists() || (uploaded && upload_id.is_some())) {
        Some(p) => p,
        None => {
            let path = input.path.clone();
            let preset = ctx.args.preset;
            let cache = ctx.args.out.join(".outlast-upload").join("prepared");
            let made =
                tokio::task::spawn_blocking(move || crate::prepare::prepare(&path, preset, &cache))
                    .await
                    .map_err(std::io::Error::other)
                    .and_then(|r| r);
            match made {
                Ok(p) => {
                    ctx.store.update(|s| {
                        let f = &mut s.files[fi];
                        if f.prepared.as_ref().map(|x| &x.sha256) != Some(&p.sha256) {
                            f.upload_id = None;
                            f.uploaded = false;
                        }
                        f.prepared = Some(p.clone());
                    });
                    p
                }
                Err(e) => {
                    ctx.report.emit(Event::UploadFailed {
                        file: input.rel.clone(),
                        code: "unreadable".into(),
                        message: e.to_string(),
                    });
                    return Ok(false);
                }
            }
        }
    };
    let (upload_id, uploaded) = ctx
        .store
        .read(|s| (s.files[fi].upload_id, s.files[fi].uploaded));
    ctx.report.emit(Event::FilePrepared {
        file: input.rel.clone(),
        how: prepared.how.clone(),
        bytes_in: input.size,
        bytes_out: prepared.size,
        sha256: prepared.sha256.clone(),
        width: prepared.dims.map(|d| d.0),
        height: prepared.dims.map(|d| d.1),
    });
    refresh_totals(ctx, file_idx, None);
    if let (true, Some(id)) = (uploaded, upload_id) {
        ctx.report.emit(Event::UploadDone {
            file: input.rel.clone(),
            upload_id: id.to_string(),
            sha256: prepared.sha256.clone(),
            size: prepared.size,
            deduplicated: false,
            sent_bytes: 0,
        });
        return Ok(true);
    }
    let created = async |id| {
        ctx.store.update(|s| s.files[fi].upload_id = Some(id));
        ctx.store.save().await
    };
    match crate::upload::upload(ctx, &input.rel, &prepared, upload_id, created).await {
        Ok(done) => {
            ctx.store.update(|s| {
                let f = &mut s.files[fi];
                f.upload_id = Some(done.upload_id);
                f.uploaded = true;
            });
            let _ = ctx.store.save().await;
            ctx.report.emit(Event::UploadDone {
                file: input.rel.clone(),
                upload_id: done.upload_id.to_string(),
                sha256: prepared.sha256.clone(),
                size: prepared.size,
                deduplicated: done.deduplicated,
                sent_bytes: done.sent,
            });
            Ok(true)
        }
        Err(crate::upload::UploadError::Refused { code, message }) => {
            ctx.report.emit(Event::UploadFailed {
                file: input.rel.clone(),
                code,
                message,
            });
            Ok(false)
        }
        Err(crate::upload::UploadError::Stop(s)) => Err(s),
    }
}

/// Submits each job as soon as all its files are uploaded (whatever is ready together goes in
/// one batch); jobs of an earlier run are re-attached, not resubmitted. Returns the state
/// indexes of this run's jobs and how many were refused.
#[allow(clippy::too_many_arguments)]
async fn submit_ready(
    ctx: &Ctx,
    inputs: &[Input],
    file_idx: &[usize],
    slots: &[Slot],
    workflow: &serde_json::Value,
    input_name: &str,
    mut ready: mpsc::UnboundedReceiver<(usize, bool)>,
    follow: mpsc::Sender<crate::follow::Follow>,
    done: mpsc::UnboundedSender<usize>,
    stop: &dyn Fn(Stop),
) -> (Vec<usize>, usize) {
    let submitter = Submitter::default();
    let mut uploaded = HashSet::new();
    let mut failed_inputs = HashSet::new();
    let mut handled = vec![false; slots.len()];
    let mut records = Vec::new();
    let mut refused = 0;
    while let Some(first) = ready.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = ready.try_recv() {
            batch.push(more);
        }
        for (i, ok) in batch {
            if ok {
                uploaded.insert(i);
            } else {
                failed_inputs.insert(i);
            }
        }
        let mut to_submit: Vec<(usize, JobSpec)> = Vec::new();
        for (n, slot) in slots.iter().enumerate() {
            if handled[n] {
                continue;
            }
            if slot.inputs.iter().any(|i| failed_inputs.contains(i)) {
                handled[n] = true;
                refused += 1;
                ctx.report.emit(Event::JobDone {
                    job_id: None,
                    file: inputs[slot.inputs[0]].rel.clone(),
                    state: "refused".into(),
                    error: Some("an input could not be uploaded".into()),
                    outputs: vec![],
                });
                continue;
            }
            if !slot.inputs.iter().all(|i| uploaded.contains(i)) {
                continue;
            }
            handled[n] = true;
            let (rec, spec) = job_for(ctx, inputs, file_idx, slot, workflow, input_name);
            records.push(rec);
            let (job_id, state) = ctx.store.read(|s| (s.jobs[rec].job_id, s.jobs[rec].state));
            match (job_id, state) {
                (Some(_), Some(JobState::Completed)) => {
                    emit_done_again(ctx, rec);
                    let _ = done.send(rec);
                }
                (Some(_), Some(JobState::Failed | JobState::Canceled)) => emit_done_again(ctx, rec),
                (Some(id), _) => {
                    let _ = follow.send((rec, id)).await;
                }
                (None, _) => to_submit.push((rec, spec)),
            }
        }
        if to_submit.is_empty() {
            continue;
        }
        let _ = ctx.store.save().await;
        let specs: Vec<JobSpec> = to_submit.iter().map(|(_, s)| s.clone()).collect();
        let answers = match submitter.submit(ctx, &specs).await {
            Ok(a) => a,
            Err(s) => {
                stop(s);
                break;
            }
        };
        for ((rec, _), answer) in to_submit.into_iter().zip(answers) {
            let files = ctx.store.read(|s| s.jobs[rec].files.clone());
            match answer {
                Answer::Accepted {
                    job_id, created, ..
                } => {
                    ctx.store.update(|s| s.jobs[rec].job_id = Some(job_id));
                    ctx.report.emit(Event::JobSubmitted {
                        job_id: job_id.to_string(),
                        files,
                        created,
                    });
                    let _ = follow.send((rec, job_id)).await;
                }
                Answer::Refused { code, message } => {
                    refused += 1;
                    ctx.store
                        .update(|s| s.jobs[rec].error = Some(format!("{code}: {message}")));
                    ctx.report.emit(Event::JobDone {
                        job_id: None,
                        file: files.first().cloned().unwrap_or_default(),
                        state: "refused".into(),
                        error: Some(format!("{code}: {message}")),
                        outputs: vec![],
                    });
                }
            }
        }
        let _ = ctx.store.save().await;
    }
    // Refused records are not counted twice (they never get a job id).
    records.retain(|&r| ctx.store.read(|s| s.jobs[r].job_id.is_some()));
    (records, refused)
}

fn emit_done_again(ctx: &Ctx, rec: usize) {
    let (id, file, state, error, outputs) = ctx.store.read(|s| {
        let j = &s.jobs[rec];
        (
            j.job_id.map(|i| i.to_string()),
            j.files.first().cloned().unwrap_or_default(),
            j.state.map(|s| s.as_str().to_string()).unwrap_or_default(),
            j.error.clone(),
            j.outputs.iter().map(|o| o.name.clone()).collect(),
        )
    });
    ctx.report.emit(Event::JobDone {
        job_id: id,
        file,
        state,
        error,
        outputs,
    });
}

/// Finds or creates the state record of a slot's job and builds its submission.
fn job_for(
    ctx: &Ctx,
    inputs: &[Input],
    file_idx: &[usize],
    slot: &Slot,
    workflow: &serde_json::Value,
    input_name: &str,
) -> (usize, JobSpec) {
    ctx.store.update(|s| {
        let files: Vec<(String, String, Option<outlast_protocol::UploadId>)> = slot
            .inputs
            .iter()
            .map(|&i| {
                let f = &s.files[file_idx[i]];
                (
                    inputs[i].rel.clone(),
                    f.prepared
                        .as_ref()
                        .map(|p| p.sha256.clone())
                        .unwrap_or_default(),
                    f.upload_id,
                )
            })
            .collect();
        let pairs: Vec<(&str, &str)> = files
            .iter()
            .map(|(r, h, _)| (r.as_str(), h.as_str()))
            .collect();
        let key = job_key(&s.nonce, &pairs);
        let rec = match s.jobs.iter().position(|j| j.key == key) {
            Some(r) => r,
            None => {
                s.jobs.push(JobRecord {
                    files: files.iter().map(|(r, _, _)| r.clone()).collect(),
                    key: key.clone(),
                    out_prefix: slot.prefix.clone(),
                    job_id: None,
                    last_seq: 0,
                    state: None,
                    error: None,
                    outputs: vec![],
                    downloaded: vec![],
                });
                s.jobs.len() - 1
            }
        };
        let mut spec = JobSpec::new(ctx.args.backend.clone(), workflow.clone());
        for (n, (_, _, id)) in files.iter().enumerate() {
            if let Some(id) = id {
                let name = if n == 0 {
                    input_name.to_string()
                } else {
                    format!("{input_name}{}", n + 1)
                };
                spec.inputs.insert(name, *id);
            }
        }
        spec.idempotency_key = key.parse::<IdempotencyKey>().ok();
        (rec, spec)
    })
}
