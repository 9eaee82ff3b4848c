//! End-to-end tests of `outlast-upload` against the real gateway binary: preparation, resume
//! after SIGINT and kill -9 (bytes counted at the server), cuts and a gateway restart, output
//! modes (pty bars, plain, NDJSON) and every exit status.

mod harness;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::Context;
use harness::{Gateway, Proxy, run, spawn};
use nix::sys::signal::Signal;

const LONG: Duration = Duration::from_secs(240);
const FAST_WF: &str = r#"{"steps": 2, "step_ms": 20}"#;

async fn gateway() -> anyhow::Result<Gateway> {
    Gateway::start(&["--demo-concurrency", "4"]).await
}

fn s(p: &std::path::Path) -> String {
    p.display().to_string()
}

fn by_event<'a>(events: &'a [serde_json::Value], name: &str) -> Vec<&'a serde_json::Value> {
    events.iter().filter(|e| e["event"] == name).collect()
}

#[tokio::test]
async fn exit_2_for_usage_errors_and_help_documents_statuses() -> anyhow::Result<()> {
    let (code, _) = run(&["--no-such-flag", "x"], LONG).await?;
    assert_eq!(code, Some(2), "bad flag");
    let (code, _) = run(&["/definitely/not/here"], LONG).await?;
    assert_eq!(code, Some(2), "missing path");
    let (code, _) = run(&["--url", "ftp://x", "."], LONG).await?;
    assert_eq!(code, Some(2), "bad url");
    let (code, help) = run(&["--help"], LONG).await?;
    assert_eq!(code, Some(0));
    let help = help.join("\n");
    for needle in [
        "EXIT STATUS",
        "130",
        "OUTLAST_URL",
        "OUTLAST_TOKEN",
        "--bwlimit",
        "--transport",
        "EXAMPLES",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
    Ok(())
}

#[tokio::test]
async fn exit_3_when_the_gateway_stays_unreachable() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let input = tmp.path().join("a.png");
    harness::smooth_png(&input, 64, 64)?;
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let out = tmp.path().join("out");
    let started = std::time::Instant::now();
    let (code, lines) = run(
        &[
            "--url",
            &url,
            "--retry-for",
            "1s",
            "--out",
            &s(&out),
            "--json",
            &s(&input),
        ],
        LONG,
    )
    .await?;
    assert_eq!(code, Some(3), "{lines:?}");
    assert!(started.elapsed() < Duration::from_secs(30));
    Ok(())
}

#[tokio::test]
async fn exit_1_when_a_job_fails_and_json_events_parse() -> anyhow::Result<()> {
    let gw = gateway().await?;
    let tmp = tempfile::tempdir()?;
    let input = tmp.path().join("a.png");
    harness::smooth_png(&input, 64, 64)?;
    let wf = harness::workflow(
        tmp.path(),
        r#"{"steps": 3, "step_ms": 10, "fail_at_step": 2}"#,
    )?;
    let out = tmp.path().join("out");
    let (code, lines) = run(
        &[
            "--url",
            &gw.http(),
            "--workflow",
            &wf,
            "--out",
            &s(&out),
            "--json",
            &s(&input),
        ],
        LONG,
    )
    .await?;
    assert_eq!(code, Some(1), "{lines:?}");
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l))
        .collect::<Result<_, _>>()?;
    let done = by_event(&events, "job.done");
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["state"], "failed");
    Ok(())
}

#[tokio::test]
async fn exit_4_when_an_output_fails_verification_then_a_rerun_repairs_it() -> anyhow::Result<()> {
    let gw = gateway().await?;
    let tmp = tempfile::tempdir()?;
    let input = tmp.path().join("pic.png");
    harness::smooth_png(&input, 64, 64)?;
    let wf = harness::workflow(tmp.path(), FAST_WF)?;
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out)?;
    // A partial download that does not match the output: the Range resume appends to it.
    std::fs::write(out.join("pic.result.png.part"), vec![0x55u8; 100])?;
    let args = [
        "--url",
        &gw.http(),
        "--workflow",
        &wf,
        "--out",
        &s(&out),
        "--json",
        &s(&input),
    ];
    let (code, lines) = run(&args, LONG).await?;
    assert_eq!(code, Some(4), "{lines:?}");
    assert!(
        lines
            .iter()
            .any(|l| l.contains("output.failed") && l.contains("checksum_mismatch"))
    );
    assert!(!out.join("pic.result.png").exists());
    let (code, lines) = run(&args, LONG).await?;
    assert_eq!(code, Some(0), "{lines:?}");
    let saved = std::fs::read(out.join("pic.result.png"))?;
    assert!(image::load_from_memory(&saved).is_ok());
    Ok(())
}

