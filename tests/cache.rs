//! The result cache through the real binary: a repeat of a completed demo job (same backend,
//! workflow and uploaded input content) is answered at once from the first run's outputs,
//! byte-identical, also after a restart; `"cache": false`, other inputs, other workflows, an
//! expired ttl, another owner, the `exec` backend, failed and canceled sources all run for real.

#[path = "uploads_common.rs"]
mod common;

use std::time::Duration;

use anyhow::bail;
use common::{Tus, id_of, sha256_hex};
use outlast_e2e::api::Submitted;
use outlast_e2e::ws::Client;
use outlast_e2e::{Api, Gateway};
use outlast_protocol::v1::{ClientMsg, Control};
use outlast_protocol::{Codec, EventKind, JobSpec, JobState, OutputInfo};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(30);
const ALICE: &str = "alice-secret-0123456789";
const BOB: &str = "bob-secret-0123456789ab";

/// A small PNG; `tone` changes its content.
fn png(tone: u8) -> Vec<u8> {
    let img = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8, y as u8, tone]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encode png");
    out.into_inner()
}

/// The API of `gw` as the owner of `token` (or without one).
fn api_of(gw: &Gateway, token: Option<&str>) -> Api {
    match token {
        Some(t) => gw.api().with_token(t),
        None => gw.api(),
    }
}

/// Uploads `bytes` over tus as the API's owner; the upload id.
async fn upload(api: &Api, bytes: &[u8]) -> anyhow::Result<String> {
    let tus = match api.token() {
        Some(t) => Tus::with_token(api.base(), t),
        None => Tus::new(api.base()),
    };
    Ok(id_of(&tus.upload(bytes, 4096).await?).to_string())
}

/// Long-polls a job's stream until its terminal event; every event, in order.
async fn finish(api: &Api, job: &str) -> anyhow::Result<Vec<EventKind>> {
    let log = api.follow_to_end(job, T).await?;
    Ok(log.into_iter().map(|e| e.kind).collect())
}

/// Submits and waits for the end: (job id, submit answer, events).
async fn run(api: &Api, body: &Value) -> anyhow::Result<(String, Submitted, Vec<EventKind>)> {
    let answer = api.submit(body).await?;
    let job = answer.job_id.to_string();
    let log = finish(api, &job).await?;
    Ok((job, answer, log))
}

fn types(log: &[EventKind]) -> Vec<&'static str> {
    log.iter().map(EventKind::name).collect()
}

fn outputs(log: &[EventKind]) -> Vec<OutputInfo> {
    log.iter()
        .filter_map(|e| match e {
            EventKind::Output(info) => Some(info.clone()),
            _ => None,
        })
        .collect()
}

/// Asserts a real run that completed: it started, and its completion is not cached.
fn assert_ran(log: &[EventKind]) {
    assert!(types(log).contains(&"started"), "did not run: {log:?}");
    assert_eq!(
        log.last(),
        Some(&EventKind::Completed { cached: false }),
        "{log:?}"
    );
}

/// Asserts a cached answer: exactly these outputs, then `completed {cached: true}`.
fn assert_cached(log: &[EventKind], expected: &[OutputInfo]) {
    let mut want: Vec<EventKind> = expected.iter().cloned().map(EventKind::Output).collect();
    want.push(EventKind::Completed { cached: true });
    assert_eq!(log, want.as_slice());
}

/// The value of a counter line such as `outlast_cache_hits_total{backend="demo"} 2`.
async fn counter(gw: &Gateway, series: &str) -> anyhow::Result<u64> {
    gw.api().counter(series).await
}

fn demo(steps: u32, image: Option<&str>) -> Value {
    let mut body = json!({"backend": "demo", "workflow": {"steps": steps, "step_ms": 20}});
    if let Some(id) = image {
        body["inputs"] = json!({ "image": id });
    }
    body
}

