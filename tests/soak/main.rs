//! `outlast-soak`: a chaos soak. Many clients follow many demo jobs over the WebSocket, SSE and
//! long-polling, and upload over tus and the WebSocket, all through a proxy that cuts every
//! connection at random, while the gateway is `kill -9`ed and restarted several times. At the
//! end it compares what every client collected with the stored history and prints the counts
//! that must be zero, plus reconnect-to-resumed latencies.
//!
//! `cargo run -p outlast-e2e --bin outlast-soak -- [--clients 50] [--jobs 300] [--restarts 3]`
//! (`--help` lists every knob). Uses `$OUTLAST_BIN` or the workspace's debug gateway. Exits 1
//! when any count is not zero, so a short run can serve as a check.

#[path = "../uploads_common.rs"]
mod uploads_common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use futures::StreamExt as _;
use outlast_e2e::Gateway;
use outlast_e2e::api::{Polled, Submitted};
use outlast_e2e::proxy::Proxy;
use outlast_e2e::ws::{Client, Incoming};
use outlast_protocol::client::Backoff;
use outlast_protocol::v1::{ClientMsg, Control, ServerMsg};
use outlast_protocol::{Codec, JobEvent, JobId, Seq};
use rand::{Rng as _, SeedableRng as _};
use tokio::sync::Mutex as AsyncMutex;

/// Sizes and pacing of one soak run.
#[derive(Parser, Debug, Clone)]
#[command(about = "Chaos soak: clients, cuts and kill -9 restarts; counts what went wrong")]
struct Args {
    /// Job clients; client i follows its jobs over WebSocket (i%3=0), SSE (1) or long-poll (2).
    #[arg(long, default_value_t = 50)]
    clients: usize,
    /// Demo jobs in all, spread over the clients (each runs its jobs one after another).
    #[arg(long, default_value_t = 300)]
    jobs: usize,
    /// Uploads in all, alternating tus and WebSocket chunks.
    #[arg(long, default_value_t = 20)]
    uploads: usize,
    /// `kill -9` + restart of the gateway during the run.
    #[arg(long, default_value_t = 3)]
    restarts: u32,
    /// Seconds between restarts (the first comes after this long too).
    #[arg(long, default_value_t = 6)]
    restart_every_s: u64,
    /// Mean milliseconds between proxy cuts of every open connection.
    #[arg(long, default_value_t = 1500)]
    cut_ms: u64,
    /// Demo steps per job.
    #[arg(long, default_value_t = 4)]
    steps: u32,
    /// Milliseconds per demo step.
    #[arg(long, default_value_t = 150)]
    step_ms: u64,
    /// Demo backend concurrency.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Give up on stragglers after this many seconds.
    #[arg(long, default_value_t = 600)]
    deadline_s: u64,
    /// Chance that a submit is first sent on a raw connection that is reset (SO_LINGER 0) right
    /// after the request is written, as a client that goes away mid-request.
    #[arg(long, default_value_t = 0.5)]
    reset_submits: f64,
    /// Random seed (cuts, sizes, jitter).
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// What the clients saw, shared between them.
#[derive(Default)]
struct Seen {
    /// Idempotency key -> every job id an answer named for it.
    answers: BTreeMap<String, Vec<JobId>>,
    /// Job -> the sequence numbers received, in arrival order.
    events: HashMap<JobId, Vec<u64>>,
    /// Time from noticing a broken stream to having it back.
    resumes: Vec<Duration>,
    /// Resumes answered with `recovered: false` (history gone).
    unrecovered: u64,
    /// Uploads: (id, local sha256, length) of each finished one.
    uploads: Vec<(String, String, u64)>,
    /// Uploads that did not finish.
    uploads_failed: u64,
}

struct Soak {
    args: Args,
    /// Through the proxy.
    via: String,
    ws_via: String,
    /// Straight to the gateway (for the final comparison).
    direct: String,
    http: reqwest::Client,
    seen: Mutex<Seen>,
    stop: AtomicBool,
    deadline: Instant,
    cuts: AtomicU64,
    resets: AtomicU64,
}

impl Soak {
    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn late(&self) -> bool {
        Instant::now() > self.deadline
    }

    fn record(&self, e: &JobEvent) {
        self.seen()
            .events
            .entry(e.job_id)
            .or_default()
            .push(e.seq.0);
    }

