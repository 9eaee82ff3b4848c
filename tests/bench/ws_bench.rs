//! WebSocket benchmark (issue 13): memory per idle connection with full session state, and
//! delivery latency from a backend event to many subscribers, with a loss check.
//!
//! `cargo run --release -p outlast-e2e --bin ws-bench -- [--idle 100000] [--one-job 10000]
//! [--jobs 1000 --per-job 10]` (`--help` for every knob; `0` skips a part). Uses the release
//! gateway (`target/release/outlast`, built first) unless `OUTLAST_BIN` is set. The gateway
//! runs as its own process; the clients run in this one, so the two compete for the same cores
//! as a real deployment's gateway and its local proxy would. Prints figures; asserts nothing
//! about speed.
//!
//! Before each fan-out part the same clients and the same traffic run against a bare
//! broadcaster in its own process (`--floor-server`: tokio-tungstenite, a task and a broadcast
//! receiver per connection, the gateway's buffer sizes, no store, no sessions): the floor this
//! machine sets, which the gateway's p99 is given as a ratio to (`--floor false` skips it).
//!
//! Connections come from several loopback source addresses (127.0.0.2, .3, ...), 10,000 per
//! address, to get past the ephemeral port range; the open-file limit is raised to the hard
//! limit, and as root the hard limit itself (benchmark only).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use futures::{SinkExt, StreamExt};
use outlast_e2e::Gateway;
use outlast_e2e::bench::{now_ms, percentile};
use outlast_protocol::v1::{ClientMsg, Control, ServerMsg};
use outlast_protocol::{Codec, EventKind, Frame, JobEvent, JobId, Seq};
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Connections per loopback source address (the ephemeral range holds about 28,000 ports).
const PER_SOURCE: usize = 10_000;
/// Connection attempts in flight at once.
const CONNECTING: usize = 256;

#[derive(Parser, Debug)]
#[command(about = "WebSocket memory and fan-out benchmark against the real gateway")]
struct Args {
    /// Idle connections, each subscribed to one job, for the memory figure (0 skips).
    #[arg(long, default_value_t = 100_000)]
    idle: usize,
    /// The gateway's ping interval while the idle connections are measured (its default).
    #[arg(long, default_value = "25s")]
    idle_ping: humantime::Duration,
    /// Subscribers of one job (0 skips).
    #[arg(long, default_value_t = 10_000)]
    one_job: usize,
    /// Jobs for the many-jobs figure (0 skips).
    #[arg(long, default_value_t = 1_000)]
    jobs: usize,
    /// Subscribers per job in the many-jobs figure.
    #[arg(long, default_value_t = 10)]
    per_job: usize,
    /// Progress steps of each measured job.
    #[arg(long, default_value_t = 40)]
    steps: u32,
    /// Milliseconds between the steps of the one job.
    #[arg(long, default_value_t = 100)]
    one_job_step_ms: u64,
    /// Milliseconds between the steps of each of the many jobs (spread by up to +10%).
    #[arg(long, default_value_t = 1_000)]
    jobs_step_ms: u64,
    /// Measure each fan-out part against a bare broadcaster first (the machine's floor).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    floor: bool,
    /// Internal: run as the bare broadcaster (the floor's server process).
    #[arg(long, hide = true)]
    floor_server: bool,
}

fn proc_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    proc_kib(pid, "VmRSS:")
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// The loopback source address of the `i`-th connection of a part: each part has its own
/// addresses (from 127.0.0.`first`), because the ports of the part before are still in
/// TIME_WAIT, and 127.0.0.1 stays free for the HTTP calls.
fn source(first: usize, i: usize) -> IpAddr {
    let n = u8::try_from(first + i / PER_SOURCE).unwrap_or(u8::MAX);
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

/// A MessagePack WebSocket from `from` to the gateway at `to`, with small client buffers so
/// this process holds 100,000 of them.
async fn connect(to: SocketAddr, from: IpAddr) -> anyhow::Result<Ws> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let tcp = socket.connect(to).await?;
    tcp.set_nodelay(true)?;
    let mut req = format!("ws://{to}/v1/ws").into_client_request()?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("outlast.v1.msgpack"),
    );
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (ws, _) = tokio_tungstenite::client_async_with_config(req, tcp, Some(config)).await?;
    Ok(ws)
}

