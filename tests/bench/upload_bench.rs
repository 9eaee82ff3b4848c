//! Upload benchmark: loopback throughput of tus (8 MiB PATCH bodies) and WebSocket (1 MiB chunk
//! frames) uploads as a ratio to this machine's sequential write rate with fsync, measured in
//! the same run on the same file system, and the gateway's peak memory (VmHWM) while
//! uploading a small and a 2 GiB file.
//!
//! Then MANY tus uploads at once (16 PATCHes of 256 KiB each, every PATCH a durable offset
//! commit) as PATCHes per second against the disk's rate of 256 KiB appends each followed by
//! fsync, with the record writes per commit (group commit) from `/metrics`.
//!
//! `cargo run --release -p outlast-e2e --bin upload-bench -- [THROUGHPUT_MIB] [BIG_MIB] [MANY] [ROUNDS]`
//! (defaults 256, 2048, 64 and 5; MANY 0 skips that part). Each of the ROUNDS tus runs and
//! WebSocket runs of THROUGHPUT_MIB sits between two runs of the disk alone (the shared disk's
//! rate swings within seconds): its ratio is to those two, and the medians are printed. Each
//! probe of the disk measures it twice: 8 MiB writes with one fsync at the end (the issue's
//! baseline), and 8 MiB writes each followed by an fsync (the commit points of tus in 8 MiB
//! PATCHes, which must be durable before each 204), so the cost of the commits themselves
//! stands apart from the gateway's. Uses the release gateway (built first) unless `OUTLAST_BIN` is
//! set. Prints figures; asserts only that every upload completed with the right size.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use outlast_e2e::Gateway;
use outlast_e2e::bench::{disk_fsync_rate, percentile};
use outlast_protocol::upload::encode_data_header;
use outlast_protocol::v1::{ClientMsg, Control, ServerMsg};
use outlast_protocol::{Codec, Offset, UploadId};
use rand::{Rng, SeedableRng};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const MIB: u64 = 1 << 20;
const BLOCK: usize = 8 << 20;

/// The upload content: one random 8 MiB block repeated (every chunk size used divides it).
struct Source {
    block: Vec<u8>,
    len: u64,
}

impl Source {
    fn new(len: u64) -> Self {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut block = vec![0u8; BLOCK];
        rng.fill(block.as_mut_slice());
        Self { block, len }
    }

    fn chunk(&self, offset: u64, size: usize) -> &[u8] {
        let start = (offset % BLOCK as u64) as usize;
        let size = size.min((self.len - offset) as usize).min(BLOCK - start);
        &self.block[start..start + size]
    }
}

fn vm_hwm_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Sequential write of `len` bytes in 8 MiB writes, then one fsync: the best case a disk gives.
/// With `fsync_each`, every 8 MiB write is followed by its own fsync: the disk at exactly the
/// commit points of a tus upload in 8 MiB PATCHes (each PATCH's bytes are durable before its
/// 204), without any network or gateway in between.
fn disk_rate(dir: &Path, source: &Source, fsync_each: bool) -> anyhow::Result<f64> {
    let path = dir.join("bench-baseline.bin");
    let start = Instant::now();
    let mut f = std::fs::File::create(&path)?;
    let mut off = 0;
    while off < source.len {
        let c = source.chunk(off, BLOCK);
        f.write_all(c)?;
        off += c.len() as u64;
        if fsync_each {
            f.sync_data()?;
        }
    }
    f.sync_all()?;
    let secs = start.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path)?;
    Ok(source.len as f64 / secs)
}

/// One probe of the disk alone: one fsync at the end, and one fsync per 8 MiB.
#[derive(Clone, Copy)]
struct Disk {
    once: f64,
    each: f64,
}

fn disk_probe(dir: &Path, source: &Source) -> anyhow::Result<Disk> {
    Ok(Disk {
        once: disk_rate(dir, source, false)?,
        each: disk_rate(dir, source, true)?,
    })
}