    fn resumed(&self, down_since: &mut Option<Instant>) {
        if let Some(t) = down_since.take() {
            self.seen().resumes.push(t.elapsed());
        }
    }
}

fn jitter() -> f64 {
    rand::rng().random::<f64>()
}

fn backoff() -> Backoff {
    Backoff::new(Duration::from_millis(50), Duration::from_secs(1))
}

/// The submit JSON of the soak's job under `key` (never answered from the cache).
fn job_body(args: &Args, key: &str) -> serde_json::Value {
    serde_json::json!({
        "backend": "demo",
        "workflow": {"steps": args.steps, "step_ms": args.step_ms},
        "idempotency_key": key,
        "cache": false,
    })
}

/// Submits over HTTP through the proxy until some answer names the job (same key each time).
async fn submit(s: &Soak, key: &str) -> anyhow::Result<JobId> {
    let body = job_body(&s.args, key);
    if rand::rng().random_bool(s.args.reset_submits.clamp(0.0, 1.0)) {
        // Errors do not matter: this attempt is meant to be cut.
        let _ = reset_submit(s, &body).await;
    }
    let mut b = backoff();
    loop {
        anyhow::ensure!(!s.late(), "submit of {key} never answered");
        let r = s
            .http
            .post(format!("{}/v1/jobs", s.via))
            .timeout(Duration::from_secs(15))
            .json(&body)
            .send()
            .await;
        if let Ok(r) = r {
            let status = r.status().as_u16();
            if status == 202 {
                if let Ok(a) = r.json::<Submitted>().await {
                    s.seen()
                        .answers
                        .entry(key.to_owned())
                        .or_default()
                        .push(a.job_id);
                    return Ok(a.job_id);
                }
            } else if !(status >= 500 || status == 429) {
                anyhow::bail!("submit of {key} refused with {status}");
            }
        }
        tokio::time::sleep(b.next_delay(jitter())).await;
    }
}

/// Writes a submit on a raw TCP connection to the gateway and resets it at once.
async fn reset_submit(s: &Soak, body: &serde_json::Value) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt as _;
    let host = s.direct.trim_start_matches("http://");
    let body = serde_json::to_vec(body)?;
    let mut t = tokio::net::TcpStream::connect(host).await?;
    let head = format!(
        "POST /v1/jobs HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    t.write_all(head.as_bytes()).await?;
    t.write_all(&body).await?;
    t.set_zero_linger()?;
    drop(t);
    s.resets.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

/// Follows one job over WebSocket connections through the proxy, resuming from the last seq.
async fn follow_ws(s: &Soak, job: JobId) {
    let mut last = 0u64;
    let mut down_since: Option<Instant> = None;
    let mut b = backoff();
    while !s.late() {
        let Ok(mut c) = Client::connect(&s.ws_via, Codec::Json).await else {
            down_since.get_or_insert_with(Instant::now);
            tokio::time::sleep(b.next_delay(jitter())).await;
            continue;
        };
        let sub = ClientMsg::Subscribe {
            req: Some(1),
            job_id: job,
            after: Some(Seq(last)),
        };
        if c.send(&sub).await.is_err() {
            down_since.get_or_insert_with(Instant::now);
            continue;
        }
        loop {
            match c.recv(Duration::from_secs(30)).await {
                Ok(Incoming::Msg(ServerMsg::Event(e))) if e.job_id == job => {
                    s.record(&e);
                    last = last.max(e.seq.0);
                    if e.kind.is_terminal() {
                        return;
                    }
                }
                Ok(Incoming::Msg(ServerMsg::Control(Control::Subscribed {
                    recovered,
                    snapshot,
                    ..
                }))) => {
                    b.reset();
                    s.resumed(&mut down_since);
                    if !recovered {
                        s.seen().unrecovered += 1;
                        if let Some(snap) = snapshot {
                            last = snap.seq.0;
                            if snap.state.is_terminal() {
                                return;
                            }
                        }
                    }
                }
                Ok(Incoming::Msg(_)) => {}
                Ok(Incoming::Closed(_)) | Err(_) => {
                    down_since.get_or_insert_with(Instant::now);
                    break;
                }
            }
        }
    }
}

/// One server-sent event as read off the stream.
#[derive(Default)]
struct SseEvent {
    id: Option<u64>,
    event: String,
    data: String,
}

/// Follows one job over SSE through the proxy, resuming with `Last-Event-ID`.
async fn follow_sse(s: &Soak, job: JobId) {
    let mut last = 0u64;
    let mut down_since: Option<Instant> = None;
    let mut b = backoff();
    while !s.late() {
        let mut req = s
            .http
            .get(format!("{}/v1/jobs/{job}/events", s.via))
            .header("Accept", "text/event-stream");
        if last > 0 {
            req = req.header("Last-Event-ID", last.to_string());
        }
        let r = match req.send().await {
            Ok(r) if r.status() == 200 => r,
            Ok(r) if r.status() == 204 => return, // finished; the comparison tells if we missed the end
            _ => {
                down_since.get_or_insert_with(Instant::now);
                tokio::time::sleep(b.next_delay(jitter())).await;
                continue;
            }
        };
        b.reset();
        s.resumed(&mut down_since);
        let mut body = r.bytes_stream();
        let mut buf = String::new();
        let mut cur = SseEvent::default();
        loop {
            let chunk = match tokio::time::timeout(Duration::from_secs(30), body.next()).await {
                Ok(Some(Ok(c))) => c,
                _ => break,
            };
            buf.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(nl) = buf.find('\n') {
                let line: String = buf.drain(..=nl).collect();
                let line = line.trim_end_matches(['\n', '\r']);
                if line.is_empty() {
                    let ev = std::mem::take(&mut cur);
                    if let Some(id) = ev.id {
                        last = last.max(id);
                    }
                    if ev.event == "snapshot" {
                        s.seen().unrecovered += 1;
                    } else if !ev.data.is_empty()
                        && let Ok(e) = serde_json::from_str::<JobEvent>(&ev.data)
                    {
                        s.record(&e);
                        if e.kind.is_terminal() {
                            return;
                        }
                    }
                } else if let Some(v) = line.strip_prefix("id:") {
                    cur.id = v.trim().parse().ok();
                } else if let Some(v) = line.strip_prefix("event:") {
                    cur.event = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    cur.data.push_str(v.trim_start());
                }
            }
        }
        down_since.get_or_insert_with(Instant::now);
    }
}

/// Follows one job by long-polling through the proxy.
async fn follow_poll(s: &Soak, job: JobId) {
    let mut after = Seq::ZERO;
    let mut down_since: Option<Instant> = None;
    let mut b = backoff();
    while !s.late() {
        let r = s
            .http
            .get(format!(
                "{}/v1/jobs/{job}/poll?after={after}&timeout_ms=5000",
                s.via
            ))
            .timeout(Duration::from_secs(20))
            .send()
            .await;
        let polled = match r {
            Ok(r) if r.status() == 200 => r.json::<Polled>().await.ok(),
            _ => None,
        };
        let Some(p) = polled else {
            down_since.get_or_insert_with(Instant::now);
            tokio::time::sleep(b.next_delay(jitter())).await;
            continue;
        };
        b.reset();
        s.resumed(&mut down_since);
        if !p.recovered {
            s.seen().unrecovered += 1;
        }
        for e in &p.events {
            s.record(e);
        }
        after = p.next_after;
        if p.done {
            return;
        }
    }
}

/// One job client: submits its jobs one after another and follows each to its end.
async fn job_client(s: Arc<Soak>, index: usize, keys: Vec<String>) -> anyhow::Result<()> {
    for key in keys {
        let job = submit(&s, &key).await?;
        match index % 3 {
            0 => follow_ws(&s, job).await,
            1 => follow_sse(&s, job).await,
            _ => follow_poll(&s, job).await,
        }
    }
    Ok(())
}

/// Uploads `bytes` over tus through the proxy, resuming from the server's offset after cuts.
async fn tus_upload(s: &Soak, bytes: &[u8]) -> anyhow::Result<String> {
    let tus = uploads_common::Tus::new(&s.via);
    let mut b = backoff();
    let path = loop {
        anyhow::ensure!(!s.late(), "tus create never answered");
        match tus.create(bytes.len() as u64, &[]).await {
            Ok(p) => break p,
            Err(_) => tokio::time::sleep(b.next_delay(jitter())).await,
        }
    };
    loop {
        anyhow::ensure!(!s.late(), "tus upload did not finish");
        let Ok(offset) = tus.offset(&path).await else {
            tokio::time::sleep(b.next_delay(jitter())).await;
            continue;
        };
        if offset == bytes.len() as u64 {
            return Ok(uploads_common::id_of(&path).to_string());
        }
        let start = usize::try_from(offset)?;
        let end = (start + 256 * 1024).min(bytes.len());
        match tus.patch(&path, offset, bytes[start..end].to_vec()).await {
            Ok(r) if r.status() == 204 => b.reset(),
            _ => tokio::time::sleep(b.next_delay(jitter())).await,
        }
    }
}

async fn upload_client(s: Arc<Soak>, index: usize, seed: u64) -> anyhow::Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let len = rng.random_range(200_000..2_000_000);
    let bytes = uploads_common::content(len, seed);
    let sha = uploads_common::sha256_hex(&bytes);
    let id = if index.is_multiple_of(2) {
        tus_upload(&s, &bytes).await
    } else {
        uploads_common::ws_upload(&s.ws_via, &bytes, 64 * 1024, 1 << 20, false, |_| {})
            .await
            .map(|u| u.id.to_string())
    };
    match id {
        Ok(id) => s.seen().uploads.push((id, sha, len as u64)),
        Err(e) => {
            eprintln!("upload {index}: {e:#}");
            s.seen().uploads_failed += 1;
        }
    }
    Ok(())
}

/// The counts that must be zero, and the figures.
#[derive(Debug, Default)]
struct Report {
    jobs: usize,
    events_stored: usize,
    events_collected: usize,
    jobs_lost: usize,
    jobs_duplicated: usize,
    jobs_not_one_terminal: usize,
    events_missing: usize,
    events_duplicated: usize,
    events_out_of_order: usize,
    uploads_ok: usize,
    uploads_corrupted: usize,
    uploads_unfinished: u64,
    upload_bytes_resent: u64,
}

impl Report {
    fn failures(&self) -> usize {
        self.jobs_lost
            + self.jobs_duplicated
            + self.jobs_not_one_terminal
            + self.events_missing
            + self.events_duplicated
            + self.events_out_of_order
            + self.uploads_corrupted
            + usize::try_from(self.uploads_unfinished).unwrap_or(usize::MAX)
    }
}

/// Compares what the clients collected with what the gateway stored (asked directly).
async fn compare(s: &Soak) -> anyhow::Result<Report> {
    let (answers, events, uploads, uploads_failed) = {
        let seen = s.seen();
        (
            seen.answers.clone(),
            seen.events.clone(),
            seen.uploads.clone(),
            seen.uploads_failed,
        )
    };
    let api = outlast_e2e::Api::new(s.direct.clone());
    let mut r = Report {
        uploads_unfinished: uploads_failed,
        ..Report::default()
    };
    let expected = s.args.jobs;
    r.jobs_lost += expected.saturating_sub(answers.len());
    for (key, ids) in &answers {
        let first = ids[0];
        if ids.iter().any(|i| *i != first) {
            r.jobs_duplicated += 1;
        }
        // A repeat straight to the gateway must name the same job and create nothing.
        let again: Submitted = api.submit(&job_body(&s.args, key)).await?;
        if again.created || again.job_id != first {
            r.jobs_duplicated += 1;
        }
        r.jobs += 1;
        let stored = api.events(first).await?;
        let snap = api.snapshot(first).await?;
        if !snap.state.is_terminal() {
            eprintln!("job {first} ({key}) is still {:?}", snap.state);
            r.jobs_lost += 1;
        }
        let terminals = stored.iter().filter(|e| e.kind.is_terminal()).count();
        if terminals != 1 {
            r.jobs_not_one_terminal += 1;
        }
        r.events_stored += stored.len();
        let got = events.get(&first).cloned().unwrap_or_default();
        r.events_collected += got.len();
        let mut counts: HashMap<u64, usize> = HashMap::new();
        for seq in &got {
            *counts.entry(*seq).or_default() += 1;
        }
        let missing = stored
            .iter()
            .filter(|e| !counts.contains_key(&e.seq.0))
            .count();
        if missing > 0 {
            eprintln!("job {first}: {missing} stored events never reached its client");
        }
        r.events_missing += missing;
        r.events_duplicated += counts.values().map(|n| n - 1).sum::<usize>();
        r.events_out_of_order += got.windows(2).filter(|w| w[1] < w[0]).count();
    }
    let tus = uploads_common::Tus::new(&s.direct);
    for (id, sha, len) in &uploads {
        let info = tus.info(&format!("/v1/uploads/{id}")).await?;
        let ok = info["sha256"].as_str() == Some(sha.as_str())
            && info["offset"].as_u64() == Some(*len)
            && info["state"].as_str() == Some("complete");
        if ok {
            r.uploads_ok += 1;
        } else {
            eprintln!("upload {id} corrupted: {info}");
            r.uploads_corrupted += 1;
        }
        let written = info["bytes_written"].as_u64().unwrap_or(0);
        r.upload_bytes_resent += written.saturating_sub(*len);
    }
    Ok(r)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = Instant::now();
    let concurrency = args.concurrency.to_string();
    let gateway = Gateway::start(&["--demo-concurrency", &concurrency, "--ping-interval", "2s"])
        .await
        .context("starting the gateway")?;
    let proxy = Proxy::start(gateway.addr, None).await?;
    let soak = Arc::new(Soak {
        via: format!("http://{}", proxy.addr),
        ws_via: format!("ws://{}/v1/ws", proxy.addr),
        direct: gateway.http(),
        http: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()?,
        seen: Mutex::new(Seen::default()),
        stop: AtomicBool::new(false),
        deadline: Instant::now() + Duration::from_secs(args.deadline_s),
        cuts: AtomicU64::new(0),
        resets: AtomicU64::new(0),
        args: args.clone(),
    });
    let gateway = Arc::new(AsyncMutex::new(gateway));

    let mut work = tokio::task::JoinSet::new();
    let run = format!("soak-{}-{}", args.seed, std::process::id());
    for c in 0..args.clients {
        let keys: Vec<String> = (0..args.jobs)
            .filter(|j| j % args.clients == c)
            .map(|j| format!("{run}-{j}"))
            .collect();
        work.spawn(job_client(Arc::clone(&soak), c, keys));
    }
    for u in 0..args.uploads {
        work.spawn(upload_client(
            Arc::clone(&soak),
            u,
            args.seed * 1000 + u as u64,
        ));
    }

    // Chaos: cut every connection at random moments, and restart the gateway now and then.
    let chaos = {
        let soak = Arc::clone(&soak);
        let proxy = Arc::new(proxy);
        let gateway = Arc::clone(&gateway);
        tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(soak.args.seed);
            let mut restarts = 0;
            let mut next_restart = Instant::now() + Duration::from_secs(soak.args.restart_every_s);
            while !soak.stop.load(Ordering::SeqCst) {
                // Exponentially distributed gaps, mean cut_ms.
                let u: f64 = rng.random_range(0.01..1.0);
                let gap = Duration::from_millis((-(u.ln()) * soak.args.cut_ms as f64) as u64);
                tokio::time::sleep(gap.min(Duration::from_secs(10))).await;
                proxy.cut_all();
                soak.cuts.fetch_add(1, Ordering::SeqCst);
                if restarts < soak.args.restarts && Instant::now() >= next_restart {
                    restarts += 1;
                    next_restart = Instant::now() + Duration::from_secs(soak.args.restart_every_s);
                    let mut g = gateway.lock().await;
                    if let Err(e) = g.restart().await {
                        eprintln!("restart failed: {e:#}");
                    } else {
                        eprintln!("soak: restart {restarts} done");
                    }
                }
            }
            (restarts, proxy)
        })
    };

    let mut client_errors = 0;
    while let Some(done) = work.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                eprintln!("client: {e:#}");
                client_errors += 1;
            }
            Err(e) => {
                eprintln!("client task: {e}");
                client_errors += 1;
            }
        }
    }
    let run_time = started.elapsed();
    soak.stop.store(true, Ordering::SeqCst);
    let (restarts, _proxy) = chaos.await?;
    let report = compare(&soak).await?;
    let mut resumes = soak.seen().resumes.clone();
    resumes.sort();
    let unrecovered = soak.seen().unrecovered;

    println!("outlast-soak: {args:?}");
    println!("run time                 {:.1} s", run_time.as_secs_f64());
    println!(
        "proxy cuts               {}",
        soak.cuts.load(Ordering::SeqCst)
    );
    println!("gateway kill -9 restarts {restarts}");
    println!(
        "submits reset mid-request {}",
        soak.resets.load(Ordering::SeqCst)
    );
    println!("jobs checked             {}", report.jobs);
    println!("events stored            {}", report.events_stored);
    println!("events collected         {}", report.events_collected);
    println!("jobs lost                {}", report.jobs_lost);
    println!("jobs duplicated          {}", report.jobs_duplicated);
    println!("jobs without one terminal {}", report.jobs_not_one_terminal);
    println!("events missing           {}", report.events_missing);
    println!("events duplicated        {}", report.events_duplicated);
    println!("events out of order      {}", report.events_out_of_order);
    println!("uploads verified         {}", report.uploads_ok);
    println!("uploads corrupted        {}", report.uploads_corrupted);
    println!("uploads unfinished       {}", report.uploads_unfinished);
    println!("upload bytes re-sent     {}", report.upload_bytes_resent);
    println!("client errors            {client_errors}");
    println!("resumes                  {}", resumes.len());
    println!("resumes not recovered    {unrecovered}");
    println!(
        "reconnect-to-resumed     p50 {} ms, p99 {} ms, max {} ms",
        percentile(&resumes, 0.5).as_millis(),
        percentile(&resumes, 0.99).as_millis(),
        resumes.last().copied().unwrap_or_default().as_millis()
    );
    let failures = report.failures() + client_errors;
    println!(
        "verdict                  {}",
        if failures == 0 { "PASS" } else { "FAIL" }
    );
    if failures > 0 {
        std::process::exit(1);
    }
    Ok(())
}