fn decode(msg: &Message) -> Option<ServerMsg> {
    match msg {
        Message::Binary(b) => Codec::MsgPack.decode(b).ok(),
        _ => None,
    }
}

fn encode(msg: &ClientMsg) -> anyhow::Result<Message> {
    Ok(match Codec::MsgPack.encode(msg)? {
        outlast_protocol::Frame::Binary(b) => Message::Binary(b.into()),
        outlast_protocol::Frame::Text(t) => Message::Text(t.into()),
    })
}

/// Sends `subscribe` and reads until `subscribed` (answering nothing else).
async fn subscribe(ws: &mut Ws, job_id: JobId) -> anyhow::Result<()> {
    let sub = ClientMsg::Subscribe {
        req: Some(1),
        job_id,
        after: None,
    };
    ws.send(encode(&sub)?).await?;
    loop {
        let m = tokio::time::timeout(Duration::from_secs(60), ws.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("closed before subscribed"))??;
        match decode(&m) {
            Some(ServerMsg::Control(Control::Subscribed { .. })) => return Ok(()),
            Some(ServerMsg::Control(Control::Error { code, message, .. })) => {
                anyhow::bail!("subscribe refused: {code:?} {message}")
            }
            _ => {}
        }
    }
}

/// Opens the benchmark's connections at most [`CONNECTING`] at a time, each subscribed to a job
/// (up to five attempts), and counts how many are in and how many gave up.
struct Connector {
    gate: Semaphore,
    ready: AtomicUsize,
    failed: AtomicUsize,
    settled: tokio::sync::Notify,
}

impl Connector {
    fn new() -> Arc<Self> {
        Arc::new(Connector {
            gate: Semaphore::new(CONNECTING),
            ready: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            settled: tokio::sync::Notify::new(),
        })
    }

