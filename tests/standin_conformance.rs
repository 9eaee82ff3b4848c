//! Conformance of `comfy-standin` with the ComfyUI API reference
//! (`comfyui-api.md`): message order, history, queue, files, and the control endpoints, driven
//! with real clients (tokio-tungstenite, reqwest) against the real binary.

use std::time::Duration;

use anyhow::{Context, bail};
use futures::{SinkExt, StreamExt};
use outlast_e2e::standin::StandIn;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const T: Duration = Duration::from_secs(10);
/// How long a socket must stay silent for "nothing was sent" assertions.
const QUIET: Duration = Duration::from_millis(300);

/// What a ComfyUI socket received.
#[derive(Debug)]
enum Ev {
    Json(Value),
    Bin(Vec<u8>),
    Pong,
    /// Ended, with the close frame if the server sent one.
    Closed(Option<CloseFrame>),
}

/// A ComfyUI WebSocket client.
struct Ws {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pings: u32,
}

impl Ws {
    /// Connects as `cid` and checks the first message is `status` with `sid`.
    async fn connect(s: &StandIn, cid: &str) -> anyhow::Result<(Ws, Value)> {
        Self::connect_url(&s.ws_url(cid), cid).await
    }

    async fn connect_url(url: &str, cid: &str) -> anyhow::Result<(Ws, Value)> {
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        let mut ws = Ws { ws, pings: 0 };
        let first = ws.json().await?;
        anyhow::ensure!(first["type"] == "status", "first message {first}");
        anyhow::ensure!(first["data"]["sid"] == cid, "sid in {first}");
        Ok((ws, first))
    }

    async fn next(&mut self, within: Duration) -> anyhow::Result<Ev> {
        loop {
            let m = tokio::time::timeout(within, self.ws.next())
                .await
                .context("timed out waiting for a websocket message")?;
            return Ok(match m {
                None | Some(Err(_)) => Ev::Closed(None),
                Some(Ok(Message::Text(t))) => Ev::Json(serde_json::from_str(&t)?),
                Some(Ok(Message::Binary(b))) => Ev::Bin(b.to_vec()),
                Some(Ok(Message::Close(f))) => Ev::Closed(f),
                Some(Ok(Message::Pong(_))) => Ev::Pong,
                Some(Ok(Message::Ping(_))) => {
                    self.pings += 1;
                    continue;
                }
                Some(Ok(Message::Frame(_))) => continue,
            });
        }
    }

    async fn json(&mut self) -> anyhow::Result<Value> {
        match self.next(T).await? {
            Ev::Json(v) => Ok(v),
            other => bail!("expected a JSON frame, got {other:?}"),
        }
    }

    /// Skips JSON frames until one of type `kind`.
    async fn until_type(&mut self, kind: &str) -> anyhow::Result<Value> {
        loop {
            let v = self.json().await?;
            if v["type"] == kind {
                return Ok(v);
            }
        }
    }

    /// Everything up to and including `executing {node: null, prompt_id}`.
    async fn until_done(&mut self, pid: &str) -> anyhow::Result<Vec<Ev>> {
        let mut out = Vec::new();
        loop {
            let ev = self.next(T).await?;
            let done = matches!(&ev, Ev::Json(v) if v["type"] == "executing"
                && v["data"]["node"].is_null() && v["data"]["prompt_id"] == pid);
            if let Ev::Closed(_) = ev {
                bail!("socket closed; got so far: {out:?}");
            }
            out.push(ev);
            if done {
                return Ok(out);
            }
        }
    }

    /// Asserts that nothing arrives for `QUIET`.
    async fn silent(&mut self) -> anyhow::Result<()> {
        match tokio::time::timeout(QUIET, self.ws.next()).await {
            Err(_) => Ok(()),
            Ok(m) => bail!("expected silence, got {m:?}"),
        }
    }
}

fn types(evs: &[Ev]) -> Vec<String> {
    evs.iter()
        .map(|e| match e {
            Ev::Json(v) => v["type"].as_str().unwrap_or("?").to_owned(),
            Ev::Bin(b) => format!("binary{}", u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
            Ev::Pong => "pong".into(),
            Ev::Closed(_) => "closed".into(),
        })
        .collect()
}

fn jsons<'a>(evs: &'a [Ev], kind: &str) -> Vec<&'a Value> {
    evs.iter()
        .filter_map(|e| match e {
            Ev::Json(v) if v["type"] == kind => Some(&v["data"]),
            _ => None,
        })
        .collect()
}

fn minimal(color: u32) -> Value {
    json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": color}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "gw/job"}}
    })
}

fn txt2img(steps: u64, seed: u64) -> Value {
    json!({
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "standin.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 1}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a cat", "clip": ["4", 1]}, "_meta": {"title": "Positive"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "3": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "seed": seed, "steps": steps, "cfg": 7.0,
            "sampler_name": "euler", "scheduler": "normal", "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0], "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "t2i"}}
    })
}

async fn post(s: &StandIn, path: &str, body: Value) -> anyhow::Result<(u16, Value)> {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", s.url()))
        .json(&body)
        .send()
        .await?;
    let code = r.status().as_u16();
    let text = r.text().await?;
    Ok((code, serde_json::from_str(&text).unwrap_or(Value::Null)))
}

async fn get(s: &StandIn, path: &str) -> anyhow::Result<Value> {
    let r = reqwest::get(format!("{}{path}", s.url())).await?;
    anyhow::ensure!(r.status() == 200, "GET {path}: {}", r.status());
    Ok(r.json().await?)
}

async fn submit(s: &StandIn, body: Value) -> anyhow::Result<String> {
    let (code, v) = post(s, "/prompt", body).await?;
    anyhow::ensure!(code == 200, "POST /prompt answered {code}: {v}");
    Ok(v["prompt_id"].as_str().context("prompt_id")?.to_owned())
}