/// The photos of the mixed folder: one 12 MP JPEG with EXIF orientation 6 and a PNG.
fn photo_folder(dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let folder = dir.join("mixed");
    std::fs::create_dir_all(&folder)?;
    harness::jpeg_with_orientation(&folder.join("camera.jpg"), 4000, 3000, 6)?;
    harness::smooth_png(&folder.join("drawing.png"), 800, 600)?;
    std::fs::write(folder.join(".DS_Store"), b"hidden, never sent")?;
    Ok(folder)
}

#[tokio::test]
async fn mixed_folder_photos_arrive_downscaled_upright_stripped_and_outputs_verify()
-> anyhow::Result<()> {
    let gw = gateway().await?;
    let tmp = tempfile::tempdir()?;
    let folder = photo_folder(tmp.path())?;
    let wf = harness::workflow(tmp.path(), FAST_WF)?;
    let out = tmp.path().join("out");
    let (code, lines) = run(
        &[
            "--url",
            &gw.http(),
            "--workflow",
            &wf,
            "--out",
            &s(&out),
            "--json",
            &s(&folder),
        ],
        LONG,
    )
    .await?;
    assert_eq!(code, Some(0), "{lines:?}");
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l))
        .collect::<Result<_, _>>()?;
    let uploads: HashMap<String, String> = by_event(&events, "upload.done")
        .iter()
        .map(|e| {
            (
                e["file"].as_str().unwrap_or("").to_string(),
                e["upload_id"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(uploads.len(), 2, "hidden file skipped: {uploads:?}");
    // The JPEG as stored by the gateway: upright (portrait), at most 2048 px, no EXIF.
    let stored = harness::stored_upload(&gw, &uploads["mixed/camera.jpg"])?;
    let original_len = std::fs::metadata(folder.join("camera.jpg"))?.len();
    assert!((stored.len() as u64) < original_len);
    let img = image::load_from_memory(&stored)?.to_rgb8();
    assert_eq!(
        (img.width(), img.height()),
        (1536, 2048),
        "rotated and downscaled"
    );
    assert!(
        !stored.windows(6).any(|w| w == b"Exif\0\0"),
        "EXIF stripped"
    );
    assert!(
        !stored.windows(9).any(|w| w == b"SecretCam"),
        "camera model stripped"
    );
    // Orientation 6: the stored top (red) is now on the right edge.
    let right = img.get_pixel(img.width() - 5, img.height() / 2);
    let left = img.get_pixel(5, img.height() / 2);
    assert!(right[0] > 180 && right[1] < 80, "right edge red: {right:?}");
    assert!(left[0] < 240 || left[1] > 60, "left edge not red: {left:?}");
    // Outputs: named after the input, verified.
    for (name, job_file) in [
        ("mixed/camera.result.png", "mixed/camera.jpg"),
        ("mixed/drawing.result.png", "mixed/drawing.png"),
    ] {
        let bytes = std::fs::read(out.join(name)).with_context(|| name.to_string())?;
        let saved = by_event(&events, "output.saved");
        let ev = saved
            .iter()
            .find(|e| e["file"] == job_file)
            .context("output.saved")?;
        use sha2::Digest;
        assert_eq!(
            ev["sha256"].as_str(),
            Some(hex::encode(sha2::Sha256::digest(&bytes)).as_str())
        );
    }
    Ok(())
}

/// Submission follows the transport: with tus the jobs go in `POST /v1/jobs/batch`; with ws
/// (the default) in `submit_batch` messages, so no HTTP submission crosses the wire. The
/// second run (`--fresh`: new jobs, every upload deduplicated, so all are ready at once)
/// submits all four over the WebSocket, each created once.
#[tokio::test]
async fn jobs_go_in_a_websocket_batch_with_ws_and_an_http_batch_with_tus() -> anyhow::Result<()> {
    let gw = gateway().await?;
    let proxy = Proxy::start(gw.addr, 0).await?;
    let tmp = tempfile::tempdir()?;
    let folder = tmp.path().join("in");
    std::fs::create_dir_all(&folder)?;
    for i in 0..4 {
        harness::noisy_png(&folder.join(format!("p{i}.png")), 64, 64, i + 40)?;
    }
    let wf = harness::workflow(tmp.path(), FAST_WF)?;
    let out = tmp.path().join("out");
    let url = proxy.url();
    let mut expected_jobs = 0.0;
    for transport in ["tus", "ws"] {
        let before = proxy.http_submits.load(std::sync::atomic::Ordering::SeqCst);
        let (code, lines) = run(
            &[
                "--url",
                &url,
                "--workflow",
                &wf,
                "--out",
                &s(&out),
                "--json",
                "--fresh",
                "--transport",
                transport,
                &s(&folder),
            ],
            LONG,
        )
        .await?;
        assert_eq!(code, Some(0), "{transport}: {lines:?}");
        let events: Vec<serde_json::Value> = lines
            .iter()
            .map(|l| serde_json::from_str(l))
            .collect::<Result<_, _>>()?;
        let submitted = by_event(&events, "job.submitted");
        assert_eq!(submitted.len(), 4, "{transport}: {lines:?}");
        assert!(
            submitted.iter().all(|e| e["created"] == true),
            "{submitted:?}"
        );
        assert_eq!(by_event(&events, "output.saved").len(), 4, "{transport}");
        let http = proxy.http_submits.load(std::sync::atomic::Ordering::SeqCst) - before;
        match transport {
            "ws" => assert_eq!(http, 0, "ws: no job went over HTTP"),
            _ => assert!(
                (1..=4).contains(&http),
                "tus: {http} HTTP submissions for 4 jobs"
            ),
        }
        expected_jobs += 4.0;
        assert_eq!(
            harness::metric(&gw, "outlast_jobs_submitted_total").await?,
            expected_jobs,
            "{transport}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn mixed_folder_non_image_files_get_jobs_too() -> anyhow::Result<()> {
    let gw = gateway().await?;
    let tmp = tempfile::tempdir()?;
    let folder = photo_folder(tmp.path())?;
    harness::wav(&folder.join("voice.wav"), 16000)?;
    std::fs::write(folder.join("notes.txt"), b"some notes\n")?;
    let wf = harness::workflow(tmp.path(), FAST_WF)?;
    let out = tmp.path().join("out");
    let (code, lines) = run(
        &[
            "--url",
            &gw.http(),
            "--workflow",
            &wf,
            "--out",
            &s(&out),
            "--json",
            &s(&folder),
        ],
        LONG,
    )
    .await?;
    assert_eq!(code, Some(0), "{lines:?}");
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l))
        .collect::<Result<_, _>>()?;
    // Non-photos are sent as they are.
    let wav_len = std::fs::metadata(folder.join("voice.wav"))?.len();
    let wav = by_event(&events, "upload.done")
        .into_iter()
        .find(|e| e["file"] == "mixed/voice.wav")
        .context("wav")?;
    assert_eq!(wav["size"].as_u64(), Some(wav_len));
    assert_eq!(by_event(&events, "output.saved").len(), 4);
    assert!(out.join("mixed/voice.result.png").exists());
    assert!(out.join("mixed/notes.result.png").exists());
    Ok(())
}

/// Three incompressible PNGs sent unchanged (`--preset original`), ~770 KB each.
/// Bytes a resumed run may send besides upload data: requests, handshakes, frame headers.
const OVERHEAD: u64 = 64 << 10;

fn slow_inputs(dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let folder = dir.join("slow");
    std::fs::create_dir_all(&folder)?;
    for i in 0..3u64 {
        harness::noisy_png(&folder.join(format!("n{i}.png")), 512, 500, i + 1)?;
    }
    Ok(folder)
}

/// Interrupts a run (SIGINT or SIGKILL) mid-upload through a throttled proxy, then runs the
/// same command again: every upload's `bytes_written` equals its length (nothing written twice),
/// no job is created twice, outputs verify.
async fn interrupted_then_resumed(sig: Signal, transport: &str) -> anyhow::Result<()> {
    let gw = gateway().await?;
    let proxy = Proxy::start(gw.addr, 400_000).await?;
    let tmp = tempfile::tempdir()?;
    let folder = slow_inputs(tmp.path())?;
    let wf = harness::workflow(tmp.path(), FAST_WF)?;
    let out = tmp.path().join("out");
    let url = proxy.url();
    let args = [
        "--url",
        &url,
        "--workflow",
        &wf,
        "--out",
        &s(&out),
        "--json",
        "--preset",
        "original",
        "--transport",
        transport,
        &s(&folder),
    ];
    let mut first = spawn(&args)?;
    first
        .until(LONG, |l| {
            l.contains("\"upload.progress\"")
                && serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
                    v["offset"].as_u64().is_some_and(|o| o > 200_000) && v["offset"] != v["length"]
                })
        })
        .await?;
    first.signal(sig)?;
    let status = first.finish(LONG).await?;
    let first_events = first.events();
    if sig == Signal::SIGINT {
        assert_eq!(status.code(), Some(130));
        assert!(!by_event(&first_events, "run.interrupted").is_empty());
    } else {
        assert_eq!(status.code(), None, "killed");
    }
    // The killed run's last bytes may still be on their way (kernel buffers, the throttle):
    // wait until the gateway has closed (and committed) its connections, so that what the
    // proxy counts from here on is the second run's alone.
    // (With tus no WebSocket was opened and the gauge is absent: nothing to wait for.)
    let deadline = tokio::time::Instant::now() + LONG;
    while harness::metric(&gw, "outlast_ws_connections").await? > 0.0 {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "sessions stay open");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent_first = proxy.up_bytes.load(std::sync::atomic::Ordering::SeqCst);
    // The highest acknowledged (durable) offset the first run reported per upload.
    let mut acked_first: HashMap<String, u64> = HashMap::new();
    for e in by_event(&first_events, "upload.progress") {
        let id = e["upload_id"].as_str().context("id")?.to_owned();
        let offset = e["offset"].as_u64().context("offset")?;
        let seen = acked_first.entry(id).or_default();
        *seen = (*seen).max(offset);
    }
    let (code, lines) = run(&args, LONG).await?;
    assert_eq!(code, Some(0), "{lines:?}");
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l))
        .collect::<Result<_, _>>()?;
    let total: u64 = std::fs::read_dir(&folder)?
        .map(|e| {
            e.map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
                .unwrap_or(0)
        })
        .sum();
    let sent_second = proxy.up_bytes.load(std::sync::atomic::Ordering::SeqCst) - sent_first;
    // Where the second run resumed each upload: its first progress event carries the offset
    // the gateway answered to `upload_resume` / HEAD (durable, measured at the server).
    let mut resumed_at: HashMap<String, u64> = HashMap::new();
    for e in by_event(&events, "upload.progress") {
        let id = e["upload_id"].as_str().context("id")?.to_owned();
        resumed_at
            .entry(id)
            .or_insert(e["offset"].as_u64().context("offset")?);
    }
    let mut remaining = 0u64;
    for e in by_event(&events, "upload.done") {
        let id = e["upload_id"].as_str().context("id")?;
        let info = harness::upload_info(&gw, id).await?;
        // Measured at the server: each upload's bytes were written exactly once.
        assert_eq!(info["state"], "complete");
        assert_eq!(info["bytes_written"], info["length"], "{info}");
        let length = info["length"].as_u64().context("length")?;
        let from = resumed_at.get(id).copied().unwrap_or(length);
        // No acknowledged byte is sent twice: the second run starts at or after every offset
        // the gateway acknowledged to the first. Only the unacknowledged window (bytes in
        // flight at the kill, e.g. a frame cut in half) may be sent again.
        let acked = acked_first.get(id).copied().unwrap_or(0);
        assert!(
            from >= acked,
            "{id}: resumed at {from}, below the acknowledged {acked}"
        );
        // And the second run sent at most what the gateway said it lacked (less when a tus
        // HEAD answered before the interrupted PATCH was committed: the 409 re-syncs), and
        // never a byte the first run had acknowledged.
        let sent = e["sent_bytes"].as_u64().context("sent_bytes")?;
        assert!(
            sent <= length - from,
            "{id}: resumed at {from} of {length}: {e}"
        );
        assert!(
            length - sent >= acked,
            "{id}: sent {sent} of {length}, the first run had {acked} acknowledged"
        );
        remaining += sent;
    }
    assert!(
        remaining < total,
        "the first run made {} durable",
        total - remaining
    );
    // On the wire: at least the data the gateway took, at most everything the first run had
    // not had acknowledged (the unacknowledged window may go again: a frame cut in half, or
    // a tus PATCH from a HEAD offset older than the interrupted PATCH's commit, answered 409)
    // plus protocol overhead (HTTP requests, handshakes, frame headers).
    let unacked: u64 = total - acked_first.values().sum::<u64>();
    assert!(
        (remaining..unacked + OVERHEAD).contains(&sent_second),
        "second run sent {sent_second} bytes on the wire for {remaining} data bytes; \
         {unacked} of {total} were not acknowledged to the first run"
    );
    // One job per file, never two.
    assert_eq!(
        harness::metric(&gw, "outlast_jobs_submitted_total").await?,
        3.0
    );
    let ids: HashSet<&str> = by_event(&events, "job.done")
        .iter()
        .filter_map(|e| e["job_id"].as_str())
        .collect();
    assert_eq!(ids.len(), 3);
    assert_eq!(by_event(&events, "output.saved").len(), 3);
    Ok(())
}