    /// A connection from `from` subscribed to `job`, or `None` after five failed attempts.
    async fn open(&self, to: SocketAddr, from: IpAddr, job: JobId) -> Option<Ws> {
        let permit = self.gate.acquire().await.ok()?;
        let mut ws = None;
        for _ in 0..5 {
            if let Ok(mut c) = connect(to, from).await
                && subscribe(&mut c, job).await.is_ok()
            {
                ws = Some(c);
                break;
            }
            // A short back-off before the next attempt (the listener's backlog may be full).
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        drop(permit);
        let counter = if ws.is_some() {
            &self.ready
        } else {
            &self.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        // `notify_one` keeps a permit when nobody waits yet, so no settlement is missed.
        self.settled.notify_one();
        ws
    }

    /// Waits until `n` connections are in or gave up.
    async fn settled(&self, n: usize) {
        while self.ready() + self.failed() < n {
            self.settled.notified().await;
        }
    }

    fn ready(&self) -> usize {
        self.ready.load(Ordering::Relaxed)
    }

    fn failed(&self) -> usize {
        self.failed.load(Ordering::Relaxed)
    }
}

/// Raises the open-file limit for 100,000 connections on each side of loopback (the gateway
/// inherits it).
fn raise_fd_limit(connections: usize) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let want = (connections as u64).saturating_mul(2).saturating_add(4096);
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let hard = if hard < want {
            let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .unwrap_or(hard);
            // Only root may raise the hard limit; otherwise this keeps the old one.
            let raised = want.min(nr_open);
            if setrlimit(Resource::RLIMIT_NOFILE, raised, raised).is_ok() {
                raised
            } else {
                hard
            }
        } else {
            hard
        };
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.floor_server {
        return floor_server().await;
    }
    let most = args.idle.max(args.one_job).max(args.jobs * args.per_job);
    raise_fd_limit(most);
    outlast_e2e::use_release_binary()?;
    println!(
        "ws-bench on {} cores (gateway and clients share them)",
        std::thread::available_parallelism().map_or(1, usize::from)
    );
    if args.idle > 0 {
        idle(&args).await?;
    }
    let mut floor_p99 = None;
    if args.one_job > 0 {
        let label = format!("{} subscribers of one job", args.one_job);
        let part = Part::new(1, args.one_job, args.steps, args.one_job_step_ms);
        if args.floor {
            floor_p99 = Some(floor(30, &label, part).await?);
        }
        fan_out(20, &label, part, floor_p99.take()).await?;
    }
    if args.jobs > 0 {
        let label = format!("{} jobs x {} subscribers", args.jobs, args.per_job);
        let part = Part::new(args.jobs, args.per_job, args.steps, args.jobs_step_ms);
        if args.floor {
            floor_p99 = Some(floor(50, &label, part).await?);
        }
        fan_out(40, &label, part, floor_p99.take()).await?;
    }
    Ok(())
}

/// One idle client: connected, subscribed to `job`, answering pings (tungstenite does),
/// counting pings and heartbeats until `stop`.
struct IdleOutcome {
    pings: u32,
    heartbeats: u32,
    open: bool,
}

async fn idle(args: &Args) -> anyhow::Result<()> {
    let n = args.idle;
    let ping = args.idle_ping.to_string();
    let gw = Gateway::start(&[
        "--ping-interval",
        &ping,
        "--pong-timeout",
        "30s",
        "--streams-max-per-owner",
        "0",
        "--http-max-connections",
        "1000000",
    ])
    .await?;
    let pid = gw.pid().expect("gateway pid");
    let to = gw.client_addr();
    // One running job that emits nothing more: every connection follows it.
    let job: JobId = gw
        .submit(
            serde_json::json!({"backend": "demo", "workflow": {"steps": 1, "step_ms": 600_000}}),
        )
        .await?
        .parse()?;
    // Warm up the allocator with a few sessions, then take the baseline.
    let mut warm = Vec::new();
    for i in 0..200 {
        let mut ws = connect(to, source(2, i)).await?;
        subscribe(&mut ws, job).await?;
        warm.push(ws);
    }
    drop(warm);
    // The baseline once the gateway has ended every warm-up session.
    gw.api()
        .wait_for_metric(Duration::from_secs(30), |l| {
            l.strip_prefix("outlast_ws_connections ")
                .is_some_and(|v| v.trim() == "0")
        })
        .await?;
    let base = rss_kib(pid);
    let bench_base = rss_kib(std::process::id());

    let started = Instant::now();
    let connector = Connector::new();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let connector = Arc::clone(&connector);
        let mut stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let mut ws = connector.open(to, source(2, i), job).await?;
            let mut out = IdleOutcome {
                pings: 0,
                heartbeats: 0,
                open: true,
            };
            loop {
                tokio::select! {
                    m = ws.next() => match m {
                        Some(Ok(Message::Ping(_))) => out.pings += 1,
                        Some(Ok(m)) => {
                            if let Some(ServerMsg::Control(Control::Heartbeat { .. })) = decode(&m) {
                                out.heartbeats += 1;
                            }
                        }
                        _ => {
                            out.open = false;
                            return Some(out);
                        }
                    },
                    _ = stop.changed() => return Some(out),
                }
            }
        }));
    }
    connector.settled(n).await;
    let connect_secs = started.elapsed().as_secs_f64();
    let connected = connector.ready();
    // Wait two ping intervals and a bit, with nothing moving but pings and heartbeats.
    let interval: Duration = args.idle_ping.into();
    tokio::time::sleep(interval * 2 + interval / 4).await;
    let loaded = rss_kib(pid);
    let bench_loaded = rss_kib(std::process::id());
    stop_tx.send(true)?;
    let (mut open, mut pinged) = (0usize, 0usize);
    for t in tasks {
        if let Ok(Some(o)) = t.await {
            open += usize::from(o.open);
            pinged += usize::from(o.pings >= 2 && o.heartbeats >= 2);
        }
    }
    let per_conn = loaded.saturating_sub(base) as f64 / connected.max(1) as f64;
    println!("\n== idle connections (one job subscribed each, pings every {ping})");
    println!(
        "connections:             {connected} of {n} opened and subscribed in {connect_secs:.1} s ({} failed), {open} still open after {:.0} s, {pinged} got >= 2 pings and >= 2 heartbeats",
        connector.failed(),
        interval.as_secs_f64() * 2.25
    );
    println!("gateway RSS:             {base} KiB before, {loaded} KiB with all connected");
    println!(
        "memory per connection:   {per_conn:.2} KiB (goal <= 5 KiB; ratio to goal {:.2})",
        per_conn / 5.0
    );
    println!(
        "(clients, this process:  {:.2} KiB per connection)",
        bench_loaded.saturating_sub(bench_base) as f64 / connected.max(1) as f64
    );
    Ok(())
}

