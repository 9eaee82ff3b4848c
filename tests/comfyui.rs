//! The `comfyui` backend against the stand-in ComfyUI server (tests/standin), driving the real
//! gateway binary with real clients: success with progress, previews and outputs; typed
//! validation and runtime failures; cancel; the stand-in dropping its WebSocket or stalling;
//! `kill -9` of the gateway; a ComfyUI restart; a pool of two servers; the result cache.

#[path = "uploads_common.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use common::{Tus, id_of};
use outlast_e2e::Gateway;
use outlast_e2e::standin::StandIn;
use outlast_e2e::ws::Client;
use outlast_protocol::v1::ClientMsg;
use outlast_protocol::{Codec, EventKind, JobEvent, Seq};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);

/// A text-to-image graph of real ComfyUI core nodes (the stand-in implements them).
fn txt2img(steps: u32, seed: u64) -> Value {
    json!({
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "standin.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a red fox in the snow", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "_meta": {"title": "Sampler"}, "inputs": {
            "seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1.0, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "outlast/fox"}}
    })
}

fn job(workflow: Value) -> Value {
    json!({"backend": "comfyui", "workflow": workflow})
}

async fn gateway(standins: &[&StandIn], extra: &[&str]) -> anyhow::Result<Gateway> {
    let mut args: Vec<String> = Vec::new();
    for s in standins {
        args.push("--comfyui".into());
        args.push(s.url());
    }
    // Short intervals so that gaps are noticed quickly; a test may set its own.
    for (flag, value) in [
        ("--comfyui-poll-interval", "300ms"),
        ("--comfyui-ping-interval", "500ms"),
        ("--comfyui-retry-interval", "300ms"),
        ("--comfyui-preview-interval", "0s"),
    ] {
        if !extra.contains(&flag) {
            args.push(flag.into());
            args.push(value.into());
        }
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Gateway::start_behind_edge(&refs).await
}

/// Long-polls until `pick` finds an event of the job; returns it (as JSON).
async fn wait_event(
    gw: &Gateway,
    job: &str,
    within: Duration,
    pick: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let e = gw
        .api()
        .wait_for_event(job, within, |e| {
            serde_json::to_value(e).is_ok_and(|v| pick(&v))
        })
        .await?;
    Ok(serde_json::to_value(e)?)
}

/// Waits for the job to end; returns its whole stored log as JSON (wire format).
async fn finished(gw: &Gateway, job: &str, within: Duration) -> anyhow::Result<Vec<Value>> {
    gw.api().follow_to_end(job, within).await?;
    gw.full_log(job).await
}

fn count(log: &[Value], kind: &str) -> usize {
    log.iter().filter(|e| e["type"] == kind).count()
}

fn outputs(log: &[Value]) -> Vec<(String, String)> {
    log.iter()
        .filter(|e| e["type"] == "output")
        .map(|e| {
            (
                e["name"].as_str().unwrap_or("").to_owned(),
                e["sha256"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

async fn download(gw: &Gateway, job: &str, name: &str) -> anyhow::Result<Vec<u8>> {
    gw.api().download(job, name).await
}

/// The stand-in's history entry for every prompt it has.
async fn standin_history(s: &StandIn) -> anyhow::Result<serde_json::Map<String, Value>> {
    let v: Value = reqwest::get(format!("{}/history", s.url()))
        .await?
        .json()
        .await?;
    v.as_object().cloned().context("history object")
}

/// How many prompts the stand-in's worker has taken.
async fn executed(s: &StandIn) -> anyhow::Result<usize> {
    Ok(s.stats().await?["executed_prompts"]
        .as_array()
        .map_or(0, Vec::len))
}

/// Cancels a job over HTTP.
async fn cancel(gw: &Gateway, id: &str) -> anyhow::Result<()> {
    gw.api().cancel(id).await.map(drop)
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 4) as u8, (y * 4) as u8, 200])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("png encodes");
    out.into_inner()
}

#[tokio::test]
async fn a_workflow_runs_with_node_progress_previews_and_downloadable_outputs() -> anyhow::Result<()>
{
    let comfy = StandIn::start(&["--step-ms", "40", "--preview-method", "auto"]).await?;
    // Calm intervals: no reconnect happens, so every step's progress must arrive.
    let gw = gateway(
        &[&comfy],
        &[
            "--comfyui-preview-max-edge",
            "32",
            "--comfyui-poll-interval",
            "10s",
            "--comfyui-ping-interval",
            "10s",
        ],
    )
    .await?;
    let id = gw.submit(job(txt2img(8, 42))).await?;
    let log = finished(&gw, &id, T).await?;
    assert_eq!(
        log.last().map(|e| e["type"].clone()),
        Some(json!("completed")),
        "{log:?}"
    );
    assert_eq!(log.last().map(|e| e["cached"].clone()), Some(json!(false)));

    // Node starts carry the node's title; sampler steps count 1..=8 of 8 under its title.
    let labels: Vec<&str> = log
        .iter()
        .filter(|e| e["type"] == "progress" && e["max"] == 0)
        .filter_map(|e| e["label"].as_str())
        .collect();
    for title in ["Sampler", "VAEDecode", "SaveImage"] {
        assert!(
            labels.contains(&title),
            "no node start for {title}: {labels:?}"
        );
    }
    let steps: Vec<u64> = log
        .iter()
        .filter(|e| e["type"] == "progress" && e["max"] == 8)
        .inspect(|e| assert_eq!(e["label"], "Sampler"))
        .filter_map(|e| e["value"].as_u64())
        .collect();
    assert_eq!(steps, (1..=8).collect::<Vec<_>>());

    // Previews arrive as JPEGs downscaled to the configured bound.
    let previews: Vec<&Value> = log.iter().filter(|e| e["type"] == "preview").collect();
    assert!(!previews.is_empty(), "no previews in {log:?}");
    for p in &previews {
        assert_eq!(p["mime"], "image/jpeg");
        let bytes = B64.decode(p["data"].as_str().context("base64 data")?)?;
        let img = image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg)?;
        assert!(
            img.width().max(img.height()) <= 32,
            "{}x{}",
            img.width(),
            img.height()
        );
    }

    // One output, downloadable, byte-identical to what ComfyUI saved.
    let outs = outputs(&log);
    assert_eq!(outs.len(), 1, "{outs:?}");
    let (name, sha) = &outs[0];
    assert_eq!(name, "fox_00001_.png");
    let ours = download(&gw, &id, name).await?;
    assert_eq!(&sha256_hex(&ours), sha);
    let theirs = reqwest::get(format!(
        "{}/view?filename={name}&subfolder=outlast&type=output",
        comfy.url()
    ))
    .await?
    .bytes()
    .await?;
    assert_eq!(ours, theirs.to_vec());
    image::load_from_memory(&ours).context("the output is an image")?;
    Ok(())
}

#[tokio::test]
async fn uploads_replace_placeholders_and_reach_comfyui() -> anyhow::Result<()> {
    let comfy = StandIn::start(&["--step-ms", "10"]).await?;
    let gw = gateway(&[&comfy], &[]).await?;
    let tus = Tus::new(&gw.http());
    let photo = png(32, 16);
    let upload = id_of(&tus.upload(&photo, 1000).await?).to_string();
    let workflow = json!({
        "1": {"class_type": "LoadImage", "inputs": {"image": {"$input": "photo"}}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}}
    });
    // A placeholder naming no input, and an input no node uses, are refused at submission.
    for bad in [
        json!({"backend": "comfyui", "workflow": workflow, "inputs": {}}),
        json!({"backend": "comfyui", "workflow": txt2img(2, 1), "inputs": {"photo": upload}}),
    ] {
        let r = reqwest::Client::new()
            .post(format!("{}/v1/jobs", gw.http()))
            .json(&bad)
            .send()
            .await?;
        assert_eq!(r.status(), 400);
        let body: Value = r.json().await?;
        assert_eq!(body["code"], "invalid_request", "{body}");
        assert!(
            body["message"].as_str().unwrap_or("").contains("photo"),
            "{body}"
        );
    }
    let id = gw
        .submit(json!({"backend": "comfyui", "workflow": workflow, "inputs": {"photo": upload}}))
        .await?;
    let log = finished(&gw, &id, T).await?;
    assert_eq!(
        log.last().map(|e| e["type"].clone()),
        Some(json!("completed")),
        "{log:?}"
    );
    let (name, _) = outputs(&log).pop().context("an output")?;
    let out = image::load_from_memory(&download(&gw, &id, &name).await?)?.to_rgb8();
    let input = image::load_from_memory(&photo)?.to_rgb8();
    assert_eq!(out.dimensions(), (32, 16));
    for (x, y) in [(0, 0), (5, 7), (31, 15)] {
        let (a, b) = (input.get_pixel(x, y), out.get_pixel(x, y));
        for c in 0..3 {
            assert_eq!(b[c], 255 - a[c], "pixel ({x},{y}) is inverted");
        }
    }
    Ok(())
}

#[tokio::test]
async fn validation_and_runtime_errors_are_typed_failures_naming_the_node() -> anyhow::Result<()> {
    let comfy = StandIn::start(&["--step-ms", "10"]).await?;
    let gw = gateway(&[&comfy], &[]).await?;

    let bad = json!({
        "1": {"class_type": "EmptyImage", "_meta": {"title": "Canvas"}, "inputs": {"width": 0, "height": 64, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}
    });
    let id = gw.submit(job(bad)).await?;
    let log = finished(&gw, &id, T).await?;
    assert_failed_at(
        &log,
        "invalid_workflow",
        ("1", "EmptyImage", "Canvas"),
        &["node \"1\" (EmptyImage \"Canvas\")", "width"],
    )?;

    comfy
        .fail_next("KSampler", "CUDA out of memory. Tried to allocate 2.00 GiB")
        .await?;
    let id = gw.submit(job(txt2img(4, 7))).await?;
    let log = finished(&gw, &id, T).await?;
    assert_failed_at(
        &log,
        "backend_error",
        ("3", "KSampler", "Sampler"),
        &[
            "node \"3\" (KSampler \"Sampler\") failed",
            "CUDA out of memory",
        ],
    )?;
    assert_eq!(count(&log, "output"), 0);
    Ok(())
}

/// The log ends in a failure with `code` that names the node (id, class, title) in its detail
/// and, with every one of `says`, in its message.
fn assert_failed_at(
    log: &[Value],
    code: &str,
    (id, class, title): (&str, &str, &str),
    says: &[&str],
) -> anyhow::Result<()> {
    let f = log.last().context("terminal")?;
    assert_eq!(f["type"], "failed", "{f}");
    assert_eq!(f["code"], code, "{f}");
    assert_eq!(f["detail"]["node_id"], id, "{f}");
    assert_eq!(f["detail"]["node_type"], class, "{f}");
    assert_eq!(f["detail"]["node_title"], title, "{f}");
    let message = f["message"].as_str().unwrap_or("");
    for part in says {
        assert!(message.contains(part), "{message:?} lacks {part:?}");
    }
    Ok(())
}

#[tokio::test]
async fn cancel_during_a_run_interrupts_the_prompt_in_comfyui() -> anyhow::Result<()> {
    let comfy = StandIn::start(&["--step-ms", "50"]).await?;
    let gw = gateway(&[&comfy], &[]).await?;
    let id = gw.submit(job(txt2img(400, 1))).await?;
    wait_event(&gw, &id, T, |e| e["type"] == "progress" && e["max"] == 400).await?;
    cancel(&gw, &id).await?;
    let log = finished(&gw, &id, T).await?;
    assert_eq!(
        log.last().map(|e| e["type"].clone()),
        Some(json!("canceled"))
    );

    // ComfyUI stopped the prompt: its history says interrupted, long before 400 steps.
    let deadline = tokio::time::Instant::now() + T;
    let entry = loop {
        if let Some(entry) = standin_history(&comfy).await?.into_values().next() {
            break entry;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "prompt not stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(entry["status"]["status_str"], "error", "{entry}");
    let last = entry["status"]["messages"]
        .as_array()
        .and_then(|m| m.last())
        .context("messages")?;
    assert_eq!(last[0], "execution_interrupted", "{entry}");
    assert_eq!(comfy.stats().await?["interrupts"], 1);
    Ok(())
}

fn assert_lossless_once(events: &[JobEvent]) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq.0, i as u64 + 1, "seq gap or duplicate at {i}");
    }
    let completed = events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Completed { .. }))
        .count();
    assert_eq!(completed, 1, "{events:?}");
    let mut names = BTreeMap::new();
    for e in events {
        if let EventKind::Output(o) = &e.kind {
            *names.entry(o.name.clone()).or_insert(0) += 1;
        }
    }
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(
        names.values().all(|n| *n == 1),
        "an output twice: {names:?}"
    );
}