#[tokio::test]
async fn sigint_mid_upload_then_same_command_resumes_without_resending() -> anyhow::Result<()> {
    interrupted_then_resumed(Signal::SIGINT, "ws").await
}

#[tokio::test]
async fn kill9_mid_upload_then_same_command_resumes_without_resending() -> anyhow::Result<()> {
    interrupted_then_resumed(Signal::SIGKILL, "ws").await
}

#[tokio::test]
async fn sigint_mid_tus_upload_resumes_too() -> anyhow::Result<()> {
    interrupted_then_resumed(Signal::SIGINT, "tus").await
}

#[tokio::test]
async fn exit_130_at_once_on_a_second_sigint() -> anyhow::Result<()> {
    let gw = gateway().await?;
    let proxy = Proxy::start(gw.addr, 100_000).await?;
    let tmp = tempfile::tempdir()?;
    let folder = slow_inputs(tmp.path())?;
    let out = tmp.path().join("out");
    let url = proxy.url();
    let mut r = spawn(&[
        "--url",
        &url,
        "--out",
        &s(&out),
        "--json",
        "--preset",
        "original",
        &s(&folder),
    ])?;
    r.until(LONG, |l| l.contains("\"upload.progress\"")).await?;
    r.signal(Signal::SIGINT)?;
    r.signal(Signal::SIGINT)?;
    let status = r.finish(Duration::from_secs(20)).await?;
    assert_eq!(status.code(), Some(130));
    Ok(())
}