/// What one subscriber saw of its job.
struct Seen {
    latencies: Vec<u32>,
    /// Each latency's place in the job's life (see [`Outcome::by_place`]).
    places: Vec<u8>,
    in_order: bool,
    terminal: Option<Seq>,
    /// Live queue places (`position` messages) received: not events, but they share the socket.
    positions: u32,
}

/// `jobs` measured jobs with `per_job` subscribers each. The measured jobs wait behind one
/// blocker per demo slot until every subscriber is in; then the blockers are canceled, so
/// every event after `queued` is a live delivery, not a replay.
async fn fan_out(
    first_source: usize,
    label: &str,
    part: Part,
    floor_p99: Option<f64>,
) -> anyhow::Result<()> {
    let Part {
        jobs,
        steps,
        step_ms,
        ..
    } = part;
    let slots = jobs.to_string();
    let gw = Gateway::start(&[
        "--streams-max-per-owner",
        "0",
        "--demo-concurrency",
        &slots,
        "--jobs-max-queued-per-owner",
        "0",
        "--jobs-submits-per-second",
        "0",
        "--http-max-connections",
        "1000000",
    ])
    .await?;
    let api = gw.api();
    let mut blockers = Vec::with_capacity(jobs);
    for i in 0..jobs {
        let spec = serde_json::json!({"backend": "demo", "workflow": {"steps": 1, "step_ms": 600_000 - i as u64}});
        blockers.push(gw.submit(spec).await?);
    }
    let mut measured: Vec<JobId> = Vec::with_capacity(jobs);
    for i in 0..jobs {
        let ms = pace(step_ms, i, jobs);
        let spec =
            serde_json::json!({"backend": "demo", "workflow": {"steps": steps, "step_ms": ms}});
        measured.push(gw.submit(spec).await?.parse()?);
    }
    let total = part.jobs * part.per_job;
    let started = Instant::now();
    let (connector, tasks) = subscribers(gw.client_addr(), first_source, &measured, part);
    connector.settled(total).await;
    let connect_secs = started.elapsed().as_secs_f64();
    let rss_subscribed = gw.pid().map_or(0, rss_kib);
    // Everyone is in: free the slots.
    let cancels = futures::stream::iter(blockers.iter().map(|b| api.cancel(b)))
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await;
    let cancel_failures = cancels.iter().filter(|c| c.is_err()).count();
    let (events_before, commits_before) = (
        api.counter("outlast_events_stored_total").await?,
        api.counter("outlast_store_event_commits_total").await?,
    );
    let outcome = collect(tasks, total, steps).await;
    let events = api.counter("outlast_events_stored_total").await? - events_before;
    let commits = api.counter("outlast_store_event_commits_total").await? - commits_before;
    println!("\n== {label}");
    println!(
        "subscribers:             {} of {total} connected and subscribed in {connect_secs:.1} s ({} failed, {cancel_failures} blocker cancels failed); gateway RSS then {rss_subscribed} KiB",
        connector.ready(),
        connector.failed()
    );
    outcome.print(total, "stamp before the fsync'd commit to arrival");
    println!(
        "store:                   {events} events in {commits} commits ({:.2} per commit) while measured",
        events as f64 / commits.max(1) as f64
    );
    if let Some(floor) = floor_p99 {
        println!(
            "p99 against the floor:   {:.2}x the bare broadcaster's p99 of {floor:.0} ms, measured just before",
            outcome.p99() / floor.max(1.0)
        );
    }
    Ok(())
}