#[tokio::test]
async fn comfyui_dropping_its_websocket_or_stalling_loses_nothing() -> anyhow::Result<()> {
    let comfy = StandIn::start(&["--step-ms", "50"]).await?;
    let gw = gateway(&[&comfy], &[]).await?;
    let id = gw.submit(job(txt2img(60, 3))).await?;
    let watcher = {
        let (ws, id) = (gw.ws_url(), id.clone());
        tokio::spawn(async move { follow_url(&ws, &id).await })
    };
    wait_event(&gw, &id, T, |e| e["type"] == "progress" && e["max"] == 60).await?;
    for _ in 0..3 {
        comfy.drop_ws().await?;
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    // Silent for several ping and poll intervals: the adapter keeps the job.
    comfy.stall(1500).await?;
    comfy.drop_ws().await?;
    let events = watcher.await??;
    assert_lossless_once(&events);
    assert!(matches!(
        events.last().map(|e| &e.kind),
        Some(EventKind::Completed { cached: false })
    ));
    // The prompt ran once in ComfyUI, and the adapter reconnected.
    assert_eq!(executed(&comfy).await?, 1);
    let metrics = gw.api().metrics().await?;
    let reconnects = metrics
        .lines()
        .find(|l| l.starts_with("outlast_comfyui_reconnects_total"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(reconnects >= 3.0, "reconnects: {reconnects}");
    Ok(())
}

/// Follows a job over Outlast's WebSocket from the start to its terminal event.
async fn follow_url(ws_url: &str, id: &str) -> anyhow::Result<Vec<JobEvent>> {
    let mut client = Client::connect(ws_url, Codec::MsgPack).await?;
    client
        .send(&ClientMsg::Subscribe {
            req: Some(1),
            job_id: id.parse()?,
            after: Some(Seq::ZERO),
        })
        .await?;
    let mut events = Vec::new();
    loop {
        let e = client
            .next_event(T)
            .await?
            .context("the client's WebSocket closed")?;
        let end = e.kind.is_terminal();
        events.push(e);
        if end {
            return Ok(events);
        }
    }
}

#[tokio::test]
async fn gateway_kill_9_mid_job_reattaches_and_reports_the_result_once() -> anyhow::Result<()> {
    let comfy = StandIn::start(&["--step-ms", "50"]).await?;
    for finish_while_down in [false, true] {
        let mut gw = gateway(&[&comfy], &[]).await?;
        let id = gw
            .submit(job(txt2img(30, 11 + finish_while_down as u64)))
            .await?;
        wait_event(&gw, &id, T, |e| e["type"] == "progress" && e["max"] == 30).await?;
        gw.kill9().await?;
        if finish_while_down {
            // ComfyUI finishes while no gateway listens: only its history knows.
            let deadline = tokio::time::Instant::now() + T;
            while standin_history(&comfy).await?.len() < 2 {
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "prompt did not finish"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        gw.restart().await?;
        let log = finished(&gw, &id, T).await?;
        let events: Vec<JobEvent> = log
            .iter()
            .map(|e| serde_json::from_value(e.clone()))
            .collect::<Result<_, _>>()?;
        assert_lossless_once(&events);
        let attempts: Vec<u32> = events
            .iter()
            .filter_map(|e| match e.kind {
                EventKind::Started { attempt } => Some(attempt),
                _ => None,
            })
            .collect();
        assert_eq!(attempts, [1, 2]);
        assert!(
            log.iter().any(|e| e["type"] == "queued"
                && e["reason"].as_str().is_some_and(|r| r.contains("resumes"))),
            "{log:?}"
        );
        // Reattached, not re-run: ComfyUI ran one prompt per job.
        assert_eq!(executed(&comfy).await?, 1 + finish_while_down as usize);
    }
    Ok(())
}

#[tokio::test]
async fn comfyui_restart_fails_the_job_clearly_or_retries_when_allowed() -> anyhow::Result<()> {
    let mut comfy = StandIn::start(&["--step-ms", "50"]).await?;
    let gw = gateway(&[&comfy], &[]).await?;

    let id = gw.submit(job(txt2img(100, 5))).await?;
    wait_event(&gw, &id, T, |e| e["type"] == "progress" && e["max"] == 100).await?;
    comfy.restart().await?;
    let log = finished(&gw, &id, T).await?;
    let f = log.last().context("terminal")?;
    assert_eq!(f["type"], "failed", "{f}");
    assert_eq!(f["code"], "backend_unavailable");
    let message = f["message"].as_str().unwrap_or("");
    assert!(message.contains("no longer knows prompt"), "{message}");
    assert!(message.contains("retries"), "{message}");

    let mut spec = job(txt2img(20, 6));
    spec["retries"] = json!(1);
    let id = gw.submit(spec).await?;
    wait_event(&gw, &id, T, |e| e["type"] == "progress" && e["max"] == 20).await?;
    comfy.restart().await?;
    let log = finished(&gw, &id, T).await?;
    assert_eq!(
        log.last().map(|e| e["type"].clone()),
        Some(json!("completed")),
        "{log:?}"
    );
    assert!(
        log.iter().any(|e| e["label"]
            .as_str()
            .is_some_and(|l| l.contains("retry 1 of 1"))),
        "{log:?}"
    );
    assert_eq!(count(&log, "output"), 1);
    Ok(())
}

#[tokio::test]
async fn two_servers_share_the_queue_fairly_and_a_cache_hit_answers_at_once() -> anyhow::Result<()>
{
    let a = StandIn::start(&["--step-ms", "40"]).await?;
    let b = StandIn::start(&["--step-ms", "40"]).await?;
    let gw = gateway(&[&a, &b], &[]).await?;
    let mut ids = Vec::new();
    for seed in 0..6 {
        ids.push(gw.submit(job(txt2img(10, 100 + seed))).await?);
    }
    let mut logs = Vec::new();
    for id in &ids {
        let log = finished(&gw, id, T).await?;
        assert_eq!(
            log.last().map(|e| e["type"].clone()),
            Some(json!("completed")),
            "{log:?}"
        );
        logs.push(log);
    }
    let ran_a = executed(&a).await?;
    let ran_b = executed(&b).await?;
    assert_eq!(ran_a + ran_b, 6);
    assert!(
        ran_a >= 2 && ran_b >= 2,
        "both servers share the work: {ran_a} vs {ran_b}"
    );
    // Outlast is the queue: two ran at once; the others waited. Each job stored its place once,
    // on entering the queue (moving up is sent live, not stored: tests/positions.rs).
    for (i, log) in logs.iter().enumerate() {
        let positions: Vec<u64> = log
            .iter()
            .filter(|e| e["type"] == "queued")
            .filter_map(|e| e["position"].as_u64())
            .collect();
        assert_eq!(positions.len(), 1, "job {i}: {log:?}");
        assert!(positions[0] <= i as u64, "job {i}: {positions:?}");
    }

    // The same workflow again answers from the stored outputs, without ComfyUI.
    let again = gw.submit(job(txt2img(10, 100))).await?;
    let log = finished(&gw, &again, Duration::from_secs(5)).await?;
    assert_eq!(
        log.last().map(|e| e["cached"].clone()),
        Some(json!(true)),
        "{log:?}"
    );
    assert_eq!(count(&log, "started"), 0);
    assert_eq!(outputs(&log), outputs(&logs[0]));
    let name = &outputs(&log)[0].0;
    assert_eq!(
        download(&gw, &again, name).await?,
        download(&gw, &ids[0], name).await?
    );
    let total = executed(&a).await? + executed(&b).await?;
    assert_eq!(total, 6, "the cache hit did not reach ComfyUI");

    // Opting out runs it again.
    let mut spec = job(txt2img(10, 100));
    spec["cache"] = json!(false);
    let fresh = gw.submit(spec).await?;
    let log = finished(&gw, &fresh, T).await?;
    assert_eq!(log.last().map(|e| e["cached"].clone()), Some(json!(false)));
    Ok(())
}

#[tokio::test]
async fn a_server_that_goes_down_leaves_the_rotation_and_comes_back() -> anyhow::Result<()> {
    let a = StandIn::start(&["--step-ms", "20"]).await?;
    let mut b = StandIn::start(&["--step-ms", "20"]).await?;
    let gw = gateway(&[&a, &b], &[]).await?;
    b.kill9().await?;
    let mut ids = Vec::new();
    for seed in 0..3 {
        ids.push(gw.submit(job(txt2img(5, 200 + seed))).await?);
    }
    for id in &ids {
        let log = finished(&gw, id, T).await?;
        assert_eq!(
            log.last().map(|e| e["type"].clone()),
            Some(json!("completed")),
            "{log:?}"
        );
    }
    assert_eq!(executed(&a).await?, 3);
    let metrics = gw.api().metrics().await?;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("outlast_comfyui_server_up")
                && l.contains(&b.url())
                && l.ends_with(" 0")),
        "{metrics}"
    );
    b.restart().await?;
    gw.api()
        .wait_for_metric(T, |l| {
            l.starts_with("outlast_comfyui_server_up") && l.contains(&b.url()) && l.ends_with(" 1")
        })
        .await
        .context("b never came back")?;
    // Back in rotation: two slow jobs at once use both servers.
    let x = gw.submit(job(txt2img(40, 300))).await?;
    let y = gw.submit(job(txt2img(40, 301))).await?;
    finished(&gw, &x, T).await?;
    finished(&gw, &y, T).await?;
    assert_eq!(executed(&b).await?, 1);
    Ok(())
}

#[tokio::test]
async fn a_socket_cut_off_by_comfyuis_client_id_bug_is_replaced() -> anyhow::Result<()> {
    let comfy = StandIn::start(&["--step-ms", "50"]).await?;
    let gw = gateway(&[&comfy], &[]).await?;
    let id = gw.submit(job(txt2img(60, 21))).await?;
    wait_event(&gw, &id, T, |e| e["type"] == "progress" && e["max"] == 60).await?;
    // Another socket with the adapter's client id takes over the id in ComfyUI; when it closes,
    // ComfyUI forgets the id, and the adapter's still-open socket silently gets nothing more.
    let (intruder, _) =
        tokio_tungstenite::connect_async(comfy.ws_url(&format!("outlast-{id}"))).await?;
    tokio::time::sleep(Duration::from_millis(150)).await;
    drop(intruder);
    let cut_at = tokio::time::Instant::now();
    let log = finished(&gw, &id, T).await?;
    assert_eq!(
        log.last().map(|e| e["type"].clone()),
        Some(json!("completed")),
        "{log:?}"
    );
    // Live step progress resumed on a new socket: the last steps arrived, not just the result.
    let last_step = log
        .iter()
        .filter(|e| e["type"] == "progress" && e["max"] == 60)
        .filter_map(|e| e["value"].as_u64())
        .max();
    assert!(
        last_step >= Some(55),
        "progress stopped at {last_step:?}; {log:?}"
    );
    assert!(cut_at.elapsed() < T);
    let events: Vec<JobEvent> = log
        .iter()
        .map(|e| serde_json::from_value(e.clone()))
        .collect::<Result<_, _>>()?;
    assert_lossless_once(&events);
    Ok(())
}

#[tokio::test]
async fn a_prompt_waiting_in_comfyuis_own_queue_is_reported_and_removed_on_cancel()
-> anyhow::Result<()> {
    let comfy = StandIn::start(&["--step-ms", "50"]).await?;
    let gw = gateway(&[&comfy], &[]).await?;
    // Someone uses the same ComfyUI directly: a long prompt runs there.
    let foreign: Value = reqwest::Client::new()
        .post(format!("{}/prompt", comfy.url()))
        .json(&json!({"prompt": txt2img(400, 99), "client_id": "someone-else"}))
        .send()
        .await?
        .json()
        .await?;
    let foreign_id = foreign["prompt_id"]
        .as_str()
        .context("prompt_id")?
        .to_owned();
    let id = gw.submit(job(txt2img(10, 22))).await?;
    wait_event(&gw, &id, T, |e| {
        e["label"] == "waiting in ComfyUI's own queue: 1 ahead"
    })
    .await?;
    cancel(&gw, &id).await?;
    // Ours left ComfyUI's queue; the foreign prompt was not interrupted.
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let q: Value = reqwest::get(format!("{}/queue", comfy.url()))
            .await?
            .json()
            .await?;
        let pending = q["queue_pending"].as_array().map_or(0, Vec::len);
        let running: Vec<&str> = q["queue_running"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i[1].as_str())
            .collect();
        if pending == 0 {
            assert_eq!(running, [foreign_id.as_str()], "the foreign prompt runs on");
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "ours stayed queued: {q}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(comfy.stats().await?["interrupts"], 0);
    Ok(())
}

/// The documented example (`examples/comfyui/run.sh` with `img2img.json` and a photo) works as
/// written: it uploads, submits, follows and downloads with curl and python3.
#[tokio::test]
async fn the_documented_example_runs_end_to_end() -> anyhow::Result<()> {
    let comfy = StandIn::start(&["--step-ms", "5"]).await?;
    // Calm intervals: no reconnect happens, so every step's progress must arrive.
    let gw = gateway(
        &[&comfy],
        &[
            "--comfyui-poll-interval",
            "10s",
            "--comfyui-ping-interval",
            "10s",
        ],
    )
    .await?;
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("photo.png"), png(40, 30))?;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = tokio::process::Command::new("bash")
        .arg(root.join("examples/comfyui/run.sh"))
        .arg(root.join("examples/comfyui/img2img.json"))
        .arg("photo.png")
        .env("OUTLAST", gw.http())
        .current_dir(dir.path())
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("state: completed"), "{stdout}\n{stderr}");
    assert!(stderr.contains("Sampler 25/25"), "{stderr}");
    let saved = std::fs::read(dir.path().join("watercolor_00001_.png"))?;
    let job = stdout
        .lines()
        .find_map(|l| l.strip_prefix("job "))
        .context("job id line")?;
    assert_eq!(saved, download(&gw, job, "watercolor_00001_.png").await?);
    image::load_from_memory(&saved)?;
    Ok(())
}

#[tokio::test]
async fn a_job_over_its_time_limit_fails_and_stops_in_comfyui() -> anyhow::Result<()> {
    let comfy = StandIn::start(&["--step-ms", "50"]).await?;
    let gw = gateway(&[&comfy], &["--comfyui-timeout", "1s"]).await?;
    let id = gw.submit(job(txt2img(400, 31))).await?;
    let log = finished(&gw, &id, T).await?;
    let f = log.last().context("terminal")?;
    assert_eq!(f["type"], "failed", "{f}");
    assert_eq!(f["code"], "timeout", "{f}");
    let deadline = tokio::time::Instant::now() + T;
    while comfy.stats().await?["interrupts"] != 1 {
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "the prompt runs on");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

#[tokio::test]
async fn with_every_server_down_jobs_wait_queued_with_a_reason_and_run_when_one_is_back()
-> anyhow::Result<()> {
    let mut comfy = StandIn::start(&["--step-ms", "10"]).await?;
    let gw = gateway(&[&comfy], &[]).await?;
    comfy.kill9().await?;
    let up = |v: &str| {
        let line = format!(
            "outlast_comfyui_server_up{{server=\"{}\"}} {v}",
            comfy.url()
        );
        let api = gw.api();
        async move {
            api.wait_for_metric(T, |l| l == line)
                .await
                .with_context(|| format!("never saw {line}"))
        }
    };
    up("0").await?;
    let id = gw.submit(job(txt2img(5, 41))).await?;
    let queued = wait_event(&gw, &id, T, |e| e["type"] == "queued").await?;
    assert_eq!(queued["position"], 0);
    let reason = queued["reason"].as_str().unwrap_or("");
    assert!(
        reason.contains("no ComfyUI server is reachable"),
        "{queued}"
    );
    assert_eq!(count(&gw.full_log(&id).await?, "started"), 0);
    comfy.restart().await?;
    let log = finished(&gw, &id, T).await?;
    assert_eq!(
        log.last().map(|e| e["type"].clone()),
        Some(json!("completed")),
        "{log:?}"
    );
    assert_eq!(count(&log, "output"), 1);
    Ok(())
}

/// `kill -9` after the first of two outputs was stored, before the second: the resumed job
/// stores the second only, and each output is announced once.
#[tokio::test]
async fn outputs_stored_before_a_crash_are_not_stored_again() -> anyhow::Result<()> {
    let comfy = StandIn::start(&["--step-ms", "5"]).await?;
    let mut gw = gateway(&[&comfy], &[]).await?;
    let mut workflow = txt2img(3, 51);
    workflow["5"]["inputs"]["batch_size"] = json!(2);
    // Each download takes 1.5 s: the kill lands while the second one is under way.
    comfy.slow_view(1500).await?;
    let id = gw.submit(job(workflow)).await?;
    let first = wait_event(&gw, &id, T, |e| e["type"] == "output").await?;
    gw.kill9().await?;
    comfy.slow_view(0).await?;
    gw.restart().await?;
    let log = finished(&gw, &id, T).await?;
    assert_eq!(
        log.last().map(|e| e["type"].clone()),
        Some(json!("completed")),
        "{log:?}"
    );
    let outs = outputs(&log);
    let names: Vec<&str> = outs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["fox_00001_.png", "fox_00002_.png"], "{log:?}");
    assert_eq!(first["name"], "fox_00001_.png");
    // The first was stored before the crash (its event precedes the restart's `queued`).
    let restart_at = log
        .iter()
        .position(|e| e["type"] == "queued" && e["reason"].is_string())
        .context("resume event")?;
    let first_at = log
        .iter()
        .position(|e| e["type"] == "output")
        .context("output")?;
    assert!(first_at < restart_at, "{log:?}");
    for (name, sha) in &outs {
        assert_eq!(&sha256_hex(&download(&gw, &id, name).await?), sha);
    }
    assert_eq!(executed(&comfy).await?, 1);
    Ok(())
}

// ---- Cancel means stopped (issue 11, item 6) ----

/// The stand-in's ordered log of what happened to prompts (`/_standin/stats` `log`).
async fn standin_log(s: &StandIn) -> anyhow::Result<Vec<Value>> {
    Ok(s.stats().await?["log"]
        .as_array()
        .context("stats.log")?
        .clone())
}

/// Index of the first log entry with this event for this prompt.
fn log_index(log: &[Value], event: &str, prompt: &str) -> Option<usize> {
    log.iter()
        .position(|e| e["event"] == event && e["prompt_id"] == prompt)
}

/// The prompt id of the `n`th prompt queued on the stand-in.
fn queued_prompt(log: &[Value], n: usize) -> Option<String> {
    log.iter()
        .filter(|e| e["event"] == "queued")
        .nth(n)
        .and_then(|e| e["prompt_id"].as_str())
        .map(str::to_owned)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Polls the gateway's log (bounded) until `needle` occurs at least `n` times.
async fn wait_log(gw: &Gateway, needle: &str, n: usize, within: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if gw.log_text().matches(needle).count() >= n {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{needle:?} not logged {n} times; log:\n{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_canceled_prompt_is_canceled_only_after_comfyui_stopped_it_and_its_slot_waits()
-> anyhow::Result<()> {
    // Long steps: ComfyUI's interrupt lands at the end of the current one.
    let comfy = StandIn::start(&["--step-ms", "400"]).await?;
    let gw = gateway(&[&comfy], &[]).await?;
    let a = gw.submit(job(txt2img(200, 31))).await?;
    wait_event(&gw, &a, T, |e| e["type"] == "progress" && e["max"] == 200).await?;
    // One slot: the next job waits for it.
    let b = gw.submit(job(txt2img(2, 32))).await?;
    let prompt_a = queued_prompt(&standin_log(&comfy).await?, 0).context("A's prompt")?;
    cancel(&gw, &a).await?;
    let canceled = wait_event(&gw, &a, T, |e| e["type"] == "canceled").await?;

    // When `canceled` is there, ComfyUI has already stopped the prompt.
    let log = standin_log(&comfy).await?;
    let ended = log_index(&log, "ended", &prompt_a)
        .with_context(|| format!("`canceled` arrived while ComfyUI still ran it: {log:?}"))?;
    assert_eq!(log[ended]["status"], "interrupted", "{log:?}");
    assert!(
        log[ended]["at_ms"].as_u64() <= canceled["at_ms"].as_u64(),
        "ComfyUI's stop ({}) precedes `canceled` ({})",
        log[ended],
        canceled
    );
    let q: Value = reqwest::get(format!("{}/queue", comfy.url()))
        .await?
        .json()
        .await?;
    assert!(
        !q.to_string().contains(&prompt_a),
        "the prompt left ComfyUI's queue: {q}"
    );

    // The slot was freed only then: B's prompt reached ComfyUI after A's stop.
    let log_b = finished(&gw, &b, T).await?;
    assert_eq!(
        log_b.last().map(|e| e["type"].clone()),
        Some(json!("completed"))
    );
    let log = standin_log(&comfy).await?;
    let prompt_b = queued_prompt(&log, 1).context("B's prompt")?;
    let queued_b = log_index(&log, "queued", &prompt_b).context("B queued")?;
    assert!(
        ended < queued_b,
        "B was sent to ComfyUI before A stopped: {log:?}"
    );
    let started_b = log_b
        .iter()
        .find(|e| e["type"] == "started")
        .context("B started")?;
    assert!(started_b["at_ms"].as_u64() >= log[ended]["at_ms"].as_u64());
    Ok(())
}

#[tokio::test]
async fn a_cancel_while_comfyui_is_unreachable_is_retried_until_it_answers() -> anyhow::Result<()> {
    let mut comfy = StandIn::start(&["--step-ms", "100"]).await?;
    let gw = gateway(&[&comfy], &[]).await?;
    let a = gw.submit(job(txt2img(400, 41))).await?;
    wait_event(&gw, &a, T, |e| e["type"] == "progress" && e["max"] == 400).await?;
    comfy.kill9().await?;
    // The stop cannot be confirmed: the answer is `running`, `canceled` follows.
    assert_eq!(
        gw.api().cancel(&a).await?,
        outlast_protocol::JobState::Running
    );
    // Retried, each retry in the log; the job stays running meanwhile.
    wait_log(&gw, "ComfyUI did not answer the cancel; retrying", 3, T).await?;
    let s = gw.api().snapshot(&a).await?;
    assert_eq!(s.state, outlast_protocol::JobState::Running, "{s:?}");
    let back_at = now_ms();
    comfy.restart().await?;
    let canceled = wait_event(&gw, &a, T, |e| e["type"] == "canceled").await?;
    assert!(
        canceled["at_ms"].as_u64() >= Some(back_at),
        "canceled only once ComfyUI answered: {canceled}"
    );
    // The restarted ComfyUI no longer has the prompt: that confirms it is gone.
    wait_log(&gw, "ComfyUI confirmed the prompt is gone", 1, T).await?;
    assert!(
        gw.api()
            .counter("outlast_comfyui_cancel_retries_total")
            .await?
            >= 3
    );
    assert_eq!(count(&gw.full_log(&a).await?, "canceled"), 1);
    // The slot is free again: a new job runs to completion.
    let next = gw.submit(job(txt2img(2, 42))).await?;
    let log = finished(&gw, &next, T).await?;
    assert_eq!(
        log.last().map(|e| e["type"].clone()),
        Some(json!("completed"))
    );
    Ok(())
}

#[tokio::test]
async fn a_cancel_past_its_bound_is_reported_and_the_slot_stays_drained_until_comfyui_answers()
-> anyhow::Result<()> {
    let mut comfy = StandIn::start(&["--step-ms", "100"]).await?;
    let gw = gateway(&[&comfy], &["--comfyui-cancel-timeout", "1s"]).await?;
    let a = gw.submit(job(txt2img(400, 51))).await?;
    wait_event(&gw, &a, T, |e| e["type"] == "progress" && e["max"] == 400).await?;
    comfy.kill9().await?;
    let asked_at = now_ms();
    cancel(&gw, &a).await?;
    let canceled = wait_event(&gw, &a, T, |e| e["type"] == "canceled").await?;
    assert!(
        canceled["at_ms"].as_u64() >= Some(asked_at + 1000),
        "reported after the 1 s bound: {canceled}"
    );
    wait_log(&gw, "did not confirm the prompt stopped within 1s", 1, T).await?;
    assert_eq!(
        gw.api()
            .counter("outlast_cancels_unconfirmed_total{backend=\"comfyui\"}")
            .await?,
        1
    );
    // The drained slot comes back once ComfyUI answers and confirms.
    comfy.restart().await?;
    wait_log(&gw, "the drained ComfyUI slot is free again", 1, T).await?;
    let next = gw.submit(job(txt2img(2, 52))).await?;
    let log = finished(&gw, &next, T).await?;
    assert_eq!(
        log.last().map(|e| e["type"].clone()),
        Some(json!("completed"))
    );
    Ok(())
}

/// True while a process with this pid exists (zombies included).
fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Reads a pid the job's command wrote, waiting (bounded) for the file.
async fn read_pid(path: &std::path::Path) -> anyhow::Result<i32> {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        if let Ok(text) = tokio::fs::read_to_string(path).await
            && let Ok(pid) = text.trim().parse()
        {
            return Ok(pid);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{} not written",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn an_exec_job_is_canceled_only_once_its_process_group_is_gone() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().display().to_string();
    // A shell with a child `sleep`; on SIGTERM the shell takes half a second to clean up and
    // notes that it did.
    let script = format!(
        "echo $$ > {dir}/sh.pid; sleep 300 & echo $! > {dir}/sleep.pid; \
         trap 'sleep 0.5; echo done > {dir}/cleaned; exit 0' TERM; wait"
    );
    let gw = Gateway::start(&["--exec-command", &script]).await?;
    let id = gw
        .submit(json!({"backend": "exec", "workflow": {}}))
        .await?;
    let sh = read_pid(&tmp.path().join("sh.pid")).await?;
    let sleep = read_pid(&tmp.path().join("sleep.pid")).await?;
    assert!(alive(sh) && alive(sleep));
    cancel(&gw, &id).await?;
    wait_event(&gw, &id, T, |e| e["type"] == "canceled").await?;
    assert!(
        tmp.path().join("cleaned").exists(),
        "`canceled` came before the command finished its SIGTERM handler"
    );
    assert!(!alive(sh), "the shell {sh} is gone (reaped) at `canceled`");
    assert!(
        !alive(sleep),
        "its child {sleep} is gone (reaped) at `canceled`"
    );
    Ok(())
}

#[tokio::test]
async fn an_exec_job_ignoring_sigterm_is_killed_after_the_grace_and_then_canceled()
-> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().display().to_string();
    // Ignored signals are inherited: neither the shell nor its `sleep` dies of SIGTERM.
    let script = format!(
        "trap '' TERM; echo $$ > {dir}/sh.pid; sleep 300 & echo $! > {dir}/sleep.pid; wait"
    );
    let gw = Gateway::start(&["--exec-command", &script, "--exec-kill-grace", "700ms"]).await?;
    let id = gw
        .submit(json!({"backend": "exec", "workflow": {}}))
        .await?;
    let sh = read_pid(&tmp.path().join("sh.pid")).await?;
    let sleep = read_pid(&tmp.path().join("sleep.pid")).await?;
    let asked_at = now_ms();
    cancel(&gw, &id).await?;
    let canceled = wait_event(&gw, &id, T, |e| e["type"] == "canceled").await?;
    assert!(
        canceled["at_ms"].as_u64() >= Some(asked_at + 700),
        "SIGKILL only after the grace period: {canceled}"
    );
    assert!(!alive(sh) && !alive(sleep), "both are gone at `canceled`");
    Ok(())
}