#[tokio::test]
async fn random_cuts_and_a_gateway_restart_during_the_wait_still_exit_0() -> anyhow::Result<()> {
    let mut gw = gateway().await?;
    let proxy = Proxy::start(gw.addr, 0).await?;
    let tmp = tempfile::tempdir()?;
    let folder = tmp.path().join("in");
    std::fs::create_dir_all(&folder)?;
    for i in 0..4 {
        harness::noisy_png(&folder.join(format!("p{i}.png")), 300, 300, i + 10)?;
    }
    let wf = harness::workflow(tmp.path(), r#"{"steps": 30, "step_ms": 100}"#)?;
    let out = tmp.path().join("out");
    let url = proxy.url();
    let mut r = spawn(&[
        "--url",
        &url,
        "--workflow",
        &wf,
        "--out",
        &s(&out),
        "--json",
        "--preset",
        "original",
        &s(&folder),
    ])?;
    let cutter = async {
        // Cut every connection at pseudo-random intervals of 150..650 ms.
        let mut x = 7u64;
        loop {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
            tokio::time::sleep(Duration::from_millis(150 + (x >> 33) % 500)).await;
            proxy.cut_all();
        }
    };
    let body = async {
        r.until(LONG, |l| l.contains("\"job.started\"")).await?;
        gw.restart().await?;
        r.finish(LONG).await
    };
    let status = tokio::select! {
        s = body => s?,
        () = cutter => unreachable!(),
    };
    assert_eq!(status.code(), Some(0), "{:?}", r.seen);
    let events = r.events();
    assert_eq!(by_event(&events, "output.saved").len(), 4);
    assert!(
        !by_event(&events, "connection.retry").is_empty(),
        "the cuts were noticed"
    );
    Ok(())
}

#[tokio::test]
async fn output_modes_pty_bars_plain_lines_and_ndjson() -> anyhow::Result<()> {
    let gw = gateway().await?;
    let proxy = Proxy::start(gw.addr, 300_000).await?;
    let tmp = tempfile::tempdir()?;
    let folder = slow_inputs(tmp.path())?;
    let wf = harness::workflow(tmp.path(), r#"{"steps": 4, "step_ms": 100}"#)?;
    let url = proxy.url();
    // Piped: plain lines only.
    let out1 = tmp.path().join("o1");
    let (code, lines) = run(
        &[
            "--url",
            &url,
            "--workflow",
            &wf,
            "--out",
            &s(&out1),
            &s(&folder),
        ],
        LONG,
    )
    .await?;
    assert_eq!(code, Some(0), "{lines:?}");
    for l in &lines {
        assert!(
            !l.contains('\r') && !l.contains('\u{1b}'),
            "control characters in {l:?}"
        );
    }
    assert!(lines.iter().any(|l| l.starts_with("summary:")));
    assert!(lines.iter().any(|l| l.starts_with("saved ")));
    // --json: every line parses, the documented events appear.
    let out2 = tmp.path().join("o2");
    let (code, lines) = run(
        &[
            "--url",
            &url,
            "--workflow",
            &wf,
            "--out",
            &s(&out2),
            "--json",
            "--fresh",
            "--preset",
            "eco",
            &s(&folder),
        ],
        LONG,
    )
    .await?;
    assert_eq!(code, Some(0), "{lines:?}");
    let events: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l))
        .collect::<Result<_, _>>()?;
    for name in [
        "run.start",
        "file.prepared",
        "upload.progress",
        "upload.done",
        "job.submitted",
        "job.queued",
        "job.started",
        "job.progress",
        "job.done",
        "output.saved",
        "run.done",
    ] {
        assert!(
            !by_event(&events, name).is_empty(),
            "no {name} in {lines:?}"
        );
    }
    // Under a pseudo-terminal (script(1)): indicatif draws bars with cursor control.
    let out3 = tmp.path().join("o3");
    let cmd = format!(
        "{} --url {url} --workflow {wf} --out {} --fresh --preset high {}",
        harness::cli(),
        s(&out3),
        s(&folder)
    );
    let output = tokio::process::Command::new("script")
        .args(["-qefc", &cmd, "/dev/null"])
        .env("TERM", "xterm-256color")
        .env("COLUMNS", "120")
        .output()
        .await?;
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains('\u{1b}'),
        "no escape sequences under a pty: {text}"
    );
    assert!(text.contains("total"), "no total bar: {text}");
    assert!(text.contains("B/s"), "no rate: {text}");
    Ok(())
}