/// One subscriber's reading until its job's terminal event (or two minutes of silence).
async fn follow(mut ws: Ws, steps: u32) -> Seen {
    let mut seen = Seen {
        latencies: Vec::with_capacity(steps as usize + 4),
        places: Vec::with_capacity(steps as usize + 4),
        in_order: true,
        terminal: None,
        positions: 0,
    };
    let mut last = Seq::ZERO;
    loop {
        let m = match tokio::time::timeout(Duration::from_secs(120), ws.next()).await {
            Ok(Some(Ok(m))) => m,
            _ => return seen,
        };
        let arrived = now_ms();
        let msg = decode(&m);
        if let Some(ServerMsg::Control(Control::Position { .. })) = msg {
            seen.positions += 1;
        }
        if let Some(ServerMsg::Event(JobEvent {
            seq, at_ms, kind, ..
        })) = msg
        {
            seen.in_order &= seq == last.next();
            last = seq;
            if !matches!(kind, EventKind::Queued { .. }) {
                seen.latencies
                    .push(u32::try_from(arrived.saturating_sub(at_ms)).unwrap_or(u32::MAX));
                seen.places.push(match kind {
                    EventKind::Started { .. } => 0,
                    EventKind::Progress { value: 1, .. } => 1,
                    EventKind::Progress { value: 2..=10, .. } => 2,
                    EventKind::Progress { .. } => 3,
                    _ => 4,
                });
            }
            if kind.is_terminal() {
                seen.terminal = Some(seq);
                return seen;
            }
        }
    }
}

/// Every subscriber's reading of a part, pooled.
struct Outcome {
    sorted: Vec<f64>,
    lossless: usize,
    finished: usize,
    finals: std::collections::BTreeMap<Seq, usize>,
    /// `position` messages received, over all subscribers.
    positions: u64,
    /// Latencies by the event's place in its job's life: `started`, the first progress, the
    /// next nine, later progress, and the rest (preview, output, terminal event): where the
    /// tail is.
    by_place: [Vec<f64>; 5],
}

async fn collect(
    tasks: Vec<tokio::task::JoinHandle<Option<Seen>>>,
    total: usize,
    steps: u32,
) -> Outcome {
    let mut out = Outcome {
        sorted: Vec::with_capacity(total * (steps as usize + 3)),
        lossless: 0,
        finished: 0,
        finals: std::collections::BTreeMap::new(),
        positions: 0,
        by_place: Default::default(),
    };
    for t in tasks {
        if let Ok(Some(seen)) = t.await {
            out.lossless += usize::from(seen.in_order && seen.terminal.is_some());
            out.finished += usize::from(seen.terminal.is_some());
            out.positions += u64::from(seen.positions);
            if let Some(last) = seen.terminal {
                *out.finals.entry(last).or_insert(0usize) += 1;
            }
            for (&place, &l) in seen.places.iter().zip(&seen.latencies) {
                out.by_place[usize::from(place)].push(f64::from(l));
            }
            out.sorted.extend(seen.latencies.into_iter().map(f64::from));
        }
    }
    out.sorted.sort_by(|a, b| a.total_cmp(b));
    for v in &mut out.by_place {
        v.sort_by(|a, b| a.total_cmp(b));
    }
    out
}

impl Outcome {
    fn p99(&self) -> f64 {
        percentile(&self.sorted, 0.99)
    }

    fn print(&self, total: usize, measured: &str) {
        let all = &self.sorted;
        let p99 = self.p99();
        println!(
            "loss:                    {} of {total} received every event in order up to the terminal one ({} saw a terminal event; final seqs {:?})",
            self.lossless, self.finished, self.finals
        );
        println!(
            "delivery latency (ms):   p50 {:.0}  p90 {:.0}  p99 {p99:.0}  max {:.0} over {} live deliveries (goal p99 < 10 ms; ratio to goal {:.2}; {measured}, 1 ms clock resolution)",
            percentile(all, 0.5),
            percentile(all, 0.9),
            all.last().copied().unwrap_or(f64::NAN),
            all.len(),
            p99 / 10.0
        );
        println!(
            "queue places received:   {} `position` messages ({:.1} per subscriber)",
            self.positions,
            self.positions as f64 / total.max(1) as f64
        );
        let [started, first, next, later, results] = &self.by_place;
        println!(
            "p99 by place (ms):       started {:.0}, progress 1 {:.0}, progress 2-10 {:.0}, later progress {:.0}, preview/output/terminal {:.0}",
            percentile(started, 0.99),
            percentile(first, 0.99),
            percentile(next, 0.99),
            percentile(later, 0.99),
            percentile(results, 0.99)
        );
    }
}

