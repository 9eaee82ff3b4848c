//! The `comfyui` backend: runs API-format workflows on a pool of ComfyUI servers and hides
//! ComfyUI's flaws from clients (no pings, no replay, the same-client-id reconnect bug,
//! in-memory queue and history). See docs/comfyui.md.
//!
//! One job = one prompt on one server, under a prompt id and client id chosen here. The server
//! and prompt id are stored (durably, before `POST /prompt`) as the job's backend state, so a
//! restarted gateway finds the prompt again. Events come from ComfyUI's WebSocket, which is
//! pinged and reconnected (old socket closed first); whenever it was gone or silent, the
//! adapter reconciles from `/history/{id}` and `/queue`. Results are always read from the
//! history entry, so they are stored once, whatever the WebSocket delivered.

mod client;
pub mod graph;
mod pool;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use outlast_protocol::{Failure, FailureCode, JobSpec};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use self::client::{CallError, FileRef, Incoming, Queued, Server, Socket};
use self::graph::Graph;
use self::pool::{Lease, Pool};
use super::{Backend, JobContext, JobHandle, RestartPolicy};
use crate::config::ComfyConfig;
use crate::error::AppError;
use crate::outputs::valid_name;

/// What is stored per running job, to find its prompt after a restart.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Saved {
    /// Base URL of the server.
    server: String,
    prompt_id: String,
    /// True once ComfyUI accepted the prompt.
    posted: bool,
    /// Runs lost by ComfyUI so far (restarts).
    #[serde(default)]
    lost: u32,
}

/// The `comfyui` backend.
#[derive(Debug)]
pub struct ComfyUi {
    pool: Arc<Pool>,
    cfg: ComfyConfig,
}

fn fail(code: FailureCode, message: impl Into<String>, detail: Option<Value>) -> Failure {
    Failure {
        code,
        message: message.into(),
        detail,
    }
}

/// How one try of a job ended, besides success.
enum Stop {
    /// A typed failure; the job ends.
    Fail(Failure),
    /// The server could not take the prompt (down before it was queued): try another.
    ServerDown,
    /// ComfyUI no longer knows a prompt it accepted (it restarted).
    Lost(String),
}

impl From<Failure> for Stop {
    fn from(f: Failure) -> Self {
        Stop::Fail(f)
    }
}

impl ComfyUi {
    /// A backend on the configured servers.
    pub fn new(cfg: ComfyConfig) -> Result<ComfyUi, String> {
        let servers = cfg
            .servers
            .iter()
            .map(|s| Ok((Server::new(&s.url)?, s.concurrency)))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(ComfyUi {
            pool: Arc::new(Pool::new(servers)),
            cfg,
        })
    }

    /// Probes the servers until `shutdown`; spawn it once.
    pub async fn health_loop(self: Arc<Self>, shutdown: CancellationToken) {
        Arc::clone(&self.pool)
            .health_loop(self.cfg.retry_interval, shutdown)
            .await;
    }

    fn parse(spec: &JobSpec) -> Result<Graph, String> {
        let inputs: BTreeSet<String> = spec.inputs.keys().cloned().collect();
        Graph::parse(&spec.workflow, &inputs)
    }

    /// Uploads the job's inputs and returns the graph ComfyUI gets.
    async fn prepare(
        &self,
        ctx: &JobContext,
        graph: &Graph,
        server: &Server,
    ) -> Result<Value, Stop> {
        let mut names = BTreeMap::new();
        for (name, file) in &ctx.inputs {
            let filename = upload_name(name, file.filename.as_deref(), &file.path).await;
            match server.upload(&file.path, &filename).await {
                Ok(comfy_name) => {
                    names.insert(name.clone(), comfy_name);
                }
                Err(CallError::Refused(_) | CallError::Unreachable(_)) => {
                    return Err(Stop::ServerDown);
                }
                Err(e) => {
                    return Err(Stop::Fail(fail(
                        FailureCode::BackendError,
                        format!("ComfyUI did not take input {name:?}: {e}"),
                        None,
                    )));
                }
            }
        }
        Ok(graph.substitute(&names))
    }