#[tokio::test]
async fn a_repeat_is_answered_from_the_first_run_also_after_a_restart() -> anyhow::Result<()> {
    let mut gw = Gateway::start(&[]).await?;
    let api = api_of(&gw, None);
    let image = upload(&api, &png(128)).await?;
    let body = demo(2, Some(&image));

    // The first run does the work.
    let (first, answer, log) = run(&api, &body).await?;
    assert_eq!(answer.state, JobState::Queued);
    assert_eq!(
        types(&log),
        [
            "queued",
            "started",
            "progress",
            "preview",
            "progress",
            "output",
            "completed"
        ]
    );
    assert_ran(&log);
    let produced = outputs(&log);
    assert_eq!(produced.len(), 1);
    assert_eq!(
        (produced[0].name.as_str(), produced[0].mime.as_str()),
        ("result.png", "image/png")
    );
    let (original, etag) = api.download_with_etag(&first, "result.png").await?;
    assert_eq!(sha256_hex(&original), produced[0].sha256);
    assert_eq!(etag, format!("\"{}\"", produced[0].sha256));

    // The same submission over the WebSocket: the stream holds the outputs and the cached
    // completion at once, nothing else.
    let mut ws = Client::connect(&gw.ws_url(), Codec::Json).await?;
    let spec: JobSpec = serde_json::from_value(body.clone())?;
    ws.send(&ClientMsg::Submit {
        req: Some(1),
        job: spec,
    })
    .await?;
    let repeat = match ws.next_control(T).await? {
        Some(Control::Submitted {
            job_id, created, ..
        }) => {
            assert!(created);
            job_id
        }
        other => bail!("expected submitted, got {other:?}"),
    };
    ws.send(&ClientMsg::Subscribe {
        req: Some(2),
        job_id: repeat,
        after: None,
    })
    .await?;
    let mut streamed = Vec::new();
    while let Some(event) = ws.next_event(T).await? {
        assert_eq!(event.seq.0, streamed.len() as u64 + 1);
        streamed.push(event.kind);
        if streamed.last().is_some_and(EventKind::is_terminal) {
            break;
        }
    }
    assert_cached(&streamed, &produced);
    let (bytes, repeat_etag) = api.download_with_etag(repeat, "result.png").await?;
    assert!(
        bytes == original,
        "the cached output differs from the original"
    );
    assert_eq!(repeat_etag, etag);
    let snapshot = api.snapshot(repeat).await?;
    assert_eq!(
        (snapshot.state, snapshot.cached, snapshot.attempt),
        (JobState::Completed, true, 0)
    );

    // Over HTTP with an idempotency key (not part of the cache key): 202 and already completed.
    let mut keyed = body.clone();
    keyed["idempotency_key"] = json!("order-17");
    let (_, answer, log) = run(&api, &keyed).await?;
    assert_eq!((answer.state, answer.created), (JobState::Completed, true));
    assert_cached(&log, &produced);

    // The same bytes uploaded again are the same input (upload ids are not compared).
    let again = upload(&api, &png(128)).await?;
    assert_ne!(again, image);
    let (_, _, log) = run(&api, &demo(2, Some(&again))).await?;
    assert_cached(&log, &produced);

    // Opting out runs it again, and that run does not become the source.
    let mut opt_out = body.clone();
    opt_out["cache"] = json!(false);
    let (_, _, log) = run(&api, &opt_out).await?;
    assert_ran(&log);

    // Other input content, or another workflow: misses.
    let other_image = upload(&api, &png(7)).await?;
    let (_, _, log) = run(&api, &demo(2, Some(&other_image))).await?;
    assert_ran(&log);
    assert_ne!(outputs(&log)[0].sha256, produced[0].sha256);
    let (_, _, log) = run(&api, &demo(3, Some(&image))).await?;
    assert_ran(&log);

    // Metrics count lookups: three hits; the first run and the two misses; the opt-out is no
    // lookup.
    assert_eq!(
        counter(&gw, "outlast_cache_hits_total{backend=\"demo\"}").await?,
        3
    );
    assert_eq!(
        counter(&gw, "outlast_cache_misses_total{backend=\"demo\"}").await?,
        3
    );

    // kill -9 and start again: the entry and the files survive.
    gw.restart().await?;
    let api = api_of(&gw, None);
    let (after_restart, _, log) = run(&api, &body).await?;
    assert_cached(&log, &produced);
    assert!(api.download(&after_restart, "result.png").await? == original);

    // A source whose files are gone no longer answers: the job runs and becomes the source.
    std::fs::remove_file(gw.data_dir.join("outputs").join(&first).join("result.png"))?;
    let (_, _, log) = run(&api, &body).await?;
    assert_ran(&log);
    let fresh = outputs(&log);
    let (_, _, log) = run(&api, &body).await?;
    assert_cached(&log, &fresh);
    Ok(())
}