/// Creates a tus upload of `len` bytes; its URL.
async fn tus_create(http: &reqwest::Client, gw: &Gateway, len: u64) -> anyhow::Result<String> {
    let r = http
        .post(format!("{}/v1/uploads", gw.http()))
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Length", len.to_string())
        .send()
        .await?;
    anyhow::ensure!(r.status() == 201, "create: {}", r.status());
    let path = r
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .context("Location")?;
    Ok(format!("{}{path}", gw.http()))
}

/// One PATCH of `body` at `off`; it must answer 204.
async fn tus_patch(
    http: &reqwest::Client,
    url: &str,
    off: u64,
    body: Vec<u8>,
) -> anyhow::Result<()> {
    let r = http
        .patch(url)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Offset", off.to_string())
        .header("Content-Type", "application/offset+octet-stream")
        .body(body)
        .send()
        .await?;
    anyhow::ensure!(r.status() == 204, "PATCH at {off}: {}", r.status());
    Ok(())
}

async fn tus_upload(gw: &Gateway, source: &Source, chunk: usize) -> anyhow::Result<f64> {
    let http = reqwest::Client::new();
    let start = Instant::now();
    let url = tus_create(&http, gw, source.len).await?;
    let mut off = 0u64;
    while off < source.len {
        let body = source.chunk(off, chunk).to_vec();
        let n = body.len() as u64;
        tus_patch(&http, &url, off, body).await?;
        off += n;
    }
    Ok(source.len as f64 / start.elapsed().as_secs_f64())
}

async fn ws_upload(gw: &Gateway, source: &Source, chunk: usize) -> anyhow::Result<f64> {
    let mut request = gw.ws_url().into_client_request()?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(Codec::MsgPack.subprotocol()),
    );
    let (ws, _) = tokio_tungstenite::connect_async(request).await?;
    let (mut tx, mut rx) = ws.split();
    let codec = Codec::MsgPack;
    let start = Instant::now();
    let create = ClientMsg::UploadCreate {
        req: Some(1),
        length: Some(source.len),
        metadata: Default::default(),
        sha256: None,
    };
    let outlast_protocol::Frame::Binary(bytes) = codec.encode(&create)? else {
        bail!("msgpack encodes to binary frames");
    };
    tx.send(Message::Binary(bytes.into())).await?;
    let mut upload: Option<(UploadId, u64)> = None;
    let mut sent = 0u64;
    let mut acked = 0u64;
    loop {
        if let Some((id, window)) = upload {
            while sent < source.len && sent - acked < window {
                let data = source.chunk(sent, chunk);
                let mut frame = Vec::with_capacity(data.len() + 32);
                frame.extend_from_slice(&encode_data_header(id, Offset(sent)));
                frame.extend_from_slice(data);
                tx.send(Message::Binary(frame.into())).await?;
                sent += data.len() as u64;
            }
        }
        let msg = tokio::time::timeout(Duration::from_secs(60), rx.next())
            .await
            .context("no answer within 60 s")?
            .context("connection closed")??;
        let Message::Binary(bytes) = msg else {
            continue;
        };
        match codec.decode::<ServerMsg>(&bytes)? {
            ServerMsg::Control(Control::UploadStatus {
                upload: info,
                limits,
                ..
            }) => {
                upload = Some((info.upload_id, limits.window_bytes));
            }
            ServerMsg::Control(Control::UploadAck {
                offset, complete, ..
            }) => {
                acked = offset.0;
                if complete {
                    break;
                }
            }
            ServerMsg::Control(Control::Error { code, message, .. }) => {
                bail!("error {code}: {message}")
            }
            _ => {}
        }
    }
    anyhow::ensure!(acked == source.len, "acked {acked} of {}", source.len);
    Ok(source.len as f64 / start.elapsed().as_secs_f64())
}

