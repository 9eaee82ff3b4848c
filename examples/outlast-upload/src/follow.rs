//! Follows every job of the run over one WebSocket: subscribes each after its last seen seq
//! (the protocol crate's `StreamTracker`), reconnects with jittered backoff (`Backoff`) after
//! a cut or a gateway restart, and hands finished jobs to the downloader. Queue positions come
//! from the stored `queued` event, the gateway's live `position` messages and snapshots.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use outlast_protocol::client::{Delivery, StreamTracker};
use outlast_protocol::v1::{ClientMsg, Control, ServerMsg};
use outlast_protocol::{EventKind, JobEvent, JobId, JobSnapshot, JobState, Seq};
use tokio::sync::mpsc;

use crate::net::{Ctx, Retry, Stop, Ws};
use crate::report::Event;

/// A job to follow: its index in the state and its id.
pub type Follow = (usize, JobId);

/// Longest silence (no message at all) before the link counts as dead; the gateway sends a
/// heartbeat every 25 s by default.
const SILENCE: Duration = Duration::from_secs(60);

struct Follower<'a> {
    ctx: &'a Ctx,
    tracker: StreamTracker,
    /// Open jobs: id -> state index.
    open: HashMap<JobId, usize>,
    /// Open jobs that left the queue (started): a live place for one of them is stale.
    left_queue: HashSet<JobId>,
    done: mpsc::UnboundedSender<usize>,
}

/// Follows jobs arriving on `jobs` until every one is finished and `jobs` is closed; sends
/// each finished job's index on `done`.
pub async fn follow(
    ctx: &Ctx,
    mut jobs: mpsc::Receiver<Follow>,
    done: mpsc::UnboundedSender<usize>,
) -> Result<(), Stop> {
    let mut f = Follower {
        ctx,
        tracker: StreamTracker::new(),
        open: HashMap::new(),
        left_queue: HashSet::new(),
        done,
    };
    let mut retry = Retry::new("follow", ctx.args.retry_for);
    let mut closed = false;
    loop {
        if closed && f.open.is_empty() {
            return Ok(());
        }
        // Nothing to follow yet: wait for the first job before connecting.
        if f.open.is_empty() {
            tokio::select! {
                j = jobs.recv() => match j {
                    Some((idx, id)) => f.add(idx, id),
                    None => closed = true,
                },
                () = ctx.cancel.cancelled() => return Err(Stop::Interrupted),
            }
            continue;
        }
        let err = match ctx.connect_ws().await {
            Ok(mut ws) => {
                retry.ok();
                match f.session(&mut ws, &mut jobs, &mut closed).await {
                    Ok(()) => continue,
                    Err(SessionEnd::Stop(s)) => return Err(s),
                    Err(SessionEnd::Lost(e)) => e,
                }
            }
            Err(e) => e,
        };
        let _ = ctx.store.save().await;
        retry.failed(ctx, &err).await?;
    }
}

enum SessionEnd {
    Stop(Stop),
    Lost(anyhow::Error),
}

impl From<anyhow::Error> for SessionEnd {
    fn from(e: anyhow::Error) -> Self {
        SessionEnd::Lost(e)
    }
}