    /// One try: queue the prompt (or find it again) and follow it to the end.
    async fn attempt(
        &self,
        ctx: &JobContext,
        graph: &Graph,
        saved: &mut Option<Saved>,
    ) -> Result<(), Stop> {
        let client_id = format!("outlast-{}", ctx.job_id);
        // A restart between `POST /prompt` and recording its answer: ComfyUI may have the
        // prompt. Never queue it twice.
        if let Some(s) = saved.as_mut().filter(|s| !s.posted)
            && let Some(i) = self.pool.index_of(&s.server)
        {
            let server = self.pool.server(i);
            let known = matches!(server.history(&s.prompt_id).await, Ok(Some(_)))
                || matches!(server.queue().await, Ok(q) if q.find(&s.prompt_id).is_some());
            if known {
                s.posted = true;
            }
        }
        let lease: Lease = match saved.as_ref().filter(|s| s.posted) {
            Some(s) => match self.pool.index_of(&s.server) {
                Some(i) => self.pool.lease_on(i),
                None => {
                    return Err(Stop::Fail(fail(
                        FailureCode::BackendUnavailable,
                        format!(
                            "the job's ComfyUI server {} is no longer configured",
                            s.server
                        ),
                        None,
                    )));
                }
            },
            None => match self.pool.try_acquire() {
                Some(lease) => lease,
                None => {
                    // The server this job was meant for went away after it was started.
                    ctx.progress(
                        0,
                        0,
                        Some("waiting for a ComfyUI server to come back".into()),
                    )
                    .await?;
                    self.pool.acquire().await
                }
            },
        };
        let server = lease.server().clone();
        let mut guard = CancelGuard {
            server: server.clone(),
            prompt_id: None,
            handle: ctx.handle.clone(),
        };
        let mut socket = None;
        let state = match saved.clone().filter(|s| s.posted) {
            Some(s) => s,
            None => {
                let prompt = self.prepare(ctx, graph, &server).await.inspect_err(|e| {
                    if matches!(e, Stop::ServerDown) {
                        self.pool.mark_down(lease.index, "input upload failed");
                    }
                })?;
                let mut s = Saved {
                    server: server.base.clone(),
                    prompt_id: uuid::Uuid::new_v4().to_string(),
                    posted: false,
                    lost: saved.as_ref().map_or(0, |s| s.lost),
                };
                ctx.save_backend_state(Some(to_value(&s))).await?;
                // Listen first: ComfyUI sends events only to sockets open at the time.
                socket = match server.connect(&client_id).await {
                    Ok(sock) => Some(sock),
                    Err(e) => {
                        self.pool.mark_down(lease.index, &e.to_string());
                        return Err(Stop::ServerDown);
                    }
                };
                guard.prompt_id = Some(s.prompt_id.clone());
                match server.queue_prompt(&prompt, &s.prompt_id, &client_id).await {
                    Ok(Queued::Accepted) => {}
                    Ok(Queued::Rejected(body)) => {
                        guard.prompt_id = None;
                        return Err(Stop::Fail(validation_failure(graph, &body)));
                    }
                    Err(CallError::Refused(e)) => {
                        guard.prompt_id = None;
                        self.pool.mark_down(lease.index, &e);
                        return Err(Stop::ServerDown);
                    }
                    // It may or may not be queued: following it finds out.
                    Err(e) => tracing::warn!(job = %ctx.job_id, error = %e, "POST /prompt failed"),
                }
                s.posted = true;
                ctx.save_backend_state(Some(to_value(&s))).await?;
                *saved = Some(s.clone());
                tracing::info!(job = %ctx.job_id, server = %server.base, prompt = %s.prompt_id, "prompt queued");
                s
            }
        };
        guard.prompt_id = Some(state.prompt_id.clone());
        let mut follow = Follow {
            cfg: &self.cfg,
            ctx,
            graph,
            server: &server,
            pool: &self.pool,
            index: lease.index,
            prompt_id: &state.prompt_id,
            client_id: &client_id,
            socket,
            last_node: None,
            last_preview: None,
            comfy_ahead: AtomicUsize::new(usize::MAX),
        };
        let entry = follow.run().await;
        if let Some(sock) = follow.socket.take() {
            sock.close().await;
        }
        let entry = entry?;
        // ComfyUI is done with the prompt, whatever happens next.
        guard.prompt_id = None;
        finish(ctx, graph, &server, &entry)
            .await
            .map_err(Stop::Fail)
    }
}

fn to_value(s: &Saved) -> Value {
    serde_json::to_value(s).unwrap_or(Value::Null)
}