#[tokio::test]
async fn an_expired_result_runs_again_and_zero_ttl_disables_the_cache() -> anyhow::Result<()> {
    let ttl = Duration::from_secs(2);
    let gw = Gateway::start(&["--cache-ttl", "2s"]).await?;
    let api = api_of(&gw, None);
    let body = demo(1, None);
    let (first, _, log) = run(&api, &body).await?;
    assert_ran(&log);
    let produced = outputs(&log);
    let (_, _, log) = run(&api, &body).await?;
    assert_cached(&log, &produced);

    // Wait until the ttl has passed since the first job's completion (its stored time).
    let completed_at = api.snapshot(&first).await?.updated_at_ms;
    let expires = std::time::UNIX_EPOCH + Duration::from_millis(completed_at) + ttl;
    if let Ok(left) = expires.duration_since(std::time::SystemTime::now()) {
        tokio::time::sleep(left + Duration::from_millis(100)).await;
    }
    let (_, _, log) = run(&api, &body).await?;
    assert_ran(&log);
    // ...and that run answers the next repeat.
    let renewed = outputs(&log);
    let (_, _, log) = run(&api, &body).await?;
    assert_cached(&log, &renewed);

    let off = Gateway::start(&["--cache-ttl", "0s"]).await?;
    let api = api_of(&off, None);
    for _ in 0..2 {
        let (_, _, log) = run(&api, &body).await?;
        assert_ran(&log);
    }
    assert_eq!(
        counter(&off, "outlast_cache_misses_total{backend=\"demo\"}").await?,
        0
    );
    Ok(())
}

#[tokio::test]
async fn owners_never_share_results() -> anyhow::Result<()> {
    let gw = Gateway::start_with_tokens(&[("alice", ALICE), ("bob", BOB)], &[]).await?;
    let (alice, bob) = (api_of(&gw, Some(ALICE)), api_of(&gw, Some(BOB)));
    let image = png(200);
    let alice_body = demo(2, Some(&upload(&alice, &image).await?));
    let bob_body = demo(2, Some(&upload(&bob, &image).await?));

    let (_, _, log) = run(&alice, &alice_body).await?;
    assert_ran(&log);
    let alices = outputs(&log);
    // Bob sends the same workflow and the same bytes: his job runs.
    let (_, _, log) = run(&bob, &bob_body).await?;
    assert_ran(&log);
    let bobs = outputs(&log);
    // Each owner's repeat is answered from their own run.
    let (_, _, log) = run(&alice, &alice_body).await?;
    assert_cached(&log, &alices);
    let (_, _, log) = run(&bob, &bob_body).await?;
    assert_cached(&log, &bobs);
    Ok(())
}

#[tokio::test]
async fn exec_jobs_are_never_cached() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let runs = tmp.path().join("runs");
    let script = format!(
        "read -r job; echo run >> {}; printf 'same' > \"$OUTLAST_OUTPUT_DIR/out.txt\"",
        runs.display()
    );
    let gw = Gateway::start(&["--exec-command", &script]).await?;
    let api = api_of(&gw, None);
    let body = json!({"backend": "exec", "workflow": {"mode": "same"}});
    for _ in 0..2 {
        let (_, _, log) = run(&api, &body).await?;
        assert_ran(&log);
        assert_eq!(outputs(&log)[0].sha256, sha256_hex(b"same"));
    }
    assert_eq!(std::fs::read_to_string(&runs)?, "run\nrun\n");
    assert_eq!(
        counter(&gw, "outlast_cache_misses_total{backend=\"exec\"}").await?,
        0
    );
    Ok(())
}

#[tokio::test]
async fn failed_and_canceled_jobs_are_not_sources() -> anyhow::Result<()> {
    let gw = Gateway::start(&[]).await?;
    let api = api_of(&gw, None);

    let failing =
        json!({"backend": "demo", "workflow": {"steps": 2, "step_ms": 10, "fail_at_step": 2}});
    for _ in 0..2 {
        let (_, _, log) = run(&api, &failing).await?;
        assert!(types(&log).contains(&"started"), "{log:?}");
        assert_eq!(log.last().map(EventKind::name), Some("failed"));
    }

    let slow = json!({"backend": "demo", "workflow": {"steps": 300, "step_ms": 20}});
    for _ in 0..2 {
        let job = api.submit(&slow).await?.job_id;
        // Wait for its first progress (it really runs), then cancel it.
        let first = api
            .wait_for_event(job, T, |e| {
                matches!(
                    e.kind,
                    EventKind::Progress { .. } | EventKind::Completed { .. }
                )
            })
            .await?;
        assert!(
            !matches!(first.kind, EventKind::Completed { .. }),
            "answered from a canceled job: {first:?}"
        );
        assert_eq!(api.cancel(job).await?, JobState::Canceled);
        let log = finish(&api, &job.to_string()).await?;
        assert_eq!(log.last().map(EventKind::name), Some("canceled"));
    }
    assert_eq!(
        counter(&gw, "outlast_cache_hits_total{backend=\"demo\"}").await?,
        0
    );
    assert_eq!(
        counter(&gw, "outlast_cache_misses_total{backend=\"demo\"}").await?,
        4
    );
    Ok(())
}