/// Many uploads at once, each in `patches` tus PATCHes of `body` bytes (every PATCH commits an
/// offset): PATCHes per second in all, and each PATCH's latency in ms, ascending.
async fn many_uploads(
    gw: &Gateway,
    uploads: usize,
    patches: usize,
    body: usize,
) -> anyhow::Result<(f64, Vec<f64>)> {
    let source = Source::new((patches * body) as u64);
    let http = reqwest::Client::new();
    let start = Instant::now();
    let runs = (0..uploads).map(|_| {
        let (http, source) = (&http, &source);
        async move {
            let url = tus_create(http, gw, source.len).await?;
            let mut latencies = Vec::with_capacity(patches);
            let mut off = 0u64;
            while off < source.len {
                let body = source.chunk(off, body).to_vec();
                let n = body.len() as u64;
                let sent = Instant::now();
                tus_patch(http, &url, off, body).await?;
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                off += n;
            }
            Ok::<_, anyhow::Error>(latencies)
        }
    });
    let mut all = Vec::with_capacity(uploads * patches);
    for latencies in futures::future::try_join_all(runs).await? {
        all.extend(latencies);
    }
    let rate = all.len() as f64 / start.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    Ok((rate, all))
}

/// One transport run: its rate, and that rate over the geometric mean of the disk probes just
/// before and just after it (one fsync at the end, and one per 8 MiB).
struct Bracketed {
    rate: f64,
    ratio: f64,
    ratio_each: f64,
}

impl Bracketed {
    /// `disks` ends with the probe after this run; the one before is next to last.
    fn new(rate: f64, disks: &[Disk]) -> Self {
        let [.., before, after] = disks else {
            return Self {
                rate,
                ratio: f64::NAN,
                ratio_each: f64::NAN,
            };
        };
        Self {
            rate,
            ratio: rate / (before.once * after.once).sqrt(),
            ratio_each: rate / (before.each * after.each).sqrt(),
        }
    }
}

/// "median m (min a, max b; each: ...)" of some ratios, in run order for "each".
fn ratio_summary(ratios: impl Iterator<Item = f64>) -> String {
    let runs: Vec<f64> = ratios.collect();
    let mut sorted = runs.clone();
    sorted.sort_by(f64::total_cmp);
    format!(
        "median {:.2} x (min {:.2}, max {:.2}; each: {})",
        percentile(&sorted, 0.5),
        sorted[0],
        sorted[sorted.len() - 1],
        runs.iter()
            .map(|r| format!("{r:.2}"))
            .collect::<Vec<_>>()
            .join(" ")
    )
}