/// The file name an input gets in ComfyUI: the uploader's name, or the input's name with an
/// extension guessed from the content.
async fn upload_name(input: &str, filename: Option<&str>, path: &std::path::Path) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                    c
                } else {
                    '_'
                }
            })
            .collect::<String>()
            .trim_start_matches('.')
            .chars()
            .take(100)
            .collect()
    };
    if let Some(f) = filename.map(|f| clean(f.trim())).filter(|f| !f.is_empty()) {
        return f;
    }
    let mut head = [0u8; 16];
    let n = match tokio::fs::File::open(path).await {
        Ok(mut f) => tokio::io::AsyncReadExt::read(&mut f, &mut head)
            .await
            .unwrap_or(0),
        Err(_) => 0,
    };
    let head = &head[..n];
    let ext = if head.starts_with(b"\x89PNG") {
        "png"
    } else if head.starts_with(b"\xff\xd8") {
        "jpg"
    } else if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WEBP" {
        "webp"
    } else if head.len() >= 12 && &head[..4] == b"RIFF" && &head[8..12] == b"WAVE" {
        "wav"
    } else if head.starts_with(b"fLaC") {
        "flac"
    } else if head.starts_with(b"ID3") || head.starts_with(&[0xff, 0xfb]) {
        "mp3"
    } else {
        "bin"
    };
    format!("{}.{ext}", clean(input))
}

/// Typed failure for HTTP 400 from `POST /prompt`, naming the first failing node.
fn validation_failure(graph: &Graph, body: &Value) -> Failure {
    let error = body.get("error").cloned().unwrap_or(Value::Null);
    let node_errors = body
        .get("node_errors")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let mut ids: Vec<&String> = node_errors.keys().collect();
    ids.sort_by_key(|id| (id.parse::<u64>().unwrap_or(u64::MAX), id.as_str()));
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).unwrap_or("").to_owned();
    let Some(first) = ids.first() else {
        let message = match text(&error, "details").as_str() {
            "" => text(&error, "message"),
            d => format!("{}: {d}", text(&error, "message")),
        };
        return fail(
            FailureCode::InvalidWorkflow,
            format!("ComfyUI rejected the workflow: {message}"),
            Some(json!({"error": error, "node_errors": {}})),
        );
    };
    let reason = node_errors[*first]
        .get("errors")
        .and_then(|e| e.get(0))
        .map(|e| match text(e, "details").as_str() {
            "" => text(e, "message"),
            d => format!("{} ({d})", text(e, "message")),
        })
        .unwrap_or_else(|| text(&error, "message"));
    let more = match ids.len() {
        1 => String::new(),
        n => format!(" (and {} more node(s))", n - 1),
    };
    fail(
        FailureCode::InvalidWorkflow,
        format!(
            "ComfyUI rejected the workflow: {}: {reason}{more}",
            graph.describe(first)
        ),
        Some(json!({
            "node_id": first,
            "node_type": node_errors[*first].get("class_type").cloned().unwrap_or_else(|| json!(graph.class_type(first))),
            "node_title": graph.title(first),
            "error": error,
            "node_errors": node_errors,
        })),
    )
}

/// Typed failure for `execution_error` / `execution_interrupted` data.
fn execution_failure(graph: &Graph, kind: &str, data: &Value) -> Failure {
    let node = data
        .get("node_id")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_owned();
    let s = |k: &str| data.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    if kind == "execution_interrupted" {
        return fail(
            FailureCode::BackendError,
            format!(
                "the prompt was interrupted in ComfyUI at {}",
                graph.describe(&node)
            ),
            Some(
                json!({"node_id": node, "node_type": s("node_type"), "node_title": graph.title(&node)}),
            ),
        );
    }
    let traceback: Vec<Value> = data
        .get("traceback")
        .and_then(Value::as_array)
        .map(|t| t.iter().rev().take(20).rev().cloned().collect())
        .unwrap_or_default();
    fail(
        FailureCode::BackendError,
        format!(
            "{} failed: {}: {}",
            graph.describe(&node),
            s("exception_type"),
            s("exception_message").trim()
        ),
        Some(json!({
            "node_id": node,
            "node_type": s("node_type"),
            "node_title": graph.title(&node),
            "exception_type": s("exception_type"),
            "exception_message": s("exception_message"),
            "traceback": traceback,
        })),
    )
}

