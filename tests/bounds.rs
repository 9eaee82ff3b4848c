//! Per-owner bounds on submissions, driving the real binary: the queued-jobs cap and the
//! new-jobs-per-second rate answer 429 `limit_exceeded` with `Retry-After`, other owners are
//! not affected, and a repeat of a known idempotency key is never refused.

use outlast_e2e::Gateway;
use serde_json::json;

const ALICE: &str = "alice-secret-token-0001";
const BOB: &str = "bob-secret-token-000002";

fn job(key: &str) -> serde_json::Value {
    json!({"backend": "demo", "workflow": {"steps": 1, "step_ms": 60000},
           "idempotency_key": key, "cache": false})
}

async fn submit(
    gw: &Gateway,
    token: &str,
    key: &str,
) -> anyhow::Result<(u16, Option<String>, serde_json::Value)> {
    let r = reqwest::Client::new()
        .post(format!("{}/v1/jobs", gw.http()))
        .bearer_auth(token)
        .json(&job(key))
        .send()
        .await?;
    let status = r.status().as_u16();
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((status, retry, r.json().await?))
}

#[tokio::test]
async fn the_queued_cap_refuses_new_jobs_of_that_owner_only() -> anyhow::Result<()> {
    let gw = Gateway::start_with_tokens(
        &[("alice", ALICE), ("bob", BOB)],
        &[
            "--demo-concurrency",
            "1",
            "--jobs-max-queued-per-owner",
            "3",
            "--jobs-submits-per-second",
            "0",
        ],
    )
    .await?;
    // One runs (the only slot), three wait: the cap is reached.
    for i in 0..4 {
        let (status, _, body) = submit(&gw, ALICE, &format!("a{i}")).await?;
        assert_eq!(status, 202, "{body}");
    }
    let (status, retry, body) = submit(&gw, ALICE, "a4").await?;
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("limit_exceeded"))
    );
    assert!(retry.is_some_and(|r| r.parse::<u32>().is_ok_and(|s| s >= 1)));
    // A repeat of a queued job's key re-attaches, not refused.
    let (status, _, body) = submit(&gw, ALICE, "a3").await?;
    assert_eq!((status, body["created"].as_bool()), (202, Some(false)));
    // Bob has his own cap.
    let (status, _, _) = submit(&gw, BOB, "b0").await?;
    assert_eq!(status, 202);
    // Canceling a queued job makes room again.
    let jobs = reqwest::Client::new()
        .get(format!("{}/v1/jobs", gw.http()))
        .bearer_auth(ALICE)
        .send()
        .await?
        .json::<serde_json::Value>()
        .await?;
    let queued = jobs["jobs"]
        .as_array()
        .and_then(|a| a.iter().find(|j| j["state"] == "queued"))
        .and_then(|j| j["job_id"].as_str())
        .map(str::to_owned)
        .expect("a queued job");
    let r = reqwest::Client::new()
        .delete(format!("{}/v1/jobs/{queued}", gw.http()))
        .bearer_auth(ALICE)
        .send()
        .await?;
    assert!(r.status().is_success());
    let (status, _, body) = submit(&gw, ALICE, "a4").await?;
    assert_eq!(status, 202, "{body}");
    Ok(())
}

#[tokio::test]
async fn the_rate_refuses_a_flood_of_new_jobs() -> anyhow::Result<()> {
    let gw = Gateway::start_with_tokens(
        &[("alice", ALICE), ("bob", BOB)],
        &[
            "--jobs-max-queued-per-owner",
            "0",
            "--jobs-submits-per-second",
            "1",
            "--jobs-submit-burst",
            "3",
        ],
    )
    .await?;
    for i in 0..3 {
        assert_eq!(submit(&gw, ALICE, &format!("r{i}")).await?.0, 202);
    }
    let (status, retry, body) = submit(&gw, ALICE, "r3").await?;
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("limit_exceeded"))
    );
    assert_eq!(retry.as_deref(), Some("1"));
    let (status, _, body) = submit(&gw, ALICE, "r0").await?;
    assert_eq!((status, body["created"].as_bool()), (202, Some(false)));
    assert_eq!(submit(&gw, BOB, "x").await?.0, 202);
    let metrics = gw.api().with_token(ALICE).metrics().await?;
    assert!(
        metrics.lines().any(
            |l| l.starts_with("outlast_jobs_refused_total{reason=\"rate\"} ") && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
    Ok(())
}