impl Follower<'_> {
    fn add(&mut self, idx: usize, id: JobId) {
        let last = self.ctx.store.read(|s| s.jobs[idx].last_seq);
        if last > 0 {
            // Seed the tracker with the position saved by an earlier run.
            let mut snap = JobSnapshot::new(id, String::new(), 0);
            snap.seq = Seq(last);
            self.tracker.handle_snapshot(&snap);
        }
        self.open.insert(id, idx);
    }

    async fn subscribe(&self, ws: &mut Ws, id: JobId) -> anyhow::Result<()> {
        crate::net::send(
            ws,
            &ClientMsg::Subscribe {
                req: None,
                job_id: id,
                after: self.tracker.resume_after(id),
            },
        )
        .await
    }

    /// One connection's life: subscribe everything open, then handle messages.
    async fn session(
        &mut self,
        ws: &mut Ws,
        jobs: &mut mpsc::Receiver<Follow>,
        closed: &mut bool,
    ) -> Result<(), SessionEnd> {
        let ids: Vec<JobId> = self.open.keys().copied().collect();
        for id in ids {
            self.subscribe(ws, id).await?;
        }
        let mut save = tokio::time::interval(Duration::from_secs(2));
        loop {
            if *closed && self.open.is_empty() {
                let _ = crate::net::send(ws, &ClientMsg::Ping { nonce: 0 }).await;
                let _ = futures::SinkExt::close(ws).await;
                return Ok(());
            }
            tokio::select! {
                j = jobs.recv(), if !*closed => match j {
                    Some((idx, id)) => {
                        self.add(idx, id);
                        self.subscribe(ws, id).await?;
                    }
                    None => *closed = true,
                },
                m = crate::net::recv(ws, SILENCE) => match m? {
                    None => return Err(anyhow::anyhow!("no message for {SILENCE:?}").into()),
                    Some(msg) => self.handle(ws, msg).await?,
                },
                _ = save.tick() => {
                    let _ = self.ctx.store.save().await;
                }
                () = self.ctx.cancel.cancelled() => {
                    let _ = futures::SinkExt::close(ws).await;
                    return Err(SessionEnd::Stop(Stop::Interrupted));
                }
            }
        }
    }

    async fn handle(&mut self, ws: &mut Ws, msg: ServerMsg) -> Result<(), SessionEnd> {
        match msg {
            ServerMsg::Event(e) => {
                if !self.open.contains_key(&e.job_id) {
                    return Ok(());
                }
                match self.tracker.handle_event(&e) {
                    Delivery::New => self.event(e).await,
                    Delivery::Duplicate => {}
                    Delivery::Gap { .. } => self.subscribe(ws, e.job_id).await?,
                }
            }
            ServerMsg::Control(Control::Position {
                job_id,
                position,
                reason,
            }) => self.place(job_id, position, reason),
            ServerMsg::Control(Control::Subscribed {
                job_id,
                recovered: false,
                snapshot: Some(snap),
                ..
            }) => {
                self.tracker.handle_snapshot(&snap);
                self.tracker.allow_gaps_through(job_id, snap.seq);
                self.snapshot(snap).await;
            }
            ServerMsg::Control(Control::Goaway { reason, .. }) => {
                return Err(anyhow::anyhow!("gateway going away: {reason}").into());
            }
            ServerMsg::Control(Control::Error { code, message, .. }) => {
                return Err(anyhow::anyhow!("{}: {message}", code.as_str()).into());
            }
            _ => {}
        }
        Ok(())
    }

    /// A queued job's place (not an event: nothing is stored, the resume point stays).
    fn place(&mut self, job_id: JobId, position: u32, reason: Option<String>) {
        let Some(&idx) = self.open.get(&job_id) else {
            return;
        };
        if self.left_queue.contains(&job_id) {
            return;
        }
        self.ctx.report.emit(Event::JobQueued {
            job_id: job_id.to_string(),
            file: self.file_of(idx),
            position,
            reason,
        });
    }

    fn file_of(&self, idx: usize) -> String {
        self.ctx
            .store
            .read(|s| s.jobs[idx].files.first().cloned().unwrap_or_default())
    }

    async fn event(&mut self, e: JobEvent) {
        let Some(&idx) = self.open.get(&e.job_id) else {
            return;
        };
        let file = self.file_of(idx);
        let job_id = e.job_id.to_string();
        self.ctx.store.update(|s| s.jobs[idx].last_seq = e.seq.0);
        match e.kind {
            EventKind::Queued { position, reason } => {
                self.left_queue.remove(&e.job_id);
                self.ctx.report.emit(Event::JobQueued {
                    job_id,
                    file,
                    position,
                    reason,
                })
            }
            EventKind::Started { attempt } => {
                self.left_queue.insert(e.job_id);
                self.ctx.report.emit(Event::JobStarted {
                    job_id,
                    file,
                    attempt,
                })
            }
            EventKind::Progress { value, max, label } => self.ctx.report.emit(Event::JobProgress {
                job_id,
                file,
                value,
                max,
                label,
            }),
            EventKind::Preview { .. } => {}
            EventKind::Output(info) => self.ctx.store.update(|s| {
                let outs = &mut s.jobs[idx].outputs;
                outs.retain(|o| o.name != info.name);
                outs.push(info);
            }),
            EventKind::Completed { .. } => {
                self.finish(idx, e.job_id, JobState::Completed, None).await
            }
            EventKind::Failed(f) => {
                let msg = format!(
                    "{}: {}",
                    serde_json::to_value(f.code)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    f.message
                );
                self.finish(idx, e.job_id, JobState::Failed, Some(msg))
                    .await
            }
            EventKind::Canceled { reason } => {
                self.finish(idx, e.job_id, JobState::Canceled, Some(reason))
                    .await
            }
        }
    }

    async fn snapshot(&mut self, snap: JobSnapshot) {
        let Some(&idx) = self.open.get(&snap.job_id) else {
            return;
        };
        self.ctx.store.update(|s| {
            let rec = &mut s.jobs[idx];
            rec.last_seq = snap.seq.0;
            for o in &snap.outputs {
                rec.outputs.retain(|x| x.name != o.name);
                rec.outputs.push(o.clone());
            }
        });
        match (snap.state, snap.position) {
            (JobState::Queued, Some(position)) => {
                self.left_queue.remove(&snap.job_id);
                self.place(snap.job_id, position, snap.queue_reason.clone());
            }
            (JobState::Queued, None) => {
                self.left_queue.remove(&snap.job_id);
            }
            _ => {
                self.left_queue.insert(snap.job_id);
            }
        }
        if snap.state.is_terminal() {
            let error = snap
                .error
                .as_ref()
                .map(|f| f.message.clone())
                .or(snap.cancel_reason.clone());
            self.finish(idx, snap.job_id, snap.state, error).await;
        }
    }

    async fn finish(&mut self, idx: usize, id: JobId, state: JobState, error: Option<String>) {
        self.open.remove(&id);
        self.left_queue.remove(&id);
        let outputs = self.ctx.store.update(|s| {
            let rec = &mut s.jobs[idx];
            rec.state = Some(state);
            rec.error = error.clone();
            rec.outputs
                .iter()
                .map(|o| o.name.clone())
                .collect::<Vec<_>>()
        });
        let _ = self.ctx.store.save().await;
        self.ctx.report.emit(Event::JobDone {
            job_id: Some(id.to_string()),
            file: self.file_of(idx),
            state: state.as_str().into(),
            error,
            outputs,
        });
        if state == JobState::Completed {
            let _ = self.done.send(idx);
        }
    }
}