/// Reads a finished prompt's history entry: stores its outputs, or returns its failure.
async fn finish(
    ctx: &JobContext,
    graph: &Graph,
    server: &Server,
    entry: &Value,
) -> Result<(), Failure> {
    let status = entry.get("status").cloned().unwrap_or(Value::Null);
    if status.get("status_str").and_then(Value::as_str) == Some("error") {
        let messages = status
            .get("messages")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let last = messages.iter().rev().find_map(|m| {
            let kind = m.get(0)?.as_str()?;
            matches!(kind, "execution_error" | "execution_interrupted")
                .then(|| (kind.to_owned(), m.get(1).cloned().unwrap_or(Value::Null)))
        });
        return Err(match last {
            Some((kind, data)) => execution_failure(graph, &kind, &data),
            None => fail(
                FailureCode::BackendError,
                "ComfyUI reports the prompt failed, without details",
                Some(json!({"status": status})),
            ),
        });
    }
    let files = output_files(entry);
    let mut taken: HashSet<String> = HashSet::new();
    for (node, file) in files {
        let mut name = safe_name(&file.filename);
        if !taken.insert(name.clone()) {
            name = safe_name(&format!("{node}-{}", file.filename));
            taken.insert(name.clone());
        }
        if ctx.existing_outputs.contains(&name) {
            continue; // stored by an attempt before a restart
        }
        let tmp = ctx.work_dir.join(format!("download-{name}"));
        let mime = server.download(&file, &tmp).await.map_err(|e| {
            fail(
                FailureCode::BackendUnavailable,
                format!(
                    "could not fetch output {:?} from ComfyUI: {e}",
                    file.filename
                ),
                None,
            )
        })?;
        let mime = if mime == "application/octet-stream" {
            guess_mime(&name).to_owned()
        } else {
            mime
        };
        ctx.output_file(&name, &mime, &tmp).await?;
    }
    Ok(())
}

/// The files of a history entry's `outputs`, in node order: `output` files, or the `temp` ones
/// (PreviewImage) when the workflow saves nothing.
fn output_files(entry: &Value) -> Vec<(String, FileRef)> {
    let mut nodes: Vec<(&String, &Value)> = entry
        .get("outputs")
        .and_then(Value::as_object)
        .map(|m| m.iter().collect())
        .unwrap_or_default();
    nodes.sort_by_key(|(id, _)| (id.parse::<u64>().unwrap_or(u64::MAX), id.as_str()));
    let mut files = Vec::new();
    for (node, ui) in nodes {
        let Some(ui) = ui.as_object() else { continue };
        for list in ui.values() {
            for item in list.as_array().into_iter().flatten() {
                let (Some(filename), Some(kind)) = (
                    item.get("filename").and_then(Value::as_str),
                    item.get("type").and_then(Value::as_str),
                ) else {
                    continue;
                };
                files.push((
                    node.clone(),
                    FileRef {
                        filename: filename.to_owned(),
                        subfolder: item
                            .get("subfolder")
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned(),
                        kind: kind.to_owned(),
                    },
                ));
            }
        }
    }
    if files.iter().any(|(_, f)| f.kind == "output") {
        files.retain(|(_, f)| f.kind == "output");
    }
    files
}

fn safe_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    while out.starts_with('.') {
        out.replace_range(..1, "_");
    }
    if out.len() > 128 {
        out = out[out.len() - 128..].to_owned();
    }
    if valid_name(&out) {
        out
    } else {
        "output.bin".into()
    }
}

fn guess_mime(name: &str) -> &'static str {
    match name
        .rsplit('.')
        .next()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        Some("mp4") => "video/mp4",
        Some("webm") => "video/webm",
        Some("wav") => "audio/wav",
        Some("flac") => "audio/flac",
        Some("mp3") => "audio/mpeg",
        Some("ogg" | "opus") => "audio/ogg",
        Some("json") => "application/json",
        Some("txt") => "text/plain",
        _ => "application/octet-stream",
    }
}

/// Removes or interrupts the prompt if the job ends before ComfyUI finished it (cancel, time
/// limit), except when the gateway is shutting down: then the prompt runs on and the restarted
/// gateway picks it up.
struct CancelGuard {
    server: Server,
    prompt_id: Option<String>,
    handle: JobHandle,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        let Some(prompt_id) = self.prompt_id.take() else {
            return;
        };
        if self.handle.shutting_down() {
            return;
        }
        let server = self.server.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                match server.cancel(&prompt_id).await {
                    Ok(()) => tracing::info!(prompt = %prompt_id, "ComfyUI prompt canceled"),
                    Err(e) => {
                        tracing::warn!(prompt = %prompt_id, error = %e, "could not cancel the ComfyUI prompt")
                    }
                }
            });
        }
    }
}

/// Follows one accepted prompt to its history entry.
struct Follow<'a> {
    cfg: &'a ComfyConfig,
    ctx: &'a JobContext,
    graph: &'a Graph,
    server: &'a Server,
    pool: &'a Arc<Pool>,
    index: usize,
    prompt_id: &'a str,
    client_id: &'a str,
    socket: Option<Socket>,
    last_node: Option<String>,
    last_preview: Option<Instant>,
    /// Prompts ahead of ours in ComfyUI's queue, as last reported (`usize::MAX`: none yet).
    comfy_ahead: AtomicUsize,
}