/// A fan-out part's shape.
#[derive(Debug, Clone, Copy)]
struct Part {
    jobs: usize,
    per_job: usize,
    steps: u32,
    step_ms: u64,
}

impl Part {
    fn new(jobs: usize, per_job: usize, steps: u32, step_ms: u64) -> Self {
        Part {
            jobs,
            per_job,
            steps,
            step_ms,
        }
    }
}

/// The `i`-th of `jobs` jobs' milliseconds between steps: a different pace per job spreads
/// their events (and keeps the result cache out), by up to +10%.
fn pace(step_ms: u64, i: usize, jobs: usize) -> u64 {
    step_ms + (i as u64 * step_ms / 10) / jobs.max(1) as u64
}

/// `part.jobs * part.per_job` subscribers from `first_source` on, the `i`-th following
/// `jobs[i % jobs.len()]` until its terminal event.
fn subscribers(
    to: SocketAddr,
    first_source: usize,
    jobs: &[JobId],
    part: Part,
) -> (Arc<Connector>, Vec<tokio::task::JoinHandle<Option<Seen>>>) {
    let connector = Connector::new();
    let tasks = (0..part.jobs * part.per_job)
        .map(|i| {
            let job = jobs[i % jobs.len()];
            let connector = Arc::clone(&connector);
            tokio::spawn(async move {
                let ws = connector.open(to, source(first_source, i), job).await?;
                Some(follow(ws, part.steps).await)
            })
        })
        .collect();
    (connector, tasks)
}

/// The floor: the same clients and the same shape of traffic against a bare broadcaster in
/// its own process (tokio-tungstenite, one task and one broadcast receiver per connection,
/// each event encoded once, no store, no sessions, no auth). What this machine's cores and
/// loopback allow the gateway at best; its p99 is the baseline the gateway's is compared to.
async fn floor(first_source: usize, label: &str, part: Part) -> anyhow::Result<f64> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .arg("--floor-server")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("piped")).lines();
    let port: u16 = lines
        .next_line()
        .await?
        .and_then(|l| l.strip_prefix("port ").and_then(|p| p.trim().parse().ok()))
        .ok_or_else(|| anyhow::anyhow!("the floor server printed no port"))?;
    let to = SocketAddr::from(([127, 0, 0, 1], port));
    let jobs: Vec<JobId> = (0..part.jobs).map(|_| JobId::random()).collect();
    let total = part.jobs * part.per_job;
    let started = Instant::now();
    let (connector, tasks) = subscribers(to, first_source, &jobs, part);
    connector.settled(total).await;
    let connect_secs = started.elapsed().as_secs_f64();
    let mut stdin = child.stdin.take().expect("piped");
    stdin
        .write_all(format!("go {} {} {}\n", part.jobs, part.steps, part.step_ms).as_bytes())
        .await?;
    stdin.flush().await?;
    let outcome = collect(tasks, total, part.steps).await;
    let _ = child.kill().await;
    println!("\n== floor: {label}, bare broadcaster");
    println!(
        "subscribers:             {} of {total} connected in {connect_secs:.1} s ({} failed)",
        connector.ready(),
        connector.failed()
    );
    outcome.print(total, "stamp at encode to arrival");
    Ok(outcome.p99())
}

