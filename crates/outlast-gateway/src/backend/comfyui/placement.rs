//! Placing a job's prompt: choosing a server (or the one a resumed job's prompt is on),
//! uploading the inputs, queueing the prompt under our own prompt and client ids, and moving to
//! another server when one refuses it. Each try then follows the prompt to its end.
//!
//! The server and prompt id are stored (durably, before `POST /prompt`) as the job's backend
//! state, so a restarted gateway finds the prompt again and never queues it twice.

use std::collections::BTreeMap;
use std::time::Duration;

use outlast_protocol::{Failure, FailureCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::cancel::Current;
use super::client::{CallError, Queued, Server};
use super::failure::{fail, validation_failure};
use super::follow::Follow;
use super::graph::Graph;
use super::history::finish;
use super::pool::Lease;
use super::{ComfyUi, Stop};
use crate::backend::JobContext;

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

fn to_value(s: &Saved) -> Value {
    serde_json::to_value(s).unwrap_or(Value::Null)
}

impl ComfyUi {
    /// Tries until the prompt finished, failed, or was lost more often than the job allows.
    pub(super) async fn run_to_end(
        &self,
        ctx: &JobContext,
        current: &Current,
    ) -> Result<(), Failure> {
        let graph =
            Self::parse(&ctx.spec).map_err(|e| fail(FailureCode::InvalidWorkflow, e, None))?;
        let mut saved: Option<Saved> = ctx
            .backend_state()
            .await?
            .and_then(|v| serde_json::from_value(v).ok());
        let mut server_down_tries = 0u32;
        loop {
            match self.attempt(ctx, &graph, &mut saved, current).await {
                Ok(()) => return Ok(()),
                Err(Stop::Fail(f)) => return Err(f),
                Err(Stop::ServerDown) => {
                    // Nothing was queued: another server (or this one, back) takes it.
                    server_down_tries += 1;
                    saved = saved.map(|s| Saved { posted: false, ..s });
                    if server_down_tries > 3 * self.cfg.servers.len() as u32 + 3 {
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

    /// The lease for this try: the server a queued prompt is on, or a free one.
    async fn lease(&self, ctx: &JobContext, saved: Option<&Saved>) -> Result<Lease, Stop> {
        match saved.filter(|s| s.posted) {
            Some(s) => match self.pool.index_of(&s.server) {
                Some(i) => Ok(self.pool.lease_on(i)),
                None => Err(Stop::Fail(fail(
                    FailureCode::BackendUnavailable,
                    format!(
                        "the job's ComfyUI server {} is no longer configured",
                        s.server
                    ),
                    None,
                ))),
            },
            None => match self.pool.try_acquire() {
                Some(lease) => Ok(lease),
                None => {
                    // The server this job was meant for went away after it was started.
                    ctx.progress(
                        0,
                        0,
                        Some("waiting for a ComfyUI server to come back".into()),
                    )
                    .await?;
                    Ok(self.pool.acquire().await)
                }
            },
        }
    }

    /// One try: queue the prompt (or find it again) and follow it to the end.
    async fn attempt(
        &self,
        ctx: &JobContext,
        graph: &Graph,
        saved: &mut Option<Saved>,
        current: &Current,
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
        let lease = self.lease(ctx, saved.as_ref()).await?;
        let server = lease.server().clone();
        let index = lease.index;
        // The slot stays held while the prompt is armed, so a stop can free it when confirmed.
        let _hold = current.hold(lease);
        let mut socket = None;
        let state = match saved.clone().filter(|s| s.posted) {
            Some(s) => s,
            None => {
                let prompt = self.prepare(ctx, graph, &server).await.inspect_err(|e| {
                    if matches!(e, Stop::ServerDown) {
                        self.pool.mark_down(index, "input upload failed");
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
                        self.pool.mark_down(index, &e.to_string());
                        return Err(Stop::ServerDown);
                    }
                };
                current.arm(&s.prompt_id);
                match server.queue_prompt(&prompt, &s.prompt_id, &client_id).await {
                    Ok(Queued::Accepted) => {}
                    Ok(Queued::Rejected(body)) => {
                        current.disarm();
                        return Err(Stop::Fail(validation_failure(graph, &body)));
                    }
                    Err(CallError::Refused(e)) => {
                        current.disarm();
                        self.pool.mark_down(index, &e);
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
        current.arm(&state.prompt_id);
        let mut follow = Follow {
            cfg: &self.cfg,
            ctx,
            graph,
            server: &server,
            pool: &self.pool,
            index,
            prompt_id: &state.prompt_id,
            client_id: &client_id,
            socket,
            last_node: None,
            last_preview: None,
            comfy_ahead: None,
        };
        let entry = follow.run().await;
        if let Some(sock) = follow.socket.take() {
            sock.close().await;
        }
        if let Err(Stop::Lost(_)) = &entry {
            current.disarm(); // ComfyUI no longer has it: nothing to stop
        }
        let entry = entry?;
        // ComfyUI is done with the prompt, whatever happens next.
        current.disarm();
        finish(ctx, graph, &server, &entry)
            .await
            .map_err(Stop::Fail)
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