enum Tick {
    Message(Option<Incoming>),
    Ping,
    Poll,
    Reconnect,
}

/// What a reconciliation found.
enum Found {
    /// The history entry.
    Finished(Value),
    /// ComfyUI is running it.
    Running,
    /// Pending in ComfyUI's queue, or ComfyUI did not answer (for less than
    /// `unreachable_timeout`).
    Waiting,
}

impl Follow<'_> {
    async fn run(&mut self) -> Result<Value, Stop> {
        let mut last_message = Instant::now();
        let mut ping_sent: Option<Instant> = None;
        let mut ping = tokio::time::interval(self.cfg.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut poll = tokio::time::interval(self.cfg.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reconnect_at = Instant::now();
        let mut backoff = Duration::from_millis(200);
        let mut unreachable_since: Option<Instant> = None;
        // A resumed job has no socket yet and must look at the server first.
        let mut must_reconcile = self.socket.is_none();
        loop {
            if must_reconcile {
                must_reconcile = false;
                if let Found::Finished(entry) = self.reconcile(&mut unreachable_since).await? {
                    return Ok(entry);
                }
            }
            let tick = {
                let socket = self.socket.as_mut();
                let has_socket = socket.is_some();
                tokio::select! {
                    m = async { match socket { Some(s) => s.next().await, None => std::future::pending().await } }, if has_socket => Tick::Message(m),
                    _ = ping.tick() => Tick::Ping,
                    _ = poll.tick() => Tick::Poll,
                    () = tokio::time::sleep_until(reconnect_at), if !has_socket => Tick::Reconnect,
                }
            };
            match tick {
                Tick::Message(None) => {
                    tracing::info!(job = %self.ctx.job_id, "ComfyUI WebSocket closed; reconnecting");
                    self.socket = None;
                    ping_sent = None;
                    reconnect_at = Instant::now() + backoff;
                }
                Tick::Message(Some(Incoming::Pong)) => ping_sent = None,
                Tick::Message(Some(msg)) => {
                    last_message = Instant::now();
                    if let Some(end) = self.handle(msg).await? {
                        return self.entry_after(end, &mut unreachable_since).await;
                    }
                }
                Tick::Ping => {
                    if let Some(sock) = self.socket.as_mut() {
                        let dead = ping_sent
                            .is_some_and(|at| at.elapsed() >= self.cfg.ping_interval)
                            || !sock.ping().await;
                        if dead {
                            tracing::info!(job = %self.ctx.job_id, "ComfyUI WebSocket answers no pings; reconnecting");
                            if let Some(old) = self.socket.take() {
                                old.close().await;
                            }
                            ping_sent = None;
                            reconnect_at = Instant::now();
                        } else if ping_sent.is_none() {
                            ping_sent = Some(Instant::now());
                        }
                    }
                }
                Tick::Poll => {
                    let silent = last_message.elapsed();
                    if self.socket.is_none() || silent >= self.cfg.poll_interval {
                        let running = match self.reconcile(&mut unreachable_since).await? {
                            Found::Finished(entry) => return Ok(entry),
                            Found::Running => true,
                            Found::Waiting => false,
                        };
                        // A socket that stays silent while the prompt runs may have been cut
                        // off by ComfyUI's client-id bug: replace it (closing it first).
                        if running
                            && silent >= self.cfg.poll_interval * 3
                            && let Some(old) = self.socket.take()
                        {
                            old.close().await;
                            last_message = Instant::now();
                            reconnect_at = Instant::now();
                        }
                    }
                }
                Tick::Reconnect => match self.server.connect(self.client_id).await {
                    Ok(sock) => {
                        metrics::counter!("outlast_comfyui_reconnects_total").increment(1);
                        self.socket = Some(sock);
                        backoff = Duration::from_millis(200);
                        last_message = Instant::now();
                        // Events sent while no socket was open are gone: look them up.
                        must_reconcile = true;
                    }
                    Err(e) => {
                        tracing::debug!(job = %self.ctx.job_id, error = %e, "ComfyUI WebSocket reconnect failed");
                        self.note_unreachable(&mut unreachable_since, &e.to_string())?;
                        reconnect_at = Instant::now() + backoff;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                },
            }
        }
    }

    fn note_unreachable(&self, since: &mut Option<Instant>, why: &str) -> Result<(), Stop> {
        let since = *since.get_or_insert_with(Instant::now);
        self.pool.mark_down(self.index, why);
        if since.elapsed() >= self.cfg.unreachable_timeout {
            return Err(Stop::Fail(fail(
                FailureCode::BackendUnavailable,
                format!(
                    "ComfyUI at {} has been unreachable for {}: {why}",
                    self.server.base,
                    humantime::format_duration(self.cfg.unreachable_timeout)
                ),
                None,
            )));
        }
        Ok(())
    }

    /// Asks ComfyUI where the prompt is: finished (history), still queued or running, or lost.
    async fn reconcile(&self, unreachable_since: &mut Option<Instant>) -> Result<Found, Stop> {
        metrics::counter!("outlast_comfyui_reconciliations_total").increment(1);
        let server = self.server;
        let id = self.prompt_id;
        // `Ok(None)`: ComfyUI knows nothing of the prompt.
        let result: Result<Option<Found>, CallError> = async {
            if let Some(entry) = server.history(id).await? {
                return Ok(Some(Found::Finished(entry)));
            }
            let queue = server.queue().await?;
            if let Some(at) = queue.find(id) {
                // Others queued on this ComfyUI directly: say how many are ahead.
                if let Some(ahead) = at
                    && self.comfy_ahead.swap(ahead, Ordering::Relaxed) != ahead
                {
                    let label = format!("waiting in ComfyUI's own queue: {ahead} ahead");
                    self.ctx
                        .progress(0, 0, Some(label))
                        .await
                        .map_err(|f| CallError::Protocol(f.message))?;
                }
                return Ok(Some(if at.is_none() {
                    Found::Running
                } else {
                    Found::Waiting
                }));
            }
            // History is written before a prompt leaves the queue; it may have finished
            // between the two reads.
            Ok(server.history(id).await?.map(Found::Finished))
        }
        .await;
        match result {
            Ok(Some(found)) => {
                *unreachable_since = None;
                Ok(found)
            }
            Ok(None) => Err(Stop::Lost(format!(
                "ComfyUI at {} no longer knows prompt {id} (it restarted?)",
                server.base
            ))),
            Err(CallError::Refused(e) | CallError::Unreachable(e)) => {
                self.note_unreachable(unreachable_since, &e)?;
                Ok(Found::Waiting)
            }
            Err(e) => Err(Stop::Fail(fail(
                FailureCode::BackendError,
                format!("ComfyUI at {} answered unexpectedly: {e}", server.base),
                None,
            ))),
        }
    }

    /// After ComfyUI announced the end, its history entry (written before the announcement).
    async fn entry_after(
        &self,
        end: End,
        unreachable_since: &mut Option<Instant>,
    ) -> Result<Value, Stop> {
        if let End::Failed(failure) = end {
            return Err(Stop::Fail(failure));
        }
        let deadline = Instant::now() + self.cfg.unreachable_timeout;
        loop {
            if let Found::Finished(entry) = self.reconcile(unreachable_since).await? {
                return Ok(entry);
            }
            if Instant::now() > deadline {
                return Err(Stop::Fail(fail(
                    FailureCode::BackendError,
                    "ComfyUI announced the end of the prompt but has no history entry for it",
                    None,
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn ours(&self, data: &Value) -> bool {
        data.get("prompt_id").and_then(Value::as_str) == Some(self.prompt_id)
    }

    /// Maps one ComfyUI message to job events; `Some` when the prompt ended.
    async fn handle(&mut self, msg: Incoming) -> Result<Option<End>, Stop> {
        match msg {
            Incoming::Json { kind, data } => {
                // `executing` right after connecting carries no prompt id; the socket's client
                // id is ours, so is the prompt.
                let ours =
                    self.ours(&data) || (kind == "executing" && data.get("prompt_id").is_none());
                if !ours {
                    return Ok(None);
                }
                match kind.as_str() {
                    "executing" => match data.get("node").and_then(Value::as_str) {
                        Some(node) if self.last_node.as_deref() != Some(node) => {
                            self.last_node = Some(node.to_owned());
                            self.ctx
                                .progress(0, 0, Some(self.graph.title(node)))
                                .await?;
                        }
                        None if data.get("prompt_id").is_some() => return Ok(Some(End::Done)),
                        _ => {}
                    },
                    "progress" => {
                        let node = data.get("node").and_then(Value::as_str).map(str::to_owned);
                        let value = data.get("value").and_then(Value::as_u64).unwrap_or(0);
                        let max = data.get("max").and_then(Value::as_u64).unwrap_or(0);
                        let label = node
                            .as_deref()
                            .or(self.last_node.as_deref())
                            .map(|n| self.graph.title(n));
                        self.ctx.progress(value, max, label).await?;
                    }
                    "execution_success" => return Ok(Some(End::Done)),
                    "execution_error" | "execution_interrupted" => {
                        return Ok(Some(End::Failed(execution_failure(
                            self.graph, &kind, &data,
                        ))));
                    }
                    _ => {}
                }
                Ok(None)
            }
            Incoming::Preview {
                mime,
                image,
                prompt_id,
            } => {
                if prompt_id.as_deref().is_some_and(|p| p != self.prompt_id) {
                    return Ok(None);
                }
                if self
                    .last_preview
                    .is_some_and(|at| at.elapsed() < self.cfg.preview_interval)
                {
                    return Ok(None);
                }
                self.last_preview = Some(Instant::now());
                let max_edge = self.cfg.preview_max_edge;
                let small = tokio::task::spawn_blocking(move || shrink(&image, mime, max_edge))
                    .await
                    .ok()
                    .flatten();
                if let Some((mime, bytes)) = small {
                    self.ctx.preview(mime, bytes).await?;
                }
                Ok(None)
            }
            Incoming::Pong | Incoming::Ignored => Ok(None),
        }
    }
}

/// How ComfyUI said the prompt ended.
enum End {
    Done,
    Failed(Failure),
}

/// A preview small enough for a slow link: at most `max_edge` pixels, JPEG.
fn shrink(image: &[u8], mime: &'static str, max_edge: u32) -> Option<(&'static str, Vec<u8>)> {
    let mut options = outlast_image::Options::preset(outlast_image::Preset::Eco);
    options.max_edge = Some(max_edge);
    options.quality = 70;
    options.format = Some(outlast_image::Format::Jpeg);
    match outlast_image::process(image, &options) {
        Ok(out) => Some(("image/jpeg", out.bytes)),
        // A format the image crate does not read: pass small previews through unchanged.
        Err(_) if image.len() <= 64 * 1024 => Some((mime, image.to_vec())),
        Err(_) => None,
    }
}

#[async_trait]
impl Backend for ComfyUi {
    fn name(&self) -> &'static str {
        "comfyui"
    }

    fn concurrency(&self) -> usize {
        self.pool.healthy_slots()
    }

    /// The prompt goes on in ComfyUI while the gateway restarts; the job reattaches to it.
    fn restart_policy(&self) -> RestartPolicy {
        RestartPolicy::Resume
    }

    /// A graph is a function of its nodes and inputs (the seed is a node input, so a new seed is
    /// a new workflow), so the result cache may answer repeats.
    fn deterministic(&self) -> bool {
        true
    }

    fn validate(&self, spec: &JobSpec) -> Result<(), AppError> {
        Self::parse(spec).map(|_| ()).map_err(AppError::invalid)
    }

    fn unavailable(&self) -> Option<String> {
        self.pool.all_down().then(|| {
            "no ComfyUI server is reachable; the job starts when one comes back".to_owned()
        })
    }

    fn attach_scheduler(&self, wake: Arc<tokio::sync::Notify>) {
        self.pool.attach_scheduler(wake);
    }

    async fn run(&self, ctx: &JobContext) -> Result<(), Failure> {
        // Dropping the run at the limit drops its cancel guard: the prompt is stopped in ComfyUI.
        match tokio::time::timeout(self.cfg.timeout, self.run_to_end(ctx)).await {
            Ok(result) => result,
            Err(_) => Err(fail(
                FailureCode::Timeout,
                format!(
                    "the ComfyUI job ran longer than {}",
                    humantime::format_duration(self.cfg.timeout)
                ),
                None,
            )),
        }
    }
}

impl ComfyUi {
    /// Tries until the prompt finished, failed, or was lost more often than the job allows.
    async fn run_to_end(&self, ctx: &JobContext) -> Result<(), Failure> {
        let graph =
            Self::parse(&ctx.spec).map_err(|e| fail(FailureCode::InvalidWorkflow, e, None))?;
        let mut saved: Option<Saved> = ctx
            .backend_state()
            .await?
            .and_then(|v| serde_json::from_value(v).ok());
        let mut server_down_tries = 0u32;
        loop {
            match self.attempt(ctx, &graph, &mut saved).await {
                Ok(()) => return Ok(()),
                Err(Stop::Fail(f)) => return Err(f),
                Err(Stop::ServerDown) => {
                    // Nothing was queued: another server (or this one, back) takes it.
                    server_down_tries += 1;
                    saved = saved.map(|s| Saved { posted: false, ..s });
                    if server_down_tries > 3 * self.pool_size() as u32 + 3 {
                        return Err(fail(
                            FailureCode::BackendUnavailable,
                            "no ComfyUI server took the prompt",
                            None,
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(Stop::Lost(why)) => {
                    let lost = saved.as_ref().map_or(0, |s| s.lost) + 1;
                    if lost > ctx.spec.retries {
                        let hint = if ctx.spec.retries == 0 {
                            "; submit with \"retries\": N to run it again automatically"
                        } else {
                            ""
                        };
                        return Err(fail(
                            FailureCode::BackendUnavailable,
                            format!("{why}; the job's result is lost{hint}"),
                            Some(json!({"lost_runs": lost})),
                        ));
                    }
                    tracing::warn!(job = %ctx.job_id, %why, lost, "running the prompt again");
                    ctx.progress(
                        0,
                        0,
                        Some(format!(
                            "ComfyUI lost the prompt; running it again (retry {lost} of {})",
                            ctx.spec.retries
                        )),
                    )
                    .await?;
                    saved = saved.map(|s| Saved {
                        posted: false,
                        lost,
                        ..s
                    });
                }
            }
        }
    }
}

impl ComfyUi {
    fn pool_size(&self) -> usize {
        self.cfg.servers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph() -> Graph {
        Graph::parse(
            &json!({
                "1": {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 8, "batch_size": 1, "color": 0}},
                "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}, "_meta": {"title": "Save it"}}
            }),
            &BTreeSet::new(),
        )
        .expect("valid")
    }

    #[test]
    fn validation_errors_name_the_node_and_the_reason() {
        let body = json!({"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": "", "extra_info": {}},
            "node_errors": {"1": {"errors": [{"type": "value_smaller_than_min", "message": "Value 0 smaller than min of 1", "details": "width", "extra_info": {}}], "dependent_outputs": ["2"], "class_type": "EmptyImage"}}});
        let f = validation_failure(&graph(), &body);
        assert_eq!(f.code, FailureCode::InvalidWorkflow);
        assert_eq!(
            f.message,
            "ComfyUI rejected the workflow: node \"1\" (EmptyImage): Value 0 smaller than min of 1 (width)"
        );
        let d = f.detail.expect("detail");
        assert_eq!(d["node_id"], "1");
        assert_eq!(d["node_type"], "EmptyImage");
        assert_eq!(d["error"]["type"], "prompt_outputs_failed_validation");

        let f = validation_failure(
            &graph(),
            &json!({"error": {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": ""}, "node_errors": {}}),
        );
        assert_eq!(
            f.message,
            "ComfyUI rejected the workflow: Prompt has no outputs"
        );
    }

    #[test]
    fn runtime_errors_name_the_node() {
        let f = execution_failure(
            &graph(),
            "execution_error",
            &json!({"prompt_id": "p", "node_id": "2", "node_type": "SaveImage", "exception_message": "disk full\n", "exception_type": "OSError", "traceback": ["a", "b"]}),
        );
        assert_eq!(f.code, FailureCode::BackendError);
        assert_eq!(
            f.message,
            "node \"2\" (SaveImage \"Save it\") failed: OSError: disk full"
        );
        assert_eq!(f.detail.expect("detail")["traceback"], json!(["a", "b"]));
    }

    #[test]
    fn outputs_prefer_saved_files_in_node_order() {
        let entry = json!({"outputs": {
            "10": {"images": [{"filename": "b.png", "subfolder": "", "type": "output"}]},
            "9": {"images": [{"filename": "a.png", "subfolder": "gw", "type": "output"}], "text": ["not a file"]},
            "3": {"images": [{"filename": "p.png", "subfolder": "", "type": "temp"}]}
        }});
        let files = output_files(&entry);
        let names: Vec<&str> = files.iter().map(|(_, f)| f.filename.as_str()).collect();
        assert_eq!(names, ["a.png", "b.png"]);
        assert_eq!(files[0].1.subfolder, "gw");
        let only_temp = json!({"outputs": {"3": {"images": [{"filename": "p.png", "subfolder": "", "type": "temp"}]}}});
        assert_eq!(output_files(&only_temp).len(), 1);
        assert_eq!(safe_name("my file (1).png"), "my_file__1_.png");
        assert_eq!(safe_name(".hidden"), "_hidden");
    }
}