/// The floor's server process: accepts WebSockets, answers each client's first message
/// (its `subscribe`) with `subscribed`, and on `go <jobs> <steps> <step_ms>` on stdin
/// publishes to every job's subscribers what a demo job would: `queued`, `started`, `steps`
/// progress events `step_ms` apart (spread by up to +10% per job) and `completed`.
async fn floor_server() -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt;
    type Channels = std::sync::Mutex<
        std::collections::HashMap<JobId, tokio::sync::broadcast::Sender<bytes::Bytes>>,
    >;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("port {}", listener.local_addr()?.port());
    let channels: Arc<Channels> = Arc::default();
    let accepting = Arc::clone(&channels);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let channels = Arc::clone(&accepting);
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                // The gateway's buffer sizes (a 2 KiB read buffer, frames written through).
                let config = WebSocketConfig::default()
                    .read_buffer_size(2048)
                    .write_buffer_size(0);
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async_with_config(
                    tcp,
                    echo_protocol,
                    Some(config),
                )
                .await
                else {
                    return;
                };
                let job_id = match ws.next().await {
                    Some(Ok(Message::Binary(b))) => match Codec::MsgPack.decode::<ClientMsg>(&b) {
                        Ok(ClientMsg::Subscribe { job_id, .. }) => job_id,
                        _ => return,
                    },
                    _ => return,
                };
                let mut rx = channels
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .entry(job_id)
                    .or_insert_with(|| tokio::sync::broadcast::channel(64).0)
                    .subscribe();
                let subscribed = ServerMsg::Control(Control::Subscribed {
                    req: Some(1),
                    job_id,
                    recovered: true,
                    snapshot: None,
                });
                let Ok(Frame::Binary(b)) = Codec::MsgPack.encode(&subscribed) else {
                    return;
                };
                if ws.send(Message::Binary(b.into())).await.is_err() {
                    return;
                }
                loop {
                    tokio::select! {
                        m = ws.next() => if !matches!(m, Some(Ok(_))) { return },
                        ev = rx.recv() => match ev {
                            Ok(bytes) => if ws.send(Message::Binary(bytes)).await.is_err() { return },
                            Err(_) => return,
                        },
                    }
                }
            });
        }
    });
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let go = stdin.next_line().await?.unwrap_or_default();
    let nums: Vec<u64> = go
        .split_whitespace()
        .skip(1)
        .filter_map(|n| n.parse().ok())
        .collect();
    let [jobs, steps, step_ms] = nums[..] else {
        anyhow::bail!("want `go <jobs> <steps> <step_ms>`, got {go:?}");
    };
    let senders: Vec<_> = channels
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .map(|(job, tx)| (*job, tx.clone()))
        .collect();
    let mut runs = Vec::new();
    for (i, (job_id, tx)) in senders.into_iter().enumerate() {
        let ms = pace(step_ms, i, usize::try_from(jobs).unwrap_or(usize::MAX));
        runs.push(tokio::spawn(async move {
            let publish = |seq: u64, kind: EventKind| {
                let event = ServerMsg::Event(JobEvent {
                    job_id,
                    seq: Seq(seq),
                    at_ms: now_ms(),
                    kind,
                });
                if let Ok(Frame::Binary(b)) = Codec::MsgPack.encode(&event) {
                    let _ = tx.send(bytes::Bytes::from(b));
                }
            };
            publish(
                1,
                EventKind::Queued {
                    position: 0,
                    reason: None,
                },
            );
            publish(2, EventKind::Started { attempt: 1 });
            for step in 1..=steps {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                publish(
                    2 + step,
                    EventKind::Progress {
                        value: step,
                        max: steps,
                        label: None,
                    },
                );
            }
            publish(3 + steps, EventKind::Completed { cached: false });
        }));
    }
    for r in runs {
        let _ = r.await;
    }
    // Until the parent kills this process, so every last frame is written.
    std::future::pending::<()>().await;
    Ok(())
}

/// The floor's handshake: answers with the subprotocol the client asks for, as the gateway does.
#[allow(
    clippy::result_large_err,
    reason = "the signature of tungstenite's handshake callback"
)]
fn echo_protocol(
    req: &tokio_tungstenite::tungstenite::handshake::server::Request,
    mut resp: tokio_tungstenite::tungstenite::handshake::server::Response,
) -> Result<
    tokio_tungstenite::tungstenite::handshake::server::Response,
    tokio_tungstenite::tungstenite::handshake::server::ErrorResponse,
> {
    if let Some(p) = req.headers().get("Sec-WebSocket-Protocol") {
        resp.headers_mut()
            .insert("Sec-WebSocket-Protocol", p.clone());
    }
    Ok(resp)
}