fn mib_s(rate: f64) -> f64 {
    rate / MIB as f64
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let size_mib: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(256);
    let big_mib: u64 = args.next().map(|a| a.parse()).transpose()?.unwrap_or(2048);
    let many: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(64);
    let rounds: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(5);
    anyhow::ensure!(rounds > 0, "ROUNDS must be at least 1");
    outlast_e2e::use_release_binary()?;

    let source = Source::new(size_mib * MIB);
    // WebSocket chunk frames must fit in a message: allow 1 MiB chunks plus their header.
    let gw = Gateway::start(&[
        "--upload-max-chunk-bytes",
        &(16 * MIB).to_string(),
        "--max-message-bytes",
        &(2 * MIB).to_string(),
    ])
    .await?;
    let dir = gw.data_dir.clone();
    // The shared virtual disk's own rate swings several-fold within seconds, so every
    // transport run is bracketed by two runs of the disk alone, and its ratio is to the
    // geometric mean of those two: disk, tus, disk, WebSocket, disk, tus, ...
    let mut disks = vec![disk_probe(&dir, &source)?];
    let mut tus = Vec::with_capacity(rounds);
    let mut ws = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let rate = tus_upload(&gw, &source, 8 << 20).await?;
        disks.push(disk_probe(&dir, &source)?);
        tus.push(Bracketed::new(rate, &disks));
        let rate = ws_upload(&gw, &source, 1 << 20).await?;
        disks.push(disk_probe(&dir, &source)?);
        ws.push(Bracketed::new(rate, &disks));
    }
    drop(gw);
    println!(
        "upload-bench: {size_mib} MiB per run, loopback, {rounds} rounds, each run between two of the disk alone"
    );
    for (name, rates) in [
        (
            "sequential write + fsync (8 MiB writes, one fsync):",
            disks.iter().map(|d| d.once).collect::<Vec<_>>(),
        ),
        (
            "8 MiB write + fsync each (tus' commit points):     ",
            disks.iter().map(|d| d.each).collect(),
        ),
    ] {
        let mut sorted = rates;
        sorted.sort_by(f64::total_cmp);
        println!(
            "  disk alone, {name} median {:>7.1} MiB/s (min {:.1}, max {:.1})",
            mib_s(percentile(&sorted, 0.5)),
            mib_s(sorted[0]),
            mib_s(sorted[sorted.len() - 1])
        );
    }
    for (name, runs) in [
        ("tus, 8 MiB PATCH bodies:      ", &tus),
        ("WebSocket, 1 MiB chunk frames:", &ws),
    ] {
        let mut rates: Vec<f64> = runs.iter().map(|r| r.rate).collect();
        rates.sort_by(f64::total_cmp);
        println!(
            "  {name} median {:>7.1} MiB/s",
            mib_s(percentile(&rates, 0.5))
        );
        println!(
            "    against one fsync at the end (the goal's baseline): {}",
            ratio_summary(runs.iter().map(|r| r.ratio))
        );
        println!(
            "    against an fsync per 8 MiB (tus' commit points):   {}",
            ratio_summary(runs.iter().map(|r| r.ratio_each))
        );
    }

    if many > 0 {
        // Offsets of many uploads at once: every PATCH fsyncs its upload's data file, then
        // commits the upload's record; the records of many uploads share a commit.
        const PATCHES: usize = 16;
        const BODY: usize = 256 << 10;
        let limit = (many + 8).to_string();
        let gw = Gateway::start(&["--upload-max-open-per-owner", &limit]).await?;
        let dir = gw.data_dir.clone();
        let api = outlast_e2e::Api::new(gw.http());
        let series = "outlast_upload_record_commits_total";
        let disk = disk_fsync_rate(&dir, BODY, 3.0)?;
        let before = api.counter(series).await?;
        let (rate, latencies) = many_uploads(&gw, many, PATCHES, BODY).await?;
        let commits = api.counter(series).await? - before;
        drop(gw);
        println!(
            "  {many} tus uploads at once, {PATCHES} PATCHes of {} KiB each:",
            BODY >> 10
        );
        println!(
            "    disk, {} KiB appends each + fsync: {disk:>8.0} /s",
            BODY >> 10
        );
        println!(
            "    PATCHes committed:                {rate:>8.0} /s  = {:.2} x disk; p50 {:.0} ms, p99 {:.0} ms",
            rate / disk,
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99)
        );
        // The creates commit too (one record each); a gateway without the counter shows 0.
        let writes = latencies.len() + many;
        if commits > 0 {
            println!(
                "    record writes per commit:          {:>8.2} ({writes} writes in {commits} commits)",
                writes as f64 / commits as f64
            );
        } else {
            println!(
                "    record writes per commit:               n/a (this gateway has no {series})"
            );
        }
    }

    // Peak memory: a fresh gateway per size, VmHWM read after the upload.
    for mib in [256, big_mib] {
        let gw = Gateway::start(&["--upload-max-chunk-bytes", &(16 * MIB).to_string()]).await?;
        let pid = gw.pid().context("gateway pid")?;
        let idle = vm_hwm_kib(pid);
        let source = Source::new(mib * MIB);
        let rate = tus_upload(&gw, &source, 8 << 20).await?;
        let peak = vm_hwm_kib(pid);
        println!(
            "  peak RSS (VmHWM), tus upload of {mib:>5} MiB: {:>6.1} MiB (idle {:.1} MiB; {:.0} MiB/s)",
            peak as f64 / 1024.0,
            idle as f64 / 1024.0,
            mib_s(rate)
        );
    }
    Ok(())
}