/// Polls `/history/{id}` until the entry appears.
async fn history_entry(s: &StandIn, pid: &str) -> anyhow::Result<Value> {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let v = get(s, &format!("/history/{pid}")).await?;
        if let Some(e) = v.get(pid) {
            return Ok(e.clone());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no history for {pid}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn message_types(entry: &Value) -> Vec<String> {
    entry["status"]["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|m| m[0].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn first_run_follows_the_reference_order() -> anyhow::Result<()> {
    let s = StandIn::start(&["--step-ms", "1"]).await?;
    let (mut ws, hello) = Ws::connect(&s, "C").await?;
    assert_eq!(hello["data"]["status"]["exec_info"]["queue_remaining"], 0);
    let pid = submit(&s, json!({"prompt": minimal(0xFF0000), "client_id": "C"})).await?;
    let evs = ws.until_done(&pid).await?;
    assert_eq!(
        types(&evs),
        [
            "status",
            "status",
            "execution_start",
            "execution_cached",
            "progress_state",
            "executing",
            "progress_state",
            "progress_state",
            "executing",
            "executed",
            "progress_state",
            "execution_success",
            "status",
            "executing"
        ]
    );
    let statuses: Vec<&Value> = jsons(&evs, "status");
    let remaining: Vec<&Value> = statuses
        .iter()
        .map(|d| &d["status"]["exec_info"]["queue_remaining"])
        .collect();
    assert_eq!(remaining, [&json!(1), &json!(1), &json!(0)]);
    assert!(statuses.iter().all(|d| d.get("sid").is_none()));
    assert_eq!(jsons(&evs, "execution_cached")[0]["nodes"], json!([]));
    let ps = jsons(&evs, "progress_state");
    assert_eq!(ps[0]["nodes"]["1"]["state"], "running");
    assert_eq!(ps[0]["nodes"].as_object().map(|m| m.len()), Some(1));
    assert_eq!(ps[1]["nodes"]["1"]["state"], "finished");
    assert_eq!(ps[2]["nodes"]["2"]["state"], "running");
    assert_eq!(ps[3]["nodes"]["1"]["state"], "finished");
    assert_eq!(ps[3]["nodes"]["2"]["state"], "finished");
    let executing = jsons(&evs, "executing");
    assert_eq!(
        executing[0],
        &json!({"node": "1", "display_node": "1", "prompt_id": pid})
    );
    assert_eq!(executing[2], &json!({"node": null, "prompt_id": pid}));
    let image = json!({"filename": "job_00001_.png", "subfolder": "gw", "type": "output"});
    assert_eq!(
        jsons(&evs, "executed")[0],
        &json!({"node": "2", "display_node": "2", "output": {"images": [image]}, "prompt_id": pid})
    );
    assert!(jsons(&evs, "execution_start")[0]["timestamp"].is_u64());

    let png = image::open(s.data_dir.join("output/gw/job_00001_.png"))?.to_rgb8();
    assert_eq!(png.dimensions(), (64, 64));
    assert_eq!(png.get_pixel(3, 3).0, [255, 0, 0]);

    let entry = history_entry(&s, &pid).await?;
    assert_eq!(entry["prompt"][1], pid.as_str());
    assert_eq!(entry["prompt"][2], minimal(0xFF0000));
    assert_eq!(entry["prompt"][3], json!({"client_id": "C"}));
    assert_eq!(entry["prompt"][4], json!(["2"]));
    assert_eq!(entry["outputs"], json!({"2": {"images": [image]}}));
    assert_eq!(entry["status"]["status_str"], "success");
    assert_eq!(entry["status"]["completed"], true);
    assert_eq!(
        message_types(&entry),
        ["execution_start", "execution_cached", "execution_success"]
    );
    assert_eq!(
        entry["meta"]["2"],
        json!({"node_id": "2", "display_node": "2", "parent_node": null, "real_node_id": "2"})
    );
    assert_eq!(ws.pings, 0, "the server never pings");
    Ok(())
}

#[tokio::test]
async fn identical_resubmit_is_all_cached_and_writes_nothing() -> anyhow::Result<()> {
    let s = StandIn::start(&["--step-ms", "1"]).await?;
    let (mut ws, _) = Ws::connect(&s, "C").await?;
    let first = submit(&s, json!({"prompt": minimal(0x00FF00), "client_id": "C"})).await?;
    ws.until_done(&first).await?;
    let again = submit(&s, json!({"prompt": minimal(0x00FF00), "client_id": "C"})).await?;
    let evs = ws.until_done(&again).await?;
    assert_eq!(
        types(&evs),
        [
            "status",
            "status",
            "execution_start",
            "execution_cached",
            "executed",
            "progress_state",
            "execution_success",
            "status",
            "executing"
        ]
    );
    assert_eq!(
        jsons(&evs, "execution_cached")[0]["nodes"],
        json!(["1", "2"])
    );
    assert_eq!(
        jsons(&evs, "executed")[0]["output"]["images"][0]["filename"],
        "job_00001_.png"
    );
    let ps = jsons(&evs, "progress_state");
    assert_eq!(ps[0]["nodes"].as_object().map(|m| m.len()), Some(1));
    assert_eq!(ps[0]["nodes"]["2"]["state"], "finished");
    let files: Vec<_> = std::fs::read_dir(s.data_dir.join("output/gw"))?.collect();
    assert_eq!(files.len(), 1, "a cached output writes no new file");
    let entry = history_entry(&s, &again).await?;
    assert_eq!(
        entry["outputs"]["2"]["images"][0]["filename"],
        "job_00001_.png"
    );

    // A changed input runs node 1 and 2 again; the counter continues.
    let third = submit(&s, json!({"prompt": minimal(0x0000FF), "client_id": "C"})).await?;
    let evs = ws.until_done(&third).await?;
    assert_eq!(jsons(&evs, "execution_cached")[0]["nodes"], json!([]));
    assert_eq!(
        jsons(&evs, "executed")[0]["output"]["images"][0]["filename"],
        "job_00002_.png"
    );
    Ok(())
}

fn binary_type(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

#[tokio::test]
async fn sampler_steps_send_progress_and_both_preview_formats() -> anyhow::Result<()> {
    let s = StandIn::start(&["--step-ms", "2", "--preview-method", "auto"]).await?;
    let (mut meta, _) = Ws::connect(&s, "M").await?;
    meta.ws
        .send(Message::Text(
            json!({"type": "feature_flags", "data": {"supports_preview_metadata": true}})
                .to_string()
                .into(),
        ))
        .await?;
    let reply = meta.json().await?;
    assert_eq!(
        reply,
        json!({"type": "feature_flags", "data": {"supports_preview_metadata": true, "max_upload_size": 104857600}})
    );
    let (mut plain, _) = Ws::connect(&s, "P").await?;

    let pid = submit(&s, json!({"prompt": txt2img(3, 42), "client_id": "M"})).await?;
    let evs = meta.until_done(&pid).await?;
    let t = types(&evs);
    let ks = t
        .iter()
        .zip(&evs)
        .position(|(t, e)| t == "executing" && matches!(e, Ev::Json(v) if v["data"]["node"] == "3"))
        .context("executing 3")?;
    let mut expected_steps = Vec::new();
    for _ in 0..3 {
        expected_steps.extend(["progress", "progress_state", "binary4"]);
    }
    assert_eq!(t[ks + 1..ks + 10], expected_steps, "{t:?}");
    let progress = jsons(&evs, "progress");
    assert_eq!(
        progress[2],
        &json!({"value": 3, "max": 3, "prompt_id": pid, "node": "3"})
    );
    let Ev::Bin(b) = &evs[ks + 3] else {
        bail!("no preview")
    };
    let len = u32::from_be_bytes([b[4], b[5], b[6], b[7]]) as usize;
    let header: Value = serde_json::from_slice(&b[8..8 + len])?;
    assert_eq!(
        header,
        json!({"node_id": "3", "prompt_id": pid, "display_node_id": "3", "parent_node_id": null,
            "real_node_id": "3", "image_type": "image/jpeg"})
    );
    let img = image::load_from_memory_with_format(&b[8 + len..], image::ImageFormat::Jpeg)?;
    assert_eq!((img.width(), img.height()), (64, 64));
    let executing: Vec<&Value> = jsons(&evs, "executing")
        .into_iter()
        .map(|d| &d["node"])
        .collect();
    assert_eq!(
        executing,
        [
            &json!("4"),
            &json!("6"),
            &json!("7"),
            &json!("5"),
            &json!("3"),
            &json!("8"),
            &json!("9"),
            &Value::Null
        ]
    );
    let out = &jsons(&evs, "executed")[0]["output"]["images"][0];
    let png = image::open(
        s.data_dir
            .join("output")
            .join(out["filename"].as_str().context("filename")?),
    )?;
    assert_eq!((png.width(), png.height()), (64, 48));

    // The other socket got only the queue-change statuses: no progress, no previews.
    let mut other = Vec::new();
    for _ in 0..3 {
        other.push(plain.next(T).await?);
    }
    assert_eq!(types(&other), ["status", "status", "status"]);
    plain.silent().await?;

    // The plain socket's own prompt (new seed) gets type-1 previews.
    let pid = submit(&s, json!({"prompt": txt2img(2, 7), "client_id": "P"})).await?;
    let evs = plain.until_done(&pid).await?;
    let bins: Vec<&Vec<u8>> = evs
        .iter()
        .filter_map(|e| match e {
            Ev::Bin(b) => Some(b),
            _ => None,
        })
        .collect();
    assert_eq!(bins.len(), 2);
    for b in bins {
        assert_eq!(binary_type(b), 1);
        assert_eq!(binary_type(&b[4..]), 1, "format 1 = JPEG");
        image::load_from_memory_with_format(&b[8..], image::ImageFormat::Jpeg)?;
    }
    let cached = jsons(&evs, "execution_cached")[0]["nodes"].clone();
    assert_eq!(
        cached,
        json!(["4", "5", "6", "7"]),
        "loader, latent and texts are cached"
    );
    Ok(())
}

#[tokio::test]
async fn previews_are_off_by_default_and_on_per_prompt() -> anyhow::Result<()> {
    let s = StandIn::start(&["--step-ms", "1"]).await?;
    let (mut ws, _) = Ws::connect(&s, "C").await?;
    let pid = submit(&s, json!({"prompt": txt2img(2, 1), "client_id": "C"})).await?;
    let evs = ws.until_done(&pid).await?;
    assert_eq!(jsons(&evs, "progress").len(), 2);
    assert!(!types(&evs).iter().any(|t| t.starts_with("binary")));
    let pid = submit(
        &s,
        json!({"prompt": txt2img(2, 2), "client_id": "C", "extra_data": {"preview_method": "auto"}}),
    )
    .await?;
    let evs = ws.until_done(&pid).await?;
    assert_eq!(types(&evs).iter().filter(|t| *t == "binary1").count(), 2);
    Ok(())
}

#[tokio::test]
async fn injected_failure_reports_execution_error() -> anyhow::Result<()> {
    let s = StandIn::start(&["--step-ms", "1"]).await?;
    let (mut ws, _) = Ws::connect(&s, "C").await?;
    s.fail_next("KSampler", "CUDA out of memory").await?;
    let pid = submit(&s, json!({"prompt": txt2img(2, 3), "client_id": "C"})).await?;
    let evs = ws.until_done(&pid).await?;
    let t = types(&evs);
    assert_eq!(
        t[t.len() - 5..],
        [
            "progress_state",
            "executing",
            "execution_error",
            "status",
            "executing"
        ]
    );
    assert!(!t.contains(&"execution_success".to_owned()));
    let err = jsons(&evs, "execution_error")[0];
    assert_eq!(err["prompt_id"], pid.as_str());
    assert_eq!(err["node_id"], "3");
    assert_eq!(err["node_type"], "KSampler");
    assert_eq!(err["exception_message"], "CUDA out of memory");
    assert_eq!(err["exception_type"], "RuntimeError");
    assert_eq!(err["executed"], json!(["4", "6", "7", "5"]));
    assert!(err["traceback"].as_array().is_some_and(|t| !t.is_empty()));
    assert_eq!(err["current_inputs"]["seed"], json!([3]));
    assert_eq!(err["current_inputs"]["sampler_name"], json!(["euler"]));
    assert_eq!(err["current_outputs"], json!(["4", "5", "6", "7"]));
    assert!(err["timestamp"].is_u64());
    let entry = history_entry(&s, &pid).await?;
    assert_eq!(entry["status"]["status_str"], "error");
    assert_eq!(entry["status"]["completed"], false);
    assert_eq!(
        message_types(&entry).last().map(String::as_str),
        Some("execution_error")
    );

    // The failure was for one execution only; upstream results stay cached.
    let pid = submit(&s, json!({"prompt": txt2img(2, 3), "client_id": "C"})).await?;
    let evs = ws.until_done(&pid).await?;
    assert_eq!(
        jsons(&evs, "execution_cached")[0]["nodes"],
        json!(["4", "5", "6", "7"])
    );
    assert_eq!(jsons(&evs, "execution_success").len(), 1);
    Ok(())
}

#[tokio::test]
async fn interrupt_stops_the_running_prompt_only() -> anyhow::Result<()> {
    let s = StandIn::start(&["--step-ms", "5"]).await?;
    let (mut ws, _) = Ws::connect(&s, "C").await?;
    let pid = submit(&s, json!({"prompt": txt2img(2000, 9), "client_id": "C"})).await?;
    loop {
        let v = ws.json().await?;
        if v["type"] == "progress" {
            break;
        }
    }
    // Naming a prompt that is not running is a no-op.
    let other = "00000000-0000-4000-8000-000000000000";
    let (code, _) = post(&s, "/interrupt", json!({"prompt_id": other})).await?;
    assert_eq!(code, 200);
    let mut seen_progress = 0;
    while seen_progress < 2 {
        let v = ws.json().await?;
        assert_ne!(v["type"], "execution_interrupted");
        if v["type"] == "progress" {
            seen_progress += 1;
        }
    }
    assert_eq!(s.stats().await?["interrupts"], 0);
    let (code, body) = post(&s, "/interrupt", json!({"prompt_id": pid})).await?;
    assert_eq!((code, body), (200, Value::Null));
    let evs = ws.until_done(&pid).await?;
    let t = types(&evs);
    let i = t
        .iter()
        .position(|t| t == "execution_interrupted")
        .context("execution_interrupted")?;
    assert_eq!(t[i..], ["execution_interrupted", "status", "executing"]);
    let data = jsons(&evs, "execution_interrupted")[0];
    assert_eq!(data["node_id"], "3");
    assert_eq!(data["node_type"], "KSampler");
    assert_eq!(data["executed"], json!(["4", "6", "7", "5"]));
    let entry = history_entry(&s, &pid).await?;
    assert_eq!(entry["status"]["status_str"], "error");
    assert_eq!(
        message_types(&entry).last().map(String::as_str),
        Some("execution_interrupted")
    );
    assert_eq!(s.stats().await?["interrupts"], 1);
    Ok(())
}

#[tokio::test]
async fn interrupt_is_asynchronous_and_takes_effect_at_the_next_step() -> anyhow::Result<()> {
    // Long steps, so "at once" and "at the next step" are far apart.
    const STEP_MS: u64 = 600;
    let s = StandIn::start(&["--step-ms", &STEP_MS.to_string()]).await?;
    let (mut ws, _) = Ws::connect(&s, "C").await?;
    let pid = submit(&s, json!({"prompt": txt2img(50, 5), "client_id": "C"})).await?;
    // Right after a step's `progress` the next step has just begun.
    ws.until_type("progress").await?;
    let asked = tokio::time::Instant::now();
    let (code, body) = post(&s, "/interrupt", json!({"prompt_id": pid})).await?;
    assert_eq!((code, body), (200, Value::Null));
    // It answers at once, and the prompt is still running: the step goes on.
    let q = get(&s, "/queue").await?;
    assert!(
        asked.elapsed() < Duration::from_millis(STEP_MS / 2),
        "/interrupt waited for the step"
    );
    let running: Vec<&str> = q["queue_running"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i[1].as_str())
        .collect();
    assert_eq!(
        running,
        [pid.as_str()],
        "still running after /interrupt: {q}"
    );
    assert!(
        get(&s, &format!("/history/{pid}"))
            .await?
            .get(&pid)
            .is_none(),
        "no history entry before the step ends"
    );
    // At the step's end: `execution_interrupted` (no further progress), then it leaves.
    let evs = ws.until_done(&pid).await?;
    let t = types(&evs);
    assert!(
        asked.elapsed() >= Duration::from_millis(STEP_MS / 2),
        "interrupted before the current step ended"
    );
    let i = t
        .iter()
        .position(|t| t == "execution_interrupted")
        .context("execution_interrupted")?;
    // Before it only the step's own `progress_state`: no further step was reported.
    assert!(t[..i].iter().all(|t| t == "progress_state"), "{t:?}");
    assert_eq!(
        t[i..],
        ["execution_interrupted", "status", "executing"],
        "{t:?}"
    );
    let q = get(&s, "/queue").await?;
    assert_eq!(q["queue_running"], json!([]), "{q}");
    let entry = history_entry(&s, &pid).await?;
    assert_eq!(
        message_types(&entry).last().map(String::as_str),
        Some("execution_interrupted")
    );
    // The stats log orders it: queued, started, interrupt, ended (interrupted).
    let log = s.stats().await?["log"].clone();
    let events: Vec<(&str, &str)> = log
        .as_array()
        .context("log")?
        .iter()
        .filter(|e| e["prompt_id"] == pid.as_str())
        .map(|e| {
            (
                e["event"].as_str().unwrap_or(""),
                e["status"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        events,
        [
            ("queued", ""),
            ("started", ""),
            ("interrupt", ""),
            ("ended", "interrupted")
        ]
    );
    Ok(())
}

#[tokio::test]
async fn validation_errors_match_the_reference() -> anyhow::Result<()> {
    let s = StandIn::start(&[]).await?;
    let (mut ws, _) = Ws::connect(&s, "C").await?;
    let mut bad = minimal(0xFF0000);
    bad["1"]["inputs"]["width"] = json!(0);
    let (code, body) = post(&s, "/prompt", json!({"prompt": bad, "client_id": "C"})).await?;
    assert_eq!(code, 400);
    let reference: Value = serde_json::from_str(
        r#"{"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": "", "extra_info": {}},
 "node_errors": {"1": {"errors": [{"type": "value_smaller_than_min", "message": "Value 0 smaller than min of 1", "details": "width",
   "extra_info": {"input_name": "width", "input_config": ["INT", {"default": 512, "min": 1, "max": 16384, "step": 1}], "received_value": 0}}],
   "dependent_outputs": ["2"], "class_type": "EmptyImage"}}}"#,
    )?;
    assert_eq!(body, reference);
    ws.silent().await?;

    let node_error = |body: &Value, node: &str| body["node_errors"][node]["errors"][0].clone();
    let mut g = txt2img(2, 0);
    g["3"]["inputs"]["sampler_name"] = json!("nope");
    g["3"]["inputs"]["cfg"] = json!(101);
    let (code, body) = post(&s, "/prompt", json!({"prompt": g})).await?;
    assert_eq!(code, 400);
    let errors = body["node_errors"]["3"]["errors"]
        .as_array()
        .context("errors")?;
    let kinds: Vec<&Value> = errors.iter().map(|e| &e["type"]).collect();
    assert_eq!(
        kinds,
        [&json!("value_bigger_than_max"), &json!("value_not_in_list")]
    );
    assert_eq!(
        errors[0]["message"], "Value 101.0 bigger than max of 100.0",
        "FLOAT: float(101) is 101.0"
    );

    let mut g = txt2img(2, 0);
    g["8"]["inputs"]["samples"] = json!(["6", 0]);
    let (_, body) = post(&s, "/prompt", json!({"prompt": g})).await?;
    let e = node_error(&body, "8");
    assert_eq!(e["type"], "return_type_mismatch");
    assert_eq!(
        e["details"],
        "samples, received_type(CONDITIONING) mismatch input_type(LATENT)"
    );
    assert_eq!(body["node_errors"]["8"]["dependent_outputs"], json!(["9"]));

    let mut g = minimal(0);
    g["2"]["inputs"]
        .as_object_mut()
        .context("inputs")?
        .remove("images");
    let (_, body) = post(&s, "/prompt", json!({"prompt": g})).await?;
    assert_eq!(node_error(&body, "2")["type"], "required_input_missing");
    assert_eq!(
        body["error"]["details"],
        "Required input is missing: images"
    );

    let g = json!({"1": {"class_type": "LoadImage", "inputs": {"image": "missing.png"}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}});
    let (_, body) = post(&s, "/prompt", json!({"prompt": g})).await?;
    let e = node_error(&body, "1");
    assert_eq!(e["type"], "custom_validation_failed");
    assert_eq!(e["details"], "LoadImage - Invalid image file: missing.png");

    let g = json!({"1": {"class_type": "Nope", "inputs": {}}});
    let (code, body) = post(&s, "/prompt", json!({"prompt": g})).await?;
    assert_eq!(code, 400);
    assert_eq!(
        body,
        json!({"error": {"type": "invalid_prompt", "message": "Cannot execute because node Nope does not exist.",
            "details": "Node ID '#1'", "extra_info": {}}, "node_errors": {}})
    );
    let g = json!({"1": {"class_type": "EmptyImage", "inputs": {}}});
    let (_, body) = post(&s, "/prompt", json!({"prompt": g})).await?;
    assert_eq!(body["error"]["type"], "prompt_no_outputs");
    let (code, body) = post(&s, "/prompt", json!({"client_id": "C"})).await?;
    assert_eq!((code, &body["error"]["type"]), (400, &json!("no_prompt")));
    for bad_id in ["not-a-uuid", "6F9619FF-8B86-D011-B42D-00C04FC964FF"] {
        let (code, body) = post(
            &s,
            "/prompt",
            json!({"prompt": minimal(0), "prompt_id": bad_id}),
        )
        .await?;
        assert_eq!(
            (code, &body["error"]["type"]),
            (400, &json!("invalid_prompt_id"))
        );
    }
    let r = reqwest::Client::new()
        .post(format!("{}/prompt", s.url()))
        .body("{not json")
        .send()
        .await?;
    assert_eq!(r.status(), 500);
    ws.silent().await?;
    assert_eq!(get(&s, "/queue").await?["queue_pending"], json!([]));

    // A caller-chosen prompt_id is kept.
    let id = "6f9619ff-8b86-4011-b42d-00c04fc964ff";
    let (code, body) = post(
        &s,
        "/prompt",
        json!({"prompt": minimal(1), "prompt_id": id}),
    )
    .await?;
    assert_eq!((code, &body["prompt_id"]), (200, &json!(id)));
    history_entry(&s, id).await?;
    Ok(())
}

#[tokio::test]
async fn a_late_client_gets_no_replay() -> anyhow::Result<()> {
    let s = StandIn::start(&["--step-ms", "1"]).await?;
    let pid = submit(&s, json!({"prompt": minimal(5), "client_id": "L"})).await?;
    let entry = history_entry(&s, &pid).await?;
    assert_eq!(entry["status"]["status_str"], "success");
    let (mut ws, hello) = Ws::connect(&s, "L").await?;
    assert_eq!(hello["data"]["status"]["exec_info"]["queue_remaining"], 0);
    ws.silent().await?;
    Ok(())
}

#[tokio::test]
async fn reconnecting_with_the_same_client_id_cuts_off_the_new_socket() -> anyhow::Result<()> {
    let s = StandIn::start(&["--step-ms", "1"]).await?;
    let (mut old, _) = Ws::connect(&s, "X").await?;
    let (mut new, _) = Ws::connect(&s, "X").await?;
    let (mut witness, _) = Ws::connect(&s, "W").await?;

    // While both are open, the newer socket gets the client's events; the old one nothing.
    let pid = submit(&s, json!({"prompt": minimal(1), "client_id": "X"})).await?;
    new.until_done(&pid).await?;
    old.silent().await?;

    // Closing the old socket unregisters "X": the new socket stays open but is cut off.
    old.ws.close(None).await?;
    while !matches!(old.next(T).await?, Ev::Closed(_)) {}
    let pid = submit(&s, json!({"prompt": minimal(2), "client_id": "X"})).await?;
    history_entry(&s, &pid).await?;
    // Both prompts' three queue-change statuses reach the witness (the last one is sent
    // right after the history entry), so anything for "X" would have been sent by now.
    let mut last = Value::Null;
    for _ in 0..6 {
        last = witness.json().await?;
        assert_eq!(last["type"], "status");
    }
    assert_eq!(last["data"]["status"]["exec_info"]["queue_remaining"], 0);
    new.ws
        .send(Message::Ping(b"still there?".to_vec().into()))
        .await?;
    assert!(matches!(new.next(T).await?, Ev::Pong), "the socket is open");
    new.silent().await?;
    Ok(())
}

#[tokio::test]
async fn queue_history_and_priorities() -> anyhow::Result<()> {
    let s = StandIn::start(&["--step-ms", "5"]).await?;
    let (mut ws, _) = Ws::connect(&s, "C").await?;
    let running = submit(&s, json!({"prompt": txt2img(2000, 1), "client_id": "C"})).await?;
    ws.until_type("progress").await?;
    assert_eq!(get(&s, &format!("/history/{running}")).await?, json!({}));
    let late = submit(&s, json!({"prompt": minimal(1), "number": 5})).await?;
    let front = submit(&s, json!({"prompt": minimal(2), "front": true})).await?;
    let dropped = submit(&s, json!({"prompt": minimal(3)})).await?;
    let q = get(&s, "/queue").await?;
    assert_eq!(q["queue_running"][0][1], running.as_str());
    assert_eq!(q["queue_running"][0][3], json!({"client_id": "C"}));
    let pending: Vec<&Value> = q["queue_pending"]
        .as_array()
        .context("pending")?
        .iter()
        .map(|i| &i[1])
        .collect();
    assert_eq!(pending.len(), 3);
    assert!(pending.contains(&&json!(late)) && pending.contains(&&json!(front)));
    assert_eq!(
        get(&s, "/prompt").await?,
        json!({"exec_info": {"queue_remaining": 4}})
    );
    let (code, _) = post(&s, "/queue", json!({"delete": [dropped, running]})).await?;
    assert_eq!(code, 200);
    let q = get(&s, "/queue").await?;
    assert_eq!(q["queue_pending"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        q["queue_running"][0][1],
        running.as_str(),
        "delete touches pending only"
    );
    let (code, _) = post(&s, "/interrupt", json!({})).await?;
    assert_eq!(code, 200);
    history_entry(&s, &late).await?;
    let executed = s.stats().await?["executed_prompts"].clone();
    assert_eq!(
        executed,
        json!([running, front, late]),
        "front first, number 5 last"
    );
    let all = get(&s, "/history").await?;
    assert_eq!(all.as_object().map(|m| m.len()), Some(3));
    let last = get(&s, "/history?max_items=1").await?;
    assert!(last.get(&late).is_some() && last.as_object().map(|m| m.len()) == Some(1));
    let first = get(&s, "/history?max_items=1&offset=0").await?;
    assert!(first.get(&running).is_some());
    let (code, _) = post(&s, "/history", json!({"delete": [running]})).await?;
    assert_eq!(code, 200);
    assert_eq!(get(&s, &format!("/history/{running}")).await?, json!({}));
    post(&s, "/history", json!({"clear": true})).await?;
    assert_eq!(get(&s, "/history").await?, json!({}));
    let job = get(&s, &format!("/api/jobs/{front}")).await;
    assert!(job.is_err(), "cleared history: job unknown");
    Ok(())
}

fn png_bytes(color: [u8; 3]) -> anyhow::Result<Vec<u8>> {
    let img = image::RgbImage::from_pixel(8, 8, image::Rgb(color));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)?;
    Ok(out.into_inner())
}

async fn upload(
    s: &StandIn,
    name: &str,
    bytes: Vec<u8>,
    fields: &[(&str, &str)],
) -> anyhow::Result<(u16, Value)> {
    let mut form = reqwest::multipart::Form::new().part(
        "image",
        reqwest::multipart::Part::bytes(bytes).file_name(name.to_owned()),
    );
    for (k, v) in fields {
        form = form.text(k.to_string(), v.to_string());
    }
    let r = reqwest::Client::new()
        .post(format!("{}/upload/image", s.url()))
        .multipart(form)
        .send()
        .await?;
    let code = r.status().as_u16();
    Ok((code, r.json().await.unwrap_or(Value::Null)))
}

#[tokio::test]
async fn upload_renames_and_dedups_and_view_serves() -> anyhow::Result<()> {
    let s = StandIn::start(&["--step-ms", "1"]).await?;
    let red = png_bytes([255, 0, 0])?;
    let (code, v) = upload(&s, "a.png", red.clone(), &[]).await?;
    assert_eq!(
        (code, v),
        (
            200,
            json!({"name": "a.png", "subfolder": "", "type": "input"})
        )
    );
    let (_, v) = upload(&s, "a.png", red.clone(), &[]).await?;
    assert_eq!(v["name"], "a.png", "identical bytes keep the name");
    let (_, v) = upload(&s, "a.png", png_bytes([0, 255, 0])?, &[]).await?;
    assert_eq!(v["name"], "a (1).png");
    let (_, v) = upload(
        &s,
        "a.png",
        png_bytes([0, 0, 255])?,
        &[("overwrite", "true")],
    )
    .await?;
    assert_eq!(v["name"], "a.png");
    let (_, v) = upload(
        &s,
        "b.png",
        red.clone(),
        &[("subfolder", "sub"), ("type", "temp")],
    )
    .await?;
    assert_eq!(
        v,
        json!({"name": "b.png", "subfolder": "sub", "type": "temp"})
    );
    assert!(s.data_dir.join("temp/sub/b.png").is_file());
    let (code, _) = upload(&s, "c.png", red.clone(), &[("subfolder", "../..")]).await?;
    assert_eq!(code, 400);
    let r = reqwest::Client::new()
        .post(format!("{}/upload/image", s.url()))
        .multipart(reqwest::multipart::Form::new().text("subfolder", "x"))
        .send()
        .await?;
    assert_eq!(r.status(), 400, "no file");
    assert_eq!(s.stats().await?["uploads"], 5);
    assert_eq!(std::fs::read_dir(s.data_dir.join("input"))?.count(), 2);

    let r = reqwest::get(format!("{}/view?filename=a%20(1).png&type=input", s.url())).await?;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "image/png");
    assert_eq!(r.headers()["content-disposition"], "filename=\"a (1).png\"");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert_eq!(r.bytes().await?.to_vec(), png_bytes([0, 255, 0])?);
    for (query, code) in [
        ("filename=b.png&type=temp&subfolder=sub", 200),
        ("filename=b.png%20[temp]&subfolder=sub", 200),
        ("filename=", 400),
        ("filename=../x.png", 400),
        ("filename=/etc/passwd", 400),
        ("filename=a.png&type=models", 400),
        ("filename=a.png&type=input&subfolder=../..", 403),
        ("filename=nope.png&type=input", 404),
        ("type=input", 404),
    ] {
        let r = reqwest::get(format!("{}/view?{query}", s.url())).await?;
        assert_eq!(r.status().as_u16(), code, "{query}");
    }

    for (query, mime, format) in [
        ("preview=jpeg;80", "image/jpeg", image::ImageFormat::Jpeg),
        ("preview=webp;90", "image/webp", image::ImageFormat::WebP),
        ("channel=rgb", "image/png", image::ImageFormat::Png),
        ("channel=a", "image/png", image::ImageFormat::Png),
    ] {
        let r = reqwest::get(format!(
            "{}/view?filename=a.png&type=input&{query}",
            s.url()
        ))
        .await?;
        assert_eq!(r.headers()["content-type"], mime, "{query}");
        let img = image::load_from_memory_with_format(&r.bytes().await?, format)?;
        assert_eq!((img.width(), img.height()), (8, 8), "{query}");
    }

    // LoadImage reads the upload; the pipeline inverts it.
    let g = json!({"1": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}}});
    let pid = submit(&s, json!({"prompt": g})).await?;
    let entry = history_entry(&s, &pid).await?;
    let file = entry["outputs"]["3"]["images"][0]["filename"]
        .as_str()
        .context("filename")?
        .to_owned();
    assert_eq!(file, "inv_00001_.png");
    let r = reqwest::get(format!("{}/view?filename={file}", s.url())).await?;
    let img = image::load_from_memory(&r.bytes().await?)?.to_rgb8();
    assert_eq!(img.get_pixel(0, 0).0, [255, 255, 0]);

    // Overwriting the input changes LoadImage's cache key (IS_CHANGED): it runs again.
    upload(&s, "a.png", red, &[("overwrite", "1")]).await?;
    let pid = submit(&s, json!({"prompt": g})).await?;
    let entry = history_entry(&s, &pid).await?;
    assert_eq!(
        entry["outputs"]["3"]["images"][0]["filename"],
        "inv_00002_.png"
    );
    let img = image::open(s.data_dir.join("output/inv_00002_.png"))?.to_rgb8();
    assert_eq!(img.get_pixel(0, 0).0, [0, 255, 255]);
    Ok(())
}

#[tokio::test]
async fn api_prefix_serves_the_same_routes() -> anyhow::Result<()> {
    let s = StandIn::start(&["--step-ms", "1"]).await?;
    let (mut ws, _) = Ws::connect_url(&format!("ws://{}/api/ws?clientId=A", s.addr), "A").await?;
    let (code, v) = post(
        &s,
        "/api/prompt",
        json!({"prompt": minimal(9), "client_id": "A"}),
    )
    .await?;
    assert_eq!(code, 200);
    let pid = v["prompt_id"].as_str().context("prompt_id")?.to_owned();
    ws.until_done(&pid).await?;
    assert!(
        get(&s, &format!("/api/history/{pid}"))
            .await?
            .get(&pid)
            .is_some()
    );
    assert_eq!(get(&s, "/api/queue").await?["queue_running"], json!([]));
    let job = get(&s, &format!("/api/jobs/{pid}")).await?;
    assert_eq!(job["status"], "completed");
    let info = get(&s, "/api/object_info/KSampler").await?;
    assert_eq!(info["KSampler"]["output"], json!(["LATENT"]));
    assert_eq!(
        info["KSampler"]["input"]["required"]["steps"][1]["max"],
        10000
    );
    assert_eq!(get(&s, "/object_info/Nope").await?, json!({}));
    let all = get(&s, "/object_info").await?;
    assert_eq!(all["SaveImage"]["output_node"], true);
    assert!(get(&s, "/api/system_stats").await?["devices"].is_array());
    assert_eq!(
        get(&s, "/api/features").await?["supports_preview_metadata"],
        true
    );
    assert_eq!(
        get(&s, "/api/prompt").await?,
        json!({"exec_info": {"queue_remaining": 0}})
    );

    // A browser's Origin forwarded to a loopback ComfyUI is refused; a matching one is fine.
    let http = reqwest::Client::new();
    for (origin, code) in [("http://evil.example", 403), (&*s.url(), 200)] {
        let r = http
            .get(format!("{}/api/queue", s.url()))
            .header("Origin", origin)
            .send()
            .await?;
        assert_eq!(r.status().as_u16(), code, "{origin}");
    }
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        s.ws_url("O"),
    )?;
    req.headers_mut()
        .insert("Origin", "http://evil.example".parse()?);
    assert!(tokio_tungstenite::connect_async(req).await.is_err());
    Ok(())
}

#[tokio::test]
async fn forget_empties_everything_and_cuts_sockets() -> anyhow::Result<()> {
    let s = StandIn::start(&["--step-ms", "5"]).await?;
    let (mut ws, _) = Ws::connect(&s, "C").await?;
    let done = submit(&s, json!({"prompt": minimal(4), "client_id": "C"})).await?;
    ws.until_done(&done).await?;
    let running = submit(&s, json!({"prompt": txt2img(2000, 1), "client_id": "C"})).await?;
    submit(&s, json!({"prompt": minimal(6)})).await?;
    ws.until_type("progress").await?;
    s.forget().await?;
    loop {
        match ws.next(T).await? {
            Ev::Closed(frame) => {
                assert!(frame.is_none(), "no close frame");
                break;
            }
            Ev::Json(v) => assert_ne!(v["type"], "execution_interrupted"),
            _ => {}
        }
    }
    assert_eq!(
        get(&s, "/queue").await?,
        json!({"queue_running": [], "queue_pending": []})
    );
    assert_eq!(get(&s, "/history").await?, json!({}));
    assert_eq!(get(&s, &format!("/history/{running}")).await?, json!({}));

    // The cache is gone too: the same prompt runs node 1 again (and writes a new file).
    let (mut ws, _) = Ws::connect(&s, "C").await?;
    let pid = submit(&s, json!({"prompt": minimal(4), "client_id": "C"})).await?;
    let evs = ws.until_done(&pid).await?;
    assert_eq!(jsons(&evs, "execution_cached")[0]["nodes"], json!([]));
    assert_eq!(
        jsons(&evs, "executed")[0]["output"]["images"][0]["filename"],
        "job_00002_.png"
    );
    assert!(
        get(&s, &format!("/history/{running}"))
            .await?
            .get(&running)
            .is_none()
    );
    Ok(())
}

#[tokio::test]
async fn drop_ws_and_stall() -> anyhow::Result<()> {
    let s = StandIn::start(&["--step-ms", "5"]).await?;
    let (mut ws, _) = Ws::connect(&s, "C").await?;
    let pid = submit(&s, json!({"prompt": txt2img(60, 1), "client_id": "C"})).await?;
    ws.until_type("progress").await?;
    s.stall(1500).await?;
    // Drain what was already sent, then expect silence while HTTP still answers.
    let mut quiet = false;
    for _ in 0..10 {
        if tokio::time::timeout(QUIET, ws.ws.next()).await.is_err() {
            quiet = true;
            break;
        }
    }
    assert!(quiet, "the worker kept sending during a stall");
    assert_eq!(
        get(&s, "/queue").await?["queue_running"][0][1],
        pid.as_str()
    );
    let v = ws.json().await?;
    assert!(
        v["type"] == "progress" || v["type"] == "progress_state",
        "{v}"
    );

    s.drop_ws().await?;
    loop {
        match ws.next(T).await? {
            Ev::Closed(frame) => {
                assert!(frame.is_none(), "no close frame");
                break;
            }
            _ => continue,
        }
    }
    // The prompt goes on without a listener; history has it afterwards.
    let entry = history_entry(&s, &pid).await?;
    assert_eq!(entry["status"]["status_str"], "success");
    Ok(())
}

#[tokio::test]
async fn reconnect_while_running_gets_executing_without_prompt_id() -> anyhow::Result<()> {
    let s = StandIn::start(&["--step-ms", "5"]).await?;
    let (mut ws, _) = Ws::connect(&s, "C").await?;
    let pid = submit(&s, json!({"prompt": txt2img(2000, 1), "client_id": "C"})).await?;
    ws.until_type("progress").await?;
    ws.ws.close(None).await?;
    let (mut again, hello) = Ws::connect(&s, "C").await?;
    assert_eq!(hello["data"]["status"]["exec_info"]["queue_remaining"], 1);
    let v = again.json().await?;
    assert_eq!(v, json!({"type": "executing", "data": {"node": "3"}}));
    post(&s, "/interrupt", json!({})).await?;
    history_entry(&s, &pid).await?;
    Ok(())
}

#[tokio::test]
async fn restart_keeps_output_files_and_forgets_the_rest() -> anyhow::Result<()> {
    let mut s = StandIn::start(&["--step-ms", "1"]).await?;
    let pid = submit(&s, json!({"prompt": minimal(7)})).await?;
    history_entry(&s, &pid).await?;
    let addr = s.addr;
    s.restart().await?;
    assert_eq!(s.addr, addr, "same port");
    assert_eq!(get(&s, "/history").await?, json!({}));
    let r = reqwest::get(format!(
        "{}/view?filename=job_00001_.png&subfolder=gw",
        s.url()
    ))
    .await?;
    assert_eq!(r.status(), 200);
    let pid = submit(&s, json!({"prompt": minimal(7)})).await?;
    let entry = history_entry(&s, &pid).await?;
    assert_eq!(
        entry["outputs"]["2"]["images"][0]["filename"],
        "job_00002_.png"
    );
    s.kill9().await?;
    assert!(reqwest::get(format!("{}/queue", s.url())).await.is_err());
    Ok(())
}

#[tokio::test]
async fn a_prompt_without_client_id_broadcasts_progress_but_no_executing() -> anyhow::Result<()> {
    let s = StandIn::start(&["--step-ms", "1"]).await?;
    let (mut ws, _) = Ws::connect(&s, "W").await?;
    // A global interrupt with nothing running does not leak into the next prompt.
    let (code, _) = post(&s, "/interrupt", json!({})).await?;
    assert_eq!(code, 200);
    let pid = submit(&s, json!({"prompt": txt2img(2, 5)})).await?;
    let entry = history_entry(&s, &pid).await?;
    assert_eq!(entry["status"]["status_str"], "success");
    assert_eq!(entry["prompt"][3], json!({}));
    let mut seen = Vec::new();
    loop {
        let v = ws.json().await?;
        let done =
            v["type"] == "status" && v["data"]["status"]["exec_info"]["queue_remaining"] == 0;
        seen.push(v["type"].as_str().unwrap_or("?").to_owned());
        if done {
            break;
        }
    }
    assert_eq!(seen.iter().filter(|t| *t == "progress").count(), 2);
    assert!(seen.iter().any(|t| t == "progress_state"));
    for absent in [
        "execution_start",
        "execution_cached",
        "executing",
        "executed",
        "execution_success",
    ] {
        assert!(!seen.iter().any(|t| t == absent), "{absent} in {seen:?}");
    }
    ws.silent().await?;
    Ok(())
}
